"""Checkers of chapter 03."""

import numpy as np
import pytest
import torch

from helpers import checks, circuits, evals
from helpers.models import next_token_loss
from tests.checks.conftest import assert_accepts, assert_rejects


def comp_reference(m, kind, *, normalise=True, swap=False, as_kind=None):
    a0, a1 = m.blocks[0].attn, m.blocks[1].attn
    OV0 = a0.W_V @ a0.W_O
    kind = as_kind or kind
    other = {"Q": a1.W_Q @ a1.W_K.transpose(-1, -2), "K": a1.W_K @ a1.W_Q.transpose(-1, -2),
             "V": a1.W_V @ a1.W_O}[kind]  # fmt: skip
    prod = (OV0[:, None] @ other[None]).flatten(-2).norm(dim=-1)
    if normalise:
        prod = prod / (OV0.flatten(-2).norm(dim=-1)[:, None] * other.flatten(-2).norm(dim=-1)[None])
    return prod.T if swap else prod


def test_composition_scores_accepts_reference():
    assert_accepts(checks.check_composition_scores, comp_reference)


@pytest.mark.parametrize(
    "kwargs, diagnosis",
    [
        ({"swap": True}, "axes are swapped"),
        ({"normalise": False}, "not normalised"),
        ({"as_kind": "V"}, "these are V-composition scores"),  # every kind computed as V
    ],
)
def test_composition_scores_rejects(kwargs, diagnosis):
    assert_rejects(
        checks.check_composition_scores,
        lambda m, k: comp_reference(m, k, **kwargs),
        diagnosis=diagnosis,
    )


def test_composition_scores_rejects_a_constant_a_fixed_kind_and_the_reference():
    assert_rejects(
        checks.check_composition_scores,
        lambda m, k: comp_reference(m, k) * 0 + 0.125,
        diagnosis="matches none",
    )
    assert_rejects(
        checks.check_composition_scores,
        lambda m, k: comp_reference(m, "K"),
        diagnosis="K-composition scores",
    )
    assert_rejects(
        checks.check_composition_scores, circuits.composition_scores, diagnosis="withholds"
    )
    assert_rejects(
        checks.check_composition_scores,
        lambda m, k: comp_reference(m, k)[0],
        diagnosis="returned shape",
    )


def _virtual(m, h0, h1):
    return m.W_E @ m.W_V[0, h0] @ m.W_O[0, h0] @ m.W_V[1, h1] @ m.W_O[1, h1] @ m.W_U


def test_virtual_head_accepts_reference():
    assert_accepts(checks.check_virtual_head_ov, _virtual)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (
            lambda m, h0, h1: (
                m.W_E @ m.W_V[1, h1] @ m.W_O[1, h1] @ m.W_V[0, h0] @ m.W_O[0, h0] @ m.W_U
            ),
            "wrong order",
        ),
        (lambda m, h0, h1: _virtual(m, h0, h1).T, "circuit is transposed"),
        (lambda m, h0, h1: m.W_E @ m.W_V[0, h0] @ m.W_O[0, h0] @ m.W_U, "layer-1 head is missing"),
        (lambda m, h0, h1: m.W_E @ m.W_V[1, h1] @ m.W_O[1, h1] @ m.W_U, "layer-0 head is missing"),
        (
            lambda m, h0, h1: _virtual(m, h1, h0),
            "L0H0, L1H1",
        ),  # heads swapped: wrong off the diagonal
        (lambda m, h0, h1: circuits.virtual_head_ov_circuit(m, (0, h0), (1, h1)), "withholds"),
    ],
)
def test_virtual_head_rejects(wrong, diagnosis):
    assert_rejects(checks.check_virtual_head_ov, wrong, diagnosis=diagnosis)


