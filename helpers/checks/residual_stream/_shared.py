"""What the exercises of chapter 00 share."""

from __future__ import annotations

import torch
from torch import Tensor

from helpers.checks._base import (
    random_models,
    random_tokens,
)


def models_and_caches(seed: int, n_layers: int = 1):
    """Two random models of different sizes, and their activations on random tokens (two
    sequences each)."""
    for i, model in enumerate(random_models(seed, n_layers=n_layers)):
        _, cache = model.run_with_cache(random_tokens(model, seed + 10 + i, batch=2))
        yield model, cache


def causal_mask(n: int) -> Tensor:
    """`[query, key]`: True where a query may look (keys up to its own position)."""
    return torch.ones(n, n, dtype=torch.bool).tril()
