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


def _composition_with_epsilon(m, kind):  # a "safe" division: wrong where the weights are small
    a0, a1 = m.blocks[0].attn, m.blocks[1].attn
    OV0 = a0.W_V @ a0.W_O
    QK1 = a1.W_Q @ a1.W_K.transpose(-1, -2)
    other = {"Q": QK1, "K": QK1.transpose(-1, -2), "V": a1.W_V @ a1.W_O}[kind]
    prod = (OV0[:, None] @ other[None]).flatten(-2).norm(dim=-1)
    norms = OV0.flatten(-2).norm(dim=-1)[:, None] * other.flatten(-2).norm(dim=-1)[None]
    return prod / (norms + 1e-8)


def _composition_of_the_last_layer(m, kind):  # blocks[-1]: right only in a two-layer model
    a0, a1 = m.blocks[0].attn, m.blocks[-1].attn
    OV0 = a0.W_V @ a0.W_O
    QK1 = a1.W_Q @ a1.W_K.transpose(-1, -2)
    other = {"Q": QK1, "K": QK1.transpose(-1, -2), "V": a1.W_V @ a1.W_O}[kind]
    return (OV0[:, None] @ other[None]).flatten(-2).norm(dim=-1) / (
        OV0.flatten(-2).norm(dim=-1)[:, None] * other.flatten(-2).norm(dim=-1)[None]
    )


def _composition_by_norm(m, kind, norm):
    a0, a1 = m.blocks[0].attn, m.blocks[1].attn
    OV0 = a0.W_V @ a0.W_O
    QK1 = a1.W_Q @ a1.W_K.transpose(-1, -2)
    other = {"Q": QK1, "K": QK1.transpose(-1, -2), "V": a1.W_V @ a1.W_O}[kind]
    return norm(OV0[:, None] @ other[None]) / (norm(OV0)[:, None] * norm(other)[None])


def _composition_over_four_norms(m, kind):
    a0, a1 = m.blocks[0].attn, m.blocks[1].attn
    A, B = {"Q": (a1.W_Q, a1.W_K), "K": (a1.W_K, a1.W_Q), "V": (a1.W_V, a1.W_O)}[kind]
    prod = comp_reference(m, kind, normalise=False)
    n = lambda W: W.flatten(-2).norm(dim=-1)  # noqa: E731
    return prod / ((n(a0.W_V) * n(a0.W_O))[:, None] * (n(A) * n(B))[None])


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_composition_with_epsilon, "weights 1000 times smaller than usual"),
        (_composition_of_the_last_layer, "the later layer is the last one"),
        (
            lambda m, k: _composition_by_norm(m, k, lambda W: torch.linalg.matrix_norm(W, ord=2)),
            "the spectral norm (ord=2) was taken",
        ),
        (_composition_over_four_norms, "divided by the norms of the four weights"),
    ],
)
def test_composition_scores_rejects_what_small_weights_and_three_layers_show(wrong, diagnosis):
    assert_rejects(checks.check_composition_scores, wrong, diagnosis=diagnosis)


def test_composition_scores_accepts_the_frobenius_norm_in_float64():
    assert_accepts(
        checks.check_composition_scores,
        lambda m, k: _composition_by_norm(m, k, lambda W: torch.linalg.matrix_norm(W.double())),
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


def _virtual_through_the_last_layer(m, h0, h1):  # W_V[-1]: right only in a two-layer model
    return m.W_E @ m.W_V[0, h0] @ m.W_O[0, h0] @ m.W_V[-1, h1] @ m.W_O[-1, h1] @ m.W_U


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_virtual_through_the_last_layer, "the second head was taken from the last layer"),
        (
            lambda m, h0, h1: m.W_E @ m.W_V[0, h0] @ m.W_O[0, h0] @ m.W_V[1, h1] @ m.W_O[1, h1],
            "W_U is missing at the end",
        ),
        (
            lambda m, h0, h1: m.W_V[0, h0] @ m.W_O[0, h0] @ m.W_V[1, h1] @ m.W_O[1, h1],
            "the shape of OV₀ OV₁ alone",
        ),
    ],
)
def test_virtual_head_rejects_the_last_layer_and_missing_ends(wrong, diagnosis):
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


def _baseline_one_sample_at_a_time(d_model, d_head, n_samples, seed):
    g = torch.Generator().manual_seed(seed)
    D, d = d_model, d_head
    scores = []
    for _ in range(n_samples):
        W_Q1, W_K1, _ = (torch.randn(D, d, generator=g) for _ in range(3))
        _ = torch.randn(d, D, generator=g)  # the later head's W_O, unused but drawn
        W_V0, W_O0 = torch.randn(D, d, generator=g), torch.randn(d, D, generator=g)
        OV0, QK1_T = W_V0 @ W_O0, W_K1 @ W_Q1.T
        scores.append(float((OV0 @ QK1_T).norm() / (OV0.norm() * QK1_T.norm())))
    scores = torch.tensor(scores)
    return float(scores.mean()), float(scores.std())


