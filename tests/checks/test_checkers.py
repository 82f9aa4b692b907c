"""What every checker shares: inputs that are the checker's own and new at every check, the
references withheld, no reading from disk, and the shortcuts and mistakes the adversarial passes
found refused. How answers are judged is tested in test_judge.py; each chapter's cases in its own
test file."""

import pytest
import torch

from helpers import checks, circuits, evals, recipes
from helpers.checks._base import random_models
from helpers.circuits import two_layer
from tests.checks import test_bigrams, test_composition, test_induction
from tests.checks import test_residual_stream as ch00
from tests.checks.conftest import assert_accepts, assert_rejects


def _solutions():
    """Every declared exercise with the solution notebook's answer and what the checker takes
    from the notebook (tests/checks/test_registry.py reads them)."""
    from tests.checks.test_registry import DECLARED, given, solution

    return [(DECLARED[n], solution(n), given(DECLARED[n])) for n in sorted(DECLARED, key=_order)]


def _order(number: str) -> tuple[int, int]:
    major, minor = number.split(".")
    return int(major), int(minor)


def _check(exercise, answer, given):
    getattr(checks, exercise.checker_name)(*answer, *given)


def test_no_checker_reads_from_disk(monkeypatch):
    from helpers import recordings

    solved = _solutions()  # what the notebook has, loaded before the disk is closed
    sweep = recordings.phase_change_sweep(live=False)  # 5.6 compares with the recorded sweep
    monkeypatch.setattr(recordings, "phase_change_sweep", lambda live=None: sweep)

    def closed(*args, **kwargs):
        raise AssertionError("a checker read from disk")

    monkeypatch.setattr(torch, "load", closed)
    monkeypatch.setattr(recipes, "load_checkpoint", closed)
    with checks.fixed_seed(0):
        for exercise, answer, given in solved:
            _check(exercise, answer, given)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3, 33))
def test_checkers_pass_the_solution_whatever_inputs_they_draw(seed, monkeypatch):
    monkeypatch.setitem(checks.EXERCISES["5.6"].options, "live", False)
    with checks.fixed_seed(seed):
        for exercise, answer, given in _solutions():
            _check(exercise, answer, given)


def test_without_a_fixed_seed_each_check_draws_new_inputs():
    seen = set()

    def spy(x, W_Q, W_K):
        seen.add(tuple(x.shape) + (float(x.sum()),))
        return ch00.pattern_reference(x, W_Q, W_K)

    checks.check_attention_pattern(spy)
    checks.check_attention_pattern(spy)
    assert len(seen) == 4  # two models per check, none repeated


@pytest.mark.parametrize(
    "check, wrong",
    [
        (checks.check_zero_layer_circuit, lambda m: (m.W_U.data.zero_(), m.W_E @ m.W_U)[1]),
        (checks.check_copying_score, lambda m, h: (m.blocks[0].attn.W_O.data.zero_(), 0.0)[1]),
        (checks.check_induction_score, lambda p, length: (p.zero_(), 0.0)[1]),
        (
            checks.check_composition_scores,
            lambda m, kind: (
                m.blocks[0].attn.W_O.data.zero_(),
                torch.zeros(m.cfg.n_heads, m.cfg.n_heads),
            )[1],
        ),
    ],
)
def test_editing_the_inputs_in_place_changes_nothing_but_the_learners_copy(check, wrong):
    assert_rejects(check, wrong, diagnosis="")


# ---- what the adversarial pass of the checkers found (and is now refused) ------------------------
def _pattern_with_fixed_d_head(x, W_Q, W_K):
    scores = (x @ W_Q) @ (x @ W_K).transpose(-1, -2) / 3**0.5  # d_head hard-coded
    n = scores.shape[-1]
    return scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf")).softmax(-1)


def _counts_sized_by_the_tokens(tokens, d_vocab):
    W = int(tokens.max()) + 1  # ignores d_vocab
    return torch.bincount((tokens[:, :-1] * W + tokens[:, 1:]).flatten(), minlength=W * W).view(
        W, W
    )


def _ov_from_the_cache(model, head):
    _, cache = model.run_with_cache(torch.arange(model.cfg.d_vocab)[:, None])
    return cache["blocks.0.attn.hook_result"][:, 0, head] @ model.W_U


def _expansion_through_the_block(model, tokens, pattern):
    resid = model.W_E[tokens]
    pos = model.W_pos[: tokens.shape[1]].expand_as(resid)
    return model.blocks[0](resid, pos, False) @ model.W_U


def _uniform_through_frozen_patterns(model, tokens, layer):
    n = tokens.shape[1]
    causal = torch.ones(n, n).tril()
    pattern = (causal / causal.sum(-1, keepdim=True)).expand(
        tokens.shape[0], model.cfg.n_heads, n, n
    )
    return evals.run_with_frozen_patterns(model, tokens, {layer: pattern})


def _ov_through_wrapped(model, head):
    return circuits.full_ov_circuit.__wrapped__(model, 0, head)


