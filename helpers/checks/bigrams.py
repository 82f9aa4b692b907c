"""Checkers of chapter 01: bigram counts, log-probabilities, the zero-layer circuit, the entropy
rate, the expected loss of a table, the best rank-k approximation."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from helpers import attribution, circuits, handmade
from helpers.checks._base import (
    Case,
    CheckFailed,
    call_learner,
    check_cases,
    checker,
    diagnose,
    draw_seed,
    generator,
    passed,
    random_models,
)
from helpers.data import BigramLanguage, next_token_counts, stationary_distribution
from helpers.data import entropy_rate as data_entropy_rate


@checker
def check_count_bigrams(count_bigrams: Callable) -> None:
    """Exercise 1.1: `count_bigrams(tokens, d_vocab) -> [d_vocab, d_vocab]` integer counts."""
    ex = "Exercise 1.1 (count_bigrams)"
    seed = draw_seed()
    cases = []
    # the second vocabulary is larger than the tokens drawn need: its last ids never occur, so
    # the table's size must come from d_vocab, not from the tokens
    for i, (n_states, unused) in enumerate(((5, 0), (8, 3))):
        lang = BigramLanguage(n_states=n_states, seed=seed + i)
        tokens = lang.sample(6 + i, 9 + i, generator=generator(seed + 10 + i))
        V = lang.d_vocab + unused
        expected = next_token_counts(tokens, V)
        mistakes = {
            "rows and columns are swapped: counts[current, next], so row = the current token.": (
                expected.T
            ),
            "the tokens were flattened before pairing, so the last token of each sequence was "
            "paired with the BOS of the next sequence. Pair within each row: tokens[:, :-1] with "
            "tokens[:, 1:].": next_token_counts(tokens.flatten()[None], V),
            "only the first sequence was counted; count every sequence in the batch.": (
                next_token_counts(tokens[:1], V)
            ),
            "each pair was counted once however often it occurs: `counts[a, b] += 1` with "
            "tensors of indices writes each cell once. Use `counts.index_put_((a, b), ones, "
            "accumulate=True)` or `torch.bincount`.": (next_token_counts(tokens, V) > 0).long(),
        }
        cases.append(Case((tokens, V), expected, mistakes, f"d_vocab = {V}"))
    # integer counts: the learner's answer must be integers too, and is compared exactly
    check_cases(ex, count_bigrams, "count_bigrams", cases, withhold=[next_token_counts], atol=0)
    passed(ex, "counted the consecutive pairs of two random batches exactly.")


@checker
def check_empirical_log_probs(empirical_log_probs: Callable) -> None:
    """Exercise 1.2: `empirical_log_probs(counts) -> [d_vocab, d_vocab]` log P(next | current)."""
    ex = "Exercise 1.2 (empirical_log_probs)"
    seed = draw_seed()
    cases = []
    for i, n in enumerate((6, 9)):
        counts = torch.randint(0, 50, (n, n), generator=generator(seed + i))
        counts[:, 0] = 0  # a token that never follows anything (like BOS): log P = -inf
        counts[torch.arange(n), 1 + torch.arange(n) % (n - 1)] += 1  # no empty row
        c = counts.double()
        expected = (c / c.sum(-1, keepdim=True)).log()
        mistakes = {
            "each column sums to 1 instead of each row: normalise over the next token (dim=-1), "
            "since row = current token.": (c / c.sum(0, keepdim=True)).log(),
            "these are log P(current, next), the joint; divide each row by its own total to get "
            "P(next | current).": (c / c.sum()).log(),
            "these are probabilities, not log-probabilities.": c / c.sum(-1, keepdim=True),
            "these are the log counts, not normalised.": c.log(),
            "the row totals were divided along the wrong axis: `c / c.sum(-1)` divides column "
            "j by row j's total. Keep the axis: `c.sum(-1, keepdim=True)`.": (c / c.sum(-1)).log(),
        }
        cases.append(Case((counts,), expected, mistakes, f"{n} tokens"))
    check_cases(ex, empirical_log_probs, "empirical_log_probs", cases, atol=1e-5)
    passed(
        ex,
        "each row is log P(next | current) (-inf where a pair never occurs), for two random count tables.",
    )


@checker
def check_zero_layer_circuit(zero_layer_circuit: Callable) -> None:
    """Exercise 1.3: `zero_layer_circuit(model) -> [d_vocab (current), d_vocab (next)]`."""
    ex = "Exercise 1.3 (zero_layer_circuit)"
    cases = []
    for model in random_models(draw_seed(), n_layers=0, n_heads=0):
        expected = circuits.direct_path(model)
        mistakes = {
            "the matrix is transposed: in the row convention it is W_E @ W_U, with row = current "
            "token and column = next-token logit (the paper writes W_U W_E).": expected.T,
            "these are probabilities: the circuit is the logits, before any softmax.": (
                expected.softmax(-1)
            ),
            "these are log-probabilities: the circuit is the raw logits, before log_softmax.": (
                expected.log_softmax(-1)
            ),
        }
        hint = "that is d_model × d_model, W_U @ W_E; the circuit goes from tokens to logits, W_E @ W_U."
        cases.append(
            Case((model,), expected, mistakes, shape_hints={(model.cfg.d_model,) * 2: hint})
        )
    check_cases(
        ex,
        zero_layer_circuit,
        "zero_layer_circuit",
        cases,
        withhold=[
            circuits.direct_path,
            attribution.direct_path_logits,
            attribution.logit_contributions,
        ],
        block_forward=True,
        atol=1e-5,
    )
    passed(ex, "W_E @ W_U, row = current token, for two random zero-layer models.")


def _mixing_chain(n: int, scale: float, seed: int) -> Tensor:
    """A planted chain that mixes within a few hundred steps (second eigenvalue's modulus at most
    0.9), so that the hint's power iteration converges as well as an eigensolver, and whose
    eigenvalue 1 is not the first that `torch.linalg.eig(P.T)` lists (so that taking the first
    eigenvector cannot pass by luck)."""
    for attempt in range(100):
        P = BigramLanguage(n_states=n, scale=scale, seed=seed + attempt).transition_matrix
        values = torch.linalg.eigvals(P.T)
        if values.abs().sort(descending=True).values[1] <= 0.9 and (values[0] - 1).abs() > 1e-6:
            return P
    raise RuntimeError("no chain found")  # not reached: most draws mix this fast


@checker
def check_entropy_rate(entropy_rate: Callable) -> None:
    """Exercise 1.4: `entropy_rate(P) -> float`, nats per step of the Markov chain with
    row-stochastic transition matrix P: its stationary distribution π (π P = π), then
    H = -Σ_i π_i Σ_j P_ij log P_ij."""
    ex = "Exercise 1.4 (entropy_rate)"
    seed = draw_seed()
    cases = []
    for i, n in enumerate((4, 7, 10)):
        P = _mixing_chain(n, 2.5 + i, seed + 100 * i)
        pi = stationary_distribution(P)
        rows = -(P * P.log()).sum(-1)  # the entropy of each row
        H = float(pi @ rows)
        mistakes = [
            ("each row's entropy was averaged uniformly: weight row i by π_i, the stationary "
             "distribution (the left eigenvector of P with eigenvalue 1, π P = π).", float(rows.mean())),
            ("that is in bits (log base 2); the course works in nats (natural log).", H / math.log(2)),
            ("the sign is flipped: an entropy is -Σ p log p >= 0.", -H),
            ("that is the entropy of the stationary distribution alone, -Σ π log π; the entropy "
             "rate is the average uncertainty of the next state, Σ_i π_i H(P_i).",
             float(-(pi * pi.log()).sum())),
        ]  # fmt: skip
        values, vectors = torch.linalg.eig(P.T)
        first = vectors[:, 0].real / vectors[:, 0].real.sum()
        mistakes.append((
            "π is the eigenvector listed first; torch.linalg.eig returns eigenvalues in no "
            "particular order: take the one whose eigenvalue is closest to 1.",
            float(first @ rows),
        ))  # fmt: skip
        mistakes.append((
            "π lined up with the next state (columns) instead of the current one (rows): "
            "weight row i by π_i, `pi[:, None] * P`.", float(-(pi * P * P.log()).sum()),
        ))  # fmt: skip
        unit = "π was normalised to unit length; a distribution sums to 1: divide by π.sum()."
        mistakes += [(unit, H / float(pi.norm())), (unit, -H / float(pi.norm()))]
        near = (
            "Close: is π exact? Check that π @ P equals π to 1e-9 (power iteration needs enough "
            "steps) and that π sums to 1."
        )
        cases.append(Case((P.clone(),), H, mistakes, f"{n} states", near_miss=near))
    check_cases(
        ex, entropy_rate, "entropy_rate", cases,
        withhold=[data_entropy_rate, stationary_distribution, circuits.expected_loss],
        what="a float (nats)",
    )  # fmt: skip
    passed(ex, "right for three random chains.")


@checker
def check_expected_loss(expected_loss: Callable) -> None:
    """Exercise 1.5: `expected_loss(logits, P, pi) -> float`, the cross-entropy (nats) of
    predicting a Markov chain's next state with the fixed table `logits[current, next]`."""
    ex = "Exercise 1.5 (expected_loss)"
    seed = draw_seed()
    cases = []
    for i, n in enumerate((5, 8)):
        P = BigramLanguage(n_states=n, seed=seed + i).transition_matrix
        pi = stationary_distribution(P)
        logits = torch.randn(n, n, generator=generator(seed + 10 + i), dtype=torch.float64) * 2
        log_q = logits.log_softmax(-1)
        loss = circuits.expected_loss(logits, P, pi)
        mistakes = [
            ("the logits were used as log-probabilities: apply log_softmax over each row first.",
             float(-(pi[:, None] * P * logits).sum())),
            ("the softmax ran over the current token (dim=0); each row (a current token) is a "
             "distribution over next tokens.", float(-(pi[:, None] * P * logits.log_softmax(0)).sum())),
            ("the rows were averaged uniformly: weight row i by π_i, how often the chain is in "
             "state i.", float(-(P * log_q).sum(-1).mean())),
            ("the sign is flipped: cross-entropy is -Σ π_i P_ij log q_ij >= 0.",
             float((pi[:, None] * P * log_q).sum())),
            ("π lined up with the next state (columns) instead of the current one (rows): "
             "`pi[:, None] * P`.", float(-(pi * P * log_q).sum())),
        ]  # fmt: skip
        near = "Close: use the `pi` you are given (exact), rather than one you estimated."
        cases.append(Case((logits, P, pi), loss, mistakes, f"{n} states", near_miss=near))
    check_cases(
        ex, expected_loss, "expected_loss", cases,
        withhold=[circuits.expected_loss], what="a float (nats)",
    )  # fmt: skip
    passed(ex, "right for two random chains and logit tables.")


