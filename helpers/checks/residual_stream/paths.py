"""Exercises 0.5-0.8: reading the cache, replacing an activation through a hook, the direct path
and the logits as a sum of contributions."""

from __future__ import annotations

import torch
from torch import Tensor

from helpers import attribution, circuits, evals
from helpers.checks._base import (
    random_models,
    random_tokens,
)
from helpers.checks._judge import Case
from helpers.checks._registry import Exercise, declare
from helpers.checks.residual_stream._shared import causal_mask
from helpers.evals import head_scores

# ---- 0.5 reading the cache -----------------------------------------------------------------------


def _bos_cases(seed: int) -> list[Case]:
    """Random models of one, two and three layers (the answer must not assume the number of
    layers), three sequences each."""
    cases = []
    per_model = [{"n_layers": n} for n in (2, 1, 3)]
    for i, model in enumerate(random_models(seed, 3, per_model=per_model)):
        n_layers = model.cfg.n_layers
        tokens = random_tokens(model, seed + 10 + i, batch=3)
        _, cache = model.run_with_cache(tokens)
        patterns = torch.stack(
            [cache[f"blocks.{j}.attn.hook_pattern"] for j in range(n_layers)]
        )  # [layer, batch, head, query, key]
        expected = evals.bos_attention(model, tokens)
        mistakes = {
            "position 0 was included: it can only attend to itself (1.0), so leave it out and "
            "average over queries 1..": patterns[..., :, 0].mean(dim=(1, 3)),
            "that is the attention *from* BOS (row 0), not the attention *to* BOS (column 0).": (
                patterns[..., 0, :].mean(dim=(1, 3))
            ),
            "only the first sequence was used; average over the batch too.": (
                patterns[:, 0, :, 1:, 0].mean(dim=-1)
            ),
            "layers and heads are swapped: rows are layers, columns heads.": expected.T,
        }
        layers = f"{n_layers} layer" + "s" * (n_layers > 1)
        cases.append(Case((model, tokens), expected, mistakes, f"a {n_layers}-layer model",
                          tags={layers}))  # fmt: skip
    return cases


declare(Exercise(
    number="0.5", title="reading the cache: how much each head rests on BOS",
    functions=("bos_attention",), cases=_bos_cases, reference=evals.bos_attention,
    withhold=(evals.bos_attention, head_scores._pattern_stack),
    covers=frozenset({"1 layer", "2 layers", "3 layers"}),
    on_error={"KeyError": "A cache holds blocks.{l}.… only for the model's own layers, "
              "l in range(model.cfg.n_layers): the checker's models have one, two and three."},
    passed="every head's attention to BOS, for random one-, two- and three-layer models.",
))  # fmt: skip


# ---- 0.6 replacing an activation ---------------------------------------------------------------


def _uniform_pattern(n: int) -> Tensor:
    causal = causal_mask(n).float()
    return causal / causal.sum(-1, keepdim=True)  # [query, key]


def _uniform_cases(seed: int) -> list[Case]:
    """A two-layer model on tokens of its full context (layers 0 and 1) and a three-layer model on
    tokens shorter than its context (its middle and last layers), so that neither the number of
    layers, nor the layer, nor the pattern's size can be assumed."""
    cases = []
    for i, model in enumerate(random_models(seed, n_layers=2, per_model=[{}, {"n_layers": 3}])):
        tokens = random_tokens(model, seed + 10 + i, batch=2)
        tokens = tokens[:, : model.cfg.n_ctx - i]  # the second model: shorter than n_ctx
        n, n_layers = tokens.shape[1], model.cfg.n_layers

        def replaced(pattern: Tensor, layers, model=model, tokens=tokens) -> Tensor:
            hooks = [(f"blocks.{j}.attn.hook_pattern", lambda x, hook: pattern.expand_as(x).clone())
                     for j in layers]  # fmt: skip
            with torch.no_grad():
                return model.run_with_hooks(tokens, hooks)

        causal, uniform = causal_mask(n).float(), _uniform_pattern(n)
        for layer in range(n_layers - 2, n_layers):
            others = [j for j in range(n_layers) if j != layer]
            more = [[layer, j] for j in others] + ([list(range(n_layers))] * (len(others) > 1))
            rows = (
                "the rows of the pattern do not sum to 1: query q spreads weight 1 over its q + 1 "
                "keys, 1/(q + 1) each (divide the causal ones by their row sums, "
                "sum(dim=-1, keepdim=True))."
            )
            mistakes = [
                ("every position attends to all positions, later ones too: uniform attention "
                 "must stay causal (weight 1/(q+1) on keys 0..q).",
                 replaced(torch.full((n, n), 1 / n), [layer])),
                (rows, replaced(causal, [layer])),
                (rows, replaced(causal / n, [layer])),
                (rows, replaced(causal / causal.sum(0, keepdim=True), [layer])),
                *[("more layers than `layer` were replaced: hook only "
                   "blocks.{layer}.attn.hook_pattern.", replaced(uniform, chosen))
                  for chosen in more],
                *[("another layer was replaced instead of `layer`: the hook's name must hold the "
                   "layer asked for, f\"blocks.{layer}.attn.hook_pattern\".",
                   replaced(uniform, [j])) for j in others],
                # a layer fixed in the code is right where it is the one asked for: one mistake
                # per layer, so that the case it gets right does not rule it out
                *[(f"the hook is always on layer {j}, whatever `layer` is: its name must hold the "
                   "argument, f\"blocks.{layer}.attn.hook_pattern\".", replaced(uniform, [j]))
                  for j in others],
                ("nothing was replaced: these are the model's own logits. The hook must return "
                 "the new pattern (a hook that returns nothing leaves the activation as it was), "
                 "and hang at blocks.{layer}.attn.hook_pattern.", replaced(uniform, [])),
            ]  # fmt: skip
            tags = {"layer 0"} if layer == 0 else set()
            tags |= {"the last layer"} if layer == n_layers - 1 else set()
            tags |= {"a middle layer"} if 0 < layer < n_layers - 1 else set()
            tags |= {"tokens shorter than n_ctx"} if n < model.cfg.n_ctx else set()
            tags |= {f"{n_layers} layers"}
            where = (f"layer {layer} of a {n_layers}-layer model, on {n} tokens "
                     f"(n_ctx {model.cfg.n_ctx})")  # fmt: skip
            cases.append(Case((model, tokens, layer), replaced(uniform, [layer]), mistakes, where,
                              tags=tags))  # fmt: skip
    return cases


