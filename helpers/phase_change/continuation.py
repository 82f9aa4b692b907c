"""Dursleys and "Mrs Potter": `continuation_kinds` splits the tokens of sequences into those
that repeat an earlier bigram and those that contradict one."""

from __future__ import annotations

import torch
from torch import Tensor

from helpers.data import BOS
from helpers.references import reference


@reference
def continuation_kinds(tokens: Tensor) -> tuple[Tensor, Tensor]:
    """(repeats, conflicts), both `[batch, pos]` bool: token t repeats an earlier bigram when the
    token before it, t - 1, occurred earlier and was followed there by the same token as now (the
    paper's " The Dursleys" the second time); it conflicts when the most recent earlier
    occurrence of token t - 1 was followed by a different token (the first " Mrs Potter" after
    two " Mrs Dursley"). BOS and the first token are neither."""
    if not isinstance(tokens, Tensor) or tokens.ndim != 2:
        raise ValueError("tokens must be a [batch, pos] tensor of token ids")
    batch, n = tokens.shape
    previous = tokens[:, :-1]  # token t - 1 for t = 1..n-1
    # same[b, t, j]: token at j (< t - 1) equals token t - 1
    same = previous[:, :, None] == previous[:, None, :]
    earlier = torch.ones(n - 1, n - 1).tril(-1).bool()
    occurs = same & earlier & (previous[:, None, :] != BOS)
    any_earlier = occurs.any(-1)
    # the most recent earlier occurrence j, and what followed it (token j + 1)
    latest = torch.where(occurs, torch.arange(n - 1), -1).amax(-1).clamp_min(0)
    followed_by = tokens.gather(1, latest + 1)
    now = tokens[:, 1:]
    repeats = torch.zeros(batch, n, dtype=torch.bool)
    conflicts = torch.zeros(batch, n, dtype=torch.bool)
    repeats[:, 1:] = any_earlier & (followed_by == now)
    conflicts[:, 1:] = any_earlier & (followed_by != now)
    return repeats, conflicts
