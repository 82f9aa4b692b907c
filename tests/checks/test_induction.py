"""Checkers of chapter 04."""

import pytest
import torch

from helpers import checks, circuits, evals, handmade
from helpers.data import repeated_random_tokens
from tests.checks.conftest import assert_accepts, assert_rejects


def test_previous_token_score_accepts_reference():
    assert_accepts(checks.check_previous_token_score, lambda p: p.diagonal(-1, -2, -1).mean())
    assert_accepts(
        checks.check_previous_token_score, lambda p: float(p.diagonal(-1, -2, -1).mean())
    )


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda p: p.diagonal(0, -2, -1).mean(), "main diagonal"),
        (lambda p: p.diagonal(1, -2, -1).mean(), "next position"),
        (lambda p: p.diagonal(-1, -2, -1).sum(), "sum was taken"),
        (lambda p: p.mean(), "whole pattern"),
        (lambda p: p.diagonal(-1, -2, -1).mean(-1), "return one number"),
        (lambda p: (p.zero_(), 0.0)[1], "Exercise 4.1"),  # zero the input in place, answer 0
        (lambda p: 0.35, "expected"),
    ],
)
def test_previous_token_score_rejects(wrong, diagnosis):
    assert_rejects(checks.check_previous_token_score, wrong, diagnosis=diagnosis)


def test_previous_token_score_accepts_float64_patterns_scored_in_float32():
    assert_accepts(
        checks.check_previous_token_score, lambda p: float(p.float().diagonal(-1, -2, -1).mean())
    )


def _wrapped_index(p):  # row 0 has no previous position: index -1 wraps round to the last key
    n = p.shape[-1]
    return p[:, torch.arange(n), torch.arange(n) - 1].mean()


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_wrapped_index, "position 0 was averaged in"),
        (lambda p: p[0].diagonal(-1).mean(), "only the first sequence"),
        (lambda p: p.diagonal(-1, -2, -1)[:, :10].mean(), "Exercise 4.1"),  # 11 positions assumed
        (lambda p: p.diagonal(-1).mean(), "NaN"),  # the diagonal of batch and query
    ],
)
def test_previous_token_score_rejects_answers_that_fit_some_shapes_only(wrong, diagnosis):
    assert_rejects(checks.check_previous_token_score, wrong, diagnosis=diagnosis)


def _induction(
    shift=1,
    latest_only=False,
    average=False,
    fixed_length=None,
    bos=1,
    first=None,
    copies_from=None,
):
    def fn(pattern, length):  # bos=0: positions counted as if there were no BOS
        length = fixed_length or length
        n, per_query = pattern.shape[-1], []
        earliest = bos if copies_from is None else copies_from  # the earliest copy's position
        for q in range(bos + length if first is None else first, n):
            rs = [1] if latest_only else list(range(1, (q - earliest) // length + 1))
            total = pattern[:, q, [q - r * length + shift for r in rs]].sum(-1)
            per_query.append(total / len(rs) if average and rs else total)
        return float(torch.stack(per_query).mean())

    return fn


def test_induction_score_accepts_the_course_sum(capsys):
    assert_accepts(checks.check_induction_score, _induction())
    assert "Olsson" not in capsys.readouterr().out


def test_induction_score_accepts_olssons_average_with_a_note(capsys):
    assert_accepts(checks.check_induction_score, _induction(average=True))
    assert "as Olsson et al. do" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_induction(shift=0), "duplicate-token score"),
        (_induction(shift=2), "one position too far"),
        (_induction(bos=0), "positions are one off"),
        (_induction(latest_only=True), "only the most recent earlier copy"),
        (_induction(fixed_length=5), "Exercise 4.3"),  # ignores the length it is given
        (lambda p, length: "0.5", "must return a float"),
        (
            lambda p, length: evals.earlier_occurrence_mask(p.shape[-1], length, 1).float().mean(),
            "withholds",
        ),
    ],
)
def test_induction_score_rejects(wrong, diagnosis):
    assert_rejects(checks.check_induction_score, wrong, diagnosis=diagnosis)