# ---- 3.2 the random baseline -------------------------------------------------------------------------
def baseline_reference(
    d_model,
    d_head,
    n_samples,
    seed,
    *,
    kind="K",
    normalise=True,
    fixed_seed=None,
    order=None,
    dtype=torch.float32,
):
    """The exercise's recipe: draw the later head's W_Q, W_K, W_V, W_O, then the earlier head's
    W_V, W_O, each [n_samples, ...], from one generator."""
    g = torch.Generator().manual_seed(seed if fixed_seed is None else fixed_seed)
    D, d = d_model, d_head
    shapes = {"W_Q1": (D, d), "W_K1": (D, d), "W_V1": (D, d), "W_O1": (d, D),
              "W_V0": (D, d), "W_O0": (d, D)}  # fmt: skip
    w = {name: torch.randn(n_samples, *shapes[name], generator=g, dtype=dtype)
         for name in order or shapes}  # fmt: skip
    OV0 = w["W_V0"] @ w["W_O0"]
    QK1 = w["W_Q1"] @ w["W_K1"].transpose(-1, -2)
    product = OV0 @ (QK1.transpose(-1, -2) if kind == "K" else QK1)
    scores = product.flatten(-2).norm(dim=-1)
    if normalise:
        scores = scores / (OV0.flatten(-2).norm(dim=-1) * QK1.flatten(-2).norm(dim=-1))
    return float(scores.mean()), float(scores.std())


def test_composition_baseline_accepts_reference():
    assert_accepts(checks.check_composition_baseline, baseline_reference)


def test_composition_baseline_accepts_numpy_and_tensor_numbers():
    def as_tensors(*a):
        mean, std = baseline_reference(*a)
        return torch.tensor(mean), np.float64(std)

    assert_accepts(checks.check_composition_baseline, as_tensors)


@pytest.mark.parametrize(
    "kwargs, diagnosis",
    [
        ({"normalise": False}, "were not normalised"),
        ({"kind": "Q"}, "Q-composition"),
        ({"fixed_seed": 0}, "expected"),
        ({"order": ["W_V0", "W_O0", "W_Q1", "W_K1", "W_V1", "W_O1"]}, "in the order"),
        ({"dtype": torch.float64}, "drawn in float64"),
    ],
)
def test_composition_baseline_rejects(kwargs, diagnosis):
    assert_rejects(
        checks.check_composition_baseline,
        lambda *a: baseline_reference(*a, **kwargs),
        diagnosis=diagnosis,
    )


def test_composition_baseline_rejects_unseeded_draws_and_constants():
    assert_rejects(
        checks.check_composition_baseline,
        lambda D, d, n, s: (D**-0.5, 0.01),
        diagnosis="Exercise 3.2",
    )
    unseeded = lambda D, d, n, s: baseline_reference(D, d, n, int(torch.randint(10**6, ())))  # noqa: E731
    assert_rejects(checks.check_composition_baseline, unseeded, diagnosis="expected")
    biased = lambda *a: baseline_reference(*a)[:1] + (baseline_reference(*a)[1] * 0.99,)  # noqa: E731
    assert_rejects(checks.check_composition_baseline, biased, diagnosis="unbiased")


# ---- 3.4 frozen patterns ------------------------------------------------------------------------------
def frozen_reference(m, t, patterns, *, hook="hook_pattern", only=None):
    layers = patterns if only is None else {k: v for k, v in patterns.items() if k in only}
    return m.run_with_hooks(
        t, [(f"blocks.{k}.attn.{hook}", lambda x, h, p=p: p) for k, p in layers.items()]
    )


def test_run_with_frozen_patterns_accepts_reference():
    assert_accepts(checks.check_run_with_frozen_patterns, frozen_reference)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda m, t, p: m(t), "patterns were not used"),
        (
            lambda m, t, p: frozen_reference(m, t, p, hook="hook_attn_scores"),
            "went into hook_attn_scores",
        ),
        (lambda m, t, p: frozen_reference(m, t, p, only=[0]), "Exercise 3.4"),
        (lambda m, t, p: evals.run_with_frozen_patterns(m, t, p), "withholds"),
    ],
)
def test_run_with_frozen_patterns_rejects(wrong, diagnosis):
    assert_rejects(checks.check_run_with_frozen_patterns, wrong, diagnosis=diagnosis)


