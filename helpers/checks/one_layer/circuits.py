"""Exercises 2.1, 2.3, 2.5 and 2.6: the full OV circuit, the path expansion by hand, the full QK
circuit and the position-only pattern."""

from __future__ import annotations

import torch

from helpers import attribution, circuits
from helpers.checks._base import heads_phrase, random_models, random_tokens
from helpers.checks._judge import Case
from helpers.checks._registry import Exercise, declare
from helpers.checks.one_layer._shared import head_name, size_tags

# ---- 2.1 the full OV circuit -------------------------------------------------------------------


def _full_ov_cases(seed: int) -> list[Case]:
    """Every head of two random models: untied W_E and W_U (so that W_Eᵀ for W_U is seen), sizes
    all different (so that a partial product has a shape of its own, which the hints explain)."""
    cases = []
    for model in random_models(seed):
        W_E, W_U = model.W_E.detach(), model.W_U.detach()
        V, d_model, H = model.cfg.d_vocab, model.cfg.d_model, model.cfg.n_heads
        ov = [circuits.full_ov_circuit(model, 0, head) for head in range(H)]
        hints = {
            (d_model, d_model): "that is W_V W_O alone: start from the tokens' embeddings (W_E) "
            "and end at the logits (W_U).",
            (V, d_model): "that is W_E W_V W_O, what the head writes into the residual stream: "
            "multiply by W_U to get logits.",
            (d_model, V): "that is W_V W_O W_U: start from the tokens' embeddings, W_E.",
        }
        for head in range(H):
            W_V, W_O = model.W_V[0, head].detach(), model.W_O[0, head].detach()
            expected = ov[head]
            mistakes = [
                ("the circuit is transposed: in the row convention row = source token and column "
                 "= output logit, i.e. W_E @ W_V @ W_O @ W_U (the paper writes the transpose).",
                 expected.T),
                ("W_O is applied before W_V: a head first reads values (W_V, d_model → d_head), "
                 "then writes them out (W_O, d_head → d_model).", W_E @ W_O.T @ W_V.T @ W_U),
                ("the unembedding is W_Eᵀ instead of W_U (the two are not tied here).",
                 W_E @ W_V @ W_O @ W_E.T),
                ("the direct path W_E @ W_U was added: the full OV circuit is the head's term "
                 "alone.", expected + W_E @ W_U),
            ]  # fmt: skip
            mistakes += [
                ("this is another head's circuit: index the head with W_V[0, head], "
                 "W_O[0, head].", ov[other])
                for other in range(H) if other != head
            ]  # fmt: skip
            tags = size_tags(model)
            if not torch.equal(W_U, W_E.T):
                tags.add("W_U untied from W_E")
            cases.append(Case((model, head), expected, mistakes, head_name(model, head),
                              shape_hints=hints, tags=tags))  # fmt: skip
    return cases


declare(Exercise(
    number="2.1", title="the full OV circuit", functions=("full_ov_circuit",),
    cases=_full_ov_cases, reference=circuits.full_ov_circuit,
    withhold=(circuits.full_ov_circuit,), block_forward=True,
    covers=frozenset({"several heads of one layer", "W_U untied from W_E"}),
    passed=f"W_E @ W_V @ W_O @ W_U for {heads_phrase(2)}.",
))  # fmt: skip


# ---- 2.3 the path expansion, by hand -----------------------------------------------------------