@checker
def check_best_rank_k(best_rank_k: Callable) -> None:
    """Exercise 1.6: `best_rank_k(M, k) -> Tensor`, the best rank-k approximation of M in
    Frobenius norm (Eckart–Young: its truncated SVD)."""
    ex = "Exercise 1.6 (best_rank_k)"
    seed = draw_seed()
    cases = []
    for i, (shape, k) in enumerate((((7, 7), 2), ((9, 6), 3), ((6, 10), 4))):
        M = torch.randn(*shape, generator=generator(seed + i), dtype=torch.float64)
        U, S, Vh = torch.linalg.svd(M, full_matrices=False)
        mistakes = {
            "these are the k *smallest* singular directions; Eckart–Young keeps the largest (the "
            "first k: torch.linalg.svd sorts them in descending order).": (U[:, -k:] * S[-k:])
            @ Vh[-k:],
            "the singular values were applied twice (U S and S Vᵀ): multiply them in once.": (
                U[:, :k] * S[:k] ** 2
            )
            @ Vh[:k],
            "that keeps k + 1 directions.": (U[:, : k + 1] * S[: k + 1]) @ Vh[: k + 1],
            "the singular values are missing: U_k S_k V_kᵀ.": U[:, :k] @ Vh[:k],
        }
        expected = circuits.best_rank_k(M, k)
        cases.append(Case((M, k), expected, mistakes, f"a {shape[0]}×{shape[1]} matrix, k = {k}"))
    check_cases(ex, best_rank_k, "best_rank_k", cases, withhold=[circuits.best_rank_k], atol=1e-5)
    passed(ex, "the truncated SVD for three random matrices and ranks.")


