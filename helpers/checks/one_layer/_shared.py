"""What the exercises of chapter 02 share."""

from __future__ import annotations

from helpers.models import AttnOnlyTransformer


def head_name(model: AttnOnlyTransformer, head: int) -> str:
    """How a diagnosis names a head of a test model: by its model's sizes, there being two."""
    c = model.cfg
    return (
        f"head {head} of a model with {c.n_heads} heads, d_model {c.d_model}, d_vocab {c.d_vocab}"
    )


def size_tags(model: AttnOnlyTransformer) -> set[str]:
    """The structures of a test model that the exercises on its heads name."""
    c = model.cfg
    tags = {"several heads of one layer"} if c.n_heads > 1 else set()
    if c.d_model != c.d_head * c.n_heads:  # the notebook's model has d_head = d_model / n_heads
        tags.add("d_head other than d_model / n_heads")
    return tags
