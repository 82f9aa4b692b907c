"""Checkers of chapter 01."""

import math

import pytest
import torch

from helpers import checks, circuits, handmade
from helpers.data import BigramLanguage, next_token_counts
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
        (
            next_token_counts,
            "calls the course's `data.next_token_counts`, which this exercise withholds",
        ),
        (lambda t, V: (t.zero_(), counts_reference(t, V))[1], "matches none"),
        # uint8 wraps around at 256: counts must be int32 or int64
        (lambda t, V: counts_reference(t, V).to(torch.uint8), "expected integer counts"),
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
        (_in_place, "finite where the right answer is infinite"),
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
        (
            circuits.direct_path,
            "calls the course's `circuits.direct_path`, which this exercise withholds",
        ),
        (lambda m: torch.full((m.cfg.d_vocab,) * 2, float("nan")), "NaN"),
    ],
)
def test_zero_layer_circuit_rejects(wrong, diagnosis):
    assert_rejects(checks.check_zero_layer_circuit, wrong, diagnosis=diagnosis)


# ---- 1.4 entropy rate ----------------------------------------------------------------------------
def _stationary(P):
    evals, evecs = torch.linalg.eig(P.T)
    pi = evecs[:, (evals - 1).abs().argmin()].real
    return pi / pi.sum()


def entropy_reference(P):
    pi = _stationary(P)
    return float(-(pi[:, None] * P * P.log()).sum())


def _entropy_with_the_first_eigenvector(P):
    values, vectors = torch.linalg.eig(P.T)
    pi = vectors[:, 0].real
    pi = pi / pi.sum()
    return float(-(pi[:, None] * P * P.log()).sum())


def _entropy_with_unit_length_pi(P):
    values, vectors = torch.linalg.eig(P.T)
    pi = vectors[:, (values - 1).abs().argmin()].real
    pi = pi / pi.norm()  # not a distribution
    return float(-(pi[:, None] * P * P.log()).sum())


def test_entropy_rate_accepts_reference_and_power_iteration():
    assert_accepts(checks.check_entropy_rate, entropy_reference)

    def by_power_iteration(P, steps=300, start=None):  # the hint's "a few hundred times"
        pi = torch.full((P.shape[0],), 1 / P.shape[0], dtype=P.dtype) if start is None else start
        for _ in range(steps):
            pi = pi @ P
        return float(-(pi[:, None] * P * P.log()).sum())

    assert_accepts(checks.check_entropy_rate, by_power_iteration)

    def from_a_corner(P):
        return by_power_iteration(P, start=torch.eye(P.shape[0], dtype=P.dtype)[0])

    assert_accepts(checks.check_entropy_rate, from_a_corner)
    assert_rejects(
        checks.check_entropy_rate,
        lambda P: by_power_iteration(P, steps=3, start=torch.eye(P.shape[0], dtype=P.dtype)[0]),
        diagnosis="expected",
    )


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda P: float(-(P * P.log()).sum(-1).mean()), "averaged uniformly"),
        (lambda P: entropy_reference(P) / math.log(2), "in bits"),
        (_entropy_with_unit_length_pi, "unit length"),
        (_entropy_with_the_first_eigenvector, "closest to 1"),
        (lambda P: -entropy_reference(P), "sign is flipped"),
        (
            lambda P: float(-(_stationary(P) * _stationary(P).log()).sum()),
            "entropy of the stationary distribution alone",
        ),
        (lambda P: BigramLanguage(P.shape[0]).entropy_rate(), "Exercise 1.4"),  # another chain
        (
            lambda P: circuits.expected_loss(P.log(), P, _stationary(P)),
            "calls the course's `circuits.expected_loss`, which this exercise withholds",
        ),
    ],
)
def test_entropy_rate_rejects(wrong, diagnosis):
    assert_rejects(checks.check_entropy_rate, wrong, diagnosis=diagnosis)


# ---- 1.5 expected loss ----------------------------------------------------------------------------
def loss_reference(logits, P, pi):
    return float(-(pi[:, None] * P * logits.log_softmax(-1)).sum())


