"""Exercises 3.4-3.6: frozen attention patterns, the importance of each order of terms, and path
ablation, through hooks."""

from __future__ import annotations

import torch
from torch import Tensor

from helpers import evals
from helpers.checks._base import CheckFailed, generator, random_models, random_tokens
from helpers.checks._judge import Case, expect_float, same
from helpers.checks._registry import Exercise, declare
from helpers.checks.composition._shared import (
    BIASES,
    model_tags,
    model_words,
    noting,
    randomise_biases,
)
from helpers.models import AttnOnlyTransformer, next_token_loss


# ---- 3.4 freezing attention patterns with hooks -------------------------------------------------------
def _patterns(model: AttnOnlyTransformer, tokens: Tensor) -> dict[int, Tensor]:
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    return {layer: cache[f"blocks.{layer}.attn.hook_pattern"]
            for layer in range(model.cfg.n_layers)}  # fmt: skip


@torch.no_grad()
def _with_hooks(model: AttnOnlyTransformer, tokens: Tensor, hooks) -> Tensor:
    return model.run_with_hooks(tokens, hooks)


def _frozen(hook_name: str, chosen: dict[int, Tensor]) -> list:
    """Hooks returning `chosen[layer]` at `blocks.{layer}.attn.{hook_name}`."""
    return [(f"blocks.{layer}.attn.{hook_name}", lambda x, hook, p=p: p)
            for layer, p in chosen.items()]  # fmt: skip


def _frozen_cases(seed: int) -> list[Case]:
    """A two-layer model (both layers, either alone), one with biases (the layers listed last
    first) and a three-layer one (layers 0 and 2, all three from the last), on tokens of n_ctx
    and fewer, with patterns recorded on other tokens."""
    models = random_models(seed, 3, n_layers=2,
                           per_model=[{}, {"use_bias": True}, {"n_layers": 3}])  # fmt: skip
    randomise_biases(models[1], seed + 5)
    plan = (([0, 1], [1], [0]), ([1, 0],), ([0, 2], [2, 1, 0]))
    cases = []
    for i, (model, layer_lists) in enumerate(zip(models, plan, strict=True)):
        n = model.cfg.n_ctx - (0, 2, 1)[i]  # a prompt shorter than n_ctx in two of them
        tokens = random_tokens(model, seed + 10 + i, batch=2)[:, :n]
        recorded = _patterns(model, random_tokens(model, seed + 20 + i, batch=2)[:, :n])
        for layers in layer_lists:
            patterns = {layer: recorded[layer] for layer in layers}
            expected = evals.run_with_frozen_patterns(model, tokens, patterns)
            mistakes = {
                "the logits are the model's own: the patterns were not used (a hook must return "
                "the replacement, on blocks.{layer}.attn.hook_pattern).": _with_hooks(
                    model, tokens, []
                ),
                "the patterns went into hook_attn_scores, where the softmax runs on them again: "
                "replace hook_pattern, which is after the softmax.": _with_hooks(
                    model, tokens, _frozen("hook_attn_scores", patterns)
                ),
            }
            if 0 in layers and len(layers) > 1:
                mistakes["only layer 0 was frozen: freeze every layer in `patterns`."] = (
                    evals.run_with_frozen_patterns(model, tokens, {0: patterns[0]})
                )
            if len(layers) > 1:
                last = patterns[layers[-1]]  # the loop variable's final value
                mistakes[
                    "every layer got the last layer's pattern: a lambda defined in a loop sees the "
                    "loop variable's final value. Bind it when the hook is made, e.g. "
                    "`lambda x, hook, p=pattern: p`."
                ] = _with_hooks(model, tokens, _frozen("hook_pattern", dict.fromkeys(layers, last)))
            if layers != list(range(len(layers))):
                mistakes[
                    "the patterns went to layers 0, 1, … in turn (enumerate, or "
                    "range(len(patterns))): the dict's keys are the layers, in any order and "
                    "not necessarily all of them; hook blocks.{layer} for each key."
                ] = _with_hooks(
                    model, tokens, _frozen("hook_pattern", dict(enumerate(patterns.values())))
                )
            tags = model_tags(model)
            tags.add("every layer frozen" if len(layers) == model.cfg.n_layers
                     else "a layer left unfrozen")  # fmt: skip
            if layers != sorted(layers):
                tags.add("layers listed out of order")
            if sorted(layers) != list(range(len(layers))):
                tags.add("layers other than 0, 1, …")
            if n < model.cfg.n_ctx:
                tags.add("tokens shorter than n_ctx")
            where = f"layers {layers} frozen in {model_words(model)}, {n} tokens"
            note = BIASES if model.cfg.use_bias else ""
            cases.append(Case((model, tokens, patterns), expected, mistakes, where, tags=tags,
                              describe=noting(expected, note)))  # fmt: skip
    return cases


