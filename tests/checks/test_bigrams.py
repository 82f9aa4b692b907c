"""Checkers of chapter 01."""

import pytest
import torch

from helpers import checks, circuits
from helpers.data import next_token_counts
from tests.checks.conftest import assert_accepts, assert_rejects


def counts_reference(tokens, d_vocab):
    pairs = tokens[:, :-1].flatten() * d_vocab + tokens[:, 1:].flatten()
    return torch.bincount(pairs, minlength=d_vocab**2).view(d_vocab, d_vocab)


def test_count_bigrams_accepts_reference():
    assert_accepts(checks.check_count_bigrams, counts_reference)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda t, V: counts_reference(t, V).T, "rows and columns are swapped"),
        (lambda t, V: counts_reference(t.flatten()[None], V), "flattened before pairing"),
        (lambda t, V: counts_reference(t[:1], V), "only the first sequence"),
        (
            lambda t, V: counts_reference(t, V).float() / counts_reference(t, V).sum(),
            "expected integer counts",
        ),
        (lambda t, V: counts_reference(t, V)[1:, 1:], "returned shape"),
        (lambda t, V: counts_reference(t[:, :3], V), "matches none"),
        (lambda t, V: torch.ones(6, 6, dtype=torch.long), "Exercise 1.1"),  # a constant
        (next_token_counts, "calls the course's reference `data._common.next_token_counts`"),
        (lambda t, V: (t.zero_(), counts_reference(t, V))[1], "matches none"),
    ],
)
def test_count_bigrams_rejects(wrong, diagnosis):
    assert_rejects(checks.check_count_bigrams, wrong, diagnosis=diagnosis)


def log_probs_reference(counts):
    c = counts.double()
    return (c / c.sum(-1, keepdim=True)).log()


def test_empirical_log_probs_accepts_reference_in_float32_too():
    assert_accepts(checks.check_empirical_log_probs, log_probs_reference)
    assert_accepts(checks.check_empirical_log_probs, lambda c: log_probs_reference(c).float())


def _in_place(c):
    c.fill_(1)  # edits the counts it was given: uniform rows
    return log_probs_reference(c)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda c: (c.double() / c.double().sum(0, keepdim=True)).log(), "each column sums to 1"),
        (lambda c: (c.double() / c.sum()).log(), "log P(current, next), the joint"),
        (
            lambda c: c.double() / c.double().sum(-1, keepdim=True),
            "probabilities, not log-probabilities",
        ),
        (lambda c: c.double().log(), "log counts, not normalised"),
        (lambda c: log_probs_reference(c)[None], "returned shape"),
        (_in_place, "matches none"),
    ],
)
def test_empirical_log_probs_rejects(wrong, diagnosis):
    assert_rejects(checks.check_empirical_log_probs, wrong, diagnosis=diagnosis)


def test_zero_layer_circuit_accepts_reference():
    assert_accepts(checks.check_zero_layer_circuit, lambda m: m.W_E @ m.W_U)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda m: (m.W_E @ m.W_U).T, "the matrix is transposed"),
        (lambda m: (m.W_E @ m.W_U).softmax(-1), "these are probabilities"),
        (lambda m: (m.W_E @ m.W_U).log_softmax(-1), "these are log-probabilities"),
        (lambda m: m.W_U.T @ m.W_E.T + 1, "matches none of the common mistakes"),
        (lambda m: m.W_U @ m.W_E, "d_model × d_model"),
        (circuits.direct_path, "calls the course's reference `circuits.direct_path`"),
        (lambda m: torch.full((m.cfg.d_vocab,) * 2, float("nan")), "NaN"),
    ],
)
def test_zero_layer_circuit_rejects(wrong, diagnosis):
    assert_rejects(checks.check_zero_layer_circuit, wrong, diagnosis=diagnosis)