def _path_expansion_cases(seed: int) -> list[Case]:
    """Two random models, each with the patterns of its own tokens and with patterns recorded on
    other tokens, of sequences shorter than n_ctx (so that the answer must use the pattern it is
    given, and no size of the model's); as many sequences as heads, so that indexing the pattern
    by head on the batch axis runs, and is named."""
    cases = []
    for i, model in enumerate(random_models(seed)):
        H, n = model.cfg.n_heads, model.cfg.n_ctx
        ov = torch.stack([circuits.full_ov_circuit(model, 0, h) for h in range(H)])  # [h, V, V]
        for kind in ("own", "other"):
            if kind == "own":
                tokens = random_tokens(model, seed + 10 + i, batch=H)
                recorded_on = tokens
            else:
                tokens = random_tokens(model, seed + 20 + i, batch=H)[:, : n - 2]
                recorded_on = random_tokens(model, seed + 30 + i, batch=H)[:, : n - 2]
            with torch.no_grad():
                logits = model(tokens)
                pattern = model.run_with_cache(recorded_on)[1]["blocks.0.attn.hook_pattern"]
                direct = model.W_E[tokens] @ model.W_U
                rows = ov[:, tokens]  # [head, batch, key_pos, d_vocab]
                heads = torch.einsum("bhqk,hbkv->hbqv", pattern, rows)
                positions = model.W_pos[: tokens.shape[1]] @ model.W_U
            expected = logits if kind == "own" else direct + heads.sum(0)
            mistakes = [
                ("these are the direct path's logits alone; add one term per head.", direct),
                ("the heads' terms are missing the direct path W_E W_U.", heads.sum(0)),
                ("the pattern is transposed: a query mixes the OV rows of the keys it attends to, "
                 "pattern[b, h] @ OV_rows (rows = query positions).",
                 direct + torch.einsum("bhkq,hbkv->bqv", pattern, rows)),
                ("every head's OV rows were used at full weight: each must be weighted by its "
                 "attention pattern.", direct + rows.sum(0)),
                ("the positions' W_pos @ W_U was added to the direct path: in these models "
                 "(shortformer) positions enter only queries and keys, never the residual stream.",
                 expected + positions),
                ("pattern[head] picks a sequence, not a head: the pattern is [batch, head, "
                 "query_pos, key_pos], so a head's pattern is pattern[:, head].",
                 direct + torch.einsum("hbqk,hbkv->bqv", pattern, rows)),
            ]  # fmt: skip
            if kind == "other":
                mistakes.append((
                    "that ignores the pattern it was given: use the `pattern` argument, whatever "
                    "tokens it was recorded on.", logits,
                ))  # fmt: skip
            batch, pos = tokens.shape
            per_head = "one term per head: sum the heads' terms, and add the direct path."
            hints = {(H, batch, pos, model.cfg.d_vocab): per_head,
                     (batch, H, pos, model.cfg.d_vocab): per_head}  # fmt: skip
            tags = size_tags(model)
            tags |= {"patterns recorded on other tokens"} if kind == "other" else set()
            tags |= {"sequences shorter than n_ctx"} if pos < n else set()
            tags |= {"as many sequences as heads"} if batch == H else set()
            where = (f"{batch} sequences of {pos} tokens, patterns recorded on "
                     f"{'them' if kind == 'own' else 'other tokens'}, a model with {H} heads")  # fmt: skip
            cases.append(Case((model, tokens, pattern), expected, mistakes, where,
                              shape_hints=hints, tags=tags))  # fmt: skip
    return cases


declare(Exercise(
    number="2.3", title="the path expansion, by hand", functions=("path_expansion_logits",),
    checker="check_path_expansion",
    cases=_path_expansion_cases, reference=attribution.one_layer_path_expansion,
    withhold=(attribution.one_layer_path_expansion, attribution.logit_contributions,
              attribution.decompose_resid),
    block_forward=True,
    on_error={
        "IndexError": "An index past the end: does your code assume the notebook's sizes? The "
        "checker's models have other numbers of heads (model.cfg.n_heads) and its sequences "
        "other lengths (tokens.shape).",
        "RuntimeError": lambda err: (
            "The checker's models have other sizes than the notebook's, and its sequences are "
            "shorter than n_ctx: take lengths from tokens.shape and pattern.shape."
            if "size" in str(err) else None
        ),
    },
    covers=frozenset({"several heads of one layer", "patterns recorded on other tokens",
                      "sequences shorter than n_ctx", "as many sequences as heads"}),
    passed="direct path + Σ_h A^h · OV^h rows = the logits of two random test models, and the "
    "same sum for patterns given from other, shorter, sequences.",
))  # fmt: skip


# ---- 2.5 the full QK circuit -------------------------------------------------------------------