def _baseline_v_composition(d_model, d_head, n_samples, seed):
    g = torch.Generator().manual_seed(seed)
    draw = lambda *shape: torch.randn(n_samples, *shape, generator=g)  # noqa: E731
    D, d = d_model, d_head
    _, _, W_V1, W_O1 = draw(D, d), draw(D, d), draw(D, d), draw(d, D)
    OV0, OV1 = draw(D, d) @ draw(d, D), W_V1 @ W_O1
    scores = (OV0 @ OV1).flatten(-2).norm(dim=-1) / (
        OV0.flatten(-2).norm(dim=-1) * OV1.flatten(-2).norm(dim=-1)
    )
    return float(scores.mean()), float(scores.std())


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (
            lambda *a: baseline_reference(*a, order=["W_Q1", "W_K1", "W_V0", "W_O0"]),
            "only the four matrices the score uses were drawn",
        ),
        (_baseline_one_sample_at_a_time, "drawn one sample at a time"),
        (_baseline_v_composition, "that is the V-composition"),
        (
            lambda *a: (
                baseline_reference(*a)[0],
                baseline_reference(*a)[1] * ((a[2] - 1) / a[2]) ** 0.5,
            ),
            "the standard deviation is the biased one",
        ),
    ],
)
def test_composition_baseline_names_more_mistakes(wrong, diagnosis):
    assert_rejects(checks.check_composition_baseline, wrong, diagnosis=diagnosis)


def test_composition_baseline_accepts_the_global_generator_seeded_alike():
    def global_draws(d_model, d_head, n_samples, seed):
        torch.manual_seed(seed)
        draw = lambda *shape: torch.randn(n_samples, *shape)  # noqa: E731
        D, d = d_model, d_head
        W_Q1, W_K1, _, _ = draw(D, d), draw(D, d), draw(D, d), draw(d, D)
        OV0, QK1_T = draw(D, d) @ draw(d, D), W_K1 @ W_Q1.transpose(-1, -2)
        scores = (OV0 @ QK1_T).flatten(-2).norm(dim=-1) / (
            OV0.flatten(-2).norm(dim=-1) * QK1_T.flatten(-2).norm(dim=-1)
        )
        return float(scores.mean()), float(scores.std())

    try:
        assert_accepts(checks.check_composition_baseline, global_draws)
    finally:
        torch.seed()


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


def _frozen_by_enumerate(m, t, patterns):  # the i-th entry put on layer i
    hooks = [(f"blocks.{i}.attn.hook_pattern", lambda x, hook, p=p: p)
             for i, p in enumerate(patterns.values())]  # fmt: skip
    return m.run_with_hooks(t, hooks)


def _frozen_by_range(m, t, patterns):  # assumes the keys are 0, 1, …
    hooks = [(f"blocks.{i}.attn.hook_pattern", lambda x, hook, p=patterns[i]: p)
             for i in range(len(patterns))]  # fmt: skip
    return m.run_with_hooks(t, hooks)


def _frozen_by_hand(m, t, patterns):  # the forward pass rebuilt, the biases forgotten
    resid, pos = m.W_E[t], m.W_pos[: t.shape[1]]
    n = t.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for layer, block in enumerate(m.blocks):
        a = block.attn
        if layer in patterns:
            pattern = patterns[layer]
        else:
            q = torch.einsum("bpm,hmd->bhpd", resid + pos, a.W_Q)
            k = torch.einsum("bpm,hmd->bhpd", resid + pos, a.W_K)
            scores = (q @ k.transpose(-1, -2) / m.cfg.d_head**0.5).masked_fill(~causal, -torch.inf)
            pattern = scores.softmax(-1)
        v = torch.einsum("bpm,hmd->bhpd", resid, a.W_V)
        resid = resid + torch.einsum("bhqk,bhkd,hdm->bqm", pattern, v, a.W_O)
    return resid @ m.W_U


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_frozen_by_enumerate, "the dict's keys are the layers"),
        (_frozen_by_range, "raised KeyError"),
        (_frozen_by_hand, "with biases"),
    ],
)
def test_run_with_frozen_patterns_rejects_layers_taken_by_position_and_forgotten_biases(
    wrong, diagnosis
):
    assert_rejects(checks.check_run_with_frozen_patterns, wrong, diagnosis=diagnosis)


def test_run_with_frozen_patterns_names_late_binding_whatever_the_dicts_order():
    def late_binding_in_order(m, t, patterns):  # two layers, given last first: the last is layer 0
        hooks = []
        for layer, pattern in patterns.items():
            hooks.append((f"blocks.{layer}.attn.hook_pattern", lambda x, hook: pattern))  # noqa: B023
        return m.run_with_hooks(t, hooks)

    assert_rejects(
        checks.check_run_with_frozen_patterns, late_binding_in_order, diagnosis="loop variable"
    )


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


