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
`output`). `set_reference_weights` is the course's solution (withheld from the exercise's checker
run), and `reference_model()` a blank model with it applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from helpers.models import AttnOnlyTransformer, HookedTransformerConfig
from helpers.references import reference

# The attention score of a matching query and key direction, before the 1/sqrt(d_head): large
# enough that the softmax puts almost all its weight on the one matching position.
STRENGTH = 50.0


@dataclass(frozen=True)
class Layout:
    d_vocab: int = 12
    n_ctx: int = 25
    logit_scale: float = 10.0

    def __post_init__(self) -> None:
        for name, low in (("d_vocab", 2), ("n_ctx", 3)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")

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


@reference
@torch.no_grad()
def set_reference_weights(model: AttnOnlyTransformer, layout: Layout) -> None:
    """The course's solution: a previous-token head in layer 0 and an induction head in layer 1.

    Layer 0: query at position i points at head direction i, key at position j at direction j + 1,
    so the score is large exactly when j = i - 1; it copies the attended token (token subspace)
    into `previous`. Layer 1: the query reads the current token, the key the previous token, so a
    key matches when the token before it equals the current token; it copies the attended
    position's token into `output`, which W_U reads.
    """
    n, V = layout.n_ctx, layout.d_vocab
    position = torch.arange(layout.position.start, layout.position.stop)
    prev, ind = model.blocks[0].attn, model.blocks[1].attn
    prev.W_Q[0, position, torch.arange(n)] = STRENGTH
    prev.W_K[0, position[:-1], torch.arange(1, n)] = STRENGTH
    prev.W_V[0, layout.token, :V] = torch.eye(V)
    prev.W_O[0, :V, layout.previous] = torch.eye(V)
    ind.W_Q[0, layout.token, :V] = STRENGTH * torch.eye(V)
    ind.W_K[0, layout.previous, :V] = STRENGTH * torch.eye(V)
    ind.W_V[0, layout.token, :V] = torch.eye(V)
    ind.W_O[0, :V, layout.output] = torch.eye(V)


def reference_model(layout: Layout = Layout()) -> AttnOnlyTransformer:
    """`blank_model(layout)` with `set_reference_weights` applied."""
    model = blank_model(layout)
    set_reference_weights(model, layout)
    return model