def test_expected_loss_accepts_reference():
    assert_accepts(checks.check_expected_loss, loss_reference)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda L, P, pi: float(-(pi[:, None] * P * L).sum()), "used as log-probabilities"),
        (lambda L, P, pi: float(-(pi[:, None] * P * L.log_softmax(0)).sum()), "dim=0"),
        (lambda L, P, pi: float(-(P * L.log_softmax(-1)).sum(-1).mean()), "averaged uniformly"),
        (lambda L, P, pi: -loss_reference(L, P, pi), "sign is flipped"),
        (lambda L, P, pi: circuits.expected_loss(L, P, pi), "withholds"),
    ],
)
def test_expected_loss_rejects(wrong, diagnosis):
    assert_rejects(checks.check_expected_loss, wrong, diagnosis=diagnosis)


# ---- 1.6 best rank-k ----------------------------------------------------------------------------
def rank_k_reference(M, k):
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vh[:k]


def test_best_rank_k_accepts_reference():
    assert_accepts(checks.check_best_rank_k, rank_k_reference)


def _rank_k(kind):
    def fn(M, k):
        U, S, Vh = torch.linalg.svd(M, full_matrices=False)
        if kind == "smallest":
            return (U[:, -k:] * S[-k:]) @ Vh[-k:]
        if kind == "twice":
            return (U[:, :k] * S[:k] ** 2) @ Vh[:k]
        if kind == "k+1":
            return (U[:, : k + 1] * S[: k + 1]) @ Vh[: k + 1]
        return U[:, :k] @ Vh[:k]

    return fn


@pytest.mark.parametrize(
    "kind, diagnosis",
    [
        ("smallest", "*smallest*"),
        ("twice", "applied twice"),
        ("k+1", "k + 1"),
        ("no S", "singular values are missing"),
    ],
)
def test_best_rank_k_rejects(kind, diagnosis):
    assert_rejects(checks.check_best_rank_k, _rank_k(kind), diagnosis=diagnosis)


def test_best_rank_k_refuses_fixed_k_and_the_reference():
    assert_rejects(checks.check_best_rank_k, lambda M, k: rank_k_reference(M, 2), diagnosis="k = 3")
    assert_rejects(checks.check_best_rank_k, circuits.best_rank_k, diagnosis="withholds")


# ---- 1.7 a zero-layer model set by hand ---------------------------------------------------------------
def set_weights_reference(model, table, *, kind="split"):
    k = model.cfg.d_model
    U, S, Vh = torch.linalg.svd(table)
    if kind == "smallest":
        U, S, Vh = U[:, -k:], S[-k:], Vh[-k:]
    else:
        U, S, Vh = U[:, :k], S[:k], Vh[:k]
    W_E, W_U = (U * S, S[:, None] * Vh) if kind == "twice" else (U * S, Vh)
    if kind == "transposed":
        W_E, W_U = Vh.T * S, U.T
    model.embed.W_E.copy_(W_E)
    model.unembed.W_U.copy_(W_U)


def test_set_zero_layer_weights_accepts_any_right_split():
    assert_accepts(checks.check_set_zero_layer_weights, set_weights_reference)
    assert_accepts(checks.check_set_zero_layer_weights, handmade_split)


def handmade_split(model, table):
    k = model.cfg.d_model
    U, S, Vh = torch.linalg.svd(table)
    model.embed.W_E.copy_(U[:, :k] * S[:k].sqrt())
    model.unembed.W_U.copy_(S[:k].sqrt()[:, None] * Vh[:k])


@pytest.mark.parametrize(
    "kind, diagnosis",
    [("smallest", "k smallest"), ("twice", "went in twice"), ("transposed", "transpose")],
)
def test_set_zero_layer_weights_rejects(kind, diagnosis):
    assert_rejects(
        checks.check_set_zero_layer_weights,
        lambda m, t: set_weights_reference(m, t, kind=kind),
        diagnosis=diagnosis,
    )


def test_set_zero_layer_weights_refuses_other_edits_and_the_reference():
    def also_positions(model, table):
        handmade_split(model, table)
        model.pos_embed.W_pos.zero_()

    assert_rejects(checks.check_set_zero_layer_weights, also_positions, diagnosis="W_pos changed")
    assert_rejects(
        checks.check_set_zero_layer_weights, handmade.set_zero_layer_weights, diagnosis="withholds"
    )


def test_set_zero_layer_weights_refuses_weights_of_another_shape():
    def full_rank(model, table):  # W_E @ W_U = table exactly, with W_E [V, V]: not rank d_model
        V = table.shape[0]
        model.embed.W_E = torch.nn.Parameter(table.clone())
        model.unembed.W_U = torch.nn.Parameter(torch.eye(V))

    assert_rejects(checks.check_set_zero_layer_weights, full_rank, diagnosis="must keep its shape")
