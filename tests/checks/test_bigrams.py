"""Checkers of chapter 01."""

import copy
import dataclasses
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
        # counted in 8 bits, returned as long: only a count above 255 shows it
        (lambda t, V: counts_reference(t, V).to(torch.uint8).long(), "wrapped round"),
        (lambda t, V: counts_reference(t, V).to(torch.int8).long(), "wrapped round"),
        (lambda t, V: counts_reference(t.T, V), "down the batch axis"),
        (lambda t, V: counts_reference(t[:, 1:], V), "(BOS, first token) included"),
        (  # the table's size read off the tokens: some ids never occur in a sample
            lambda t, V: counts_reference(t, int(t.max()) + 1),
            "the table's size came from the tokens",
        ),
        (
            lambda t, V: torch.bincount((t[:, :-1] * V + t[:, 1:]).flatten()).view(V, V),
            "pass minlength=d_vocab * d_vocab",
        ),
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


def _minus_infinity_in_column_0(c):  # BOS's column in the notebook, whatever the counts
    out = log_probs_reference(c)
    out[:, 0] = -math.inf
    return out


def _clamped_with_column_0_by_hand(c):  # a never-seen pair elsewhere gets a finite log
    c = c.double()
    out = (c.clamp(min=1e-12) / c.sum(-1, keepdim=True)).log()
    out[:, 0] = -math.inf
    return out


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
        (lambda c: log_probs_reference(c + 1), "smoothed (+1 each)"),
        (_minus_infinity_in_column_0, "column 0 was set to -inf by hand"),
        (_clamped_with_column_0_by_hand, "finite where the right answer is infinite"),
        (lambda c: c.double().log_softmax(-1), "log_softmax of the counts"),
        (lambda c: log_probs_reference(c) / math.log(2), "log base 2"),
        (lambda c: (c // c.sum(-1, keepdim=True)).double().log(), "divided as integers"),
    ],
)
def test_empirical_log_probs_rejects(wrong, diagnosis):
    assert_rejects(checks.check_empirical_log_probs, wrong, diagnosis=diagnosis)


def _whichever_product_fits(m):
    V = m.cfg.d_vocab
    product = m.W_U @ m.W_E
    return product if product.shape == (V, V) else m.W_E @ m.W_U


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
        (lambda m: m.W_E @ m.W_E.T, "tied weights"),
        (lambda m: (lambda W: W - W.mean(-1, keepdim=True))(m.W_E @ m.W_U), "each row was centred"),
        # where d_model = d_vocab, W_U @ W_E has the right shape: only its values give it away
        (_whichever_product_fits, "that is W_U @ W_E"),
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


def entropy_with(P, pi):
    return float(-(pi[:, None] * P * P.log()).sum())


def _right_eigenvector(P):  # of P, not P.T: all ones, since P's rows sum to 1
    values, vectors = torch.linalg.eig(P)
    pi = vectors[:, (values - 1).abs().argmin()].real
    return pi / pi.sum()


def _symmetric_eigenvector(P):  # eigh reads one triangle of P.T, as if it were symmetric
    values, vectors = torch.linalg.eigh(P.T)
    pi = vectors[:, -1]
    return pi / pi.sum()


def _eigenvector_as_a_row(P):  # vectors[i], where eig's eigenvectors are its columns
    values, vectors = torch.linalg.eig(P.T)
    v = vectors[(values - 1).abs().argmin()].real
    return v / v.sum()


def _by_power_iteration(P, steps=300, dtype=None):
    pi = torch.full((P.shape[0],), 1 / P.shape[0], dtype=dtype or P.dtype)
    for _ in range(steps):
        pi = pi @ P
    return entropy_with(P, pi)


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
        (lambda P: entropy_with(P, _right_eigenvector(P)), "averaged uniformly"),
        (lambda P: entropy_with(P, _symmetric_eigenvector(P)), "eigh is for symmetric matrices"),
        (lambda P: entropy_with(P, _eigenvector_as_a_row(P)), "a row of the eigenvector matrix"),
        (lambda P: float(-(P * P.log()).sum()), "each row's entropy was summed"),
        (lambda P: entropy_reference(P) / math.log(10), "log base 10"),
        (lambda P: float(-(_stationary(P)[:, None] * P * P.log()).mean()), "averaged (.mean())"),
        (lambda P: 2.0, "lies between 0 and log"),  # a constant, above log 4
        # a start in float64 whatever P's dtype: the float32 chain shows it
        (lambda P: _by_power_iteration(P, dtype=torch.float64), "on 7 states (torch.float32)"),
    ],
)
def test_entropy_rate_rejects(wrong, diagnosis):
    assert_rejects(checks.check_entropy_rate, wrong, diagnosis=diagnosis)


