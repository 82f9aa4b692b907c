"""Checkers of chapter 03: K-composition scores, virtual heads."""

from __future__ import annotations

from collections.abc import Callable

import torch

from helpers import circuits
from helpers.checks._base import Case, check_cases, checker, draw_seed, passed, random_models
from helpers.models import AttnOnlyTransformer


def two_layer_models(seed: int) -> list[AttnOnlyTransformer]:
    """Two random two-layer models of different sizes (and numbers of heads)."""
    return random_models(seed, n_layers=2)


@checker
def check_k_composition_scores(k_composition_scores: Callable) -> None:
    """Exercise 3.1: `k_composition_scores(model) -> [layer-0 head, layer-1 head]`."""
    ex = "Exercise 3.1 (k_composition_scores)"
    cases = []
    for model in two_layer_models(draw_seed()):
        H = model.cfg.n_heads
        a0, a1 = model.blocks[0].attn, model.blocks[1].attn
        with torch.no_grad():
            expected = circuits.composition_scores(model, "K")
            OV, QK = a0.W_V @ a0.W_O, a1.W_Q @ a1.W_K.transpose(-1, -2)
            unnormalised = (OV[:, None] @ QK.transpose(-1, -2)[None]).flatten(-2).norm(dim=-1)
            mistakes = {
                "these are Q-composition scores (OV of the earlier head times QK of the later "
                "head); keys read the earlier head through QKᵀ.": circuits.composition_scores(
                    model, "Q"
                ),
                "these are V-composition scores.": circuits.composition_scores(model, "V"),
                "the axes are swapped: rows are layer-0 (earlier) heads, columns layer-1 heads.": (
                    expected.T
                ),
                "the score is not normalised: divide ‖product‖ by ‖OV‖ · ‖QK‖ (Frobenius "
                "norms).": unnormalised,
            }
        cases.append(Case((model,), expected, mistakes, f"a model with {H} heads per layer"))
    check_cases(
        ex, k_composition_scores, "k_composition_scores", cases, atol=1e-5, block_forward=True,
        withhold=[circuits.composition_scores, circuits._composition_from_weights,
                  circuits._frobenius_composition],
    )  # fmt: skip
    passed(ex, "‖OV₀ QK₁ᵀ‖ / (‖OV₀‖ ‖QK₁‖) for every pair of heads of two random test models.")


@checker
def check_virtual_head_ov(virtual_head_ov: Callable) -> None:
    """Exercise 3.2: `virtual_head_ov(model, head0, head1) -> [d_vocab (source), d_vocab (output)]`."""
    ex = "Exercise 3.2 (virtual_head_ov)"
    cases = []
    for model in two_layer_models(draw_seed()):
        H = model.cfg.n_heads
        a0, a1 = model.blocks[0].attn, model.blocks[1].attn
        for h0 in range(H):
            for h1 in range(H):
                with torch.no_grad():
                    expected = circuits.virtual_head_ov_circuit(model, (0, h0), (1, h1))
                    OV0, OV1 = a0.W_V[h0] @ a0.W_O[h0], a1.W_V[h1] @ a1.W_O[h1]
                    mistakes = {
                        "the heads are in the wrong order: the layer-0 head acts first, so its "
                        "OV comes first in the row convention (W_E OV₀ OV₁ W_U).": (
                            model.W_E @ OV1 @ OV0 @ model.W_U
                        ),
                        "the circuit is transposed: rows are source tokens, columns output "
                        "logits.": expected.T,
                        "the layer-1 head is missing: that is the layer-0 head's own OV "
                        "circuit.": circuits.full_ov_circuit(model, 0, h0),
                        "the layer-0 head is missing: that is the layer-1 head's own OV "
                        "circuit.": circuits.full_ov_circuit(model, 1, h1),
                    }
                cases.append(Case((model, h0, h1), expected, mistakes, f"heads L0H{h0}, L1H{h1}"))
    check_cases(
        ex, virtual_head_ov, "virtual_head_ov", cases, block_forward=True,
        withhold=[circuits.virtual_head_ov_circuit, circuits.full_ov_circuit],
    )  # fmt: skip
    passed(ex, "W_E OV₀ OV₁ W_U for every pair of heads of two random test models.")