def _late_binding(m, t, patterns):
    hooks = []
    for layer, pattern in patterns.items():
        hooks.append((f"blocks.{layer}.attn.hook_pattern", lambda x, hook: pattern))  # noqa: B023
    return m.run_with_hooks(t, hooks)


def test_run_with_frozen_patterns_names_a_late_binding_lambda():
    with checks.fixed_seed(0), pytest.raises(checks.CheckFailed) as info:
        checks.check_run_with_frozen_patterns(_late_binding)
    assert "loop variable" in str(info.value)


# ---- 3.5 term importance ---------------------------------------------------------------------------------
def terms_reference(m, t, *, order1_reads_layer0=False, unfrozen=False, reversed_=False):
    _, cache = m.run_with_cache(t)
    x0, pos = m.W_E[t], m.W_pos[: t.shape[1]]

    def heads(layer, x, frozen=True):
        a = m.blocks[layer].attn
        if frozen:
            p = cache[f"blocks.{layer}.attn.hook_pattern"]
            return torch.einsum("bhqk,bkm,hmd,hdn->bqn", p, x, a.W_V, a.W_O)
        return a(x + pos, x)

    def loss(r):
        return float(next_token_loss(r @ m.W_U, t).detach())

    l0 = heads(0, x0)
    order1 = (
        x0 + l0 + (heads(1, x0 + l0) if order1_reads_layer0 else heads(1, x0, frozen=not unfrozen))
    )
    out = loss(x0), loss(order1), loss(x0 + l0 + heads(1, x0 + l0))
    return out[::-1] if reversed_ else out


def test_term_importance_accepts_reference():
    assert_accepts(checks.check_term_importance, terms_reference)


@pytest.mark.parametrize(
    "kwargs, diagnosis",
    [
        ({"order1_reads_layer0": True}, "order 1 lets layer 1 read layer 0's output"),
        ({"unfrozen": True}, "recomputed from the embeddings"),
        ({"reversed_": True}, "wrong order"),
    ],
)
def test_term_importance_rejects(kwargs, diagnosis):
    assert_rejects(
        checks.check_term_importance,
        lambda m, t: terms_reference(m, t, **kwargs),
        diagnosis=diagnosis,
    )


def test_term_importance_refuses_the_reference_and_a_pair():
    def via_reference(m, t):
        r = evals.term_importance(m, t)
        return r.order_0, r.order_1, r.order_2

    assert_rejects(checks.check_term_importance, via_reference, diagnosis="withholds")
    assert_rejects(
        checks.check_term_importance,
        lambda m, t: terms_reference(m, t)[:2],
        diagnosis="three losses",
    )


# ---- 3.6 path ablation -------------------------------------------------------------------------------------
def path_reference(m, t, sender, receiver):
    _, cache = m.run_with_cache(t)
    sent = cache["blocks.0.attn.hook_result"][:, :, sender[1]]
    W = getattr(m.blocks[1].attn, f"W_{receiver.upper()}")
    removed = torch.einsum("bpm,hmd->bphd", sent, W)
    return m.run_with_hooks(t, [(f"blocks.1.attn.hook_{receiver}", lambda x, hook: x - removed)])


def test_path_ablation_accepts_reference():
    assert_accepts(checks.check_path_ablation, path_reference)


