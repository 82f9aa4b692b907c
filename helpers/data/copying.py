"""The copying language: each sequence repeats a few tokens (chapter 00)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from helpers.data._common import BOS, Language, _check_positive_int, bigram_state_labels


class CopyingLanguage(Language):
    """Each sequence picks `k` distinct tokens at random and then draws every token uniformly from
    them: the only way to predict a sequence is to copy tokens seen earlier in it.

    Token ids: 0 is BOS, 1..n_states are labelled "a", "b", … . For example, with k=2 a sequence
    might read "<BOS> q d d q q d …". Once both of its tokens have been seen, the best possible
    loss is ln k per token; a model that cannot look back can do no better than ln n_states.
    """

    name = "copying"

    def __init__(self, n_states: int = 26, k: int = 4, seed: int = 0):
        _check_positive_int("n_states", n_states)
        _check_positive_int("k", k)
        if k > n_states:
            raise ValueError(f"k must be at most n_states={n_states}, got {k}")
        self.n_states, self.k, self.seed = n_states, k, seed
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def d_vocab(self) -> int:
        return self.n_states + 1

    def _labels(self) -> list[str]:
        return bigram_state_labels(self.n_states)

    def _sample(self, batch_size: int, n_ctx: int, gen: torch.Generator) -> Tensor:
        """BOS, then draws from each sequence's k tokens."""
        # k distinct tokens per sequence: the first k of a random permutation (argsort of noise)
        subsets = torch.rand(batch_size, self.n_states, generator=gen).argsort(dim=-1)[:, : self.k]
        picks = torch.randint(0, self.k, (batch_size, n_ctx - 1), generator=gen)
        return torch.cat([torch.full((batch_size, 1), BOS), subsets.gather(1, picks) + 1], dim=1)

    def _truth(self) -> dict:
        return {"optimal_loss_once_seen": math.log(self.k)}
