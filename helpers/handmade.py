"""A tiny two-layer model whose weights are set by hand: a previous-token head and an induction
head, built from the recipe of the framework paper ("How Induction Heads Work") and Anthropic's
pen-and-paper exercises, made runnable.

The residual stream is split into named subspaces, so every weight has a readable job:

    token    [0, V)          the current token, one-hot (written by W_E)
    previous [V, 2V)         the previous token, one-hot (written by the previous-token head)
    output   [2V, 3V)        the predicted next token (written by the induction head, read by W_U)
    position [3V, 3V + n)    the position, one-hot (W_pos; shortformer: seen by queries and keys only)

`blank_model()` sets W_E, W_pos and W_U and leaves both heads at zero; the learner fills in
layer 0 (attend to the previous position, copy its token into `previous`) and layer 1 (attend to
the position whose `previous` token equals the current token, copy that position's token into
`output`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from helpers.models import AttnOnlyTransformer, HookedTransformerConfig


@dataclass(frozen=True)
class Layout:
    d_vocab: int = 12
    n_ctx: int = 25
    logit_scale: float = 10.0

    @property
    def token(self) -> slice:
        return slice(0, self.d_vocab)

    @property
    def previous(self) -> slice:
        return slice(self.d_vocab, 2 * self.d_vocab)

    @property
    def output(self) -> slice:
        return slice(2 * self.d_vocab, 3 * self.d_vocab)

    @property
    def position(self) -> slice:
        return slice(3 * self.d_vocab, 3 * self.d_vocab + self.n_ctx)

    @property
    def d_model(self) -> int:
        return 3 * self.d_vocab + self.n_ctx

    @property
    def d_head(self) -> int:
        return max(self.d_vocab, self.n_ctx)


@torch.no_grad()
def blank_model(layout: Layout = Layout()) -> AttnOnlyTransformer:
    """Two layers of one head each, all head weights zero; embeddings and unembedding set."""
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=layout.d_model,
        n_heads=1,
        d_head=layout.d_head,
        n_ctx=layout.n_ctx,
        d_vocab=layout.d_vocab,
    )
    model = AttnOnlyTransformer(cfg)
    for p in model.parameters():
        p.zero_()
    V, n = layout.d_vocab, layout.n_ctx
    model.embed.W_E[:, layout.token] = torch.eye(V)
    model.pos_embed.W_pos[:, layout.position] = torch.eye(n)
    model.unembed.W_U[layout.output, :] = layout.logit_scale * torch.eye(V)
    return model
