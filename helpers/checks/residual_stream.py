"""Checkers of chapter 00: one attention head, the direct path."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from helpers.attribution import direct_path_logits
from helpers.checks._base import _diagnose, _expect_tensor, _passed, _tiny_model, checker


def _pattern_variants(scores: Tensor, scale: float) -> dict[str, Tensor]:
    n = scores.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    masked = scores.masked_fill(~causal, float("-inf"))
    return {
        "no causal mask: every query also attends to later positions (mask scores above the "
        "diagonal with -inf before the softmax).": (scores / scale).softmax(-1),
        "the softmax runs over query positions (dim=-2); each query's weights over key "
        "positions should sum to 1 (dim=-1).": (masked / scale).softmax(-2),
        "the 1/sqrt(d_head) scale is missing.": masked.softmax(-1),
        "the scores are divided by d_head instead of sqrt(d_head).": (masked / scale**2).softmax(
            -1
        ),
        "queries and keys are swapped (scores are k·q with the mask on the wrong side): the "
        "pattern is [batch, query_pos, key_pos], scores[q, k] = q_q · k_k.": (
            scores.transpose(-1, -2) / scale
        )
        .masked_fill(~causal, float("-inf"))
        .softmax(-1),
        "the mask is applied after the softmax (zeroing weights), so rows no longer sum to 1.": (
            (scores / scale).softmax(-1) * causal
        ),
    }


def _tiny_model_and_cache(seed: int, token_seed: int):
    """A tiny one-layer model and its activations on two random sequences of full length."""
    model = _tiny_model(seed=seed)
    gen = torch.Generator().manual_seed(token_seed)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, model.cfg.n_ctx), generator=gen)
    _, cache = model.run_with_cache(tokens)
    return model, cache


@checker
def check_attention_pattern(attention_pattern: Callable) -> None:
    """Exercise 0.1: `attention_pattern(x, W_Q, W_K) -> [batch, query_pos, key_pos]`."""
    ex = "Exercise 0.1 (attention_pattern)"
    model, cache = _tiny_model_and_cache(seed=1, token_seed=0)
    x = cache["hook_embed"] + cache["hook_pos_embed"]  # the input of queries and keys
    for head in range(model.cfg.n_heads):
        W_Q, W_K = model.W_Q[0, head].detach(), model.W_K[0, head].detach()
        out = attention_pattern(x, W_Q, W_K)
        out = _expect_tensor(
            ex, "attention_pattern", out, (2, model.cfg.n_ctx, model.cfg.n_ctx), True
        )
        expected = cache["blocks.0.attn.hook_pattern"][:, head]
        scores = (x @ W_Q) @ (x @ W_K).transpose(-1, -2)
        _diagnose(
            ex, out.detach(), expected, _pattern_variants(scores, math.sqrt(model.cfg.d_head))
        )
    _passed(ex, f"matches the model's pattern for all {model.cfg.n_heads} heads.")


@checker
def check_head_output(head_output: Callable) -> None:
    """Exercise 0.2: `head_output(pattern, x, W_V, W_O) -> [batch, pos, d_model]`."""
    ex = "Exercise 0.2 (head_output)"
    model, cache = _tiny_model_and_cache(seed=2, token_seed=1)
    x = cache["blocks.0.hook_resid_pre"]  # the input of values (no positions: shortformer)
    for head in range(model.cfg.n_heads):
        pattern = cache["blocks.0.attn.hook_pattern"][:, head]
        W_V, W_O = model.W_V[0, head].detach(), model.W_O[0, head].detach()
        out = head_output(pattern, x, W_V, W_O)
        out = _expect_tensor(ex, "head_output", out, tuple(x.shape), True)
        expected = cache["blocks.0.attn.hook_result"][:, :, head]
        OV = W_V @ W_O  # [d_model, d_model]
        mistakes = {
            "the pattern is transposed: output[q] = Σ_k pattern[q, k] v[k] (pattern @ v, with "
            "pattern as [query_pos, key_pos]).": pattern.transpose(-1, -2) @ x @ OV,
            "the OV matrix is transposed: in the row convention a head writes x @ W_V @ W_O "
            "(the paper's W_O W_V, transposed).": pattern @ x @ OV.T,
            "the pattern is not applied: each position only reads itself.": x @ OV,
        }
        _diagnose(ex, out.detach(), expected, mistakes, atol=1e-4)
    _passed(
        ex, f"matches the model's per-head output (hook_result) for all {model.cfg.n_heads} heads."
    )


@checker
def check_direct_path_logits(fn: Callable) -> None:
    """Exercise 0.3: `direct_path_logits(model, tokens) -> [batch, pos, d_vocab]`."""
    ex = "Exercise 0.3 (direct_path_logits)"
    for positions in ("shortformer", "standard"):
        model = _tiny_model(seed=3, n_layers=2, positional_embedding_type=positions)
        tokens = torch.randint(
            0, model.cfg.d_vocab, (3, 5), generator=torch.Generator().manual_seed(2)
        )
        out = _expect_tensor(
            ex, "direct_path_logits", fn(model, tokens), (3, 5, model.cfg.d_vocab), True
        )
        with torch.no_grad():
            embed_only = model.W_E[tokens] @ model.W_U
            with_pos = (model.W_E[tokens] + model.W_pos[:5]) @ model.W_U
            full = model(tokens)
        mistakes = {
            "these are the model's full logits; the direct path is the embedding alone, "
            "unembedded (no attention heads).": full,
        }
        if positions == "shortformer":
            mistakes[
                "in a shortformer model the positional embedding never enters the residual "
                "stream, so it is not part of the direct path."
            ] = with_pos
        else:
            mistakes[
                "with standard positions the residual stream starts as W_E[tokens] + "
                "W_pos[:pos]; the positional part is missing."
            ] = embed_only
        _diagnose(ex, out.detach(), direct_path_logits(model, tokens), mistakes)
    _passed(ex, "right for shortformer and standard positional embeddings.")
