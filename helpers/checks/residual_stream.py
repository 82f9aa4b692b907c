"""Checkers of chapter 00: one attention head, a whole layer, hooks, the direct path, the logits
as a sum of contributions."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from helpers import attribution, evals
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
from helpers.evals import head_scores


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
    """Exercise 0.7: `direct_path_logits(model, tokens) -> [batch, pos, d_vocab]`."""
    ex = "Exercise 0.7 (direct_path_logits)"
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


def _two_layer_models_and_caches(seed: int):
    """Two random two-layer models of different sizes, and their activations on random tokens."""
    for i, model in enumerate(random_models(seed, n_layers=2)):
        _, cache = model.run_with_cache(random_tokens(model, seed + 10 + i, batch=2))
        yield model, cache


@checker
def check_attention_layer(attention_layer: Callable) -> None:
    """Exercise 0.3: `attention_layer(resid, pos, W_Q, W_K, W_V, W_O) -> [batch, pos, d_model]`,
    the residual stream after one layer of heads (shortformer: positions reach queries and keys
    only), from the stacked weights `[n_heads, d_model, d_head]` and `[n_heads, d_head, d_model]`."""
    ex = "Exercise 0.3 (attention_layer)"
    cases = []
    for model, cache in _two_layer_models_and_caches(draw_seed()):
        pos = cache["hook_pos_embed"]
        for layer in range(2):
            attn = model.blocks[layer].attn
            W = [w.detach() for w in (attn.W_Q, attn.W_K, attn.W_V, attn.W_O)]
            resid = cache[f"blocks.{layer}.hook_resid_pre"]
            attn_out = cache[f"blocks.{layer}.hook_attn_out"]
            with torch.no_grad():
                mistakes = {
                    "this is what the heads write, without the residual stream they add it to: "
                    "return resid + Σ_h head_h.": attn_out,
                    "positions also went into the values: in a shortformer model only queries and "
                    "keys read resid + pos; values read resid alone.": resid
                    + _layer(resid + pos, resid + pos, *W),
                    "the positions are missing from the queries and keys (they read resid + pos).": (
                        resid + _layer(resid, resid, *W)
                    ),
                    "no causal mask: a position must not attend to later ones.": resid
                    + _layer(resid + pos, resid, *W, causal=False),
                    "the heads were averaged; their outputs add up (Σ over heads).": resid
                    + _layer(resid + pos, resid, *W) / model.cfg.n_heads,
                }
            expected = cache[f"blocks.{layer}.hook_resid_post"]
            cases.append(Case((resid, pos, *W), expected, mistakes, f"layer {layer}"))
    check_cases(ex, attention_layer, "attention_layer", cases, block_forward=True)
    passed(ex, "matches the model's residual stream after both layers of two random test models.")


def _layer(qk_input, v_input, W_Q, W_K, W_V, W_O, causal: bool = True) -> Tensor:
    """Every head of a layer, summed (a reference written independently of helpers.models)."""
    q = torch.einsum("bpm,hmd->bhpd", qk_input, W_Q)
    k = torch.einsum("bpm,hmd->bhpd", qk_input, W_K)
    v = torch.einsum("bpm,hmd->bhpd", v_input, W_V)
    scores = q @ k.transpose(-1, -2) / W_Q.shape[-1] ** 0.5  # [batch, head, query, key]
    if causal:
        n = scores.shape[-1]
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return torch.einsum("bhqk,bhkd,hdm->bqm", scores.softmax(-1), v, W_O)


@checker
def check_concat_then_project(concat_then_project: Callable) -> None:
    """Exercise 0.4: `concat_then_project(z, W_O) -> [batch, pos, d_model]`: the heads' weighted
    values `z [batch, pos, n_heads, d_head]` concatenated to `[batch, pos, n_heads·d_head]` and
    multiplied by `W_O [n_heads, d_head, d_model]` stacked to `[n_heads·d_head, d_model]`."""
    ex = "Exercise 0.4 (concat_then_project)"
    cases = []
    for model, cache in _two_layer_models_and_caches(draw_seed()):
        for layer in range(2):
            z = cache[f"blocks.{layer}.attn.hook_z"]
            W_O = model.blocks[layer].attn.W_O.detach()
            H, d, D = W_O.shape
            mistakes = {
                "the concatenation and the stack of W_O are in different orders: flatten z as "
                "[batch, pos, (head d_head)] and W_O as [(head d_head), d_model], head first in "
                "both.": z.transpose(2, 3).reshape(*z.shape[:2], H * d) @ W_O.reshape(H * d, D),
                "only the first head was used.": z[:, :, 0] @ W_O[0],
                "the heads were averaged: the projection sums over all n_heads·d_head "
                "coordinates.": (z.reshape(*z.shape[:2], H * d) @ W_O.reshape(H * d, D)) / H,
            }
            expected = cache[f"blocks.{layer}.hook_attn_out"]
            cases.append(Case((z, W_O), expected, mistakes, f"layer {layer}"))
    check_cases(ex, concat_then_project, "concat_then_project", cases)
    passed(ex, "one product of the concatenated heads equals the layer's output, for two models.")


@checker
def check_bos_attention(bos_attention: Callable) -> None:
    """Exercise 0.5: `bos_attention(model, tokens) -> [n_layers, n_heads]`, each head's mean
    attention on position 0 from positions 1.., read from `run_with_cache`."""
    ex = "Exercise 0.5 (bos_attention)"
    seed = draw_seed()
    cases = []
    # one, two and three layers: the answer must not assume the number of layers
    per_model = [{"n_layers": n} for n in (2, 1, 3)]
    for i, model in enumerate(random_models(seed, 3, per_model=per_model)):
        n_layers = model.cfg.n_layers
        tokens = random_tokens(model, seed + 10 + i, batch=3)
        _, cache = model.run_with_cache(tokens)
        patterns = torch.stack(
            [cache[f"blocks.{j}.attn.hook_pattern"] for j in range(n_layers)]
        )  # [layer, batch, head, query, key]
        mistakes = {
            "position 0 was included: it can only attend to itself (1.0), so leave it out and "
            "average over queries 1..": patterns[..., :, 0].mean(dim=(1, 3)),
            "that is the attention *from* BOS (row 0), not the attention *to* BOS (column 0).": (
                patterns[..., 0, :].mean(dim=(1, 3))
            ),
            "only the first sequence was used; average over the batch too.": (
                patterns[:, 0, :, 1:, 0].mean(dim=-1)
            ),
        }
        expected = evals.bos_attention(model, tokens)
        mistakes["layers and heads are swapped: rows are layers, columns heads."] = expected.T
        cases.append(Case((model, tokens), expected, mistakes, f"a {n_layers}-layer model"))
    check_cases(
        ex,
        bos_attention,
        "bos_attention",
        cases,
        withhold=[evals.bos_attention, head_scores._pattern_stack],
        atol=1e-5,
    )
    passed(ex, "every head's attention to BOS, for random one-, two- and three-layer models.")


def _uniform_pattern(n: int) -> Tensor:
    causal = torch.ones(n, n).tril()
    return causal / causal.sum(-1, keepdim=True)  # [query, key]


@checker
def check_with_uniform_attention(with_uniform_attention: Callable) -> None:
    """Exercise 0.6: `with_uniform_attention(model, tokens, layer) -> logits`, with every head of
    `layer` made to attend equally to all positions up to its own (a hook replacing
    `blocks.{layer}.attn.hook_pattern`)."""
    ex = "Exercise 0.6 (with_uniform_attention)"
    seed = draw_seed()
    cases = []
    for i, model in enumerate(random_models(seed, n_layers=2)):
        tokens = random_tokens(model, seed + 10 + i, batch=2)
        tokens = tokens[:, : model.cfg.n_ctx - i]  # the second model: shorter than n_ctx
        n = tokens.shape[1]

        def replaced(pattern: Tensor, layers, model=model, tokens=tokens) -> Tensor:
            hooks = [(f"blocks.{j}.attn.hook_pattern", lambda x, hook: pattern.expand_as(x).clone())
                     for j in layers]  # fmt: skip
            with torch.no_grad():
                return model.run_with_hooks(tokens, hooks)

        for layer in range(2):
            mistakes = {
                "every position attends to all positions, later ones too: uniform attention "
                "must stay causal (weight 1/(q+1) on keys 0..q).": replaced(
                    torch.full((n, n), 1 / n), [layer]
                ),
                "both layers were replaced; only `layer` should be.": replaced(
                    _uniform_pattern(n), [0, 1]
                ),
                "the other layer was replaced.": replaced(_uniform_pattern(n), [1 - layer]),
            }
            expected = replaced(_uniform_pattern(n), [layer])
            cases.append(Case((model, tokens, layer), expected, mistakes, f"layer {layer}"))
    check_cases(
        ex, with_uniform_attention, "with_uniform_attention", cases,
        withhold=[evals.run_with_frozen_patterns],
    )  # fmt: skip
    passed(ex, "the logits with either layer's attention made uniform, for two random models.")


@checker
def check_logit_contributions(logit_contributions: Callable) -> None:
    """Exercise 0.8: `logit_contributions(model, cache) -> [1 + n_layers·n_heads, batch, pos,
    d_vocab]`: the embedding's contribution to the logits, then every head's (layer by layer),
    from `run_with_cache`'s cache of a shortformer model without biases."""
    ex = "Exercise 0.8 (logit_contributions)"
    seed = draw_seed()
    cases = []
    for i, model in enumerate(random_models(seed, n_layers=2)):
        tokens = random_tokens(model, seed + 10 + i, batch=2)
        _, cache = model.run_with_cache(tokens)
        expected, _ = attribution.logit_contributions(model, tokens)
        heads = expected[1:].reshape(2, model.cfg.n_heads, *expected.shape[1:])
        mistakes = {
            "the heads are ordered head by head across layers (L0H0, L1H0, L0H1, …); order them "
            "layer by layer: L0H0, L0H1, …, L1H0, …": torch.cat(
                [expected[:1], heads.transpose(0, 1).reshape_as(expected[1:])]
            ),
            "the positional embedding was added to the embedding's term: in a shortformer model it "
            "never enters the residual stream.": torch.cat(
                [(cache["hook_embed"] + cache["hook_pos_embed"])[None] @ model.W_U, expected[1:]]
            ),
        }
        cases.append(Case((model, cache), expected.detach(), mistakes))
    check_cases(
        ex, logit_contributions, "logit_contributions", cases,
        withhold=[attribution.logit_contributions, attribution.decompose_resid],
    )  # fmt: skip
    passed(ex, "embedding plus every head, layer by layer, for two random two-layer models.")
