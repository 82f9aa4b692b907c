"""Exercises 4.4-4.6: ablations through hooks, the K-composition circuit and the OV circuits of
heads that copy together."""

from __future__ import annotations

import torch
from torch import Tensor

from helpers import circuits, evals
from helpers.checks._base import generator, random_models, random_tokens
from helpers.checks._judge import Case
from helpers.checks._registry import Exercise, declare

# ---- 4.4 ablations through hooks --------------------------------------------------------------


@torch.no_grad()
def _ablated(model, tokens, heads, kind, cache) -> Tensor:
    """Ablation of `heads`, with means from `cache` (a clean run), or, with `cache` None, from
    the very run being ablated (a common mistake)."""
    hooks = []
    for layer in sorted({layer for layer, _ in heads}):
        chosen = [h for l_, h in heads if l_ == layer]
        name = f"blocks.{layer}.attn.hook_result"

        def ablate(result, hook, chosen=chosen, name=name):
            result = result.clone()  # [batch, pos, head, d_model]
            if kind == "zero":
                result[:, :, chosen] = 0.0
            else:
                source = result if cache is None else cache[name]
                result[:, :, chosen] = source.mean((0, 1))[chosen]
            return result

        hooks.append((name, ablate))
    return model.run_with_hooks(tokens, hooks)


@torch.no_grad()
def _mean_over(model, tokens, heads, cache, dims) -> Tensor:
    """Mean ablation with the mean over `dims` of `[batch, pos, head, d_model]` (a mistake)."""
    hooks = []
    for layer in sorted({layer for layer, _ in heads}):
        chosen = [h for l_, h in heads if l_ == layer]
        mean = cache[f"blocks.{layer}.attn.hook_result"].mean(dim=dims, keepdim=True)

        def ablate(result, hook, chosen=chosen, mean=mean):
            result = result.clone()
            result[:, :, chosen] = mean.expand_as(result)[:, :, chosen]
            return result

        hooks.append((f"blocks.{layer}.attn.hook_result", ablate))
    return model.run_with_hooks(tokens, hooks)


def _ablation_cases(seed: int) -> list[Case]:
    """A two- and a three-layer model (so that no layer can be assumed), each with one head of
    layer 0, one of the last layer, one of each (different heads: a late-bound loop variable
    shows) and two heads of one layer (a dict of the list keeps one), zeroed and mean-ablated."""
    cases = []
    for i, model in enumerate(random_models(seed, n_layers=2, per_model=[{}, {"n_layers": 3}])):
        tokens = random_tokens(model, seed + 10 + i, batch=3 + i)
        rng = generator(seed + 20 + i)
        H, last = model.cfg.n_heads, model.cfg.n_layers - 1
        first = int(torch.randint(1, H, (), generator=rng))  # never head 0 alone
        second = (first + 1 + int(torch.randint(H - 1, (), generator=rng))) % H  # not `first`
        _, cache = model.run_with_cache(tokens)
        with torch.no_grad():
            clean = model(tokens)
        for heads in ([(0, first)], [(last, second)], [(0, first), (last, second)],
                      [(last, first), (last, second)]):  # fmt: skip
            layers = {layer for layer, _ in heads}
            for kind in ("zero", "mean"):
                other = "mean" if kind == "zero" else "zero"
                expected_logits = evals.run_with_ablation(model, tokens, heads, kind=kind)
                whole = [(layer, h) for layer in layers for h in range(H)]
                mistakes = {
                    f"kind {kind!r}: that is the other kind of ablation.":
                        evals.run_with_ablation(model, tokens, heads, kind=other),
                    "every head of the layer was ablated, not only the chosen ones.":
                        evals.run_with_ablation(model, tokens, whole, kind=kind),
                    "nothing was ablated: these are the clean logits. Does each hook return the "
                    "edited tensor, and are the hooks passed to run_with_hooks?": clean,
                    "these are log-probabilities (log_softmax): return the logits as the model "
                    "gives them.": expected_logits.log_softmax(-1),
                }  # fmt: skip
                if any(layer != 0 for layer in layers):
                    mistakes["every head was ablated in layer 0: the list holds (layer, head) "
                             "pairs; hook blocks.{layer}.attn.hook_result of each head's own "
                             "layer."] = evals.run_with_ablation(
                        model, tokens, sorted({(0, h) for _, h in heads}), kind
                    )  # fmt: skip
                if len({h for _, h in heads}) > 1:
                    mistakes["every hook ablated the last head in the list: a function defined in "
                             "a loop sees the loop variable's final value. Bind it when the hook "
                             "is made, e.g. `def hook(x, hook, head=head): ...`."] = _ablated(
                        model, tokens, [(layer, heads[-1][1]) for layer, _ in heads], kind, cache
                    )  # fmt: skip
                if len(layers) < len(heads):
                    mistakes["only one head of the layer was ablated: the list may hold several "
                             "heads of one layer (a dict {layer: head} keeps only the last)."] = (
                        evals.run_with_ablation(model, tokens, list(dict(heads).items()), kind)
                    )  # fmt: skip
                if kind == "mean" and len(layers) > 1:
                    mistakes["the mean was taken inside the hook, from the run being ablated: a "
                             "later layer's mean then already feels the earlier ablation. Take "
                             "the means from a clean run_with_cache first."] = _ablated(
                        model, tokens, heads, kind, None
                    )  # fmt: skip
                if kind == "mean":
                    mistakes["the mean was taken over the batch only: average each head's output "
                             "over the batch *and* the positions."] = _mean_over(
                        model, tokens, heads, cache, dims=(0,))  # fmt: skip
                    mistakes["the mean was taken over the positions only: average over the batch "
                             "too."] = _mean_over(
                        model, tokens, heads, cache, dims=(1,))  # fmt: skip
                    mistakes["the mean was taken over every entry, one number per head: keep one "
                             "vector [d_model] per head, averaged over the batch and positions "
                             "only (mean(dim=(0, 1)))."] = _mean_over(
                        model, tokens, heads, cache, dims=(0, 1, 3))  # fmt: skip
                expected = expected_logits
                where = (f"{kind} ablation of {', '.join(f'L{a}H{b}' for a, b in heads)} in a "
                         f"{model.cfg.n_layers}-layer model")  # fmt: skip
                tags = {kind, f"{model.cfg.n_layers} layers"}
                tags |= {"one head"} if len(heads) == 1 else set()
                tags |= {"heads in two layers"} if len(layers) > 1 else set()
                tags |= {"two heads of one layer"} if len(layers) < len(heads) else set()
                cases.append(Case((model, tokens, heads, kind), expected, mistakes, where,
                                  tags=tags))  # fmt: skip
    return cases


