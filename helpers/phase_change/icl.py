"""The in-context-learning score: Olsson et al.'s "ICL score", the loss of a token late in a
sequence minus that of one early in it, and the positions it takes by default."""

from __future__ import annotations

import torch
from torch import Tensor

from helpers.models import AttnOnlyTransformer, next_token_loss
from helpers.references import reference


def icl_positions(n_ctx: int) -> tuple[int, int]:
    """(early, late) token positions of the ICL score for sequences of `n_ctx` tokens: about a
    tenth and nine tenths of the way in (Olsson et al. use the 50th and 500th of 512)."""
    if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx < 4:
        raise ValueError(f"n_ctx must be an int >= 4, got {n_ctx!r}")
    return max(1, round(0.1 * n_ctx)), min(n_ctx - 1, round(0.9 * n_ctx))


@reference
def icl_score_from_losses(losses: Tensor, early: int, late: int) -> float:
    """The in-context-learning score from per-token losses `[batch, pos - 1]` (entry i is the
    loss of predicting token i + 1): mean loss of the token at position `late` minus mean loss
    of the token at position `early`. Negative when later tokens are easier: Olsson et al.'s
    "in-context learning score", the loss of the 500th token minus that of the 50th (their text
    quotes amounts of in-context learning, early minus late, as positive numbers)."""
    if not isinstance(losses, Tensor) or losses.ndim != 2:
        raise ValueError("losses must be a [batch, pos - 1] tensor of per-token losses")
    n = losses.shape[1] + 1
    for name, position in (("early", early), ("late", late)):
        if not isinstance(position, int) or isinstance(position, bool) or not 1 <= position < n:
            raise ValueError(f"{name} must be a token position in 1..{n - 1}, got {position!r}")
    if early >= late:
        raise ValueError(f"early ({early}) must come before late ({late})")
    return float(losses[:, late - 1].mean().detach() - losses[:, early - 1].mean().detach())


@reference
@torch.no_grad()
def icl_score(
    model: AttnOnlyTransformer, tokens: Tensor, early: int | None = None, late: int | None = None
) -> float:
    """The model's ICL score on `tokens` (held-out sequences from the training distribution);
    positions default to `icl_positions` of the sequence length."""
    tokens = model.validate_tokens(tokens)
    default = icl_positions(tokens.shape[1])
    early, late = default[0] if early is None else early, default[1] if late is None else late
    losses = next_token_loss(model(tokens), tokens, per_token=True)
    return icl_score_from_losses(losses, early, late)


@reference
def icl_band_score(losses: Tensor, early: int, late: int, half_width: int) -> float:
    """The ICL score over bands of positions: mean loss of the tokens at positions
    `late ± half_width` minus that of the tokens at `early ± half_width` (`losses` as for
    `icl_score_from_losses`). On real text one position's loss depends on which token happens to
    sit there, and even a few hundred sequences leave the single-position score noisy; a band
    averages that away and measures the same trend."""
    if not isinstance(half_width, int) or isinstance(half_width, bool) or half_width < 0:
        raise ValueError(f"half_width must be an int >= 0, got {half_width!r}")
    icl_score_from_losses(losses, early, late)  # checks the losses and the positions
    n = losses.shape[1] + 1
    if (
        early - half_width < 1
        or late + half_width > n - 1
        or early + half_width >= late - half_width
    ):
        raise ValueError(
            f"the bands {early}±{half_width} and {late}±{half_width} must lie in 1..{n - 1} "
            "and not overlap"
        )
    band = torch.arange(-half_width, half_width + 1)
    return float(losses[:, late - 1 + band].mean() - losses[:, early - 1 + band].mean())