def _vectorised(shift, every_query=False):
    """A mask of the targets, built by loops, applied at once; `every_query`: averaged over every
    query, those with no earlier copy (BOS, the first block) included."""

    def fn(pattern, length):
        n = pattern.shape[-1]
        mask = torch.zeros(n, n)
        for q in range(1 + length, n):
            for r in range(1, (q - 1) // length + 1):
                mask[q, q - r * length + shift] = 1.0
        per_query = torch.einsum("bqk,qk->bq", pattern, mask)  # float32 mask: float64 fails
        return float(per_query.mean() if every_query else per_query[:, 1 + length :].mean())

    return fn


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_induction(shift=-1), "shifted the wrong way"),
        (_induction(copies_from=0), "one copy too far"),
        (_induction(first=1), "the first block"),
        (lambda p, length: _vectorised(1, every_query=True)(p.float(), length), "the first block"),
        (
            _vectorised(1),
            "raised RuntimeError on blocks of 3, 3 blocks, 2 pattern(s) (torch.float64)",
        ),
        (lambda p, length: _induction()(p, 5 if length == 6 else length), "Exercise 4.3"),
    ],
)
def test_induction_score_names_more_mistakes(wrong, diagnosis):
    assert_rejects(checks.check_induction_score, wrong, diagnosis=diagnosis)