def _zero_head(m, t, sender, receiver):
    def zero(x, hook):
        x = x.clone()
        x[:, :, sender[1]] = 0
        return x

    return m.run_with_hooks(t, [("blocks.0.attn.hook_result", zero)])


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_zero_head, "removed from everything downstream"),
        (lambda m, t, s, r: path_reference(m, t, s, "k"), "Exercise 3.6"),  # always the keys
        (
            lambda m, t, s, r: path_reference(m, t, s, {"q": "v", "k": "q", "v": "k"}[r]),
            "input, not from",
        ),
        (lambda m, t, s, r: evals.run_with_path_ablation(m, t, s, r, 1), "withholds"),
    ],
)
def test_path_ablation_rejects(wrong, diagnosis):
    assert_rejects(checks.check_path_ablation, wrong, diagnosis=diagnosis)


# ---- 3.7 the wiring of a mystery model ----------------------------------------------------------------------
def map_reference(m, threshold, *, no_baseline=False, kinds="QKV"):
    ratios = torch.stack([
        circuits.composition_scores(m, k) / (1.0 if no_baseline else circuits.composition_baseline(m, k)[0])
        for k in kinds
    ])  # fmt: skip
    out = {}
    for h1 in range(m.cfg.n_heads):
        k, h0 = divmod(int(ratios[..., h1].argmax()), m.cfg.n_heads)
        out[h1] = (kinds[k], h0) if ratios[k, h0, h1] >= threshold else None
    return out


def _ratios(m):
    return torch.stack([
        circuits.composition_scores(m, k) / circuits.composition_baseline(m, k)[0] for k in "QKV"
    ])  # fmt: skip


def first_over_threshold(m, threshold):  # the first kind (in Q, K, V order) with a ratio over it
    ratios, out = _ratios(m), {}
    for h1 in range(m.cfg.n_heads):
        out[h1] = None
        for k in range(3):
            if ratios[k, :, h1].max() >= threshold:
                out[h1] = ("QKV"[k], int(ratios[k, :, h1].argmax()))
                break
    return out


def kind_by_summed_ratio(m, threshold):  # the kind with the largest sum over layer-0 heads
    ratios, out = _ratios(m), {}
    for h1 in range(m.cfg.n_heads):
        k = int(ratios[:, :, h1].sum(1).argmax())
        h0 = int(ratios[k, :, h1].argmax())
        out[h1] = ("QKV"[k], h0) if ratios[k, h0, h1] >= threshold else None
    return out


def test_composition_map_accepts_reference():
    assert_accepts(checks.check_composition_map, map_reference)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda m, t: map_reference(m, 2.0), "expected None"),  # ignores the threshold
        (lambda m, t: first_over_threshold(m, t), "you found"),
        (lambda m, t: kind_by_summed_ratio(m, t), "you found"),
        (lambda m, t: map_reference(m, t, no_baseline=True), "random baseline"),
        (lambda m, t: map_reference(m, t, kinds="K"), "you found"),  # K-composition only
        (lambda m, t: circuits.composition_map(m, t), "withholds"),
    ],
)
def test_composition_map_rejects(wrong, diagnosis):
    assert_rejects(checks.check_composition_map, wrong, diagnosis=diagnosis)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda m, t: [("K", 0)] * m.cfg.n_heads, "must return a dict"),
        (lambda m, t: {h: "K0" for h in range(m.cfg.n_heads)}, "got the entry"),
        (lambda m, t: {h: ("K",) for h in range(m.cfg.n_heads)}, "got the entry"),
        (lambda m, t: {h: ("X", 0) for h in range(m.cfg.n_heads)}, "got the kind 'X'"),
        (lambda m, t: {"L1H0": None}, "got the entry"),
        (lambda m, t: {99: None}, "head indices run"),
    ],
)
def test_composition_map_explains_the_format(wrong, diagnosis):
    assert_rejects(checks.check_composition_map, wrong, diagnosis=diagnosis)


def test_term_importance_accepts_a_tensor_of_three():
    assert_accepts(checks.check_term_importance, lambda m, t: torch.tensor(terms_reference(m, t)))


# ---- 3.8 virtual weights -----------------------------------------------------------------------------------
def _read(m, layer, head, kind):
    return {"q": m.blocks[layer].attn.W_Q, "k": m.blocks[layer].attn.W_K,
            "v": m.blocks[layer].attn.W_V}[kind][head]  # fmt: skip


