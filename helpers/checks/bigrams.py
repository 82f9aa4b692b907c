"""Checkers of chapter 01: bigram counts, log-probabilities, the zero-layer circuit."""

from __future__ import annotations

from collections.abc import Callable

import torch

from helpers import attribution, circuits
from helpers.checks._base import (
    Case,
    check_cases,
    checker,
    draw_seed,
    generator,
    passed,
    random_models,
)
from helpers.data import BigramLanguage, next_token_counts


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
