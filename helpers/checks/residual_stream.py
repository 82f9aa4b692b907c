"""Checkers of chapter 00: one attention head, the direct path."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from helpers import attribution
from helpers.checks._base import (
    Case,
    check_cases,
    checker,
    draw_seed,
    heads_phrase,
    passed,
    random_models,
    random_tokens,
)


def _pattern_variants(scores: Tensor, d_head: int, d_model: int) -> dict[str, Tensor]:
    n = scores.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
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
    }


def _models_and_caches(seed: int):
    """Two random one-layer models of different sizes, and their activations on random tokens."""
    for i, model in enumerate(random_models(seed)):
        _, cache = model.run_with_cache(random_tokens(model, seed + 10 + i, batch=2))
        yield model, cache


@checker
def check_attention_pattern(attention_pattern: Callable) -> None:
    """Exercise 0.1: `attention_pattern(x, W_Q, W_K) -> [batch, query_pos, key_pos]`."""
    ex = "Exercise 0.1 (attention_pattern)"
    cases = []
    for model, cache in _models_and_caches(draw_seed()):
        x = cache["hook_embed"] + cache["hook_pos_embed"]  # the input of queries and keys
        for head in range(model.cfg.n_heads):
            W_Q, W_K = model.W_Q[0, head].detach(), model.W_K[0, head].detach()
            scores = (x @ W_Q) @ (x @ W_K).transpose(-1, -2)
            mistakes = _pattern_variants(scores, model.cfg.d_head, model.cfg.d_model)
            expected = cache["blocks.0.attn.hook_pattern"][:, head]
            cases.append(Case((x, W_Q, W_K), expected, mistakes, f"d_head {model.cfg.d_head}"))
    check_cases(ex, attention_pattern, "attention_pattern", cases, atol=1e-5)
    passed(ex, f"matches the model's attention pattern for {heads_phrase(2)}.")


@checker
def check_head_output(head_output: Callable) -> None:
    """Exercise 0.2: `head_output(pattern, x, W_V, W_O) -> [batch, pos, d_model]`."""
    ex = "Exercise 0.2 (head_output)"
    cases = []
    for model, cache in _models_and_caches(draw_seed()):
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
            }
            expected = cache["blocks.0.attn.hook_result"][:, :, head]
            cases.append(Case((pattern, x, W_V, W_O), expected, mistakes))
    check_cases(ex, head_output, "head_output", cases)
    passed(ex, f"matches the model's per-head output (hook_result) for {heads_phrase(2)}.")


@checker
def check_direct_path_logits(direct_path_logits: Callable) -> None:
    """Exercise 0.3: `direct_path_logits(model, tokens) -> [batch, pos, d_vocab]`."""
    ex = "Exercise 0.3 (direct_path_logits)"
    seed = draw_seed()
    cases = []
    kinds = ("shortformer", "standard")
    models = random_models(
        seed, n_layers=2, per_model=[{"positional_embedding_type": k} for k in kinds]
    )
    for i, (positions, model) in enumerate(zip(kinds, models, strict=True)):
        tokens = random_tokens(model, seed + 10 + i)[:, : model.cfg.n_ctx - i]
        with torch.no_grad():
            embed_only = model.W_E[tokens] @ model.W_U
            with_pos = (model.W_E[tokens] + model.W_pos[: tokens.shape[1]]) @ model.W_U
            mistakes = {
                "these are the model's full logits; the direct path is the embedding alone, "
                "unembedded (no attention heads).": model(tokens),
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
        expected = attribution.direct_path_logits(model, tokens)
        cases.append(Case((model, tokens), expected, mistakes, f"{positions} positions"))
    check_cases(
        ex,
        direct_path_logits,
        "direct_path_logits",
        cases,
        withhold=[
            attribution.direct_path_logits,
            attribution.logit_contributions,
            attribution.decompose_resid,
        ],
        block_forward=True,
        atol=1e-5,
    )
    passed(ex, "right for random models with shortformer and with standard positions.")