def _loop_slip(shift, *, first_query=None, stop_short=False, first_sequence=False):
    """The hint's loop with one slip: queries from `first_query`, r's range missing its end, or
    the first sequence only."""

    def fn(pattern, length):
        pattern = pattern[:1] if first_sequence else pattern
        n, per_query = pattern.shape[-1], []
        for q in range(1 + length if first_query is None else first_query(length), n):
            rs = range(1, (q - 1) // length + (0 if stop_short else 1))
            per_query.append(pattern[:, q, [q - r * length + shift for r in rs]].sum(-1))
        return float(torch.stack(per_query).mean())

    return fn


@pytest.mark.parametrize("shift", [0, 1])
@pytest.mark.parametrize(
    "slip, diagnosis",
    [
        ({"first_query": lambda length: length}, "the queries start at q = length"),
        ({"stop_short": True}, "the earliest copy of each token was left out"),
        ({"first_sequence": True}, "only the first sequence of the batch"),
    ],
)
def test_block_scores_name_the_loops_off_by_ones(shift, slip, diagnosis):
    check = checks.check_induction_score if shift else checks.check_duplicate_token_score
    assert_rejects(check, _loop_slip(shift, **slip), diagnosis=diagnosis)


def _by_diagonals(shift):
    """Right, vectorised: each earlier copy r is the diagonal offset -(r·length - shift)."""

    def fn(pattern, length):
        n = pattern.shape[-1]
        total = torch.zeros(pattern.shape[0], n, dtype=pattern.dtype)
        r = 1
        while r * length < n:
            queries = torch.arange(r * length - shift, n)
            keep = queries - r * length >= 1  # the copy is a token, not BOS
            total[:, queries[keep]] += pattern.diagonal(shift - r * length, -2, -1)[:, keep]
            r += 1
        return total[:, 1 + length :].mean()

    return fn


@pytest.mark.parametrize("shift", [0, 1])
def test_block_scores_accept_diagonals(shift):
    check = checks.check_induction_score if shift else checks.check_duplicate_token_score
    assert_accepts(check, _by_diagonals(shift))


def test_induction_score_accepts_a_float32_answer_to_float64_patterns():
    assert_accepts(
        checks.check_induction_score, lambda p, length: _vectorised(1)(p.float(), length)
    )


def _handmade_parts():
    def prev(model, layout):
        n, V = layout.n_ctx, layout.d_vocab
        position = torch.arange(layout.position.start, layout.position.stop)
        a = model.blocks[0].attn
        a.W_Q[0, position, torch.arange(n)] = 50.0
        a.W_K[0, position[:-1], torch.arange(1, n)] = 50.0
        a.W_V[0, layout.token, :V] = torch.eye(V)
        a.W_O[0, :V, layout.previous] = torch.eye(V)

    def induction(model, layout, key=None, out=None, strength=50.0):
        V = layout.d_vocab
        a = model.blocks[1].attn
        a.W_Q[0, layout.token, :V] = strength * torch.eye(V)
        a.W_K[0, key or layout.previous, :V] = strength * torch.eye(V)
        a.W_V[0, layout.token, :V] = torch.eye(V)
        a.W_O[0, :V, out or layout.output] = torch.eye(V)

    return prev, induction


def test_handmade_accepts_reference():
    prev, induction = _handmade_parts()
    assert_accepts(checks.check_handmade_induction, prev, induction)


def _positional_shortcut(model, layout):
    """Layer 1 attends at a fixed offset (the checker's default length), by position alone."""
    length = (layout.n_ctx - 1) // 3
    n, V = layout.n_ctx, layout.d_vocab
    position = torch.arange(layout.position.start, layout.position.stop)
    a = model.blocks[1].attn
    a.W_Q[0, position, torch.arange(n)] = 50.0
    a.W_K[0, position[: n - length + 1], torch.arange(length - 1, n)] = 50.0
    a.W_V[0, layout.token, :V] = torch.eye(V)
    a.W_O[0, :V, layout.output] = torch.eye(V)


def _partial_previous(model, layout):
    """A previous-token head for the first 20 positions only (the adversarial pass's answer)."""
    n, V = 20, layout.d_vocab
    pos = torch.arange(layout.position.start, layout.position.start + n)
    a = model.blocks[0].attn
    a.W_Q[0, pos, torch.arange(n)] = 50.0
    a.W_K[0, pos[:-1], torch.arange(1, n)] = 50.0
    a.W_V[0, layout.token, :V] = torch.eye(V)
    a.W_O[0, :V, layout.previous] = torch.eye(V)


def _cheat_unembedding(model, layout):
    model.unembed.W_U.zero_()


@pytest.mark.parametrize(
    "variant, diagnosis",
    [
        ("no previous head", "Layer 0 puts as little as"),
        ("partial previous head", "at every one"),
        ("keys read the token", "Layer 1 puts only"),
        ("writes to the token subspace", "check its OV"),
        ("weak scores", "needs <= 0.1"),
        ("positional shortcut", "Layer 1 puts only"),
        ("changes W_U", "only the heads' weights are yours to set"),
        ("one function sets both layers", "Each function sets its own layer"),
        (
            "the reference",
            "calls the course's `handmade.set_reference_weights`, which this exercise withholds",
        ),
    ],
)
def test_handmade_rejects(variant, diagnosis):
    prev, induction = _handmade_parts()
    args = {
        "no previous head": (lambda m, lay: None, induction),
        "partial previous head": (_partial_previous, induction),
        "keys read the token": (prev, lambda m, lay: induction(m, lay, key=lay.token)),
        "writes to the token subspace": (prev, lambda m, lay: induction(m, lay, out=lay.token)),
        "weak scores": (prev, lambda m, lay: induction(m, lay, strength=0.5)),
        "positional shortcut": (prev, _positional_shortcut),
        "changes W_U": (prev, lambda m, lay: (induction(m, lay), _cheat_unembedding(m, lay))),
        "the reference": (lambda m, lay: None, handmade.set_reference_weights),
        "one function sets both layers": (
            lambda m, lay: (prev(m, lay), induction(m, lay)),
            lambda m, lay: None,
        ),  # e.g. a table built in advance
    }[variant]
    assert_rejects(checks.check_handmade_induction, *args, diagnosis=diagnosis)


def _into_the_stacked_copy(model, layout):  # model.W_Q is a stacked copy: nothing is set
    n = layout.n_ctx
    position = torch.arange(layout.position.start, layout.position.stop)
    model.W_Q[0, 0, position, torch.arange(n)] = 50.0
    model.W_K[0, 0, position[:-1], torch.arange(1, n)] = 50.0


def _a_new_model(model, layout):  # builds and returns a model; the one given stays blank
    model = handmade.blank_model(layout)
    _handmade_parts()[0](model, layout)
    return model


def _d_head_is_n_ctx(model, layout):  # eye(n_ctx) for [n_ctx, d_head]: only if n_ctx >= d_vocab
    prev, _ = _handmade_parts()
    prev(model, layout)
    model.blocks[0].attn.W_Q[0, layout.position, :] = 50.0 * torch.eye(layout.n_ctx)


def _d_head_is_d_vocab(model, layout):  # eye(d_vocab) for [d_vocab, d_head]
    _, induction = _handmade_parts()
    induction(model, layout)
    model.blocks[1].attn.W_V[0, layout.token, :] = torch.eye(layout.d_vocab)


def _the_notebooks_layout(model, layout):  # 25 positions, as handmade.Layout() has
    a = model.blocks[0].attn
    position = torch.arange(layout.position.start, layout.position.start + 25)
    a.W_Q[0, position, torch.arange(25)] = 50.0


@pytest.mark.parametrize(
    "variant, diagnosis",
    [
        ("stacked copy", "model.W_Q and the like are stacked copies"),
        ("a new model", "It returned something: edit the model it is given instead"),
        ("d_head is n_ctx", "Shapes must fit the layout"),
        ("d_head is d_vocab", "Shapes must fit the layout"),
        ("the notebook's layout", "the checker's layouts are not the notebook's"),
    ],
)
def test_handmade_rejects_answers_for_one_layout(variant, diagnosis):
    prev, induction = _handmade_parts()
    args = {
        "stacked copy": (_into_the_stacked_copy, induction),
        "a new model": (_a_new_model, induction),
        "d_head is n_ctx": (_d_head_is_n_ctx, induction),
        "d_head is d_vocab": (prev, _d_head_is_d_vocab),
        "the notebook's layout": (_the_notebooks_layout, induction),
    }[variant]
    assert_rejects(checks.check_handmade_induction, *args, diagnosis=diagnosis)


def test_handmade_shows_what_the_model_does(capsys):
    assert_accepts(checks.check_handmade_induction, *_handmade_parts(), seeds=(0,))
    out = capsys.readouterr().out
    assert out.count("weakest previous-token attention") == 2  # one line per layout
    assert "the course's solution" in out


def test_handmade_thresholds_are_the_ones_the_prose_quotes():
    from helpers.checks.induction import by_hand as induction

    needed = (induction.PREVIOUS_NEEDED, induction.INDUCTION_NEEDED, induction.LOSS_RATIO_NEEDED)
    assert needed == (0.8, 0.8, 0.1)


# ---- 4.2 duplicate-token score ----------------------------------------------------------------------
def test_duplicate_token_score_accepts_reference():
    assert_accepts(checks.check_duplicate_token_score, _induction(shift=0))


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_induction(shift=1), "this is the induction score"),
        (_induction(shift=0, latest_only=True), "only the most recent earlier copy"),
        (_induction(shift=-1), "one position too early"),
        (_induction(shift=0, average=True), "averaged over the earlier copies"),
        (_induction(shift=0, first=0), "the first block"),
        (_induction(shift=0, copies_from=0), "one copy too far"),
        (_induction(shift=0, bos=0), "positions are one off"),
        (lambda p, length: evals.duplicate_token_scores, "Exercise 4.2"),
    ],
)
def test_duplicate_token_score_rejects(wrong, diagnosis):
    assert_rejects(checks.check_duplicate_token_score, wrong, diagnosis=diagnosis)


