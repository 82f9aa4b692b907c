"""Checkers of chapter 00: one attention head, a whole layer, hooks, the direct path, the logits
as a sum of contributions, the residual stream's lack of a privileged basis, and a head's write
subspace."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor

from helpers import attribution, circuits, evals
from helpers.checks._base import (
    Case,
    CheckFailed,
    call_learner,
    check_cases,
    checker,
    diagnose,
    draw_seed,
    expect_tensor,
    generator,
    heads_phrase,
    matches,
    name_mistake,
    passed,
    random_models,
    random_tokens,
)
from helpers.evals import head_scores
from helpers.models import AttnOnlyTransformer


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


# ---- 0.9 no privileged basis ----------------------------------------------------------------------
_WRITERS = ("W_E", "W_pos", "W_O", "b_O")  # write the stream: ... @ R
_READERS = ("W_Q", "W_K", "W_V", "W_U")  # read it: Rᵀ @ ...


def _flat(state: dict[str, Tensor]) -> Tensor:
    return torch.cat([value.detach().flatten() for value in state.values()])


def _rotation_mistakes(state: dict[str, Tensor], R: Tensor) -> list[tuple[str, Tensor]]:
    """The common mistakes of Exercise 0.9, as the flattened weights each one gives."""
    # every weight times R and times Rᵀ on its side (writers on the right, readers on the left),
    # and as it is; each mistake picks its pieces
    pieces = {}
    for name, value in state.items():
        last = name.split(".")[-1]
        pieces[name] = {None: value}
        if last in _WRITERS:
            pieces[name] |= {"R": value @ R, "Rt": value @ R.T}
        elif last in _READERS:  # broadcasts over heads: [n_heads, d_model, d_head]
            pieces[name] |= {"R": R @ value, "Rt": R.T @ value}
    writers_r = "the stream's new coordinates are x R, so every writer gets … R (W_E R, W_pos R, "
    reads = (
        "W_O R, b_O R) and every reader Rᵀ … (Rᵀ W_Q, Rᵀ W_K, Rᵀ W_V, Rᵀ W_U): (x R) Rᵀ W = x W."
    )
    forgot = "was not rotated: "
    variants = [
        (f"rotated by Rᵀ: {writers_r}{reads} Your model computes the same logits, but in the "
         "stream rotated by Rᵀ, not by R.", {"writer": "Rt", "reader": "R"}),
        (f"the readers were multiplied by R instead of Rᵀ: {writers_r}{reads}",
         {"writer": "R", "reader": "R"}),
        (f"the writers were multiplied by Rᵀ instead of R: {writers_r}{reads}",
         {"writer": "Rt", "reader": "Rt"}),
        ("the model is unchanged: no weight was rotated. Writers (W_E, W_pos, W_O, b_O) get … R, "
         "readers (W_Q, W_K, W_V, W_U) Rᵀ ….", {"writer": None, "reader": None}),
        (f"W_pos {forgot}positions are added to the stream's coordinates (with shortformer "
         "positions, at the queries' and keys' input), so they rotate like the embedding: "
         "W_pos R.", {"skip": ("W_pos",)}),
        (f"W_E {forgot}the embedding writes the stream: W_E R.", {"skip": ("W_E",)}),
        (f"W_U {forgot}the unembedding reads the stream: Rᵀ W_U.", {"skip": ("W_U",)}),
        (f"W_V {forgot}values read the stream too, like queries and keys: Rᵀ W_V.",
         {"skip": ("W_V",)}),
        (f"W_O {forgot}every head writes the stream through W_O (and b_O): W_O R, b_O R.",
         {"skip": ("W_O",)}),
        (f"W_O {forgot}every head writes the stream through W_O (and b_O): W_O R, b_O R.",
         {"skip": ("W_O", "b_O")}),
        (f"b_O {forgot}the output bias is written into the stream like W_O's output: b_O R.",
         {"skip": ("b_O",)}),
    ]  # fmt: skip
    mistakes = []
    for description, spec in variants:
        spec = {"writer": "R", "reader": "Rt", "skip": ()} | spec
        flat = []
        for name, choices in pieces.items():
            last = name.split(".")[-1]
            side = "writer" if last in _WRITERS else "reader"
            kept = last in spec["skip"] or len(choices) == 1  # b_Q, b_K, b_V, b_U stay
            flat.append(choices[None if kept else spec[side]].flatten())
        mistakes.append((description, torch.cat(flat)))
    return mistakes


@torch.no_grad()
def _randomise_biases(model: AttnOnlyTransformer, seed: int) -> AttnOnlyTransformer:
    """Non-zero biases (they start at zero), so that a bias left unrotated, or rotated when it
    should not be, changes something."""
    g = generator(seed)
    for name, p in model.named_parameters():
        if name.split(".")[-1].startswith("b_"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def _shared_with(out: AttnOnlyTransformer, given: AttnOnlyTransformer) -> list[str]:
    """Names of `out`'s weights that share memory with a weight of `given`."""
    storages = {p.untyped_storage().data_ptr() for p in given.state_dict().values()}
    return [n for n, p in out.state_dict().items() if p.untyped_storage().data_ptr() in storages]


