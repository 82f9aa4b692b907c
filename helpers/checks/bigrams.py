"""Checkers of chapter 01: bigram counts, log-probabilities, the zero-layer circuit."""

from __future__ import annotations

from collections.abc import Callable

import torch

from helpers import circuits
from helpers.checks._base import (
    CheckFailed,
    call_learner,
    checker,
    diagnose,
    draw_seed,
    expect_tensor,
    generator,
    passed,
    random_model,
)
from helpers.data import BigramLanguage, next_token_counts


@checker
def check_count_bigrams(count_bigrams: Callable) -> None:
    """Exercise 1.1: `count_bigrams(tokens, d_vocab) -> [d_vocab, d_vocab]` integer counts."""
    ex = "Exercise 1.1 (count_bigrams)"
    seed = draw_seed()
    for i, n_states in enumerate((5, 8)):
        lang = BigramLanguage(n_states=n_states, seed=seed + i)
        tokens = lang.sample(6 + i, 9 + i, generator=generator(seed + 10 + i))
        V = lang.d_vocab
        expected = next_token_counts(tokens, V)
        flat = tokens.flatten()
        mistakes = {
            "rows and columns are swapped: counts[current, next], so row = the current token.": (
                expected.T
            ),
            "the tokens were flattened before pairing, so the last token of each sequence was "
            "paired with the BOS of the next sequence. Pair within each row: tokens[:, :-1] with "
            "tokens[:, 1:].": next_token_counts(flat[None], V),
            "only the first sequence was counted; count every sequence in the batch.": (
                next_token_counts(tokens[:1], V)
            ),
        }
        out = call_learner(ex, count_bigrams, tokens, V, withhold=[next_token_counts])
        out = expect_tensor(ex, "count_bigrams", out, (V, V), floating=False)
        diagnose(ex, out, expected, mistakes, atol=0)
    passed(ex, "counted the consecutive pairs of two random batches exactly.")


@checker
def check_empirical_log_probs(empirical_log_probs: Callable) -> None:
    """Exercise 1.2: `empirical_log_probs(counts) -> [d_vocab, d_vocab]` log P(next | current)."""
    ex = "Exercise 1.2 (empirical_log_probs)"
    seed = draw_seed()
    for i, n in enumerate((6, 9)):
        counts = torch.randint(1, 50, (n, n), generator=generator(seed + i))
        c = counts.double()
        expected = (c / c.sum(-1, keepdim=True)).log()
        mistakes = {
            "each column sums to 1 instead of each row: normalise over the next token (dim=-1), "
            "since row = current token.": (c / c.sum(0, keepdim=True)).log(),
            "these are log P(current, next), the joint; divide each row by its own total to get "
            "P(next | current).": (c / c.sum()).log(),
            "these are probabilities, not log-probabilities.": c / c.sum(-1, keepdim=True),
            "these are the log counts, not normalised.": c.log(),
        }
        out = call_learner(ex, empirical_log_probs, counts)
        out = expect_tensor(ex, "empirical_log_probs", out, (n, n))
        diagnose(ex, out, expected, mistakes)
    passed(ex, "each row is log P(next | current), for two random count tables.")


@checker
def check_zero_layer_circuit(zero_layer_circuit: Callable) -> None:
    """Exercise 1.3: `zero_layer_circuit(model) -> [d_vocab (current), d_vocab (next)]`."""
    ex = "Exercise 1.3 (zero_layer_circuit)"
    seed = draw_seed()
    for i in range(2):
        model = random_model(seed + i, n_layers=0, n_heads=0)
        V = model.cfg.d_vocab
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
        out = call_learner(ex, zero_layer_circuit, model, withhold=[circuits.direct_path])
        if isinstance(out, torch.Tensor) and out.shape == (model.cfg.d_model, model.cfg.d_model):
            raise CheckFailed(
                ex,
                "this is d_model × d_model: W_U @ W_E. The circuit goes from tokens to "
                "logits, W_E @ W_U, [d_vocab, d_vocab].",
            )
        out = expect_tensor(ex, "zero_layer_circuit", out, (V, V))
        diagnose(ex, out, expected, mistakes)
    passed(ex, "W_E @ W_U, row = current token, for two random zero-layer models.")