def _terms_with_positions(m, t):  # W_pos added into the residual stream
    _, cache = m.run_with_cache(t)
    x0 = m.W_E[t] + m.W_pos[: t.shape[1]]

    def heads(layer, x):
        a, p = m.blocks[layer].attn, cache[f"blocks.{layer}.attn.hook_pattern"]
        return torch.einsum("bhqk,bkm,hmd,hdn->bqn", p, x, a.W_V, a.W_O)

    def loss(r):
        return next_token_loss(r @ m.W_U, t).item()

    l0 = heads(0, x0)
    return loss(x0), loss(x0 + l0 + heads(1, x0)), loss(x0 + l0 + heads(1, x0 + l0))


def _terms_without_layer(m, t, left_out):
    order_0, _, order_2 = terms_reference(m, t)
    _, cache = m.run_with_cache(t)
    x0 = m.W_E[t]
    kept = [layer for layer in (0, 1) if layer != left_out]
    resid = x0 + sum(
        torch.einsum("bhqk,bkm,hmd,hdn->bqn", cache[f"blocks.{layer}.attn.hook_pattern"], x0,
                     m.blocks[layer].attn.W_V, m.blocks[layer].attn.W_O)
        for layer in kept
    )  # fmt: skip
    return order_0, next_token_loss(resid @ m.W_U, t).item(), order_2


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_terms_with_positions, "the positional embedding was added to x0"),
        (lambda m, t: _terms_without_layer(m, t, 1), "order 1 left out layer 1's heads"),
        (lambda m, t: _terms_without_layer(m, t, 0), "order 1 left out layer 0's heads"),
        (lambda m, t: terms_reference(m, t)[:2] + (0.0,), "order 2: got 0.0000"),
    ],
)
def test_term_importance_names_positions_and_missing_layers(wrong, diagnosis):
    assert_rejects(checks.check_term_importance, wrong, diagnosis=diagnosis)


def test_term_importance_accepts_order_2_from_the_model_itself():
    def with_the_model(m, t):
        order_0, order_1, _ = terms_reference(m, t)
        return order_0, order_1, next_token_loss(m(t), t)  # a 0-d tensor

    assert_accepts(checks.check_term_importance, with_the_model)


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


def _path_per_head_late_bound(m, t, sender, receiver):  # one hook per head, made in a loop
    _, cache = m.run_with_cache(t)
    sent = cache["blocks.0.attn.hook_result"][:, :, sender[1]]
    removed = torch.einsum(
        "bpm,hmd->bphd", sent, getattr(m.blocks[1].attn, f"W_{receiver.upper()}")
    )
    hooks = []
    for head in range(m.cfg.n_heads):

        def subtract(x, hook):
            x = x.clone()
            x[:, :, head] -= removed[:, :, head]  # noqa: B023
            return x

        hooks.append((f"blocks.1.attn.hook_{receiver}", subtract))
    return m.run_with_hooks(t, hooks)


def _path_from(m, t, sent, receiver, layers):
    hooks = []
    for layer in layers:
        W = getattr(m.blocks[layer].attn, f"W_{receiver.upper()}")
        removed = torch.einsum("bpm,hmd->bphd", sent, W)
        hooks.append((f"blocks.{layer}.attn.hook_{receiver}", lambda x, hook, r=removed: x - r))
    return m.run_with_hooks(t, hooks)


def _path_of_the_whole_layer(m, t, sender, receiver):  # hook_attn_out: every head of layer 0
    _, cache = m.run_with_cache(t)
    return _path_from(m, t, cache["blocks.0.hook_attn_out"], receiver, [1])


def _path_into(layers):
    def answer(m, t, sender, receiver):
        _, cache = m.run_with_cache(t)
        sent = cache["blocks.0.attn.hook_result"][:, :, sender[1]]
        return _path_from(m, t, sent, receiver, layers(m))

    return answer


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_path_per_head_late_bound, "a function defined in a loop over the heads"),
        (_path_of_the_whole_layer, "the whole of layer 0's output was taken out"),
        (_path_into(lambda m: [m.cfg.n_layers - 1]), "removed from the last layer's input"),
        (_path_into(lambda m: range(1, m.cfg.n_layers)), "removed from every later layer"),
        (
            lambda m, t, s, r: path_reference(m, t, (0, s[0]), r),
            "the sender's layer index was taken",
        ),
    ],
)
def test_path_ablation_names_loops_layers_and_indices(wrong, diagnosis):
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


def _next_head(entry, m):  # the right kind, the layer-0 head after the right one
    return None if entry is None else (entry[0], (entry[1] + 1) % m.cfg.n_heads)