declare(Exercise(
    number="4.4", title="zero and mean ablation through hooks", functions=("ablate_heads",),
    cases=_ablation_cases, reference=evals.run_with_ablation,
    withhold=(evals.run_with_ablation,),
    on_error={"KeyError": "The cache is keyed by TransformerLens hook names, e.g. "
              "'blocks.0.attn.hook_result' ([batch, pos, head_index, d_model])."},
    covers=frozenset({"zero", "mean", "one head", "heads in two layers", "two heads of one layer",
                      "3 layers"}),
    passed="zero and mean ablation of one head, heads of two layers and two heads of one layer, "
    "in random models of two and three layers.",
))  # fmt: skip


# ---- 4.5 the K-composition circuit, 4.6 OV circuits combined ------------------------------------


def _k_composition_cases(seed: int) -> list[Case]:
    """Every pair (layer-0 head, layer-1 head) of two random models: the same index in both
    layers and different ones (so that swapped heads show)."""
    cases = []
    for model in random_models(seed, n_layers=2):
        a0, a1 = model.blocks[0].attn, model.blocks[1].attn
        H, d = model.cfg.n_heads, model.cfg.d_head
        for p in range(H):
            for h in range(H):
                with torch.no_grad():
                    expected = circuits.k_composition_circuit(model, (0, p), (1, h))
                    queries = model.W_E @ a1.W_Q[h]
                    direct = queries @ (model.W_E @ a1.W_K[h]).T / d**0.5
                    mistakes = {
                        "the matrix is transposed: rows are query tokens, columns the previous "
                        "token of the key position.": expected.T,
                        "the previous-token head is missing: that is the layer-1 head's plain "
                        "token-token QK circuit (keys read W_E @ W_V⁰ @ W_O⁰ first).": direct,
                        "the key's own token (the direct path, W_E @ W_K¹) was added: the "
                        "K-composition term is only the part that the previous-token head "
                        "moved.": expected + direct,
                        "the previous-token head went into the queries (that is Q-composition); "
                        "K-composition is in the keys.": circuits.q_composition_circuit(
                            model, (0, p), (1, h)
                        ),
                        "the two heads were swapped: prev_head is the layer-0 head, "
                        "induction_head the layer-1 head.": circuits.k_composition_circuit(
                            model, (0, h), (1, p)
                        ),
                        "the 1/sqrt(d_head) scale is missing.": expected * d**0.5,
                        "the scale is 1/sqrt(d_model); attention scores are divided by "
                        "sqrt(d_head).": expected * d**0.5 / model.cfg.d_model**0.5,
                        "the scale is 1/d_head; attention scores are divided by sqrt(d_head).": expected
                        / d**0.5,
                        "a softmax was applied: this exercise asks for the raw scores (the "
                        "term is one of several that add up before the softmax).": expected.softmax(
                            -1
                        ),
                        "the previous-token head's W_V and W_O were taken from layer 1: the "
                        "previous-token head is in layer 0 (model.W_V[0, prev_head]).": (
                            queries @ (model.W_E @ a1.W_V[p] @ a1.W_O[p] @ a1.W_K[h]).T / d**0.5
                        ),
                        "the queries were taken from layer 0: the induction head's W_Q is "
                        "layer 1's (model.W_Q[1, induction_head]).": (
                            (model.W_E @ a0.W_Q[h])
                            @ (model.W_E @ a0.W_V[p] @ a0.W_O[p] @ a1.W_K[h]).T
                            / d**0.5
                        ),
                        "each row was centred: this exercise asks for the raw term; centring "
                        "(each query's scores minus their mean) comes when you compare keys "
                        "within a query.": expected - expected.mean(-1, keepdim=True),
                    }
                tags = {"the same head index in both layers" if p == h else "different heads"}
                cases.append(Case((model, p, h), expected, mistakes, f"L0H{p} → L1H{h}",
                                  tags=tags))  # fmt: skip
    return cases