@checker
def check_rotate_residual(rotate_residual: Callable) -> None:
    """Exercise 0.9: `rotate_residual(model, R) -> AttnOnlyTransformer`, a new model whose
    residual stream is the input's rotated by the orthogonal `R` `[d_model, d_model]`: writers
    W_E R, W_pos R, W_O R, b_O R; readers Rᵀ W_Q, Rᵀ W_K, Rᵀ W_V, Rᵀ W_U. The input is left
    as it was."""
    ex = "Exercise 0.9 (rotate_residual)"
    seed = draw_seed()
    per_model = [
        {"positional_embedding_type": "shortformer", "n_layers": 2},
        {"positional_embedding_type": "standard", "n_layers": 3},
    ]
    models = random_models(seed, 2, per_model=per_model, use_bias=True)
    cases = []
    for i, model in enumerate(models):
        _randomise_biases(model, seed + 30 + i)
        tokens = random_tokens(model, seed + 10 + i)
        with torch.no_grad():
            logits = model(tokens)
        state = {name: value.clone() for name, value in model.state_dict().items()}
        for j in range(2):  # two rotations per model
            R = circuits.random_rotation(model.cfg.d_model, seed + 100 + 10 * i + j)
            reference = circuits.rotate_residual(model, R)
            expected = reference.state_dict()
            with torch.no_grad():  # what these weights compute (the float error of three
                rotated_logits = reference(tokens)  # layers can pass 1e-4 of the original's)
            where = (
                f"rotation {j + 1} of a {model.cfg.n_layers}-layer model with "
                f"{model.cfg.positional_embedding_type} positions and biases"
            )
            mistakes = _rotation_mistakes(state, R)
            cases.append(
                (model, R, tokens, logits, rotated_logits, state, expected, mistakes, where)
            )
    wrong = []
    for model, R, tokens, logits, rotated_logits, state, expected, mistakes, where in cases:
        given = copy.deepcopy(model)  # the learner's copy, to see afterwards what became of it
        out = call_learner(
            ex, rotate_residual, given, R.clone(), withhold=[circuits.rotate_residual],
            clone=False, where=where,
        )  # fmt: skip
        _judge_rotated_model(ex, out, given, state, expected, where)
        got, right = _flat(out.state_dict()), _flat(expected)
        if not matches(got, right, 1e-4):
            wrong.append((where, got, right, mistakes, out, expected, tokens, logits))
            continue
        with torch.no_grad():
            after = out(tokens)
        if not matches(after, rotated_logits, 1e-4):  # right weights, other logits: a guard
            raise CheckFailed(
                ex, f"{where}: your model's weights are right but its logits are not."
            )
    if wrong:
        name_mistake(
            ex, [w[:4] for w in wrong], lambda a, b, widen=1.0: matches(a, b, widen * 1e-4)
        )
        where, _, _, _, out, expected, tokens, logits = wrong[0]
        got = out.state_dict()
        differ = [n for n, value in expected.items() if not matches(got[n], value, 1e-4)]
        names = ", ".join(differ[:4]) + (", …" if len(differ) > 4 else "")
        verb = "is not what it" if len(differ) == 1 else "are not what they"
        with torch.no_grad():
            error = float((out(tokens) - logits).abs().max())
        if error <= 1e-4 * max(1.0, float(logits.abs().max())):
            what = "your model computes the same logits as the original, but"
        else:
            what = f"your model's logits differ from the original's by up to {error:.3g}, and"
        raise CheckFailed(
            ex,
            f"{where}: {what} its weights are not the input's rotated by R: {names} {verb} should "
            "be. The stream's new coordinates are x R: every weight that writes it (W_E, "
            "W_pos, W_O, b_O) gets … @ R, every weight that reads it (W_Q, W_K, W_V, W_U) R.T @ …; "
            "the other biases stay.",
        )
    passed(
        ex,
        "every weight rotated (writers … R, readers Rᵀ …), the logits unchanged and the input left "
        "as it was, for two rotations each of random 2- and 3-layer models with biases "
        "(shortformer and standard positions).",
    )