def test_duplicate_token_score_accepts_a_float32_answer_to_float64_patterns():
    assert_accepts(
        checks.check_duplicate_token_score, lambda p, length: _vectorised(0)(p.float(), length)
    )


# ---- 4.4 ablations through hooks ------------------------------------------------------------------------
def ablate_reference(m, t, heads, kind, *, mean_dims=(0, 1), whole_layer=False, force_kind=None):
    kind = force_kind or kind
    _, cache = m.run_with_cache(t)
    hooks = []
    for layer in sorted({layer for layer, _ in heads}):
        chosen = (
            list(range(m.cfg.n_heads)) if whole_layer else [h for l_, h in heads if l_ == layer]
        )
        mean = cache[f"blocks.{layer}.attn.hook_result"].mean(dim=mean_dims, keepdim=True)

        def ablate(x, hook, chosen=chosen, mean=mean):
            x = x.clone()
            x[:, :, chosen] = 0.0 if kind == "zero" else mean.expand_as(x)[:, :, chosen]
            return x

        hooks.append((f"blocks.{layer}.attn.hook_result", ablate))
    return m.run_with_hooks(t, hooks)


def test_ablate_heads_accepts_reference():
    assert_accepts(checks.check_ablate_heads, ablate_reference)


@pytest.mark.parametrize(
    "kwargs, diagnosis",
    [
        ({"mean_dims": (0,)}, "over the batch only"),
        ({"mean_dims": (1,)}, "over the positions only"),
        ({"whole_layer": True}, "every head of the layer"),
        ({"force_kind": "zero"}, "the other kind of ablation"),
        ({"mean_dims": (0, 1, 3)}, "one number per head"),
    ],
)
def test_ablate_heads_rejects(kwargs, diagnosis):
    assert_rejects(
        checks.check_ablate_heads, lambda *a: ablate_reference(*a, **kwargs), diagnosis=diagnosis
    )


def _mean_inside_the_hook(m, t, heads, kind):
    def hook_for(chosen):
        def ablate(x, hook):
            x = x.clone()
            x[:, :, chosen] = 0.0 if kind == "zero" else x.mean((0, 1))[chosen]
            return x

        return ablate

    hooks = [(f"blocks.{layer}.attn.hook_result", hook_for([h])) for layer, h in heads]
    return m.run_with_hooks(t, hooks)


def _late_binding(m, t, heads, kind):
    _, cache = m.run_with_cache(t)
    hooks = []
    for layer, head in heads:
        name = f"blocks.{layer}.attn.hook_result"

        def ablate(x, hook):
            x = x.clone()
            x[:, :, head] = 0.0 if kind == "zero" else cache[hook.name].mean((0, 1))[head]  # noqa: B023 (the mistake)
            return x

        hooks.append((name, ablate))
    return m.run_with_hooks(t, hooks)