# ---- 1.5 expected loss ----------------------------------------------------------------------------
def loss_reference(logits, P, pi):
    return float(-(pi[:, None] * P * logits.log_softmax(-1)).sum())


def loss_with(pi, P, log_q):
    return float(-(pi[:, None] * P * log_q).sum())


def test_expected_loss_accepts_reference():
    assert_accepts(checks.check_expected_loss, loss_reference)
    # soft-target cross-entropy, row by row, weighted by π; and log q in float32
    assert_accepts(
        checks.check_expected_loss,
        lambda L, P, pi: float(
            (pi * torch.nn.functional.cross_entropy(L, P, reduction="none")).sum()
        ),
    )
    assert_accepts(
        checks.check_expected_loss, lambda L, P, pi: loss_with(pi, P, L.float().log_softmax(-1))
    )


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda L, P, pi: float(-(pi[:, None] * P * L).sum()), "used as log-probabilities"),
        (lambda L, P, pi: float(-(pi[:, None] * P * L.log_softmax(0)).sum()), "dim=0"),
        (lambda L, P, pi: float(-(P * L.log_softmax(-1)).sum(-1).mean()), "averaged uniformly"),
        (lambda L, P, pi: -loss_reference(L, P, pi), "sign is flipped"),
        (lambda L, P, pi: circuits.expected_loss(L, P, pi), "withholds"),
        # exp of a logit in the hundreds is inf in float32, and inf / inf is NaN
        (
            lambda L, P, pi: loss_with(pi, P, (L.exp() / L.exp().sum(-1, keepdim=True)).log()),
            "overflows to inf",
        ),
        (lambda L, P, pi: loss_with(pi, P, L.flatten().log_softmax(0).view_as(L)), "whole table"),
        (lambda L, P, pi: float(-(pi[:, None] * P * L.log_softmax(-1)).mean()), "(.mean())"),
        (lambda L, P, pi: float(torch.nn.functional.cross_entropy(L, P)), "averaged uniformly"),
        (
            lambda L, P, pi: float(
                (pi[:, None] * P * (P.log() - L.double().log_softmax(-1))).sum()
            ),
            "that is the KL divergence",
        ),
        (  # its smallest probabilities underflow to 0 where the logits reach the hundreds
            lambda L, P, pi: float(-(pi[:, None] * P * L.softmax(-1).log()).sum()),
            "a softmax's smallest probabilities underflow to 0",
        ),
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
    assert_accepts(checks.check_best_rank_k, _rank_k_by_torch_svd)
    assert_accepts(checks.check_best_rank_k, lambda M, k: rank_k_reference(M.float(), k))


def _rank_k_by_torch_svd(M, k):  # torch.svd returns V, not Vh, and full matrices if asked
    U, S, V = torch.svd(M, some=False)
    return U[:, :k] @ torch.diag(S[:k]) @ V[:, :k].T


def _rank_k(kind):
    def fn(M, k):
        U, S, Vh = torch.linalg.svd(M, full_matrices=False)
        if kind == "smallest":
            return (U[:, -k:] * S[-k:]) @ Vh[-k:]
        if kind == "twice":
            return (U[:, :k] * S[:k] ** 2) @ Vh[:k]
        if kind == "k+1":
            return (U[:, : k + 1] * S[: k + 1]) @ Vh[: k + 1]
        if kind == "k-1":
            return (U[:, : k - 1] * S[: k - 1]) @ Vh[: k - 1]
        return U[:, :k] @ Vh[:k]

    return fn


@pytest.mark.parametrize(
    "kind, diagnosis",
    [
        ("smallest", "*smallest*"),
        ("twice", "applied twice"),
        ("k+1", "k + 1"),
        ("k-1", "k - 1 directions"),
        ("no S", "singular values are missing"),
    ],
)
def test_best_rank_k_rejects(kind, diagnosis):
    assert_rejects(checks.check_best_rank_k, _rank_k(kind), diagnosis=diagnosis)


def test_best_rank_k_refuses_fixed_k_and_the_reference():
    assert_rejects(checks.check_best_rank_k, lambda M, k: rank_k_reference(M, 2), diagnosis="k = 3")
    assert_rejects(checks.check_best_rank_k, circuits.best_rank_k, diagnosis="withholds")
    # the top-k right singular vectors from the course's row_space: the same answer, withheld
    assert_rejects(
        checks.check_best_rank_k,
        lambda M, k: M @ circuits.projector(circuits.row_space(M)[:k]),
        diagnosis="calls the course's `circuits.row_space`",
    )


