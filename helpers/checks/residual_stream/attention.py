"""Exercises 0.1-0.4: one attention head's pattern and what it writes, a layer of heads, and
concatenating before projecting."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from helpers.checks._base import (
    heads_phrase,
)
from helpers.checks._judge import Case
from helpers.checks._registry import Exercise, declare
from helpers.checks.residual_stream._shared import causal_mask, models_and_caches

# ---- 0.1 the attention pattern -------------------------------------------------------------------


def _pattern_mistakes(scores: Tensor, d_head: int, d_model: int) -> dict[str, Tensor]:
    n = scores.shape[-1]
    causal = causal_mask(n)
    masked = scores.masked_fill(~causal, float("-inf"))
    scale = math.sqrt(d_head)
    return {
        "no causal mask: every query also attends to later positions (mask scores above the "
        "diagonal with -inf before the softmax).": (scores / scale).softmax(-1),
        "the softmax runs over query positions (dim=-2); each query's weights over key "
        "positions should sum to 1 (dim=-1).": (masked / scale).softmax(-2),
        "the 1/sqrt(d_head) scale is missing.": masked.softmax(-1),
        "the scores are divided by d_head instead of sqrt(d_head).": (masked / d_head).softmax(-1),
        "the scores are divided by sqrt(d_model); the scale is sqrt(d_head), the size of the "
        "query and key vectors.": (masked / math.sqrt(d_model)).softmax(-1),
        "queries and keys are swapped (scores are k·q with the mask on the wrong side): the "
        "pattern is [batch, query_pos, key_pos], scores[q, k] = q_q · k_k.": (
            (scores.transpose(-1, -2) / scale).masked_fill(~causal, float("-inf")).softmax(-1)
        ),
        "the mask is applied after the softmax (zeroing weights), so rows no longer sum to 1.": (
            (scores / scale).softmax(-1) * causal
        ),
        "the masked scores were set to 0, not -inf (torch.tril of the scores does that): a score "
        "of 0 still gets weight exp(0) after the softmax, -inf gets none.": (
            (scores / scale).masked_fill(~causal, 0.0).softmax(-1)
        ),
        "the mask is on the wrong side: query q may look at keys k ≤ q (the lower triangle, "
        "tril), not at k ≥ q.": (scores / scale).masked_fill(~causal.T, float("-inf")).softmax(-1),
        "these are log-probabilities (log_softmax): the pattern holds the attention weights "
        "themselves, softmax(dim=-1), each row summing to 1.": (masked / scale).log_softmax(-1),
        "these are the masked scores, before the softmax: the pattern is their softmax over key "
        "positions (dim=-1).": masked / scale,
        "the scores are multiplied by sqrt(d_head); they are divided by it.": (
            (masked * scale).softmax(-1)
        ),
        "the diagonal is masked too (k < q): query q may also look at itself (k ≤ q, tril with "
        "the diagonal), so position 0 keeps one key.": (
            (scores / scale).masked_fill(~causal.tril(-1), float("-inf")).softmax(-1)
        ),
    }


def _pattern_cases(seed: int) -> list[Case]:
    """Every head of two random one-layer models of different sizes, on two sequences each."""
    cases = []
    for model, cache in models_and_caches(seed):
        x = cache["hook_embed"] + cache["hook_pos_embed"]  # the input of queries and keys
        D, d = model.cfg.d_model, model.cfg.d_head
        for head in range(model.cfg.n_heads):
            W_Q, W_K = model.W_Q[0, head].detach(), model.W_K[0, head].detach()
            scores = (x @ W_Q) @ (x @ W_K).transpose(-1, -2)
            expected = cache["blocks.0.attn.hook_pattern"][:, head]
            tags = {"several sequences"} if x.shape[0] > 1 else set()
            cases.append(Case((x, W_Q, W_K), expected, _pattern_mistakes(scores, d, D),
                              f"head {head} of a model with d_model {D}, d_head {d}",
                              tags=tags))  # fmt: skip
    return cases


declare(Exercise(
    number="0.1", title="the attention pattern", functions=("attention_pattern",),
    cases=_pattern_cases, covers=frozenset({"several sequences"}),
    passed=f"matches the model's attention pattern for {heads_phrase(2)}.",
))  # fmt: skip


# ---- 0.2 what the head writes --------------------------------------------------------------------


def _head_output_cases(seed: int) -> list[Case]:
    """Every head of two random one-layer models, with the patterns the model computed."""
    cases = []
    for model, cache in models_and_caches(seed):
        x = cache["blocks.0.hook_resid_pre"]  # the input of values (no positions: shortformer)
        for head in range(model.cfg.n_heads):
            pattern = cache["blocks.0.attn.hook_pattern"][:, head]
            W_V, W_O = model.W_V[0, head].detach(), model.W_O[0, head].detach()
            OV = W_V @ W_O  # [d_model, d_model]
            mistakes = {
                "the pattern is transposed: output[q] = Σ_k pattern[q, k] v[k] (pattern @ v, "
                "with pattern as [query_pos, key_pos]).": pattern.transpose(-1, -2) @ x @ OV,
                "the OV matrix is transposed: in the row convention a head writes x @ W_V @ W_O "
                "(the paper's W_O W_V, transposed).": pattern @ x @ OV.T,
                "the pattern is not applied: each position only reads itself.": x @ OV,
                "the input x was added to the head's output: return only what the head writes "
                "(pattern @ v @ W_O); the layer adds it to the stream (Exercise 0.3).": (
                    x + pattern @ x @ OV
                ),
            }
            expected = cache["blocks.0.attn.hook_result"][:, :, head]
            tags = {"several sequences"} if x.shape[0] > 1 else set()
            cases.append(Case((pattern, x, W_V, W_O), expected, mistakes,
                              f"head {head} of a model with d_model {model.cfg.d_model}",
                              tags=tags))  # fmt: skip
    return cases


declare(Exercise(
    number="0.2", title="what the head writes", functions=("head_output",),
    cases=_head_output_cases, covers=frozenset({"several sequences"}),
    passed=f"matches the model's per-head output (hook_result) for {heads_phrase(2)}.",
))  # fmt: skip


# ---- 0.3 a layer of heads ------------------------------------------------------------------------


def _layer(
    qk_input, v_input, W_Q, W_K, W_V, W_O, causal: bool = True, scale=None, dim: int = -1
) -> Tensor:
    """Every head of a layer, summed (a reference written independently of helpers.models);
    `scale` (sqrt(d_head) unless given) and `dim` (of the softmax) make the common mistakes."""
    q = torch.einsum("bpm,hmd->bhpd", qk_input, W_Q)
    k = torch.einsum("bpm,hmd->bhpd", qk_input, W_K)
    v = torch.einsum("bpm,hmd->bhpd", v_input, W_V)
    scale = W_Q.shape[-1] ** 0.5 if scale is None else scale
    scores = q @ k.transpose(-1, -2) / scale  # [batch, head, query, key]
    if causal:
        scores = scores.masked_fill(~causal_mask(scores.shape[-1]), float("-inf"))
    return torch.einsum("bhqk,bhkd,hdm->bqm", scores.softmax(dim), v, W_O)


def _attention_layer_cases(seed: int) -> list[Case]:
    """Both layers of two random two-layer models (the second layer reads a stream the first
    wrote into)."""
    cases = []
    for model, cache in models_and_caches(seed, n_layers=2):
        pos = cache["hook_pos_embed"]
        for layer in range(2):
            attn = model.blocks[layer].attn
            W = [w.detach() for w in (attn.W_Q, attn.W_K, attn.W_V, attn.W_O)]
            resid = cache[f"blocks.{layer}.hook_resid_pre"]
            x = resid + pos
            with torch.no_grad():
                mistakes = [
                    ("this is what the heads write, without the residual stream they add it to: "
                     "return resid + Σ_h head_h.", cache[f"blocks.{layer}.hook_attn_out"]),
                    ("positions also went into the values: in a shortformer model only queries "
                     "and keys read resid + pos; values read resid alone.",
                     resid + _layer(x, x, *W)),
                    ("the positions are missing from the queries and keys (they read resid + pos).",
                     resid + _layer(resid, resid, *W)),
                    ("no causal mask: a position must not attend to later ones.",
                     resid + _layer(x, resid, *W, causal=False)),
                    ("the heads were averaged; their outputs add up (Σ over heads).",
                     resid + _layer(x, resid, *W) / model.cfg.n_heads),
                    ("the 1/sqrt(d_head) scale of the scores is missing.",
                     resid + _layer(x, resid, *W, scale=1.0)),
                    ("the scores are divided by sqrt(d_model); the scale is sqrt(d_head), the "
                     "size of the query and key vectors.",
                     resid + _layer(x, resid, *W, scale=model.cfg.d_model ** 0.5)),
                    ("the softmax runs over query positions; each query's weights over key "
                     "positions should sum to 1 (the last axis of [batch, head, query, key]).",
                     resid + _layer(x, resid, *W, dim=-2)),
                ]  # fmt: skip
                added = (
                    "the positions were added to the stream the layer returns: in a shortformer "
                    "model they enter only the queries' and keys' input (resid + pos); values read "
                    "resid, and the layer returns resid + Σ_h head_h."
                )
                mistakes += [(added, x + _layer(x, resid, *W)), (added, x + _layer(x, x, *W))]
            tags = {"several heads of one layer"} if model.cfg.n_heads > 1 else set()
            tags |= {"a layer after the first"} if layer > 0 else set()
            expected = cache[f"blocks.{layer}.hook_resid_post"]
            cases.append(Case((resid, pos, *W), expected, mistakes,
                              f"layer {layer} of a model with {model.cfg.n_heads} heads",
                              tags=tags))  # fmt: skip
    return cases


declare(Exercise(
    number="0.3", title="a layer of heads, from the weights", functions=("attention_layer",),
    cases=_attention_layer_cases, block_forward=True,
    covers=frozenset({"several heads of one layer", "a layer after the first"}),
    passed="matches the model's residual stream after both layers of two random test models.",
))  # fmt: skip


# ---- 0.4 concatenate, then project ---------------------------------------------------------------


def _concat_cases(seed: int) -> list[Case]:
    """The heads' z of both layers of two random two-layer models."""
    cases = []
    for model, cache in models_and_caches(seed, n_layers=2):
        for layer in range(2):
            z = cache[f"blocks.{layer}.attn.hook_z"]
            W_O = model.blocks[layer].attn.W_O.detach()
            H, d, D = W_O.shape
            orders = (
                "the concatenation and the stack of W_O are in different orders: flatten z as "
                "[batch, pos, (head d_head)] and W_O as [(head d_head), d_model], head first in "
                "both."
            )
            concatenated, stacked = z.reshape(*z.shape[:2], H * d), W_O.reshape(H * d, D)
            mistakes = [
                (orders, z.transpose(2, 3).reshape(*z.shape[:2], H * d) @ stacked),
                (orders, concatenated @ W_O.transpose(0, 1).reshape(H * d, D)),  # W_O as (d h)
                ("only the first head was used.", z[:, :, 0] @ W_O[0]),
                ("the heads were averaged: the projection sums over all n_heads·d_head "
                 "coordinates.", (concatenated @ stacked) / H),
            ]  # fmt: skip
            tags = {"several heads of one layer"} if H > 1 else set()
            tags |= {"a layer after the first"} if layer > 0 else set()
            expected = cache[f"blocks.{layer}.hook_attn_out"]
            cases.append(Case((z, W_O), expected, mistakes, f"layer {layer} ({H} heads)",
                              tags=tags))  # fmt: skip
    return cases


declare(Exercise(
    number="0.4", title="concatenate, then project", functions=("concat_then_project",),
    cases=_concat_cases,
    covers=frozenset({"several heads of one layer", "a layer after the first"}),
    passed="one product of the concatenated heads equals the layer's output, for two models.",
))  # fmt: skip