def test_ablate_heads_names_hook_mistakes():
    assert_rejects(checks.check_ablate_heads, _mean_inside_the_hook, diagnosis="inside the hook")
    assert_rejects(checks.check_ablate_heads, _late_binding, diagnosis="final value")


def _one_head_per_layer(m, t, heads, kind):  # dict(heads): {layer: head} keeps the last
    return ablate_reference(m, t, list(dict(heads).items()), kind)


def _first_two_layers(m, t, heads, kind):  # the layers the notebook's model has
    return ablate_reference(m, t, [(layer, h) for layer, h in heads if layer < 2], kind)


def _hooks_return_nothing(m, t, heads, kind):  # each hook edits a clone and returns None
    def ablate(x, hook):
        x = x.clone()
        x[:, :, [h for _, h in heads]] = 0.0

    return m.run_with_hooks(t, [(f"blocks.{layer}.attn.hook_result", ablate) for layer, _ in heads])


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_one_head_per_layer, "only one head of the layer was ablated"),
        (_first_two_layers, "3-layer model"),
        (_hooks_return_nothing, "nothing was ablated"),
    ],
)
def test_ablate_heads_rejects_answers_for_the_notebooks_model_only(wrong, diagnosis):
    assert_rejects(checks.check_ablate_heads, wrong, diagnosis=diagnosis)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda m, t, heads, kind: ablate_reference(m, t, heads, kind).log_softmax(-1),
         "log-probabilities"),
        (lambda m, t, heads, kind: ablate_reference(m, t, [(0, h) for _, h in heads], kind),
         "every head was ablated in layer 0"),
    ],
)  # fmt: skip
def test_ablate_heads_names_more_mistakes(wrong, diagnosis):
    assert_rejects(checks.check_ablate_heads, wrong, diagnosis=diagnosis)


def _through_hook_z(m, t, heads, kind):  # right: result = z @ W_O, so z's mean maps to result's
    _, cache = m.run_with_cache(t)
    hooks = []
    for layer in sorted({layer for layer, _ in heads}):
        chosen = [h for l_, h in heads if l_ == layer]
        mean = cache[f"blocks.{layer}.attn.hook_z"].mean((0, 1))

        def ablate(z, hook, chosen=chosen, mean=mean):
            z[:, :, chosen] = 0.0 if kind == "zero" else mean[chosen]  # in place, returns None

        hooks.append((f"blocks.{layer}.attn.hook_z", ablate))
    return m.run_with_hooks(t, hooks)


def test_ablate_heads_accepts_hook_z_edited_in_place():
    assert_accepts(checks.check_ablate_heads, _through_hook_z)


def test_ablate_heads_refuses_the_reference():
    assert_rejects(checks.check_ablate_heads, evals.run_with_ablation, diagnosis="withholds")


# ---- 4.5 the K-composition circuit -------------------------------------------------------------------------
def kcomp_reference(m, p, h, *, transposed=False, no_prev=False, scale=True):
    a0, a1 = m.blocks[0].attn, m.blocks[1].attn
    keys = m.W_E @ a1.W_K[h] if no_prev else m.W_E @ a0.W_V[p] @ a0.W_O[p] @ a1.W_K[h]
    M = (m.W_E @ a1.W_Q[h]) @ keys.T
    M = M / m.cfg.d_head**0.5 if scale else M
    return M.T if transposed else M


def test_k_composition_circuit_accepts_reference():
    assert_accepts(checks.check_k_composition_circuit, kcomp_reference)


@pytest.mark.parametrize(
    "kwargs, diagnosis",
    [
        ({"transposed": True}, "transposed"),
        ({"no_prev": True}, "previous-token head is missing"),
        ({"scale": False}, "scale is missing"),
        ({"centred": True}, "each row was centred"),
    ],
)
def test_k_composition_circuit_rejects(kwargs, diagnosis):
    def answer(m, p, h):
        centred = kwargs.get("centred", False)
        M = kcomp_reference(m, p, h, **{k: v for k, v in kwargs.items() if k != "centred"})
        return M - M.mean(-1, keepdim=True) if centred else M

    assert_rejects(checks.check_k_composition_circuit, answer, diagnosis=diagnosis)