declare(Exercise(
    number="0.6", title="replacing an activation: uniform attention",
    functions=("with_uniform_attention",), cases=_uniform_cases,
    withhold=(evals.run_with_frozen_patterns,),
    covers=frozenset({"layer 0", "a middle layer", "the last layer", "tokens shorter than n_ctx",
                      "3 layers"}),
    on_error={"RuntimeError": "If it is about sizes: the hook receives the pattern [batch, head, "
              "query_pos, key_pos] of these tokens, which may be shorter than n_ctx; build the "
              "uniform pattern from tokens.shape[-1] and return pattern.expand_as(the hook's "
              "input)."},
    passed="the logits with one layer's attention made uniform, for random models of two and "
    "three layers, on tokens of full and of shorter length.",
))  # fmt: skip


# ---- 0.7 the direct path -------------------------------------------------------------------------


def _direct_path_cases(seed: int) -> list[Case]:
    """A model with shortformer positions, on tokens of its full context, and one with standard
    positions, on tokens shorter than its context (W_pos[:n_pos])."""
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
        tags = {f"{positions} positions"}
        tags |= {"tokens shorter than n_ctx"} if tokens.shape[1] < model.cfg.n_ctx else set()
        where = f"{positions} positions, {tokens.shape[1]} tokens (n_ctx {model.cfg.n_ctx})"
        cases.append(Case((model, tokens), expected, mistakes, where, tags=tags))
    return cases


declare(Exercise(
    number="0.7", title="the direct path", functions=("direct_path_logits",),
    cases=_direct_path_cases, reference=attribution.direct_path_logits,
    withhold=(attribution.direct_path_logits, attribution.logit_contributions,
              attribution.decompose_resid, attribution.one_layer_path_expansion,
              circuits.direct_path),
    block_forward=True,
    covers=frozenset({"shortformer positions", "standard positions", "tokens shorter than n_ctx"}),
    on_error={"RuntimeError": "If it is about sizes: the tokens may be shorter than n_ctx, so "
              "the positions' embeddings are W_pos[:n_pos], n_pos = tokens.shape[-1]."},
    passed="right for random models with shortformer and with standard positions.",
))  # fmt: skip


# ---- 0.8 logit contributions ---------------------------------------------------------------------


def _contribution_cases(seed: int) -> list[Case]:
    """Random shortformer models without biases, of two and three layers (the notebook's has
    two)."""
    cases = []
    for i, model in enumerate(random_models(seed, n_layers=2, per_model=[{}, {"n_layers": 3}])):
        tokens = random_tokens(model, seed + 10 + i, batch=2)
        _, cache = model.run_with_cache(tokens)
        expected, _ = attribution.logit_contributions(model, tokens)
        L, H = model.cfg.n_layers, model.cfg.n_heads
        heads = expected[1:].reshape(L, H, *expected.shape[1:])
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
        cases.append(Case((model, cache), expected.detach(), mistakes, f"a {L}-layer model",
                          tags={f"{L} layers"}))  # fmt: skip
    return cases


declare(Exercise(
    number="0.8", title="every component's contribution to the logits",
    functions=("logit_contributions",), cases=_contribution_cases,
    reference=attribution.logit_contributions,
    withhold=(attribution.logit_contributions, attribution.decompose_resid),
    covers=frozenset({"2 layers", "3 layers"}),
    on_error={"KeyError": "A cache holds blocks.{l}.… only for the model's own layers, "
              "l in range(model.cfg.n_layers): the checker's models have two and three."},
    passed="embedding plus every head, layer by layer, for random two- and three-layer models.",
))  # fmt: skip