def test_composition_map_accepts_numpy_heads_and_lists():
    def loosely_typed(m, t):
        return {np.int64(h): None if v is None else [v[0], torch.tensor(v[1])]
                for h, v in map_reference(m, t).items()}  # fmt: skip

    assert_accepts(checks.check_composition_map, loosely_typed)


def test_composition_map_accepts_reference():
    assert_accepts(checks.check_composition_map, map_reference)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda m, t: map_reference(m, 2.0), "the threshold passed in was not applied"),
        (lambda m, t: first_over_threshold(m, t), "the first kind (in Q, K, V order)"),
        (lambda m, t: kind_by_summed_ratio(m, t), "its ratios summed over the layer-0 heads"),
        (lambda m, t: map_reference(m, t, no_baseline=True), "random baseline"),
        (lambda m, t: map_reference(m, t, kinds="K"), "only K-composition was considered"),
        (lambda m, t: map_reference(m, 0.0), "expected None"),  # no threshold at all
        (lambda m, t: {h: _next_head(v, m) for h, v in map_reference(m, t).items()}, "you found"),
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


@pytest.mark.parametrize(
    "wrong",
    [
        lambda m, a, b, k: m.blocks[a[0]].attn.W_O[0] @ _read(m, *b, k),  # the writer's head: 0
        lambda m, a, b, k: virtual_weight_reference(m, a, (a[0] + 1, b[1]), k),  # the next layer
    ],
)
def test_virtual_weight_rejects_a_fixed_head_and_the_next_layer(wrong):
    assert_rejects(checks.check_virtual_weight, wrong, diagnosis="Exercise 3.8")


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
    # fourteen cases per check, the last four (W_Os far from scale 1, with a small singular value
    # or rank-deficient) with the readers of earlier ones, one of them in float64 (another sum)
    assert len(seen) == 2 * 11


def _share_cut_by_qr(W_read, W_O):  # the first rank(W_O) columns of a QR of W_Oᵀ
    Q, _ = torch.linalg.qr(W_O.T)
    basis = Q[:, : int(torch.linalg.matrix_rank(W_O))].T
    return float((basis @ W_read).square().sum() / W_read.square().sum())


def _share_above(threshold, dtype=None, relative=False, eps_of=None):
    """A learner's share that counts the singular values above a fixed threshold (times the
    largest where `relative`, times max(shape) · eps of `eps_of` where given), in `dtype`."""

    def share(W_read, W_O):
        W_O, W_read = (W_O, W_read) if dtype is None else (W_O.to(dtype), W_read.to(dtype))
        _, S, Vh = torch.linalg.svd(W_O, full_matrices=False)
        cut = threshold * (S.max() if relative else 1.0)
        if eps_of is not None:
            cut = S.max() * max(W_O.shape) * torch.finfo(eps_of).eps
        basis = Vh[S > cut]
        return float((basis @ W_read).square().sum() / W_read.square().sum())

    return share


def _share_by_gram(W_read, W_O):  # W_Oᵀ (W_O W_Oᵀ)⁻¹ W_O: a projector only at full rank
    P = W_O.T @ torch.linalg.inv(W_O @ W_O.T) @ W_O
    return float((P @ W_read).square().sum() / W_read.square().sum())


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_share_cut_by_qr, "right for every W_O of full rank, but not for a W_O"),
        (_share_above(1e-6), "every singular value of a tiny W_O was counted as zero"),
        (_share_above(1e-12), "right for every W_O of full rank, but not for a W_O"),
        (_share_above(1e-3, relative=True), "That singular value is small but real"),
        (_share_above(0, eps_of=torch.float32), "That singular value is small but real"),
        (_share_by_gram, "Exercise 3.9"),
    ],
)
def test_read_share_rejects_thresholds_that_are_not_the_ranks(wrong, diagnosis):
    assert_rejects(checks.check_read_share, wrong, diagnosis=diagnosis)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threshold", [1e-2, 1e-4, 1e-6, 1e-8, 1e-10, 1e-12, 1e-14])
def test_read_share_rejects_every_absolute_threshold(threshold, dtype):
    assert_rejects(
        checks.check_read_share, _share_above(threshold, dtype), diagnosis="Exercise 3.9"
    )


def test_read_share_accepts_matrix_rank_and_the_dtypes_own_tolerance():
    def by_matrix_rank(W_read, W_O):
        _, _, Vh = torch.linalg.svd(W_O, full_matrices=False)
        basis = Vh[: int(torch.linalg.matrix_rank(W_O))]
        return (basis @ W_read).norm() ** 2 / W_read.norm() ** 2

    assert_accepts(checks.check_read_share, by_matrix_rank)
    assert_accepts(
        checks.check_read_share, _share_above(0, eps_of=torch.float64, dtype=torch.float64)
    )