def _kcomp_from(m, p, h, value_layer=0, query_layer=1):
    queries = m.W_E @ m.W_Q[query_layer, h]
    keys = m.W_E @ m.W_V[value_layer, p] @ m.W_O[value_layer, p] @ m.W_K[1, h]
    return queries @ keys.T / m.cfg.d_head**0.5


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda m, p, h: kcomp_reference(m, p, h, scale=False) / m.cfg.d_head, "1/d_head"),
        (lambda m, p, h: kcomp_reference(m, p, h).softmax(-1), "a softmax was applied"),
        (lambda m, p, h: _kcomp_from(m, p, h, value_layer=1), "taken from layer 1"),
        (lambda m, p, h: _kcomp_from(m, p, h, query_layer=0), "queries were taken from layer 0"),
    ],
)  # fmt: skip
def test_k_composition_circuit_names_layer_and_scale_slips(wrong, diagnosis):
    assert_rejects(checks.check_k_composition_circuit, wrong, diagnosis=diagnosis)


def test_k_composition_circuit_accepts_other_forms():
    assert_accepts(
        checks.check_k_composition_circuit, lambda m, p, h: _kcomp_from(m, p, h).double()
    )
    assert_accepts(  # reassociated: W_E (W_Q Wₖᵀ) (W_E W_V W_O)ᵀ
        checks.check_k_composition_circuit,
        lambda m, p, h: (
            m.W_E
            @ (m.W_Q[1, h] @ m.W_K[1, h].T)
            @ (m.W_E @ m.W_V[0, p] @ m.W_O[0, p]).T
            / m.cfg.d_head**0.5
        ),
    )


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda m, p, h: kcomp_reference(m, p, h, scale=False) / m.cfg.d_model**0.5,
         "sqrt(d_model)"),
        (lambda m, p, h: kcomp_reference(m, h, p), "swapped"),
        (lambda m, p, h: kcomp_reference(m, p, h) + kcomp_reference(m, p, h, no_prev=True),
         "direct path"),
    ],
)  # fmt: skip
def test_k_composition_circuit_names_more_mistakes(wrong, diagnosis):
    assert_rejects(checks.check_k_composition_circuit, wrong, diagnosis=diagnosis)


def test_k_composition_circuit_rejects_q_composition_and_the_reference():
    def q_comp(m, p, h):
        a0, a1 = m.blocks[0].attn, m.blocks[1].attn
        return (
            (m.W_E @ a0.W_V[p] @ a0.W_O[p] @ a1.W_Q[h]) @ (m.W_E @ a1.W_K[h]).T / m.cfg.d_head**0.5
        )

    assert_rejects(checks.check_k_composition_circuit, q_comp, diagnosis="Q-composition")
    assert_rejects(
        checks.check_k_composition_circuit,
        lambda m, p, h: circuits.k_composition_circuit(m, (0, p), (1, h)),
        diagnosis="withholds",
    )


# ---- 4.6 OV circuits combined ------------------------------------------------------------------------------------
def ov(m, layer, h):
    return m.W_E @ m.blocks[layer].attn.W_V[h] @ m.blocks[layer].attn.W_O[h] @ m.W_U


def test_combined_ov_circuit_accepts_reference():
    assert_accepts(checks.check_combined_ov_circuit, lambda m, heads: sum(ov(m, *x) for x in heads))


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda m, heads: sum(ov(m, *x) for x in heads) / len(heads), "averaged"),
        (lambda m, heads: sum(ov(m, *x) for x in heads).T, "transposed"),
        (lambda m, heads: ov(m, *heads[0]), "only the first head"),
        (lambda m, heads: sum(ov(m, 1, h) for _, h in heads), "Exercise 4.6"),  # layer ignored
        (lambda m, heads: sum(ov(m, *x) for x in heads[:2]), "only the first two heads"),
        (lambda m, heads: sum(ov(m, *x) for x in heads) + m.W_E @ m.W_U, "direct path"),
        (lambda m, heads: sum(circuits.full_ov_circuit(m, *x) for x in heads), "withholds"),
    ],
)
def test_combined_ov_circuit_rejects(wrong, diagnosis):
    assert_rejects(checks.check_combined_ov_circuit, wrong, diagnosis=diagnosis)


def _last_head_kept(m, heads):  # assigns instead of adding
    for layer, h in heads:
        total = ov(m, layer, h)
    return total


def _summed_separately(m, heads):  # (Σ W_V)(Σ W_O): cross terms between heads
    W_V = sum(m.blocks[layer].attn.W_V[h] for layer, h in heads)
    W_O = sum(m.blocks[layer].attn.W_O[h] for layer, h in heads)
    return m.W_E @ W_V @ W_O @ m.W_U


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_last_head_kept, "only the last head was used"),
        (_summed_separately, "summed over the heads separately"),
    ],
)
def test_combined_ov_circuit_names_loop_and_factoring_slips(wrong, diagnosis):
    assert_rejects(checks.check_combined_ov_circuit, wrong, diagnosis=diagnosis)


