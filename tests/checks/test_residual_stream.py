"""Checkers of chapter 00."""

import math

import pytest
import torch

from helpers import attribution, checks
from tests.checks.conftest import assert_accepts, assert_rejects


def _causal(n):
    return torch.ones(n, n, dtype=torch.bool).tril()


def _scores(x, W_Q, W_K):
    return (x @ W_Q) @ (x @ W_K).transpose(-1, -2)


def pattern_reference(x, W_Q, W_K):
    scores = _scores(x, W_Q, W_K) / math.sqrt(W_Q.shape[-1])
    return scores.masked_fill(~_causal(x.shape[1]), float("-inf")).softmax(-1)


def pattern_in_place_then_constant(x, W_Q, W_K):
    x.zero_()  # edits the input it was given; the checker's own copy is unaffected
    return pattern_reference(x, W_Q, W_K)


def test_attention_pattern_accepts_reference(capsys):
    assert_accepts(checks.check_attention_pattern, pattern_reference)
    out = capsys.readouterr().out
    assert "✔ Exercise 0.1" in out and "random test models" in out


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda x, Q, K: (_scores(x, Q, K) / math.sqrt(Q.shape[-1])).softmax(-1), "no causal mask"),
        (
            lambda x, Q, K: (
                (_scores(x, Q, K) / math.sqrt(Q.shape[-1]))
                .masked_fill(~_causal(x.shape[1]), float("-inf"))
                .softmax(-2)
            ),
            "softmax runs over query positions",
        ),
        (
            lambda x, Q, K: (
                _scores(x, Q, K).masked_fill(~_causal(x.shape[1]), float("-inf")).softmax(-1)
            ),
            "1/sqrt(d_head) scale is missing",
        ),
        (
            lambda x, Q, K: (
                (_scores(x, Q, K) / Q.shape[-1])
                .masked_fill(~_causal(x.shape[1]), float("-inf"))
                .softmax(-1)
            ),
            "divided by d_head instead of sqrt(d_head)",
        ),
        (
            lambda x, Q, K: (
                (_scores(x, Q, K) / math.sqrt(Q.shape[-1])).softmax(-1) * _causal(x.shape[1])
            ),
            "mask is applied after the softmax",
        ),
        (
            lambda x, Q, K: (
                (_scores(x, Q, K).transpose(-1, -2) / math.sqrt(Q.shape[-1]))
                .masked_fill(~_causal(x.shape[1]), float("-inf"))
                .softmax(-1)
            ),
            "queries and keys are swapped",
        ),
        (_scores, "matches none of the common mistakes"),
        (pattern_in_place_then_constant, "matches none of the common mistakes"),
        (lambda x, Q, K: pattern_reference(x, Q, K)[0], "expected (2,"),
        (lambda x, Q, K: torch.full((2, 9, 9), 0.1), "Exercise 0.1"),  # a constant
        ("not a function", "pass your function itself"),
    ],
)
def test_attention_pattern_rejects(wrong, diagnosis):
    assert_rejects(checks.check_attention_pattern, wrong, diagnosis=diagnosis)


def head_reference(pattern, x, W_V, W_O):
    return pattern @ (x @ W_V) @ W_O


def test_head_output_accepts_reference():
    assert_accepts(checks.check_head_output, head_reference)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda p, x, W_V, W_O: p.transpose(-1, -2) @ x @ W_V @ W_O, "pattern is transposed"),
        (lambda p, x, W_V, W_O: p @ x @ (W_V @ W_O).T, "OV matrix is transposed"),
        (lambda p, x, W_V, W_O: x @ W_V @ W_O, "pattern is not applied"),
        (lambda p, x, W_V, W_O: p @ x @ W_V, "returned shape"),
        (
            lambda p, x, W_V, W_O: (p @ x @ W_V @ W_O).tolist(),
            "must return a torch.Tensor, got list",
        ),
        (lambda p, x, W_V, W_O: (p.zero_(), x @ W_V @ W_O * 0)[1], "matches none"),
    ],
)
def test_head_output_rejects(wrong, diagnosis):
    assert_rejects(checks.check_head_output, wrong, diagnosis=diagnosis)


def direct_reference(model, tokens):
    x0 = model.W_E[tokens]
    if model.cfg.positional_embedding_type == "standard":
        x0 = x0 + model.W_pos[: tokens.shape[-1]]
    return x0 @ model.W_U


def test_direct_path_accepts_reference():
    assert_accepts(checks.check_direct_path_logits, direct_reference)


def _zero_everything_then_answer(model, tokens):
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # in place, on the learner's copy
    return direct_reference(model, tokens)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (
            lambda m, t: (m.W_E[t] + m.W_pos[: t.shape[-1]]) @ m.W_U,
            "shortformer model the positional embedding never enters",
        ),
        (lambda m, t: m.W_E[t] @ m.W_U, "the positional part is missing"),
        (lambda m, t: m(t), "forward pass"),
        (lambda m, t: m.run_with_cache(t)[1]["blocks.0.hook_resid_pre"] @ m.W_U, "forward pass"),
        (lambda m, t: type(m)(m.cfg).forward(t), "forward pass"),
        (
            attribution.direct_path_logits,
            "calls the course's reference `attribution.direct_path_logits`",
        ),
        (lambda m, t: attribution.logit_contributions(m, t)[0][0], "calls the course's reference"),
        (_zero_everything_then_answer, "matches none"),
    ],
)
def test_direct_path_rejects(wrong, diagnosis):
    assert_rejects(checks.check_direct_path_logits, wrong, diagnosis=diagnosis)


def test_an_unfinished_stub_raises_not_implemented_unchanged():
    def stub(*args):
        raise NotImplementedError("Exercise 0.1: your code here")

    with pytest.raises(checks.ExerciseNotDone, match="your code here") as info:
        checks.check_attention_pattern(stub)
    assert isinstance(info.value, NotImplementedError)
    assert "runs anyway" in "\n".join(info.value._render_traceback_())


def test_failure_renders_as_a_short_diagnosis_in_ipython():
    err = checks.CheckFailed("Exercise 9.9", "line one\nline two")
    assert err._render_traceback_() == ["✘ Exercise 9.9 is not right yet.", "line one", "line two"]


def test_the_reference_is_usable_again_after_a_check():
    model_tokens = None
    with pytest.raises(checks.CheckFailed):
        checks.check_direct_path_logits(attribution.direct_path_logits)
    from tests.conftest import make_model, random_tokens

    model = make_model()
    model_tokens = random_tokens(model)
    assert attribution.direct_path_logits(model, model_tokens).shape == (3, 10, 13)