def _full_qk_cases(seed: int) -> list[Case]:
    """Every head of two random models, whose d_head is not d_model / n_heads (it is in the
    notebook's model)."""
    cases = []
    for model in random_models(seed):
        c = model.cfg
        for head in range(c.n_heads):
            raw = circuits.full_qk_circuit(model, 0, head, normalise=False)
            expected = circuits.row_centred(raw)
            mistakes = {
                "each query's row must have its mean subtracted: scores are only comparable "
                "within a query (softmax runs over keys).": raw,
                "the mean was subtracted over the queries (down each column, dim 0): each row is "
                "one query, and its mean must be taken over the keys of that row (dim -1).":
                    raw - raw.mean(0, keepdim=True),
                "the mean of the whole matrix was subtracted: each query's row has its own mean "
                "(over the keys of that row, dim -1).": raw - raw.mean(),
                "the matrix is transposed: rows are query (destination) tokens, columns key "
                "(source) tokens, W_E W_Q (W_E W_K)ᵀ.": expected.T,
                "queries and keys are swapped (W_E W_K (W_E W_Q)ᵀ): rows are query tokens, "
                "W_E @ W_Q, columns key tokens, W_E @ W_K.": circuits.row_centred(raw.T),
                "the 1/sqrt(d_head) scale is missing.": expected * c.d_head**0.5,
                "the scores are divided by d_head instead of sqrt(d_head).":
                    expected / c.d_head**0.5,
                "the scores are divided by sqrt(d_model) instead of sqrt(d_head).":
                    expected * (c.d_head / c.d_model) ** 0.5,
                "d_head was taken as d_model // n_heads: use model.cfg.d_head (they differ "
                "here).": expected * (c.d_head / (c.d_model // c.n_heads)) ** 0.5,
            }  # fmt: skip
            cases.append(Case((model, head), expected, mistakes, head_name(model, head),
                              shape_hints={(c.d_model, c.d_model): "that is W_Q W_Kᵀ alone: "
                                           "embed the tokens with W_E on both sides."},
                              tags=size_tags(model)))  # fmt: skip
    return cases


declare(Exercise(
    number="2.5", title="the full QK circuit", functions=("full_qk_circuit",),
    cases=_full_qk_cases, reference=circuits.full_qk_circuit,
    withhold=(circuits.full_qk_circuit, circuits.attention_score_terms), block_forward=True,
    covers=frozenset({"several heads of one layer", "d_head other than d_model / n_heads"}),
    passed=f"scaled, row-centred W_E W_Q W_Kᵀ W_Eᵀ for {heads_phrase(2)}.",
))  # fmt: skip


# ---- 2.6 the position-only pattern -------------------------------------------------------------


def _positional_cases(seed: int) -> list[Case]:
    """Every head of two random models."""
    cases = []
    for model in random_models(seed):
        c = model.cfg
        n, d_head = c.n_ctx, c.d_head
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        for head in range(c.n_heads):
            with torch.no_grad():
                Q, K = model.W_pos @ model.W_Q[0, head], model.W_pos @ model.W_K[0, head]
                scores = Q @ K.T / d_head**0.5
                E_Q, E_K = model.W_E @ model.W_Q[0, head], model.W_E @ model.W_K[0, head]
            masked = scores.masked_fill(~causal, float("-inf"))
            mistakes = {
                "no causal mask: a query position may only attend to key positions up to its "
                "own.": scores.softmax(-1),
                "the 1/sqrt(d_head) scale is missing.": (masked * d_head**0.5).softmax(-1),
                "d_head was taken as d_model // n_heads: use model.cfg.d_head (they differ here).":
                    (masked * (d_head / (c.d_model // c.n_heads)) ** 0.5).softmax(-1),
                "the softmax ran over query positions (dim=0).": masked.softmax(0),
                "these are the masked scores before the softmax.": masked,
                "the mask was applied after the softmax: each row no longer sums to 1. Mask "
                "the scores with -inf first, then softmax.": scores.softmax(-1) * causal,
                "the masked scores were set to 0, not -inf: a score of 0 still gets weight exp(0) "
                "in the softmax.": scores.masked_fill(~causal, 0.0).softmax(-1),
                "the mask hid the diagonal too (tril(-1)): a position may attend to itself, so "
                "the mask is tril() (diagonal included).":
                    scores.masked_fill(~causal.tril(-1), float("-inf")).softmax(-1),
                "the mask let each position attend to the later ones (triu): a query attends to "
                "key positions up to its own, tril().":
                    scores.masked_fill(~causal.T, float("-inf")).softmax(-1),
            }  # fmt: skip
            if c.d_vocab >= n:
                mistakes["these are token embeddings (W_E): the positional pattern comes from "
                         "W_pos."] = (E_Q @ E_K.T)[:n, :n].div(d_head**0.5).masked_fill(
                    ~causal, float("-inf")).softmax(-1)  # fmt: skip
            hints = {(c.d_vocab, c.d_vocab): "that is one row per token: these are token "
                     "embeddings (W_E), and the position-only pattern comes from W_pos."}  # fmt: skip
            expected = circuits.positional_pattern(model, 0, head)
            cases.append(Case((model, head), expected, mistakes, head_name(model, head),
                              shape_hints=hints, tags=size_tags(model)))  # fmt: skip
    return cases


declare(Exercise(
    number="2.6", title="the position-only pattern", functions=("positional_pattern",),
    cases=_positional_cases, reference=circuits.positional_pattern,
    withhold=(circuits.positional_pattern, circuits.positional_qk_circuit,
              circuits.attention_score_terms),
    block_forward=True,
    covers=frozenset({"several heads of one layer", "d_head other than d_model / n_heads"}),
    passed=f"the position-only attention pattern for {heads_phrase(2)}.",
))  # fmt: skip