def _judge_rotated_model(
    ex: str,
    out: object,
    given: AttnOnlyTransformer,
    state: dict[str, Tensor],
    expected: dict[str, Tensor],
    where: str,
) -> None:
    """What must hold of Exercise 0.9's answer before its weights are compared: the input was not
    edited, a new model came back, with the input's weights' names, shapes and dtypes."""
    edited = [
        n for n, v in given.state_dict().items() if n not in state or not torch.equal(v, state[n])
    ]
    if edited or set(given.state_dict()) != set(state):
        names = ", ".join(edited[:3]) + (", …" if len(edited) > 3 else "")
        raise CheckFailed(
            ex,
            f"{where}: your function edited the model it was given in place ({names} changed): "
            "the input must stay as it was, since the notebook still uses it. Rotate a copy "
            "(copy.deepcopy(model)) and return that.",
        )
    if out is given:
        raise CheckFailed(
            ex,
            f"{where}: your function returned the model it was given, unchanged: return a new "
            "model (copy.deepcopy(model)) with its weights rotated.",
        )
    if not isinstance(out, AttnOnlyTransformer):
        hint = " (did you forget the return?)" if out is None else ""
        raise CheckFailed(
            ex,
            f"rotate_residual must return a model (an AttnOnlyTransformer), got "
            f"{type(out).__name__}{hint}.",
        )
    got = out.state_dict()
    if set(got) != set(expected):
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        raise CheckFailed(
            ex,
            f"{where}: your model's weights are not the input's: missing {missing}, unexpected "
            f"{extra}. Build it from the same config (copy.deepcopy(model) keeps everything).",
        )
    for name, value in expected.items():
        if got[name].shape != value.shape:
            raise CheckFailed(
                ex,
                f"{where}: your model's {name} has shape {tuple(got[name].shape)}; the input's "
                f"is {tuple(value.shape)}. Rotating changes coordinates, not shapes.",
            )
        if got[name].dtype != value.dtype:
            raise CheckFailed(
                ex,
                f"{where}: your model's {name} is {got[name].dtype}; the input's is "
                f"{value.dtype}. Keep the model's dtype.",
            )
    shared = _shared_with(out, given)
    if shared:
        raise CheckFailed(
            ex,
            f"{where}: your new model shares {', '.join(shared[:3])} with the input model (the "
            "same tensor in memory), so editing one model would edit the other. Start from "
            "copy.deepcopy(model).",
        )


# ---- 0.10 a head's write subspace -----------------------------------------------------------------
def _projector_cases(seed: int) -> list[tuple[Tensor, str, int]]:
    """(W_O, where, rank) for every head of two random models, then one W_O of rank d_head - 1:
    its last row twice its first (exactly, in float32), the rank deficiency a projector built
    as if W_O had rank d_head gets wrong."""
    cases = []
    models = random_models(seed, 2)
    for model in models:
        D, d = model.cfg.d_model, model.cfg.d_head
        for head in range(model.cfg.n_heads):
            W_O = model.W_O[0, head].detach().clone()
            cases.append((W_O, f"head {head} of a model with d_model {D}, d_head {d}", d))
    W_O = models[1].W_O[0, 0].detach().clone() * 1.5
    W_O[-1] = 2 * W_O[0]
    D, d = W_O.shape[1], W_O.shape[0]
    cases.append(
        (W_O, f"a W_O [{d}, {D}] of rank {d - 1} < d_head (its last row is twice its first)", d - 1)
    )
    return cases


_BASIS = (
    "the right singular vectors whose singular values are above a tolerance, or "
    "torch.linalg.pinv(W_O) @ W_O"
)


