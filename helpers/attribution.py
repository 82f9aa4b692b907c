"""The residual stream as a sum of writes, and each write's contribution to the logits.

Framework paper, "The Residual Stream" and "Attention Heads are Independent and Additive": the final
residual stream is the embedding plus the output of every attention head (plus biases, when a model
has them), so with no LayerNorm the logits split exactly into one term per component:

    logits = W_U x_final = W_U x_0 + Σ_{layer, head} W_U h(x)      (row convention: x @ W_U)

In a shortformer model x_0 is the token embedding alone; with standard positions it includes the
positional embedding. The first term is the *direct path* of the path expansion.
"""

from __future__ import annotations

import torch
from torch import Tensor

from helpers.circuits import direct_path, full_ov_circuit
from helpers.models import AttnOnlyTransformer
from helpers.references import reference


def component_labels(model: AttnOnlyTransformer) -> list[str]:
    """Names of the residual stream's components, in the order of `decompose_resid`."""
    labels = ["embed"]
    if model.cfg.positional_embedding_type == "standard":
        labels.append("pos_embed")
    for layer in range(model.cfg.n_layers):
        labels += [f"L{layer}H{head}" for head in range(model.cfg.n_heads)]
        if model.cfg.use_bias:
            labels.append(f"L{layer} b_O")
    return labels


@reference
@torch.no_grad()
def decompose_resid(model: AttnOnlyTransformer, tokens: Tensor) -> tuple[Tensor, list[str]]:
    """Every write to the final residual stream, separately.

    Returns `([component, batch, pos, d_model], labels)`; summing over the first axis gives the
    final residual stream (the input of the unembedding).
    """
    _, cache = model.run_with_cache(
        tokens, names_filter=lambda n: n in ("hook_embed", "hook_pos_embed") or "hook_result" in n
    )
    parts = [cache["hook_embed"]]
    if model.cfg.positional_embedding_type == "standard":
        parts.append(cache["hook_pos_embed"])
    for layer, block in enumerate(model.blocks):
        parts += list(cache[f"blocks.{layer}.attn.hook_result"].unbind(dim=2))
        if block.attn.b_O is not None:
            parts.append(block.attn.b_O.expand_as(parts[0]))
    return torch.stack(parts), component_labels(model)


@reference
@torch.no_grad()
def logit_contributions(model: AttnOnlyTransformer, tokens: Tensor) -> tuple[Tensor, list[str]]:
    """Each component's contribution to the logits: `([component, batch, pos, d_vocab], labels)`.

    The sum over components, plus the unembedding bias b_U if the model has one, equals
    `model(tokens)`.
    """
    resid, labels = decompose_resid(model, tokens)
    return resid @ model.W_U, labels


@reference
@torch.no_grad()
def direct_path_logits(model: AttnOnlyTransformer, tokens: Tensor) -> Tensor:
    """The direct path's logits, `x_0 @ W_U`: `[batch, pos, d_vocab]`."""
    tokens = model.validate_tokens(tokens)
    x0 = model.W_E[tokens]
    if model.cfg.positional_embedding_type == "standard":
        x0 = x0 + model.W_pos[: tokens.shape[1]]
    return x0 @ model.W_U


@reference
@torch.no_grad()
def one_layer_path_expansion(model: AttnOnlyTransformer, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Logits of a one-layer model, term by term (framework paper, one-layer path expansion):

        logits = W_E W_U  (direct path)  +  Σ_h A^h · (W_E W_V^h W_O^h W_U)  (one term per head)

    The heads' terms read rows of their full OV circuits (`circuits.full_ov_circuit`), weighted
    by the attention pattern A^h, the only part that needs a forward pass. Returns (direct
    `[batch, pos, d_vocab]`, per-head `[n_heads, batch, pos, d_vocab]`).
    """
    if model.cfg.n_layers != 1:
        raise ValueError(
            f"one_layer_path_expansion needs a one-layer model, got {model.cfg.n_layers}"
        )
    if model.cfg.positional_embedding_type != "shortformer" or model.cfg.use_bias:
        raise ValueError("the token-only expansion needs shortformer positions and no biases")
    tokens = model.validate_tokens(tokens)
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_pattern")
    pattern = cache["blocks.0.attn.hook_pattern"]  # [batch, head, query_pos, key_pos]
    direct = direct_path(model)[tokens]
    terms = []
    for head in range(model.cfg.n_heads):
        ov_rows = full_ov_circuit(model, 0, head)[tokens]  # [batch, key_pos, d_vocab]
        terms.append(pattern[:, head] @ ov_rows)
    return direct, torch.stack(terms)