def _rank_k_with_v_for_vh(M, k):  # torch.svd's V used as if it were Vh
    U, S, V = torch.svd(M)
    return (U[:, :k] * S[:k]) @ V[:k]


def _rank_k_squeezed(M, k):  # fine while k > 1; at k = 1, two vectors
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    return (U[:, :k] * S[:k]).squeeze() @ Vh[:k].squeeze()


def _rank_k_dropping_small_singular_values(M, k):  # an absolute threshold: wrong at small scales
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    S = torch.where(S > 1e-2, S, torch.zeros_like(S))
    return (U[:, :k] * S[:k]) @ Vh[:k]


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_rank_k_with_v_for_vh, "V was used where Vᵀ belongs"),
        (_rank_k_squeezed, "k = 1"),
        (_rank_k_dropping_small_singular_values, "a 5×8 matrix (torch.float32, entries up to 0.00"),
    ],
)
def test_best_rank_k_rejects_at_the_edges(wrong, diagnosis):
    assert_rejects(checks.check_best_rank_k, wrong, diagnosis=diagnosis)


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


def test_set_zero_layer_weights_accepts_data_of_the_models_dtype():
    def through_data(model, table):  # the same Parameter, new values of its dtype
        k = model.cfg.d_model
        U, S, Vh = torch.linalg.svd(table.float())
        model.embed.W_E.data = U[:, :k] * S[:k]
        model.unembed.W_U.data = Vh[:k].clone()

    assert_accepts(checks.check_set_zero_layer_weights, through_data)


def _top_k(table, k):
    U, S, Vh = torch.linalg.svd(table.float())
    return U[:, :k], S[:k], Vh[:k]


def _new_parameters(model, table):  # right values, but not in place
    U, S, Vh = _top_k(table, model.cfg.d_model)
    model.embed.W_E = torch.nn.Parameter(U * S)
    model.unembed.W_U = torch.nn.Parameter(Vh)


def _through_the_property(model, table):
    U, S, Vh = _top_k(table, model.cfg.d_model)
    model.W_E = U * S


def _a_tensor_for_a_parameter(model, table):
    U, S, Vh = _top_k(table, model.cfg.d_model)
    model.embed.W_E = U * S


def _on_a_copy(model, table):
    model = copy.deepcopy(model)
    handmade_split(model, table)
    return model


def _row_centred_first(model, table):
    handmade_split(model, table - table.mean(-1, keepdim=True))


def _tied(model, table):
    U, S, Vh = _top_k(table, model.cfg.d_model)
    model.embed.W_E.copy_(U * S.sqrt())
    model.unembed.W_U.copy_((U * S.sqrt()).T)


def _without_singular_values(model, table):
    U, S, Vh = _top_k(table, model.cfg.d_model)
    model.embed.W_E.copy_(U)
    model.unembed.W_U.copy_(Vh)


def _notebook_rank(model, table):  # the notebook's d_model = 4, built in
    U, S, Vh = _top_k(table, 4)
    model.embed.W_E.copy_(U * S)
    model.unembed.W_U.copy_(Vh)


def _config_changed(model, table):
    handmade_split(model, table)
    model.cfg = dataclasses.replace(model.cfg, n_ctx=model.cfg.n_ctx + 1)


def _by_row_space(model, table):  # the top-k right singular vectors from the course's helper
    basis = circuits.row_space(table)[: model.cfg.d_model]
    model.embed.W_E.copy_(table @ basis.T)
    model.unembed.W_U.copy_(basis)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_new_parameters, "W_E was replaced by a new Parameter"),
        (_through_the_property, "read-only views of the parameters"),
        (_a_tensor_for_a_parameter, "write into the parameter, in place"),
        (lambda model, table: None, "W_E @ W_U did not change"),
        (_on_a_copy, "W_E @ W_U did not change"),
        (_row_centred_first, "each row of the table was centred first"),
        (_tied, "W_U was set to W_Eᵀ"),
        (_without_singular_values, "the singular values are missing"),
        (_notebook_rank, "does your code assume sizes"),
        (_config_changed, "the model's config changed"),
        (_by_row_space, "calls the course's `circuits.row_space`"),
    ],
)
def test_set_zero_layer_weights_rejects_other_edits(wrong, diagnosis):
    assert_rejects(checks.check_set_zero_layer_weights, wrong, diagnosis=diagnosis)