def test_combined_ov_circuit_accepts_the_sum_factored_and_float64():
    def factored(m, heads):  # W_E (Σ W_V W_O) W_U
        inner = sum(m.blocks[layer].attn.W_V[h] @ m.blocks[layer].attn.W_O[h] for layer, h in heads)
        return (m.W_E @ inner @ m.W_U).double()

    assert_accepts(checks.check_combined_ov_circuit, factored)


def test_combined_ov_circuit_names_a_cross_layer_product_as_a_virtual_head():
    def product(m, heads):
        out = m.W_E
        for layer, h in heads:
            out = out @ m.blocks[layer].attn.W_V[h] @ m.blocks[layer].attn.W_O[h]
        return out @ m.W_U

    with checks.fixed_seed(0), pytest.raises(checks.CheckFailed) as info:
        checks.check_combined_ov_circuit(product)
    assert "multiplied" in str(info.value)


# ---- 4.8 the circuit in a mystery model ------------------------------------------------------------------------------
def find_reference(m, *, threshold=0.5, layer0_by="previous"):
    V, n = m.cfg.d_vocab, m.cfg.n_ctx
    length = min(V - 1, (n - 1) // 2)
    t = repeated_random_tokens(
        V - 1, length, (n - 1) // length, 20, torch.Generator().manual_seed(0)
    )
    prev, ind = evals.previous_token_scores(m, t), evals.induction_scores(m, t, length)
    scores = prev if layer0_by == "previous" else ind
    return (0, int(scores[0].argmax())), [
        (1, h) for h in range(m.cfg.n_heads) if ind[1, h] >= threshold
    ]


def _by_weight_norm(m):
    """The layer-0 head whose OV writes most, and the layer-1 heads with above-median QK norms."""
    a0, a1 = m.blocks[0].attn, m.blocks[1].attn
    ov_norms = (a0.W_V @ a0.W_O).flatten(1).norm(dim=-1)
    qk_norms = (a1.W_Q @ a1.W_K.transpose(-1, -2)).flatten(1).norm(dim=-1)
    return (0, int(ov_norms.argmax())), [
        (1, h) for h in range(m.cfg.n_heads) if qk_norms[h] > qk_norms.median()
    ]


def _from_the_config_seed(model):  # rebuild the planted truth from the model's own seed
    planted = handmade.mystery_induction(model.cfg.seed)
    return planted.previous_token_head, planted.induction_heads


def test_find_induction_circuit_accepts_reference():
    assert_accepts(checks.check_find_induction_circuit, find_reference)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda m: find_reference(m, layer0_by="induction"), "previous-token head"),
        (lambda m: find_reference(m, threshold=0.0), "induction heads"),  # every layer-1 head
        (lambda m: ((0, 0), [(1, 0)]), "Exercise 4.8"),
        (lambda m: evals.find_induction_circuit(m, None, 3), "withholds"),
        (_from_the_config_seed, "withholds"),
        (lambda m: ((0.0, 1.0), [(1.0, 2.0)]), "pairs of ints"),
        (_by_weight_norm, "Exercise 4.8"),  # the distractor heads' weights are norm-matched
    ],
)
def test_find_induction_circuit_rejects(wrong, diagnosis):
    assert_rejects(checks.check_find_induction_circuit, wrong, diagnosis=diagnosis)


def _first_above(m, threshold=0.5):  # the first layer-0 head past a threshold, not the highest
    _, induction = find_reference(m)
    V, n = m.cfg.d_vocab, m.cfg.n_ctx
    length = min(V - 1, (n - 1) // 2)
    t = repeated_random_tokens(
        V - 1, length, (n - 1) // length, 20, torch.Generator().manual_seed(0)
    )
    prev = evals.previous_token_scores(m, t)[0]
    return (0, next(h for h in range(m.cfg.n_heads) if prev[h] >= threshold)), induction


def _olssons_average(m):  # the induction score averaged over the earlier copies, on 3+ blocks
    prev, _ = find_reference(m)
    V, n = m.cfg.d_vocab, m.cfg.n_ctx
    length = min(V - 1, (n - 1) // 3)
    t = repeated_random_tokens(V - 1, length, 3, 20, torch.Generator().manual_seed(0))
    _, cache = m.run_with_cache(t)
    pattern = cache["blocks.1.attn.hook_pattern"]  # [batch, head, query, key]
    score = _induction(average=True)
    heads = [h for h in range(m.cfg.n_heads) if score(pattern[:, h], length) >= 0.5]
    return prev, [(1, h) for h in heads]


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda m: find_reference(m, threshold=0.6), "just above evals.INDUCTION_HEAD_THRESHOLD"),
        (lambda m: find_reference(m, threshold=0.7), "just above evals.INDUCTION_HEAD_THRESHOLD"),
        (lambda m: find_reference(m, threshold=0.9), "just above evals.INDUCTION_HEAD_THRESHOLD"),
        (lambda m: find_reference(m, threshold=0.3), "is your threshold lower"),
        (lambda m: find_reference(m, threshold=0.2), "is your threshold lower"),
        (_first_above, "not the first that passes a threshold"),
        (_olssons_average, "averaged over them it comes out lower"),
    ],
)
def test_find_induction_circuit_names_a_threshold_other_than_the_courses(wrong, diagnosis):
    assert_rejects(checks.check_find_induction_circuit, wrong, diagnosis=diagnosis)