declare(Exercise(
    number="4.5", title="the K-composition circuit", functions=("k_composition_circuit",),
    cases=_k_composition_cases, reference=circuits.k_composition_circuit, block_forward=True,
    withhold=(circuits.k_composition_circuit, circuits.q_composition_circuit),
    covers=frozenset({"the same head index in both layers", "different heads"}),
    passed="the K-composition term of the QK circuit for every pair of heads of two models.",
))  # fmt: skip


def _ov(model, layer: int, head: int) -> Tensor:
    attn = model.blocks[layer].attn
    return attn.W_V[head] @ attn.W_O[head]


def _combined_ov_cases(seed: int) -> list[Case]:
    """Two random models; one head, two heads of one layer, heads of two layers and three heads
    (so that an answer for one or two heads only shows)."""
    cases = []
    for i, model in enumerate(random_models(seed, n_layers=2)):
        picks = torch.randperm(model.cfg.n_heads, generator=generator(seed + i))[:2].tolist()
        a, b = picks
        for heads in ([(1, a)], [(1, a), (1, b)], [(0, b), (1, a)], [(0, a), (1, b), (1, a)]):
            layers = {layer for layer, _ in heads}
            with torch.no_grad():
                each = [circuits.full_ov_circuit(model, layer, h) for layer, h in heads]
                expected = torch.stack(each).sum(0)
                mistakes = {
                    "the circuits were averaged: heads that attend to the same token add their "
                    "outputs.": expected / len(heads),
                    "the circuit is transposed: rows are source tokens, columns outputs.": (
                        expected.T
                    ),
                    "only the first head was used.": each[0],
                    "the direct path W_E @ W_U was added: the OV circuits are what the heads "
                    "write, nothing else.": expected + model.W_E @ model.W_U,
                }
                if len(heads) > 1:
                    why = ("heads in one layer act side by side" if len(layers) == 1 else
                           "that is a virtual head through the layers, a different path; "
                           "this exercise asks what the heads write when all attend to the same "
                           "token")  # fmt: skip
                    product = model.W_E
                    for layer, h in heads:
                        product = product @ _ov(model, layer, h)
                    mistakes[f"the OV matrices were multiplied: {why}: add them."] = (
                        product @ model.W_U
                    )  # fmt: skip
                    mistakes[
                        "only the last head was used: a loop that assigns (M = ...) instead of "
                        "adding (M = M + ...) keeps the last head's circuit."
                    ] = each[-1]
                    summed_v = sum(model.blocks[layer].attn.W_V[h] for layer, h in heads)
                    summed_o = sum(model.blocks[layer].attn.W_O[h] for layer, h in heads)
                    mistakes[
                        "W_V and W_O were summed over the heads separately: (Σ W_V)(Σ W_O) adds "
                        "cross terms W_V of one head times W_O of another, which no head computes. "
                        "Multiply within each head, then add."
                    ] = model.W_E @ summed_v @ summed_o @ model.W_U
                if len(heads) > 2:
                    mistakes[
                        "only the first two heads were added: `heads` may hold any number "
                        "of (layer, head) pairs."
                    ] = each[0] + each[1]
            tags = {f"{len(heads)} head(s)"}
            tags |= {"two heads of one layer"} if len(layers) < len(heads) else set()
            tags |= {"heads of two layers"} if len(layers) > 1 else set()
            where = f"heads {', '.join(f'L{x}H{y}' for x, y in heads)}"
            cases.append(Case((model, heads), expected, mistakes, where, tags=tags))
    return cases


declare(Exercise(
    number="4.6", title="heads that copy together", functions=("combined_ov_circuit",),
    cases=_combined_ov_cases, block_forward=True,
    withhold=(circuits.full_ov_circuit, circuits.virtual_head_ov_circuit),
    covers=frozenset({"1 head(s)", "3 head(s)", "two heads of one layer", "heads of two layers"}),
    passed="the summed OV circuit of one, two and three heads, in one layer and across two, for "
    "two random models.",
))  # fmt: skip
