"""What every checker shares: diagnoses that are sure, numbers in any reasonable type, inputs that
are the checker's own, and no reading from disk."""

import numpy as np
import pytest
import torch

from helpers import checks, recipes
from helpers.checks import _base
from tests.checks import test_bigrams, test_composition, test_induction, test_one_layer
from tests.checks import test_residual_stream as ch00
from tests.checks.conftest import assert_rejects


def test_a_diagnosis_names_a_mistake_only_when_it_is_the_only_match():
    expected = torch.zeros(3)
    same = torch.ones(3)
    with pytest.raises(checks.CheckFailed) as info:  # matches two different mistakes
        _base.diagnose("Ex", same, expected, {"mistake A": same, "mistake B": same.clone()})
    assert "mistake A" not in str(info.value) and "mistake B" not in str(info.value)
    with pytest.raises(checks.CheckFailed, match="common mistake: mistake A"):
        _base.diagnose("Ex", same, expected, {"mistake A": same, "mistake B": -same})
    # a "mistake" that equals the right answer on these inputs is never diagnosed
    _base.diagnose("Ex", expected, expected, {"looks wrong": expected})
    with pytest.raises(checks.CheckFailed, match="not right"):
        _base.diagnose_float("Ex", 1.0, 0.0, [("a", 1.0), ("b", 1.0 + 1e-9)], "not right")


@pytest.mark.parametrize(
    "value", [0.25, np.float32(0.25), np.float64(0.25), torch.tensor(0.25), np.array(0.25), 1 / 4]
)
def test_a_float_answer_may_be_any_real_scalar(value):
    assert _base.expect_float("Ex", "f", value) == 0.25


@pytest.mark.parametrize(
    "value, message",
    [
        (torch.tensor([0.25]), r"got a Tensor of shape \(1,\)"),
        (np.array([0.25, 1.0]), r"got a ndarray of shape \(2,\)"),
        (True, "got bool"),
        ("0.25", "got str"),
        (float("nan"), "returned NaN"),
        (torch.tensor(1 + 2j), "complex"),
    ],
)
def test_what_is_not_one_number_is_named(value, message):
    with pytest.raises(checks.CheckFailed, match=message):
        _base.expect_float("Ex", "f", value)


REFERENCE_ANSWERS = [
    (checks.check_attention_pattern, ch00.pattern_reference),
    (checks.check_head_output, ch00.head_reference),
    (checks.check_direct_path_logits, ch00.direct_reference),
    (checks.check_count_bigrams, test_bigrams.counts_reference),
    (checks.check_empirical_log_probs, test_bigrams.log_probs_reference),
    (checks.check_zero_layer_circuit, lambda m: m.W_E @ m.W_U),
    (checks.check_full_ov_circuit, test_one_layer.ov_reference),
    (checks.check_path_expansion, test_one_layer._expansion()),
    (
        checks.check_full_qk_circuit,
        lambda m, h: (lambda s: s - s.mean(-1, keepdim=True))(test_one_layer._qk(m, h)),
    ),
    (checks.check_skip_trigrams, test_one_layer._trigrams()),
    (checks.check_k_composition_scores, test_composition._kcomp),
    (checks.check_virtual_head_ov, test_composition._virtual),
    (checks.check_previous_token_score, lambda p: p.diagonal(-1, -2, -1).mean()),
    (checks.check_induction_score, test_induction._induction()),
    (checks.check_handmade_induction, *test_induction._handmade_parts()),
]


def test_no_checker_reads_from_disk(monkeypatch):
    ckpt = recipes.load("skip_trigrams_1l")  # what the notebook has; loaded before disk is closed

    def closed(*args, **kwargs):
        raise AssertionError("a checker read from disk")

    monkeypatch.setattr(torch, "load", closed)
    monkeypatch.setattr(recipes, "load_checkpoint", closed)
    with checks.fixed_seed(0):
        for check, *answer in REFERENCE_ANSWERS:
            check(*answer)
        checks.check_crossed_effect(test_one_layer.effect_reference, ckpt.model, ckpt.language)


def test_checkers_pass_the_reference_whatever_inputs_they_draw():
    for seed in range(3, 13):
        with checks.fixed_seed(seed):
            for check, *answer in REFERENCE_ANSWERS:
                check(*answer)


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
            checks.check_k_composition_scores,
            lambda m: (
                m.blocks[0].attn.W_O.data.zero_(),
                torch.zeros(m.cfg.n_heads, m.cfg.n_heads),
            )[1],
        ),
    ],
)
def test_editing_the_inputs_in_place_changes_nothing_but_the_learners_copy(check, wrong):
    assert_rejects(check, wrong, diagnosis="")