@checker
def check_set_zero_layer_weights(set_zero_layer_weights: Callable) -> None:
    """Exercise 1.7: `set_zero_layer_weights(model, table)` sets a zero-layer model's W_E and W_U
    (in place) so that W_E @ W_U is the table's best rank-d_model approximation."""
    ex = "Exercise 1.7 (set_zero_layer_weights)"
    seed = draw_seed()
    for i, (V, k) in enumerate(((9, 3), (12, 5))):
        model = random_models(seed + i, 1, n_layers=0, n_heads=0, d_vocab=V, d_model=k)[0]
        table = torch.randn(V, V, generator=generator(seed + 10 + i))
        U, S, Vh = torch.linalg.svd(table.double())
        expected = circuits.best_rank_k(table.double(), k)
        mistakes = {
            "W_E @ W_U keeps the k smallest singular directions; Eckart–Young keeps the largest.": (
                (U[:, -k:] * S[-k:]) @ Vh[-k:]
            ),
            "the singular values went in twice (W_E = U S and W_U = S Vᵀ): split them, e.g. √S "
            "into each, or S into one of the two.": (U[:, :k] * S[:k] ** 2) @ Vh[:k],
            "W_E @ W_U is the transpose of the approximation: row = current token (W_E), "
            "column = next token (W_U).": expected.T,
        }
        W_pos, cfg = model.W_pos.detach().clone(), model.cfg
        with torch.no_grad():
            call_learner(
                ex, set_zero_layer_weights, model, table.clone(),
                withhold=[handmade.set_zero_layer_weights, circuits.best_rank_k], clone=False,
            )  # fmt: skip
        if not torch.equal(model.W_pos.detach(), W_pos):
            raise CheckFailed(ex, "only W_E and W_U are yours to set; W_pos changed.")
        if model.cfg != cfg:
            raise CheckFailed(ex, "the model's config changed; set the weights, keep its sizes.")
        for name, shape in (("W_E", (V, k)), ("W_U", (k, V))):
            if getattr(model, name).dtype != W_pos.dtype:
                raise CheckFailed(
                    ex, f"{name} is now {getattr(model, name).dtype}; the model's weights are "
                    f"{W_pos.dtype}. Copy the factors into the weights, `model.{name}.copy_(...)`, "
                    "which converts them, rather than replacing `.data`.",
                )  # fmt: skip
            got = tuple(getattr(model, name).shape)
            if got != shape:
                raise CheckFailed(
                    ex,
                    f"d_vocab {V}, d_model {k}: {name} now has shape {got}; it must keep its "
                    f"shape {shape} (d_model = {k} is the rank the model can hold: copy the "
                    f"factors into it, e.g. model.{name}.copy_(...)).",
                )
        product = (model.W_E @ model.W_U).detach()
        diagnose(ex, product, expected, mistakes, atol=1e-4, where=f"d_vocab {V}, d_model {k}")
    passed(ex, "W_E @ W_U is the truncated SVD, for two random tables and widths.")
