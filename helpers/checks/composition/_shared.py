"""What the exercises of chapter 03 share."""

from __future__ import annotations

from collections.abc import Callable

import torch

from helpers import circuits
from helpers.checks._base import generator
from helpers.checks._judge import describe as describe_wrong
from helpers.models import AttnOnlyTransformer

KINDS = circuits.COMPOSITION_KINDS  # "Q", "K", "V"


@torch.no_grad()
def scale_weights(model: AttnOnlyTransformer, factor: float) -> None:
    for p in model.parameters():
        p.mul_(factor)


@torch.no_grad()
def randomise_biases(model: AttnOnlyTransformer, seed: int) -> None:
    """Biases start at zero, where an answer that forgets them is still right: draw them."""
    g = generator(seed)
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1].startswith("b_"):
            p.copy_(0.5 * torch.randn(p.shape, generator=g))


def model_tags(model: AttnOnlyTransformer) -> set[str]:
    tags = {"biases"} if model.cfg.use_bias else set()
    return tags | ({f"{model.cfg.n_layers} layers"} if model.cfg.n_layers > 2 else set())


def noting(expected: object, note: str) -> Callable[[object], str]:
    """The judge's description of a wrong answer, and what this case's input adds to it."""
    return lambda answer: describe_wrong(answer, expected) + note


BIASES = (
    " This model has biases (b_Q, b_K, b_V, b_O, b_U): a forward pass rebuilt by hand must add "
    "them; hooks on the model's own run keep them."
)


def model_words(model: AttnOnlyTransformer) -> str:
    biases = ", with biases" if model.cfg.use_bias else ""
    return f"a {model.cfg.n_layers}-layer model of {model.cfg.n_heads} heads a layer{biases}"
