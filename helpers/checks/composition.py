"""Checkers of chapter 03: K-composition scores, virtual heads."""

from __future__ import annotations

from collections.abc import Callable

import torch

from helpers import circuits
from helpers.checks._base import _diagnose, _expect_tensor, _passed, _tiny_model, checker
from helpers.models import AttnOnlyTransformer


def _two_layer_model(seed: int = 21) -> AttnOnlyTransformer:
    return _tiny_model(seed=seed, n_layers=2, d_model=16, n_heads=3, d_head=4, d_vocab=9, n_ctx=6)


@checker
def check_k_composition_scores(k_composition_scores: Callable) -> None:
    """Exercise 3.1: `k_composition_scores(model) -> [layer-0 head, layer-1 head]`."""
    ex = "Exercise 3.1 (k_composition_scores)"
    model = _two_layer_model()
    out = _expect_tensor(ex, "k_composition_scores", k_composition_scores(model), (3, 3), True)
    expected = circuits.composition_scores(model, "K")
    a0, a1 = model.blocks[0].attn, model.blocks[1].attn
    OV, QK = a0.W_V @ a0.W_O, a1.W_Q @ a1.W_K.transpose(-1, -2)
    with torch.no_grad():
        unnormalised = (OV[:, None] @ QK.transpose(-1, -2)[None]).flatten(-2).norm(dim=-1)
        mistakes = {
            "these are Q-composition scores (OV of the earlier head times QK of the later head); "
            "keys read the earlier head through QKᵀ.": circuits.composition_scores(model, "Q"),
            "these are V-composition scores.": circuits.composition_scores(model, "V"),
            "the axes are swapped: rows are layer-0 (earlier) heads, columns layer-1 heads.": (
                expected.T
            ),
            "the score is not normalised: divide ‖product‖ by ‖OV‖ · ‖QK‖ (Frobenius norms).": (
                unnormalised
            ),
        }
    _diagnose(ex, out.detach(), expected, mistakes, atol=1e-5)
    _passed(ex, "‖OV₀ QK₁ᵀ‖ / (‖OV₀‖ ‖QK₁‖) for every pair of heads.")


@checker
def check_virtual_head_ov(virtual_head_ov: Callable) -> None:
    """Exercise 3.2: `virtual_head_ov(model, head0, head1) -> [d_vocab (source), d_vocab (output)]`."""
    ex = "Exercise 3.2 (virtual_head_ov)"
    model = _two_layer_model(seed=22)
    for h0, h1 in ((0, 2), (1, 0)):
        out = _expect_tensor(ex, "virtual_head_ov", virtual_head_ov(model, h0, h1), (9, 9), True)
        a0, a1 = model.blocks[0].attn, model.blocks[1].attn
        with torch.no_grad():
            expected = circuits.virtual_head_ov_circuit(model, (0, h0), (1, h1))
            mistakes = {
                "the heads are in the wrong order: the layer-0 head acts first, so its OV comes "
                "first in the row convention (W_E OV₀ OV₁ W_U).": model.W_E
                @ a1.W_V[h1]
                @ a1.W_O[h1]
                @ a0.W_V[h0]
                @ a0.W_O[h0]
                @ model.W_U,
                "the circuit is transposed: rows are source tokens, columns output logits.": (
                    expected.T
                ),
                "the layer-1 head is missing: that is the layer-0 head's own OV circuit.": (
                    circuits.full_ov_circuit(model, 0, h0)
                ),
            }
        _diagnose(ex, out.detach(), expected, mistakes, atol=1e-4)
    _passed(ex, "W_E OV₀ OV₁ W_U for the pairs tried.")