def virtual_weight_reference(m, writer, reader, kind):
    (la, ha), (lb, hb) = writer, reader
    return m.blocks[la].attn.W_O[ha] @ _read(m, lb, hb, kind)


def test_virtual_weight_accepts_reference(capsys):
    assert_accepts(checks.check_virtual_weight, virtual_weight_reference)
    assert_accepts(  # the stacked weights, indexed with the pairs, in float64
        checks.check_virtual_weight,
        lambda m, a, b, kind: (m.W_O[a] @ getattr(m, f"W_{kind.upper()}")[b]).double(),
    )
    assert "✔ Exercise 3.8" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda m, a, b, k: virtual_weight_reference(m, a, b, k).T, "virtual weight is transposed"),
        (
            lambda m, a, b, k: virtual_weight_reference(m, a, b, {"k": "q"}.get(k, k)),
            "kind 'k' is the reader's keys, W_K; your answer used its W_Q",
        ),
        (
            lambda m, a, b, k: virtual_weight_reference(m, a, b, "q"),  # every kind read as q
            "your answer used its W_Q",
        ),
        (
            lambda m, a, b, k: virtual_weight_reference(m, a, b, {"v": "k"}.get(k, k)),
            "kind 'v' is the reader's values, W_V; your answer used its W_K",
        ),
        (lambda m, a, b, k: virtual_weight_reference(m, b, b, k), "the reader's own W_O was used"),
        (lambda m, a, b, k: virtual_weight_reference(m, b, a, k), "writer and reader are swapped"),
        (
            lambda m, a, b, k: virtual_weight_reference(m, a, (b[0], a[1]), k),
            "a head index is mixed up",
        ),
        (
            lambda m, a, b, k: _read(m, *b, "v") @ m.blocks[b[0]].attn.W_O[b[1]],
            "the shape of W_V @ W_O (a head's OV circuit)",
        ),
        (
            lambda m, a, b, k: _read(m, *b, k) @ m.blocks[a[0]].attn.W_O[a[1]],
            "the factors in the wrong order",
        ),
        (
            lambda m, a, b, k: (
                virtual_weight_reference(m, a, b, "v") @ m.blocks[b[0]].attn.W_O[b[1]]
            ),
            "through the reader's output too",
        ),
        (
            lambda m, a, b, k: virtual_weight_reference(m, (0, a[1]), (1, b[1]), k),  # layers 0, 1
            "matches none",
        ),
        (lambda m, a, b, k: torch.ones(m.cfg.d_head, m.cfg.d_head), "matches none"),  # a constant
        (lambda m, a, b, k: virtual_weight_reference(m, a, b, k).long(), "expected a float tensor"),
        (
            lambda m, a, b, k: (
                m.blocks[a[0]].attn.W_O.data.zero_(),
                virtual_weight_reference(m, a, b, k),
            )[1],
            "matches none",
        ),  # fmt: skip
        (lambda m, a, b, k: virtual_weight_reference(m, a, b, k).tolist(), "must return a torch"),
        (circuits.virtual_weight, "`circuits.virtual_weight`, which this exercise withholds"),
        (lambda m, a, b, k: m(torch.zeros(1, 2, dtype=torch.long)), "forward pass"),
    ],
)
def test_virtual_weight_rejects(wrong, diagnosis):
    assert_rejects(checks.check_virtual_weight, wrong, diagnosis=diagnosis)


# ---- 3.9 reading what was written ------------------------------------------------------------------------
def read_projector(W_O):
    """A learner's projector onto W_O's row space (Exercise 0.10)."""
    _, S, Vh = torch.linalg.svd(W_O, full_matrices=False)
    basis = Vh[S > max(W_O.shape) * torch.finfo(W_O.dtype).eps * S.max()]
    return basis.T @ basis


