"""Ablations through hooks: heads removed, paths removed, attention patterns frozen, and the
term importance of the path expansion (chapters 03, 04)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from helpers.models import AttnOnlyTransformer, as_index, next_token_loss
from helpers.references import reference


def _check_heads(model: AttnOnlyTransformer, heads) -> list[tuple[int, int]]:
    """A list of (layer, head) pairs, validated; a flat pair like (0, 1) is an error, since it
    would silently read as two heads."""
    example = "a list of (layer, head) pairs, e.g. [(0, 1)] or [(0, 1), (1, 2)]"
    if isinstance(heads, (str, Tensor)) or not hasattr(heads, "__iter__"):
        raise ValueError(f"heads must be {example}, got {heads!r}")
    heads = list(heads)
    if not all(isinstance(h, (tuple, list)) and len(h) == 2 for h in heads):
        raise ValueError(f"heads must be {example}, got {heads!r}")
    return [model.check_head(layer, head) for layer, head in heads]


@reference
@torch.no_grad()
def run_with_ablation(
    model: AttnOnlyTransformer,
    tokens: Tensor,
    heads,
    kind: str = "zero",
    reference: Tensor | None = None,
) -> Tensor:
    """Logits with the outputs of `heads` (a list of (layer, head)) removed.

    "zero": the head writes nothing. "mean": it writes its mean output (over batch and positions)
    on `reference` tokens (default: `tokens`), i.e. its average behaviour without any
    information about this input.
    """
    if kind not in ("zero", "mean"):
        raise ValueError(f"kind must be 'zero' or 'mean', got {kind!r}")
    heads = _check_heads(model, heads)
    means: dict[int, Tensor] = {}
    if kind == "mean":
        _, cache = model.run_with_cache(
            tokens if reference is None else reference,
            names_filter=lambda n: n.endswith("hook_result"),
        )
        means = {
            layer: cache[f"blocks.{layer}.attn.hook_result"].mean(dim=(0, 1)) for layer, _ in heads
        }

    hooks = []
    for layer in sorted({layer for layer, _ in heads}):
        chosen = [h for layer_, h in heads if layer_ == layer]

        def ablate(result: Tensor, hook, chosen=chosen, layer=layer) -> Tensor:
            result = result.clone()  # [batch, pos, head, d_model]
            result[:, :, chosen] = 0.0 if kind == "zero" else means[layer][chosen]
            return result

        hooks.append((f"blocks.{layer}.attn.hook_result", ablate))
    return model.run_with_hooks(tokens, hooks)


@reference
@torch.no_grad()
def run_with_path_ablation(
    model: AttnOnlyTransformer, tokens: Tensor, sender: tuple[int, int], receiver: str, layer: int
) -> Tensor:
    """Logits with `sender`'s output removed from one input only: the queries ("q"), keys ("k")
    or values ("v") of every head in `layer`. Everything else still sees it. Separates Q-, K- and
    V-composition by their effect."""
    ((s_layer, s_head),) = _check_heads(model, [sender])
    if receiver not in ("q", "k", "v"):
        raise ValueError(f"receiver must be 'q', 'k' or 'v', got {receiver!r}")
    message = f"layer must be an int in {s_layer + 1}..{model.cfg.n_layers - 1}, got {layer!r}"
    try:
        layer = as_index("layer", layer, model.cfg.n_layers)
    except ValueError:
        raise ValueError(message) from None
    if layer <= s_layer:
        raise ValueError(message)
    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{s_layer}.attn.hook_result")
    sent = cache[f"blocks.{s_layer}.attn.hook_result"][:, :, s_head]  # [batch, pos, d_model]
    W = getattr(model.blocks[layer].attn, f"W_{receiver.upper()}")  # [head, d_model, d_head]
    removed = torch.einsum("bpm,hmd->bphd", sent, W)

    def subtract(x: Tensor, hook) -> Tensor:
        return x - removed

    return model.run_with_hooks(tokens, [(f"blocks.{layer}.attn.hook_{receiver}", subtract)])


@dataclass(frozen=True)
class TermImportance:
    """Losses (nats/token) of the path expansion truncated at each order, frozen patterns."""

    uniform: float  # ln d_vocab: no information at all
    order_0: float  # direct path only
    order_1: float  # + every single head reading the embeddings
    order_2: float  # + virtual heads (layer 1 reading layer 0's output): the whole model
    layer_0_only: float  # direct path + first-order terms of layer-0 heads
    layer_1_only: float  # direct path + first-order terms of layer-1 heads

    @property
    def marginal(self) -> dict[str, float]:
        return {
            "direct path (order 0)": self.uniform - self.order_0,
            "single heads (order 1)": self.order_0 - self.order_1,
            "virtual heads (order 2)": self.order_1 - self.order_2,
        }


@reference
@torch.no_grad()
def term_importance(model: AttnOnlyTransformer, tokens: Tensor) -> TermImportance:
    """Marginal loss of each order of the two-layer path expansion (framework paper, "Term
    Importance Analysis"): record every head's attention pattern on `tokens`, then recompute the
    logits with the patterns frozen and the residual stream truncated: order 0 is W_E W_U;
    order 1 adds each head applied to the embeddings alone; order 2 lets layer-1 heads also read
    layer 0's outputs (V-composition: the virtual heads). Freezing the patterns keeps Q- and
    K-composition intact, so only V-composition is ablated.
    """
    if model.cfg.n_layers != 2:
        raise ValueError(f"term_importance needs a two-layer model, got {model.cfg.n_layers}")
    if model.cfg.positional_embedding_type != "shortformer" or model.cfg.use_bias:
        raise ValueError("term_importance needs shortformer positions and no biases")
    tokens = model.validate_tokens(tokens)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    x0 = model.W_E[tokens]  # [batch, pos, d_model]

    def heads_out(layer: int, x: Tensor) -> Tensor:  # every head of `layer` reading x
        attn = model.blocks[layer].attn
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [batch, head, q, k]
        v = torch.einsum("bkm,hmd->bhkd", x, attn.W_V)
        return torch.einsum("bhqk,bhkd,hdm->bqm", pattern, v, attn.W_O)

    def loss(resid: Tensor) -> float:
        return float(next_token_loss(resid @ model.W_U, tokens))

    l0, l1_first = heads_out(0, x0), heads_out(1, x0)
    return TermImportance(
        uniform=float(torch.log(torch.tensor(float(model.cfg.d_vocab)))),
        order_0=loss(x0),
        order_1=loss(x0 + l0 + l1_first),
        order_2=loss(x0 + l0 + heads_out(1, x0 + l0)),
        layer_0_only=loss(x0 + l0),
        layer_1_only=loss(x0 + l1_first),
    )


@reference
@torch.no_grad()
def run_with_frozen_patterns(
    model: AttnOnlyTransformer, tokens: Tensor, patterns: dict[int, Tensor]
) -> Tensor:
    """Logits with the attention patterns of the given layers replaced by `patterns[layer]`
    (`[batch, head, query_pos, key_pos]`, e.g. recorded on another input): what stays is the
    heads' OV circuits, applied with fixed weights. With every layer's pattern frozen, the
    logits are a linear function of the token embeddings (framework paper, "The Freezing
    Attention Patterns trick")."""
    hooks = []
    for layer, pattern in patterns.items():
        layer = as_index("layer", layer, model.cfg.n_layers)
        hooks.append((f"blocks.{layer}.attn.hook_pattern", lambda x, hook, p=pattern: p))
    return model.run_with_hooks(tokens, hooks)


@reference
@torch.no_grad()
def run_with_pattern_preserving_ablation(
    model: AttnOnlyTransformer, tokens: Tensor, heads
) -> Tensor:
    """Logits with the outputs of `heads` (a list of (layer, head)) zeroed while every head's
    attention pattern is held at what it was without the ablation (Olsson et al. 2022, "Model
    analysis table": pattern-preserving ablation). Only what later heads read through their
    values changes, so the effect is the heads' own contribution, not a change of where the
    later heads look."""
    heads = _check_heads(model, heads)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    patterns = {
        layer: cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(model.cfg.n_layers)
    }
    hooks = [(f"blocks.{layer}.attn.hook_pattern", lambda x, hook, p=p: p)
             for layer, p in patterns.items()]  # fmt: skip
    for layer in sorted({layer for layer, _ in heads}):
        chosen = [h for layer_, h in heads if layer_ == layer]

        def ablate(result: Tensor, hook, chosen=chosen) -> Tensor:
            result = result.clone()  # [batch, pos, head, d_model]
            result[:, :, chosen] = 0.0
            return result

        hooks.append((f"blocks.{layer}.attn.hook_result", ablate))
    return model.run_with_hooks(tokens, hooks)