@pytest.mark.parametrize(
    "check, answer, diagnosis",
    [
        (checks.check_attention_pattern, _pattern_with_fixed_d_head, "Exercise 0.1"),
        (checks.check_count_bigrams, _counts_sized_by_the_tokens, "returned shape"),
        (checks.check_full_ov_circuit, _ov_from_the_cache, "forward pass"),
        (checks.check_path_expansion, _expansion_through_the_block, "forward pass"),
        (checks.check_full_ov_circuit, _ov_through_wrapped, "__wrapped__"),
        (
            checks.check_composition_scores,
            lambda m, kind: two_layer._composition_from_weights(
                m.blocks[1].attn.W_Q,
                m.blocks[1].attn.W_K,
                m.blocks[1].attn.W_V,
                m.blocks[1].attn.W_O,
                m.blocks[0].attn.W_V,
                m.blocks[0].attn.W_O,
                "K",
            ),
            "calls the course's `circuits._composition_from_weights`, which this exercise withholds",
        ),  # fmt: skip
        (
            checks.check_empirical_log_probs,
            lambda c: (c / c.sum(-1, keepdim=True)).clamp_min(1e-3).log(),
            "",
        ),
        (
            checks.check_zero_layer_circuit,
            lambda m: m.unembed(m.embed(torch.arange(m.cfg.d_vocab)[None]))[0],
            "forward pass",
        ),
        (checks.check_with_uniform_attention, _uniform_through_frozen_patterns, "withholds"),
    ],
)
def test_shortcuts_found_by_the_adversarial_pass_fail(check, answer, diagnosis):
    for seed in range(8):
        with checks.fixed_seed(seed), pytest.raises((checks.CheckFailed, AttributeError)) as info:
            check(answer)
        assert diagnosis in str(info.value)


def test_a_constant_fails_even_on_a_degenerate_notebook_model():
    ckpt = recipes.load("skip_trigrams_1l")
    zeroed = ckpt.model
    with torch.no_grad():
        for p in zeroed.parameters():
            p.zero_()
    assert_rejects(
        checks.check_crossed_effect, lambda *a: 0.0, zeroed, ckpt.language, diagnosis="Exercise 2.9"
    )


def test_correct_answers_in_other_reasonable_forms_pass():
    with checks.fixed_seed(5):
        checks.check_skip_trigrams(  # lists of 0-d tensors
            lambda m, h, s, k: tuple(
                list(x)
                for x in (
                    circuits.full_qk_circuit(m, 0, h)[:, s].topk(k).indices,
                    circuits.full_ov_circuit(m, 0, h)[s].topk(k).indices,
                )
            )  # fmt: skip
        )
    for seed in range(40):  # W_E @ W_U, whatever sizes are drawn
        with checks.fixed_seed(seed):
            checks.check_zero_layer_circuit(lambda m: m.W_E @ m.W_U)


def test_a_near_miss_of_the_copying_score_explains_float32_noise():
    def full_circuit_in_float32(m, h):
        e = torch.linalg.eigvals((m.W_E @ m.W_V[0, h] @ m.W_O[0, h] @ m.W_U).detach())
        return float(e.sum().real / e.abs().sum())

    messages = []
    for seed in range(40):
        with checks.fixed_seed(seed):
            try:
                checks.check_copying_score(full_circuit_in_float32)
            except checks.CheckFailed as err:
                messages.append(str(err))
    assert all("rounding noise" in m for m in messages)


def test_sizes_avoid_the_habits_that_would_pass_by_luck():
    for seed in range(60):
        for model in random_models(seed):
            c = model.cfg
            assert c.d_model not in (c.d_head**2, c.d_head * c.n_heads)


def test_a_withheld_reference_cannot_be_reached_or_unwithheld():
    from helpers import references

    # the guarded function is neither __wrapped__ nor in the wrapper's closure
    cells = [c.cell_contents for c in circuits.composition_map.__closure__ or ()]
    assert all(c is circuits.composition_map or isinstance(c, str) for c in cells)

    def unwithhold(model, threshold):
        references._withheld.clear()
        return circuits.composition_map(model, threshold)

    assert_rejects(checks.check_composition_map, unwithhold, diagnosis="changed which", seeds=(0,))


def test_mystery_models_do_not_carry_their_seed():
    from helpers import handmade

    for seed in (0, 1, 2):
        for make in (handmade.mystery_heads, handmade.mystery_induction,
                     handmade.mystery_composition):  # fmt: skip
            assert make(seed).model.cfg.seed != seed


@pytest.mark.parametrize(
    "check, answer, diagnosis",
    [
        (checks.check_composition_baseline,
         lambda *a: torch.tensor(test_composition.baseline_reference(*a)), None),
        (checks.check_skip_trigrams,
         lambda m, h, s, k: (torch.arange(1, k + 1).float(), list(range(1, k + 1))),
         "integer token ids"),
        (checks.check_describe_head, lambda m, h, t: (0.5, 0.5, [1, 2, 3]), "triple"),
        (checks.check_describe_head, lambda m, h, t: (0.5, 0.5, {(1.5, 2, 3)}), "token ids (ints)"),
    ],
)  # fmt: skip
def test_answers_in_other_forms_are_accepted_or_named(check, answer, diagnosis):
    if diagnosis is None:
        assert_accepts(check, answer)
    else:
        assert_rejects(check, answer, diagnosis=diagnosis)