def test_find_induction_circuit_accepts_any_repeated_random_tokens():
    def with_probe(length_of, blocks_of, batch):
        def fn(m):
            V, n = m.cfg.d_vocab, m.cfg.n_ctx
            length = length_of(V, n)
            blocks = blocks_of(length, n)
            g = torch.Generator().manual_seed(1)
            t = repeated_random_tokens(V - 1, length, blocks, batch, g)
            prev, ind = evals.previous_token_scores(m, t), evals.induction_scores(m, t, length)
            heads = [(1, h) for h in range(m.cfg.n_heads) if ind[1, h] >= 0.5]
            return (0, int(prev[0].argmax())), sorted(heads, reverse=True)  # any order

        return fn

    blocks_of_two = with_probe(lambda V, n: 2, lambda L, n: (n - 1) // L, 200)  # the most blocks
    two_long_blocks = with_probe(lambda V, n: min(V - 1, (n - 1) // 2), lambda L, n: 2, 30)
    assert_accepts(checks.check_find_induction_circuit, blocks_of_two)
    assert_accepts(checks.check_find_induction_circuit, two_long_blocks)


def _probe_answer(tokens_for):
    def fn(m):
        tokens, length = tokens_for(m)
        prev, ind = (
            evals.previous_token_scores(m, tokens),
            evals.induction_scores(m, tokens, length),
        )
        heads = [(1, h) for h in range(m.cfg.n_heads) if ind[1, h] >= 0.5]
        return (0, int(prev[0].argmax())), heads

    return fn


def _blocks_with_repeats(m):  # drawn with replacement: a block may hold a token twice
    V, n = m.cfg.d_vocab, m.cfg.n_ctx
    length = (n - 1) // 2
    block = torch.randint(1, V, (50, length), generator=torch.Generator().manual_seed(0))
    return torch.cat([torch.zeros(50, 1, dtype=torch.long), block, block], 1), length


def _blocks_of_two(m):  # the score's chance level is about 0.5 there: distractors pass it
    V, n = m.cfg.d_vocab, m.cfg.n_ctx
    g = torch.Generator().manual_seed(0)
    return repeated_random_tokens(V - 1, 2, (n - 1) // 2, 50, g), 2


def test_find_induction_circuit_says_why_the_probe_misleads():
    assert_rejects(checks.check_find_induction_circuit, _probe_answer(_blocks_with_repeats),
                   diagnosis="a token twice")  # fmt: skip
    assert_rejects(checks.check_find_induction_circuit, _probe_answer(_blocks_of_two),
                   diagnosis="with blocks of 2", seeds=(3,))  # fmt: skip


def test_the_near_threshold_heads_stay_on_their_side_on_any_repeated_random_tokens():
    from helpers.checks.induction import mystery as induction

    T, near = evals.INDUCTION_HEAD_THRESHOLD, induction.NEAR
    for seed in range(4):
        case = induction._mystery_cases(seed)[1]
        (model,), heads = case.args, case.context
        V, n = model.cfg.d_vocab, model.cfg.n_ctx
        for length in sorted({2, 3, min(V - 1, (n - 1) // 2)}):
            for blocks in sorted({2, (n - 1) // length}):
                for batch in (1, 30):
                    g = torch.Generator().manual_seed(seed)
                    t = repeated_random_tokens(V - 1, length, blocks, batch, g)
                    scores = evals.induction_scores(model, t, length)[1]
                    assert scores[heads["above"]] >= T + near - 1e-3
                    assert scores[heads["below"]] <= T - near + 1e-3
                    previous = evals.previous_token_scores(model, t)[0, heads["partly previous"]]
                    assert abs(previous - induction.PARTLY_PREVIOUS) < 1e-3