def _write_projector_mistakes(W_O: Tensor, P: Tensor, rank: int) -> list[tuple[str, Tensor]]:
    W = W_O.double()
    rows = W / W.norm(dim=1, keepdim=True)
    _, S, Vh = torch.linalg.svd(W, full_matrices=False)
    top = Vh[: rank - 1]
    short = (
        "the projector is one direction short: the row space of W_O has rank(W_O) dimensions "
        "(d_head when its rows are independent); use all of them."
    )
    return [
        ("W_O.T @ W_O is a projector only when W_O's rows are orthonormal, and these are not: "
         f"build it from an orthonormal basis of W_O's rows ({_BASIS}).", W.T @ W),
        ("that is I - P, the projector onto the complement: P keeps what lies in W_O's row "
         "space.", torch.eye(W.shape[1], dtype=W.dtype) - P.double()),
        ("that is the identity, the projector onto the whole stream (Q Qᵀ from a 'complete' QR, "
         "or Vhᵀ Vh from a full SVD): the write subspace has only rank(W_O) ≤ d_head dimensions, "
         "so keep that many basis vectors.", torch.eye(W.shape[1], dtype=W.dtype)),
        ("W_O's rows were normalised but not made orthogonal: Wᵀ W is a projector only for "
         f"orthonormal rows ({_BASIS}).", rows.T @ rows),
        ("the singular values were kept (Vᵀ S V): a projector has eigenvalue 1 on the whole "
         "subspace, so use Vᵀ V with the right singular vectors alone.",
         Vh[:rank].T @ torch.diag(S[:rank]) @ Vh[:rank]),
        ("the projector covers only W_O's first row: the head writes into the span of all its "
         "rows.", rows[:1].T @ rows[:1]),
        (short, top.T @ top),
    ]  # fmt: skip


@checker
def check_write_projector(write_projector: Callable) -> None:
    """Exercise 0.10: `write_projector(W_O) -> [d_model, d_model]`, the orthogonal projector onto
    the row space of one head's `W_O [d_head, d_model]`: the subspace the head writes into."""
    ex = "Exercise 0.10 (write_projector)"
    drawn = _projector_cases(draw_seed())
    cases = []
    for W_O, where, rank in drawn:
        P = circuits.projector(circuits.row_space(W_O))
        d, D = W_O.shape
        hints = {
            (d, d): "a d_head × d_head matrix, like W_O @ W_O.T, or Q Qᵀ from the QR of W_O "
            "(rather than of W_O.T), acts on the head's d_head space. The write subspace lies "
            "in the residual stream: the projector is [d_model, d_model], Q Qᵀ with Q "
            "[d_model, rank] orthonormal columns spanning W_O's rows.",
        }
        cases.append(Case((W_O,), P, _write_projector_mistakes(W_O, P, rank), where, hints))
    answers = []
    for case in cases:
        try:
            out = call_learner(
                ex, write_projector, *case.args, where=case.where, block_forward=True,
                withhold=[circuits.projector, circuits.row_space, circuits.write_subspace],
            )  # fmt: skip
        except torch.linalg.LinAlgError as err:
            raise CheckFailed(
                ex,
                f"{case.where}: your function failed with torch's error '{err}'. W_O W_Oᵀ is "
                "singular when W_O's rows are dependent, so it has no inverse; build the "
                "projector from an orthonormal basis of W_O's rows instead (the SVD, keeping the "
                "singular values above a tolerance, or torch.linalg.pinv(W_O) @ W_O).",
            ) from None
        shape = tuple(out.shape) if isinstance(out, Tensor) else None
        if shape != tuple(case.expected.shape) and shape in case.shape_hints:
            raise CheckFailed(
                ex, f"write_projector returned shape {shape}: {case.shape_hints[shape]}"
            )
        answers.append(expect_tensor(ex, "write_projector", out, case.expected.shape))
    wrong = [
        (case.where, out, case.expected, case.mistakes)
        for out, case in zip(answers, cases, strict=True)
        if not matches(out, case.expected, 1e-4)
    ]
    if not wrong:
        passed(
            ex,
            f"the projector onto W_O's row space for {len(cases) - 1} heads of two random models "
            "and for a W_O whose rows are dependent (rank < d_head).",
        )
        return
    where, out, expected, _ = wrong[0]
    if len(wrong) == 1 and where == cases[-1].where:  # only the rank-deficient one
        dims = float(torch.trace(out.double()))
        rank = round(float(torch.trace(expected.double())))
        what = (
            "your matrix holds NaN (a division by the norm of a row that is, up to rounding, zero?)"
            if torch.isnan(out).any()
            else f"your matrix has trace {dims:.3g} (for a projector, the dimension it projects "
            f"onto), where W_O writes into {rank} dimensions"
        )
        raise CheckFailed(
            ex,
            f"right for every W_O of full rank, but not for {where}: {what}. Keep only the directions "
            "whose singular values are not rounding noise (above max(W_O.shape) · eps · the "
            "largest, as torch.linalg.matrix_rank counts), or use torch.linalg.pinv(W_O) @ W_O.",
        )
    name_mistake(ex, wrong, lambda a, b, widen=1.0: matches(a, b, widen * 1e-4))
    diagnose(ex, out, expected, {}, atol=1e-4, where=where)
