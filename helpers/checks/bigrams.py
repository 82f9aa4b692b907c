"""Checkers of chapter 01: bigram counts, log-probabilities, the zero-layer circuit."""

from __future__ import annotations

from collections.abc import Callable

import torch

from helpers.checks._base import (
    CheckFailed,
    _diagnose,
    _expect_tensor,
    _passed,
    _tiny_model,
    checker,
)
from helpers.circuits import direct_path
from helpers.data import BigramLanguage, next_token_counts


@checker
def check_count_bigrams(count_bigrams: Callable) -> None:
    """Exercise 1.1: `count_bigrams(tokens, d_vocab) -> [d_vocab, d_vocab]` integer counts."""
    ex = "Exercise 1.1 (count_bigrams)"
    lang = BigramLanguage(n_states=5, seed=7)
    tokens = lang.sample(6, 9, generator=torch.Generator().manual_seed(3))
    V = lang.d_vocab
    out = _expect_tensor(ex, "count_bigrams", count_bigrams(tokens, V), (V, V), False)
    expected = next_token_counts(tokens, V)
    flat = tokens.flatten()
    mistakes = {
        "rows and columns are swapped: counts[current, next], so row = the current token.": expected.T,
        "the tokens were flattened before pairing, so the last token of each sequence was "
        "paired with the BOS of the next sequence. Pair within each row: tokens[:, :-1] with "
        "tokens[:, 1:].": next_token_counts(flat[None], V),
        "only the first sequence was counted; count every sequence in the batch.": next_token_counts(
            tokens[:1], V
        ),
    }
    _diagnose(ex, out, expected, mistakes, atol=0)
    if int(out.sum()) != tokens.shape[0] * (tokens.shape[1] - 1):
        raise CheckFailed(ex, "the counts do not add up to the number of consecutive pairs.")
    _passed(ex, f"{int(expected.sum())} pairs counted correctly.")


@checker
def check_empirical_log_probs(empirical_log_probs: Callable) -> None:
    """Exercise 1.2: `empirical_log_probs(counts) -> [d_vocab, d_vocab]` log P(next | current)."""
    ex = "Exercise 1.2 (empirical_log_probs)"
    counts = torch.randint(1, 50, (6, 6), generator=torch.Generator().manual_seed(4))
    out = _expect_tensor(ex, "empirical_log_probs", empirical_log_probs(counts), (6, 6), True)
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
    _diagnose(ex, out.detach(), expected, mistakes)
    _passed(ex, "each row is log P(next | current).")


@checker
def check_zero_layer_circuit(zero_layer_circuit: Callable) -> None:
    """Exercise 1.3: `zero_layer_circuit(model) -> [d_vocab (current), d_vocab (next)]`."""
    ex = "Exercise 1.3 (zero_layer_circuit)"
    model = _tiny_model(seed=5, n_layers=0, n_heads=0, d_model=8, d_vocab=9)
    out = _expect_tensor(ex, "zero_layer_circuit", zero_layer_circuit(model), (9, 9), True)
    expected = direct_path(model)
    mistakes = {
        "the matrix is transposed: in the row convention it is W_E @ W_U, with row = current "
        "token and column = next-token logit (the paper writes W_U W_E).": expected.T,
        "these are probabilities: the circuit is the logits, before any softmax.": expected.softmax(
            -1
        ),
        "these are log-probabilities: the circuit is the raw logits, before log_softmax.": expected.log_softmax(
            -1
        ),
    }
    _diagnose(ex, out.detach(), expected, mistakes)
    _passed(ex, "W_E @ W_U, row = current token.")