declare(Exercise(
    number="3.4", title="freezing attention patterns with hooks",
    functions=("run_with_frozen_patterns",), cases=_frozen_cases,
    reference=evals.run_with_frozen_patterns,
    withhold=(evals.run_with_frozen_patterns, evals.term_importance),
    covers=frozenset({"every layer frozen", "a layer left unfrozen", "layers listed out of order",
                      "layers other than 0, 1, …", "biases", "3 layers",
                      "tokens shorter than n_ctx"}),
    passed="the logits with any set of frozen layers, in any order, for random two- and "
    "three-layer models, with and without biases.",
))  # fmt: skip


# ---- 3.5 term importance ---------------------------------------------------------------------------
_ORDERS = (
    "Order 0 is the direct path alone (W_E then W_U); order 1 adds every head reading the "
    "embeddings; order 2 adds layer 1 reading layer 0's output; patterns frozen throughout. In "
    "these shortformer models the positional embedding enters only queries and keys, never the "
    "residual stream or the values."
)


@torch.no_grad()
def _orders_with_positions(model: AttnOnlyTransformer, tokens: Tensor, cache) -> tuple:
    """The three losses with W_pos added into the residual stream (a mistake), patterns frozen."""
    x0 = model.W_E[tokens] + model.W_pos[: tokens.shape[1]]

    def heads(layer: int, x: Tensor) -> Tensor:
        attn, pattern = model.blocks[layer].attn, cache[f"blocks.{layer}.attn.hook_pattern"]
        return torch.einsum("bhqk,bkm,hmd,hdn->bqn", pattern, x, attn.W_V, attn.W_O)

    def loss(resid: Tensor) -> float:
        return float(next_token_loss(resid @ model.W_U, tokens))

    l0 = heads(0, x0)
    return loss(x0), loss(x0 + l0 + heads(1, x0)), loss(x0 + l0 + heads(1, x0 + l0))


def _read_losses(out: object, case: Case) -> tuple[float, float, float]:
    """Three losses, or a CheckFailed on the answer's form."""
    ex = _TERMS.name
    if hasattr(out, "ndim") and out.ndim == 1:  # a tensor or an array of three
        out = list(out)
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise CheckFailed(ex, "term_importance must return three losses (order_0, order_1, "
                          "order_2).")  # fmt: skip
    return tuple(expect_float(ex, f"order_{k}", v) for k, v in enumerate(out))


def _describe_losses(answer: tuple, expected: tuple) -> str:
    wrong = [f"order {k}: got {g:.4f}, expected {e:.4f}"
             for k, (g, e) in enumerate(zip(answer, expected, strict=True)) if not same(g, e)]  # fmt: skip
    return "; ".join(wrong) + ". " + _ORDERS


def _term_cases(seed: int) -> list[Case]:
    """Two random shortformer models without biases, on prompts of n_ctx tokens and fewer."""
    cases = []
    for i, model in enumerate(random_models(seed, 2, n_layers=2)):
        n = model.cfg.n_ctx - 2 * i
        tokens = random_tokens(model, seed + 10 + i, batch=4 - i)[:, :n]
        ref = evals.term_importance(model, tokens)
        expected = (ref.order_0, ref.order_1, ref.order_2)
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens)
            x0, pos = model.W_E[tokens], model.W_pos[:n]
            # order 1 with layer 1's pattern recomputed from the embeddings instead of frozen
            recomputed = model.blocks[1].attn(x0 + pos, x0)
            l0 = model.blocks[0].attn(x0 + pos, x0)  # layer 0 reads x0: its patterns are real
            unfrozen = float(next_token_loss((x0 + l0 + recomputed) @ model.W_U, tokens))
        mistakes = {
            "order 1 lets layer 1 read layer 0's output (that is order 2): at order 1 every head "
            "reads the embeddings alone.": (ref.order_0, ref.order_2, ref.order_2),
            "at order 1, layer 1's attention pattern was recomputed from the embeddings: freeze it "
            "to the full model's pattern (only V-composition is being removed).": (
                ref.order_0,
                unfrozen,
                ref.order_2,
            ),
            "the orders are in the wrong order: return (order 0, order 1, order 2), the losses "
            "with more and more terms.": (ref.order_2, ref.order_1, ref.order_0),
            "order 1 left out layer 1's heads: at order 1 every head of both layers reads the "
            "embeddings.": (ref.order_0, ref.layer_0_only, ref.order_2),
            "order 1 left out layer 0's heads: at order 1 every head of both layers reads the "
            "embeddings.": (ref.order_0, ref.layer_1_only, ref.order_2),
            "the positional embedding was added to x0: in these shortformer models positions "
            "enter only the queries and keys (through the recorded patterns), never the residual "
            "stream or the values; x0 = W_E[tokens].": _orders_with_positions(model, tokens, cache),
        }
        tags = {"tokens shorter than n_ctx"} if n < model.cfg.n_ctx else {"n_ctx tokens"}
        where = f"{tokens.shape[0]} prompts of {n} tokens, {model_words(model)}"
        cases.append(Case((model, tokens), expected, mistakes, where, tags=tags,
                          describe=lambda answer, e=expected: _describe_losses(answer, e)))  # fmt: skip
    return cases