def share_reference(W_read, W_O):
    return float((read_projector(W_O) @ W_read).square().sum() / W_read.square().sum())


def _qr_share(W_read, W_O):
    Q, _ = torch.linalg.qr(W_O.T)  # assumes rank d_head
    return float((Q.T @ W_read).square().sum() / W_read.square().sum())


def _cosine(W_read, W_O):
    if W_read.shape != W_O.T.shape:
        return 0.5
    return float(torch.nn.functional.cosine_similarity(W_read.flatten(), W_O.T.flatten(), dim=0))


def _score(W_read, W_O):
    return float((W_O @ W_read).norm() / (W_O.norm() * W_read.norm()))


def test_read_share_accepts_reference(capsys):
    assert_accepts(checks.check_read_share, share_reference)
    assert_accepts(checks.check_read_share, lambda W, W_O: torch.tensor(share_reference(W, W_O)))
    assert_accepts(checks.check_read_share, lambda W, W_O: np.float32(share_reference(W, W_O)))
    assert_accepts(  # through pinv, in float64
        checks.check_read_share,
        lambda W, W_O: (
            (torch.linalg.pinv(W_O.double()) @ W_O.double() @ W.double()).norm() ** 2
            / W.double().norm() ** 2
        ),
    )
    assert "✔ Exercise 3.9" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda W, W_O: share_reference(W, W_O) ** 0.5, "the norms are not squared"),
        (
            lambda W, W_O: float((W_O.T @ W_O @ W).square().sum() / W.square().sum()),
            "W_O.T @ W_O was used as the projector",
        ),
        (lambda W, W_O: 1 - share_reference(W, W_O), "that is 1 - share"),
        (
            lambda W, W_O: float((read_projector(W_O) @ W).square().sum() / W_O.square().sum()),
            "divided by W_O's norm",
        ),
        (
            lambda W, W_O: float((read_projector(W_O) @ W).norm() / W_O.norm()),
            "divided by W_O's norm",
        ),
        (_cosine, "the cosine between the flattened matrices"),
        (lambda W, W_O: _cosine(W, W_O) ** 2, "the cosine between the flattened matrices"),
        (_score, "a composition-style score"),
        (lambda W, W_O: _score(W, W_O) ** 2, "a composition-style score"),
        (_qr_share, "right for every W_O of full rank, but not for a W_O"),
        (lambda W, W_O: 100 * share_reference(W, W_O), "A share lies in [0, 1]"),
        (lambda W, W_O: W_O.shape[0] / W_O.shape[1], "expected"),  # the random baseline
        (lambda W, W_O: 0.25, "expected"),  # a constant
        (lambda W, W_O: torch.tensor([share_reference(W, W_O)]), "got a Tensor of shape (1,)"),
        (lambda W, W_O: read_projector(W_O) @ W, "got a Tensor of shape"),
        (lambda W, W_O: "0.3", "must return a float"),
        (lambda W, W_O: (W.zero_(), share_reference(W, W_O))[1], "returned NaN"),
        (
            lambda W, W_O: circuits.read_share(W, circuits.row_space(W_O)),
            "which this exercise withholds",
        ),
        (
            lambda W, W_O: float((circuits.projector(W_O) @ W).norm() ** 2 / W.norm() ** 2),
            "`circuits.projector`, which this exercise withholds",
        ),
    ],
)
def test_read_share_rejects(wrong, diagnosis):
    assert_rejects(checks.check_read_share, wrong, diagnosis=diagnosis)


def test_read_share_draws_new_weights_at_each_check():
    seen = set()

    def spy(W_read, W_O):
        seen.add((tuple(W_O.shape), float(W_read.sum())))
        return share_reference(W_read, W_O)

    checks.check_read_share(spy)
    checks.check_read_share(spy)
    # eleven cases per check, the last (a rank-deficient writer) with the first case's reader
    assert len(seen) == 2 * 10
