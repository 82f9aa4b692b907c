"""The bigram language: a Markov chain with a planted transition matrix (chapters 01, 03-04)."""

from __future__ import annotations

import torch
from torch import Tensor

from helpers.data._common import (
    BOS,
    Language,
    _check_positive_int,
    bigram_state_labels,
    entropy_rate,
    stationary_distribution,
)


class BigramLanguage(Language):
    """A Markov chain over `n_states` tokens with a planted transition matrix.

    Token ids: 0 is BOS, 1..n_states are the chain's states, labelled "a", "b", … . A sequence is
    BOS followed by a run of the chain started from its stationary distribution, so every
    transition in it is drawn from the same distribution and the best possible loss on predicting
    a token from its predecessor is exactly the chain's entropy rate.

    The log-transition matrix is planted with decaying singular values (`decay` per mode), so a
    model whose d_model is smaller than the vocabulary can still capture most of it: which is the
    point of the rank-limited part of chapter 01. For example, with n_states=3 a sequence reads
    `[0, 2, 3, 3, 1, …]`, i.e. "<BOS> b c c a …".
    """

    name = "bigram"

    def __init__(self, n_states: int = 26, scale: float = 3.0, decay: float = 0.75, seed: int = 0):
        _check_positive_int("n_states", n_states)
        if n_states < 2:
            raise ValueError(f"n_states must be at least 2, got {n_states}")
        if not scale > 0 or not 0 < decay <= 1:
            raise ValueError(f"need scale > 0 and 0 < decay <= 1, got scale={scale}, decay={decay}")
        self.n_states, self.scale, self.decay, self.seed = n_states, scale, decay, seed
        self.generator = torch.Generator().manual_seed(seed)
        g = torch.randn(n_states, n_states, generator=self.generator, dtype=torch.float64)
        u, _, vh = torch.linalg.svd(g)
        # Singular values decay geometrically; their overall size makes the entries' std = scale.
        singular = decay ** torch.arange(n_states, dtype=torch.float64)
        singular *= scale * n_states / singular.norm()
        logits = (u * singular) @ vh  # [state, next_state]
        self.transition_matrix = logits.softmax(dim=-1)  # rows sum to 1
        self.stationary = stationary_distribution(self.transition_matrix)

    @property
    def d_vocab(self) -> int:
        return self.n_states + 1

    def _labels(self) -> list[str]:
        return bigram_state_labels(self.n_states)

    def log_probs(self) -> Tensor:
        """True log P(next | current) over the vocabulary: `[d_vocab, d_vocab]`.

        Row BOS holds the stationary distribution (the first token after BOS); column BOS is
        -inf (BOS never follows anything).
        """
        V = self.d_vocab
        out = torch.full((V, V), float("-inf"), dtype=torch.float64)
        out[BOS, 1:] = self.stationary.log()
        out[1:, 1:] = self.transition_matrix.log()
        return out

    def entropy_rate(self) -> float:
        """H = -Σ_i π_i Σ_j P_ij log P_ij, in nats per token (`entropy_rate`)."""
        return entropy_rate(self.transition_matrix)

    def _sample(self, batch_size: int, n_ctx: int, gen: torch.Generator) -> Tensor:
        """BOS, then n_ctx - 1 steps of the chain; vectorised over the batch (one draw per
        position for all sequences at once)."""
        cum_P = self.transition_matrix.float().cumsum(dim=-1)  # [state, next_state]
        cum_pi = self.stationary.float().cumsum(dim=0)
        u = torch.rand(n_ctx, batch_size, 1, generator=gen)  # [pos, batch, 1]
        tokens = torch.empty(batch_size, n_ctx, dtype=torch.long)
        tokens[:, 0] = BOS
        if n_ctx > 1:
            # clamp: float rounding can leave cum[-1] a hair below u
            state = torch.searchsorted(cum_pi, u[1]).clamp_max(self.n_states - 1)[:, 0]
            tokens[:, 1] = state + 1
            for pos in range(2, n_ctx):
                row = cum_P[state]  # [batch, next_state]
                state = torch.searchsorted(row, u[pos]).clamp_max(self.n_states - 1)
                state = state[:, 0]
                tokens[:, pos] = state + 1
        return tokens

    def _truth(self) -> dict:
        return {
            "transition_matrix": self.transition_matrix.clone(),
            "entropy_rate": self.entropy_rate(),
        }
