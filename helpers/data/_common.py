"""What every language shares: the BOS token, labels, counting."""

from __future__ import annotations

import string

import torch
from torch import Tensor

BOS = 0


def _check_positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def bigram_state_labels(n: int) -> list[str]:
    letters = string.ascii_lowercase
    if n <= len(letters):
        return list(letters[:n])
    return [f"t{i}" for i in range(1, n + 1)]


def stationary_distribution(P: Tensor) -> Tensor:
    """π with π P = π and Σπ = 1, for a row-stochastic matrix P with all entries > 0."""
    evals, evecs = torch.linalg.eig(P.T)
    i = int(torch.argmin((evals - 1).abs()))
    pi = evecs[:, i].real
    return pi / pi.sum()


def next_token_counts(tokens: Tensor, d_vocab: int) -> Tensor:
    """Counts of (current, next) pairs of consecutive tokens: `[d_vocab, d_vocab]`, row = current."""
    cur, nxt = tokens[..., :-1].reshape(-1), tokens[..., 1:].reshape(-1)
    return torch.bincount(cur * d_vocab + nxt, minlength=d_vocab * d_vocab).view(d_vocab, d_vocab)