# ---- the fifth adversarial pass ------------------------------------------------------------------
def _zero_layer_weights_via_data(model, table):  # float64 factors put in through .data
    k = model.cfg.d_model
    U, S, Vh = torch.linalg.svd(table.double())
    model.embed.W_E.data = U[:, :k] * S[:k]
    model.unembed.W_U.copy_(Vh[:k])


def _uniform_of_full_length(model, tokens, layer):  # the pattern sized by n_ctx, not the tokens
    n = model.cfg.n_ctx
    pattern = torch.ones(n, n).tril()
    pattern = pattern / pattern.sum(-1, keepdim=True)
    hook = (f"blocks.{layer}.attn.hook_pattern", lambda x, hook: pattern.expand_as(x))
    return model.run_with_hooks(tokens, [hook])


def _counts_by_indexed_assignment(tokens, d_vocab):
    counts = torch.zeros(d_vocab, d_vocab, dtype=torch.long)
    counts[tokens[:, :-1], tokens[:, 1:]] += 1
    return counts


def _above_the_layers_mean(m):
    prev, _ = test_induction.find_reference(m)
    V, n = m.cfg.d_vocab, m.cfg.n_ctx
    length = min(V - 1, (n - 1) // 2)
    t = test_induction.repeated_random_tokens(
        V - 1, length, (n - 1) // length, 20, torch.Generator().manual_seed(0)
    )
    scores = evals.induction_scores(m, t, length)[1]
    return prev, [(1, h) for h in range(m.cfg.n_heads) if scores[h] > scores.mean()]


def _composition_in_column_order(m, kind):
    a0, a1 = m.blocks[0].attn, m.blocks[1].attn
    OV0 = a0.W_V @ a0.W_O
    QK1 = a1.W_Q @ a1.W_K.transpose(-1, -2)
    reads = {"Q": QK1, "K": QK1.transpose(-1, -2), "V": a1.W_V @ a1.W_O}[kind]
    product = (reads[None] @ OV0[:, None]).flatten(-2).norm(dim=-1)
    return product / (OV0.flatten(1).norm(dim=-1)[:, None] * reads.flatten(1).norm(dim=-1)[None])


@pytest.mark.parametrize(
    "check, answer, diagnosis",
    [
        (checks.check_set_zero_layer_weights, _zero_layer_weights_via_data, ".copy_"),
        (checks.check_with_uniform_attention, _uniform_of_full_length, "Exercise 0.6"),
        (checks.check_find_induction_circuit, _above_the_layers_mean, "induction heads"),
        (checks.check_count_bigrams, _counts_by_indexed_assignment, "accumulate=True"),
        (checks.check_empirical_log_probs, lambda c: (c / c.sum(-1)).log(), "keepdim=True"),
        (checks.check_entropy_rate,
         lambda P: float(-(test_bigrams._stationary(P) * P * P.log()).sum()), "pi[:, None]"),
        (checks.check_expected_loss,
         lambda logits, P, pi: float(-(pi * P * logits.log_softmax(-1)).sum()), "pi[:, None]"),
        (checks.check_positional_pattern, lambda m, h: _masked_after_softmax(m, h), "after the softmax"),
        (checks.check_composition_scores, _composition_in_column_order, "column order"),
    ],
)  # fmt: skip
def test_mistakes_found_by_the_fifth_pass_are_caught_and_named(check, answer, diagnosis):
    for seed in range(4):
        with checks.fixed_seed(seed), pytest.raises((checks.CheckFailed, RuntimeError)) as info:
            check(answer)
        # a learner's own error comes back as it is, with a note naming the exercise
        text = str(info.value) + " ".join(getattr(info.value, "__notes__", []))
        assert diagnosis in text, f"seed {seed}: {text}"


def _masked_after_softmax(m, h):
    Q, K = m.W_pos @ m.W_Q[0, h], m.W_pos @ m.W_K[0, h]
    n = m.cfg.n_ctx
    return (Q @ K.T / m.cfg.d_head**0.5).softmax(-1) * torch.ones(n, n).tril()


def _path_ablation_of_head_0(model, tokens, sender, receiver):  # the sender's head ignored
    _, cache = model.run_with_cache(tokens)
    sent = cache["blocks.0.attn.hook_result"][:, :, 0]
    a1 = model.blocks[1].attn
    W = {"q": a1.W_Q, "k": a1.W_K, "v": a1.W_V}[receiver]
    delta = torch.einsum("bpm,hmd->bphd", sent, W)
    hook = (f"blocks.1.attn.hook_{receiver}", lambda x, hook: x - delta)
    return model.run_with_hooks(tokens, [hook])


def test_a_fixed_head_index_fails_at_every_seed():  # the sixth pass: both senders were head 0
    assert_rejects(checks.check_path_ablation, _path_ablation_of_head_0, diagnosis="Exercise 3.6",
                   seeds=range(8))  # fmt: skip