_TERMS = declare(Exercise(
    number="3.5", title="term importance", functions=("term_importance",), cases=_term_cases,
    reference=evals.term_importance, withhold=(evals.term_importance,), read=_read_losses,
    covers=frozenset({"tokens shorter than n_ctx", "n_ctx tokens"}),
    passed="the losses of the path expansion at orders 0, 1 and 2, for two random models.",
))  # fmt: skip


# ---- 3.6 path ablation -----------------------------------------------------------------------------
@torch.no_grad()
def _subtracting(model, tokens, sent: Tensor, receiver: str, layers, late_bound: bool = False):
    """Logits with `sent` `[batch, pos, d_model]` (a head's output, or a whole layer's) taken out
    of the `receiver` input of every head in `layers`. `late_bound`: the mistake of one hook per
    head made in a loop without binding the head, so that every hook takes it out of the last
    head (n_heads times) and none out of the others."""
    H, hooks = model.cfg.n_heads, []
    for layer in layers:
        W = getattr(model.blocks[layer].attn, f"W_{receiver.upper()}")  # [head, d_model, d_head]
        removed = torch.einsum("bpm,hmd->bphd", sent, W)

        def subtract(x, hook, removed=removed):
            if not late_bound:
                return x - removed
            x = x.clone()
            x[:, :, H - 1] -= H * removed[:, :, H - 1]
            return x

        hooks.append((f"blocks.{layer}.attn.hook_{receiver}", subtract))
    return model.run_with_hooks(tokens, hooks)


_INPUTS = {"q": "queries", "k": "keys", "v": "values"}


def _path_cases(seed: int) -> list[Case]:
    """A two-layer model (its sender never head 0), one with biases and a three-layer one (whose
    layer 1 is not the last), each path in turn."""
    models = random_models(seed, 3, n_layers=2,
                           per_model=[{}, {"use_bias": True}, {"n_layers": 3}])  # fmt: skip
    randomise_biases(models[1], seed + 5)
    cases = []
    for i, model in enumerate(models):
        H, L = model.cfg.n_heads, model.cfg.n_layers
        tokens = random_tokens(model, seed + 10 + i, batch=2)
        g = generator(seed + i)
        # never head 0 in the first model: an answer that takes head 0, or the sender's layer
        # index for its head, cannot pass by luck
        head = int(torch.randint(1 if i == 0 else 0, H, (), generator=g))
        sender = (0, head)
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens)
        sent = cache["blocks.0.attn.hook_result"][:, :, head]
        for receiver in "qkv":
            expected = evals.run_with_path_ablation(model, tokens, sender, receiver, layer=1)
            mistakes = {
                "the head was removed from everything downstream (its output zeroed): remove it "
                "from one input of layer 1 only.": evals.run_with_ablation(model, tokens, [sender]),
                "the whole of layer 0's output was taken out (hook_attn_out), not the sender's "
                "alone: take the head's own output, cache['blocks.0.attn.hook_result'][:, :, "
                "head].": _subtracting(model, tokens, cache["blocks.0.hook_attn_out"], receiver, [1]),
                "every layer-1 head's hook took the output out of the last head only: a function "
                "defined in a loop over the heads sees the loop variable's final value. Subtract "
                "for every head at once (x - removed), or bind the head when the hook is made.":
                    _subtracting(model, tokens, sent, receiver, [1], late_bound=True),
            }  # fmt: skip
            for other in "qkv".replace(receiver, ""):
                mistakes[
                    f"the head was removed from the {other!r} input, not from {receiver!r}."
                ] = evals.run_with_path_ablation(model, tokens, sender, other, layer=1)
            if head != 0:
                mistakes["the sender's layer index was taken for its head: sender = (layer, "
                         "head), the head is sender[1]."] = (
                    evals.run_with_path_ablation(model, tokens, (0, 0), receiver, layer=1)
                )  # fmt: skip
            if L > 2:
                mistakes["the path was removed from the last layer's input: the receiver is "
                         "layer 1, whatever the model's depth."] = (
                    evals.run_with_path_ablation(model, tokens, sender, receiver, layer=L - 1)
                )  # fmt: skip
                mistakes["the path was removed from every later layer: only layer 1's "
                         f"{_INPUTS[receiver]} lose it."] = (
                    _subtracting(model, tokens, sent, receiver, range(1, L))
                )  # fmt: skip
            tags = {_INPUTS[receiver], *model_tags(model)}
            tags.add("sender head 0" if head == 0 else "a sender other than head 0")
            where = f"sender L0H{head}, receiver {receiver!r}, {model_words(model)}"
            note = BIASES if model.cfg.use_bias else ""
            cases.append(Case((model, tokens, sender, receiver), expected, mistakes, where,
                              tags=tags, describe=noting(expected, note)))  # fmt: skip
    return cases


declare(Exercise(
    number="3.6", title="path ablation", functions=("path_ablation",), cases=_path_cases,
    reference=evals.run_with_path_ablation,
    withhold=(evals.run_with_path_ablation, evals.run_with_ablation),
    covers=frozenset({"queries", "keys", "values", "biases", "3 layers",
                      "a sender other than head 0"}),
    passed="one path removed at a time (queries, keys, values), for random two- and three-layer "
    "models, with and without biases.",
))  # fmt: skip
