"""Checkers of chapter 02: OV and QK circuits, their diagonal and positional parts, the copying
score, skip-trigrams and their ranking, the bug, and a head reverse-engineered."""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from helpers import attribution, circuits, evals, handmade
from helpers.checks._base import (
    Case,
    CheckFailed,
    call_learner,
    check_cases,
    checker,
    draw_seed,
    equal,
    expect_float,
    expect_token_list,
    generator,
    heads_phrase,
    name_mistake,
    passed,
    random_models,
    random_tokens,
)
from helpers.circuits import one_layer
from helpers.data import SkipTrigramLanguage
from helpers.models import AttnOnlyTransformer


@checker
def check_full_ov_circuit(full_ov_circuit: Callable) -> None:
    """Exercise 2.1: `full_ov_circuit(model, head) -> [d_vocab (source), d_vocab (output)]`."""
    ex = "Exercise 2.1 (full_ov_circuit)"
    cases = []
    for model in random_models(draw_seed()):
        for head in range(model.cfg.n_heads):
            W_V, W_O = model.W_V[0, head], model.W_O[0, head]
            with torch.no_grad():
                expected = circuits.full_ov_circuit(model, 0, head)
                mistakes = {
                    "the circuit is transposed: in the row convention row = source token and "
                    "column = output logit, i.e. W_E @ W_V @ W_O @ W_U (the paper writes the "
                    "transpose).": expected.T,
                    "W_O is applied before W_V: a head first reads values (W_V, d_model → "
                    "d_head), then writes them out (W_O, d_head → d_model).": (
                        model.W_E @ W_O.T @ W_V.T @ model.W_U
                    ),
                    "the unembedding is W_Eᵀ instead of W_U (the two are not tied here).": (
                        model.W_E @ W_V @ W_O @ model.W_E.T
                    ),
                }
                mistakes = list(mistakes.items()) + [
                    (
                        "this is another head's circuit: index the head with W_V[0, head], "
                        "W_O[0, head].",
                        circuits.full_ov_circuit(model, 0, other),
                    )
                    for other in range(model.cfg.n_heads)
                    if other != head
                ]
            cases.append(Case((model, head), expected, mistakes, f"head {head}"))
    check_cases(
        ex, full_ov_circuit, "full_ov_circuit", cases,
        withhold=[circuits.full_ov_circuit], block_forward=True,
    )  # fmt: skip
    passed(ex, f"W_E @ W_V @ W_O @ W_U for {heads_phrase(2)}.")


@checker
def check_path_expansion(path_expansion_logits: Callable) -> None:
    """Exercise 2.3: `path_expansion_logits(model, tokens, pattern) -> [batch, pos, d_vocab]`,
    the logits rebuilt from the direct path and each head's full OV circuit, with the heads'
    attention patterns `[batch, head, query_pos, key_pos]` given. The model's forward pass is
    not available to the answer."""
    ex = "Exercise 2.3 (path_expansion_logits)"
    seed = draw_seed()
    cases = []
    for i, model in enumerate(random_models(seed)):
        tokens = random_tokens(model, seed + 10 + i)
        logits, cache = model.run_with_cache(tokens)
        pattern = cache["blocks.0.attn.hook_pattern"]
        with torch.no_grad():
            direct, heads = attribution.one_layer_path_expansion(model, tokens)
            ov = torch.stack(
                [circuits.full_ov_circuit(model, 0, h)[tokens] for h in range(model.cfg.n_heads)]
            )  # [head, batch, key_pos, d_vocab]
            mistakes = {
                "these are the direct path's logits alone; add one term per head.": direct,
                "the heads' terms are missing the direct path W_E W_U.": heads.sum(0),
                "the pattern is transposed: a query mixes the OV rows of the keys it attends "
                "to, pattern[b, h] @ OV_rows (rows = query positions).": direct
                + torch.einsum("bhkq,hbkv->bqv", pattern, ov),
                "every head's OV rows were used at full weight: each must be weighted by its "
                "attention pattern.": direct + ov.sum(0),
            }
        cases.append(Case((model, tokens, pattern), logits.detach(), mistakes))
        # the same expansion with patterns recorded on other tokens: the answer must use the
        # pattern it is given, not one it recomputes
        _, other_cache = model.run_with_cache(random_tokens(model, seed + 20 + i))
        other = other_cache["blocks.0.attn.hook_pattern"]
        with torch.no_grad():
            expected = direct + torch.einsum("bhqk,hbkv->bqv", other, ov)
            mistakes = {
                "that ignores the pattern it was given: use the `pattern` argument, whatever "
                "tokens it was recorded on.": logits.detach(),
            }
        cases.append(Case((model, tokens, other), expected, mistakes, "patterns from other tokens"))
    check_cases(
        ex, path_expansion_logits, "path_expansion_logits", cases,
        withhold=[attribution.one_layer_path_expansion, attribution.logit_contributions,
                  attribution.decompose_resid],
        block_forward=True,
    )  # fmt: skip
    passed(ex, "direct path + Σ_h A^h · OV^h rows = the logits of two random test models, and "
           "the same sum for patterns given from other tokens.")  # fmt: skip


def _with_spectra(seed: int) -> AttnOnlyTransformer:
    """A one-layer model with untied W_E and W_U whose four heads have OV circuits with
    eigenvalues drawn at check time: a mostly copying head (one negative eigenvalue), a mostly
    anti-copying one, one with a complex pair, and a random head. The non-zero eigenvalues of
    W_E W_V W_O W_U are those of M = W_O W_U W_E W_V (d_head × d_head), so
    W_O = M · pinv(W_U W_E W_V) gives the head the spectrum of M."""
    (model,) = random_models(seed, 1, n_heads=4, d_head=4, d_model=16, d_vocab=11, n_ctx=7)
    rng = generator(seed + 1)

    def uniform(lo: float, hi: float, n: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=rng)

    copying = torch.cat([uniform(0.5, 3.0, 3), uniform(-1.0, -0.2, 1)])
    a, b = float(uniform(-1.0, 1.0, 1)), float(uniform(1.0, 2.5, 1))
    rotation = torch.tensor([[a, -b], [b, a]])  # eigenvalues a ± bi
    spectra = [
        torch.diag(copying),
        torch.diag(-copying.flip(0)),
        torch.block_diag(rotation, torch.diag(uniform(-1.0, 1.0, 2))),
    ]
    attn = model.blocks[0].attn
    with torch.no_grad():
        for head, core in enumerate(spectra):
            basis = torch.randn(4, 4, generator=rng) + 2 * torch.eye(4)
            M = basis @ core @ torch.linalg.inv(basis)  # same eigenvalues, no visible structure
            B = model.W_U @ model.W_E @ attn.W_V[head]  # [d_model, d_head]
            attn.W_O[head] = M @ torch.linalg.pinv(B)
    return model


@checker
def check_copying_score(copying_score: Callable) -> None:
    """Exercise 2.4: `copying_score(model, head) -> float`, Σλ/Σ|λ| of the full OV circuit."""
    ex = "Exercise 2.4 (copying_score)"
    model = _with_spectra(draw_seed())
    same_sums = (
        "a score of exactly ±1 for a head that is not a pure copier means numerator and "
        "denominator are the same sum. The numerator is Σλ (its real part), the denominator Σ|λ|, "
        "the sum of each eigenvalue's absolute value, not |Σλ|."
    )

    def score_of(matrix: Tensor) -> float:
        e = torch.linalg.eigvals(matrix)
        return float(e.sum().real / e.abs().sum())

    cases = []
    for head in range(model.cfg.n_heads):
        W_E, W_U = model.W_E.detach().double(), model.W_U.detach().double()
        W_V, W_O = model.W_V[0, head].detach().double(), model.W_O[0, head].detach().double()
        eig = circuits.ov_eigenvalues(model, 0, head)
        mistakes = [
            (same_sums, 1.0),
            (same_sums, -1.0),
            ("the numerator is |Σλ|: keep the sign, Σλ is negative for a head that "
             "anti-copies.", float(eig.sum().abs() / eig.abs().sum())),
            ("only the real parts were summed in the denominator: use the absolute value "
             "(modulus) of each complex eigenvalue.", float(eig.sum().real / eig.real.abs().sum())),
            ("the OV part is transposed: the circuit is W_E @ W_V @ W_O @ W_U, so the small "
             "matrix is W_O @ W_U @ W_E @ W_V.", score_of(W_U @ W_E @ (W_V @ W_O).T)),
            ("W_E.T was used in place of W_U: the unembedding is W_U (not tied to W_E here).",
             score_of(W_O @ W_E.T @ W_E @ W_V)),
            ("these are the eigenvalues of W_V @ W_O alone; the full OV circuit includes the "
             "embedding and unembedding (W_O @ W_U @ W_E @ W_V).", score_of(W_V @ W_O)),
        ]  # fmt: skip
        expected = circuits.copying_score(model, 0, head)
        near = (
            "Close, but not equal: if you took the eigenvalues of the full d_vocab × d_vocab "
            "circuit, its zero eigenvalues come out as rounding noise that adds to Σ|λ|. Use the "
            "d_head × d_head matrix W_O @ W_U @ W_E @ W_V (or compute in float64)."
        )
        cases.append(Case((model, head), expected, mistakes, f"head {head}", near_miss=near))
    check_cases(
        ex, copying_score, "copying_score", cases,
        withhold=[circuits.copying_score, circuits.ov_eigenvalues], block_forward=True,
    )  # fmt: skip
    passed(
        ex,
        "Σλ/Σ|λ| right for a copying head, an anti-copying head, a head with complex "
        "eigenvalues and a random head, with eigenvalues drawn at check time.",
    )


@checker
def check_full_qk_circuit(full_qk_circuit: Callable) -> None:
    """Exercise 2.5: `full_qk_circuit(model, head) -> [d_vocab (query), d_vocab (key)]`, scaled by
    1/sqrt(d_head), each query's row centred."""
    ex = "Exercise 2.5 (full_qk_circuit)"
    cases = []
    for model in random_models(draw_seed()):
        d_head, d_model = model.cfg.d_head, model.cfg.d_model
        for head in range(model.cfg.n_heads):
            with torch.no_grad():
                raw = circuits.full_qk_circuit(model, 0, head, normalise=False)
                expected = circuits.row_centred(raw)
                mistakes = {
                    "each query's row must have its mean subtracted: scores are only comparable "
                    "within a query (softmax runs over keys).": raw,
                    "the mean was subtracted over queries (columns) instead of over keys "
                    "(rows).": raw - raw.mean(0, keepdim=True),
                    "the matrix is transposed: rows are query (destination) tokens, columns key "
                    "(source) tokens, W_E W_Q (W_E W_K)ᵀ.": expected.T,
                    "the 1/sqrt(d_head) scale is missing.": expected * d_head**0.5,
                    "the scores are divided by d_head instead of sqrt(d_head).": (
                        expected / d_head**0.5
                    ),
                    "the scores are divided by sqrt(d_model) instead of sqrt(d_head).": (
                        expected * (d_head / d_model) ** 0.5
                    ),
                }
            cases.append(Case((model, head), expected, mistakes, f"head {head}"))
    check_cases(
        ex, full_qk_circuit, "full_qk_circuit", cases,
        withhold=[circuits.full_qk_circuit], block_forward=True,
    )  # fmt: skip
    passed(ex, f"scaled, row-centred W_E W_Q W_Kᵀ W_Eᵀ for {heads_phrase(2)}.")


def _top(scores: Tensor, k: int, largest: bool = True) -> frozenset[int]:
    return frozenset(scores.topk(k, largest=largest).indices.tolist())


@checker
def check_skip_trigrams(skip_trigrams: Callable) -> None:
    """Exercise 2.7: `skip_trigrams(model, head, source, k) -> (destinations, outputs)`."""
    ex = "Exercise 2.7 (skip_trigrams)"
    seed = draw_seed()
    (model,) = random_models(seed, 1, n_heads=2)
    V = model.cfg.d_vocab
    rng = generator(seed + 1)
    cases = []
    for head in range(model.cfg.n_heads):
        qk = circuits.full_qk_circuit(model, 0, head)
        raw_qk = circuits.full_qk_circuit(model, 0, head, normalise=False)
        ov = circuits.full_ov_circuit(model, 0, head)
        for k in (2, 3, 4):
            source = int(torch.randint(1, V, (), generator=rng))
            dests, outs = circuits.skip_trigrams(model, 0, head, source, k)
            dest_mistakes = {
                "the destinations were read from the source's row of the QK circuit: that is "
                "where the source token, as a query, looks. A source is a key: read its column, "
                "QK[:, source].": _top(qk[source], k),
                "the destinations come from the QK circuit before each query's row was centred; "
                "scores are comparable only within a query, so centre first.": _top(
                    raw_qk[:, source], k
                ),
            }
            out_mistakes = {
                "the outputs were read from the source's column of the OV circuit; its row, "
                "OV[source], is what attending to the source writes to the logits.": _top(
                    ov[:, source], k
                ),
                "these are the outputs pushed down most; take the largest.": _top(
                    ov[source], k, False
                ),
            }
            no_bos_qk, no_bos_ov = qk[:, source].clone(), ov[source].clone()
            no_bos_qk[0] = no_bos_ov[0] = float("-inf")
            bos = "BOS (token 0) was left out: this exercise ranks all tokens, BOS included."
            dest_mistakes[bos] = _top(no_bos_qk, k)
            out_mistakes[bos] = _top(no_bos_ov, k)
            cases.append(
                (head, source, k, frozenset(dests), frozenset(outs), dest_mistakes, out_mistakes)
            )
    wrong = []  # (where, answer, right answer, mistakes) of every wrong half of an answer
    for head, source, k, exp_dests, exp_outs, dest_mistakes, out_mistakes in cases:
        out = call_learner(
            ex, skip_trigrams, model, head, source, k,
            withhold=[circuits.skip_trigrams], block_forward=True,
        )  # fmt: skip
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise CheckFailed(ex, "skip_trigrams must return a pair (destinations, outputs).")
        dests = expect_token_list(ex, "the destinations", out[0], k, V)
        outs = expect_token_list(ex, "the outputs", out[1], k, V)
        where = f"head {head}, source {source}, k = {k}"
        for what, got, expected, mistakes in (
            ("destinations", frozenset(dests), exp_dests, dest_mistakes),
            ("outputs", frozenset(outs), exp_outs, out_mistakes),
        ):
            if got != expected:
                wrong.append((f"{where}, {what}", got, expected, list(mistakes.items())))
    name_mistake(ex, wrong, equal)
    if wrong:
        where, got, expected, _ = wrong[0]
        raise CheckFailed(ex, f"{where}: {sorted(got)}, expected {sorted(expected)}.")
    passed(ex, "top-k destinations (QK column) and outputs (OV row) for k = 2, 3, 4.")


@checker
def check_crossed_effect(
    crossed_effect: Callable, model: AttnOnlyTransformer, language: SkipTrigramLanguage
) -> None:
    """Exercise 2.9: `crossed_effect(model, contexts, where, source, dest, output) -> float`, the
    mean change of log P(output) after dest when source is written into each context. Checked on
    the notebook's own model and on a random model of the same vocabulary, with contexts and
    words drawn at check time."""
    ex = "Exercise 2.9 (crossed_effect)"
    if not isinstance(model, AttnOnlyTransformer) or not isinstance(language, SkipTrigramLanguage):
        raise TypeError("call check_crossed_effect(crossed_effect, model, language)")
    seed = draw_seed()
    rng = generator(seed)
    model = copy.deepcopy(model)  # the checker's own copy: nothing done later can change it
    (random_model,) = random_models(seed, 1, d_vocab=language.d_vocab, n_ctx=model.cfg.n_ctx)
    ids = language.token_to_id
    random_rule = tuple(int(t) for t in torch.randint(1, language.d_vocab, (3,), generator=rng))
    runs = [(model, (ids["keep"], ids["in"], ids["bay"])), (model, (ids["keep"], ids["at"], ids["mind"])),
            (model, random_rule), (random_model, random_rule)]  # fmt: skip
    cases = []
    for i, (m, (source, dest, output)) in enumerate(runs):
        n, length = 40 + 10 * i, 6 + i % 3
        contexts, where = evals.filler_contexts(language, n, length, seed=seed + 1 + i)
        cases.append(_crossed_case(m, language, contexts, where, source, dest, output))
    check_cases(
        ex, crossed_effect, "crossed_effect", cases,
        withhold=[evals.skip_trigram_effect, evals.continuation_effect], what="a float (nats)",
    )  # fmt: skip
    passed(ex, "exact on the notebook's model (keep … in → bay, keep … at → mind, a random "
           "triple of words) and on a random model.")  # fmt: skip


def _crossed_case(model, language, contexts, where, source, dest, output) -> Case:
    """The reference and the common mistakes of Exercise 2.6 for one set of contexts."""
    n = contexts.shape[0]
    ref = evals.skip_trigram_effect(model, contexts, where, source, dest, output)
    with torch.no_grad():
        with_source = contexts.clone()
        with_source[torch.arange(n), where] = source
        bos, end = torch.zeros(n, 1, dtype=torch.long), torch.full((n, 1), dest)
        logits = {name: model(torch.cat([bos, c, end], 1)).double()
                  for name, c in (("with", with_source), ("without", contexts))}  # fmt: skip
        shifted = torch.cat([bos, contexts, end], 1)  # the source written at `where` of the
        shifted[torch.arange(n), where] = source  # sequence with BOS: one position early
        early = model(shifted).double()[:, -1].log_softmax(-1)[:, output]
    lp = {name: x[:, -1].log_softmax(-1)[:, output] for name, x in logits.items()}
    mistakes = [
        ("the sign is flipped: take log P with the source minus log P without it.",
         -ref.mean_change),
        ("that is a change in probability; take the change in log-probability (nats).",
         ref.mean_p_with - ref.mean_p_without),
        ("that is the log of the ratio of mean probabilities; average the per-context "
         "changes of log-probability instead.",
         float(lp["with"].exp().mean().log() - lp["without"].exp().mean().log())),
        ("that is the change of the raw logit; take log-probabilities (log_softmax) first.",
         float((logits["with"][:, -1, output] - logits["without"][:, -1, output]).mean())),
        ("that was read one position too early: the prediction after `dest` is at the last "
         "position, [:, -1].",
         float((logits["with"][:, -2].log_softmax(-1)[:, output]
                - logits["without"][:, -2].log_softmax(-1)[:, output]).mean())),
        ("the runs with and without the source were the same (a change of 0): was the source "
         "written into `contexts` itself? Write it into a copy, `contexts.clone()`.", 0.0),
        ("the source went in one position early: `where` indexes the contexts, so in the "
         "sequence with BOS in front it is position where + 1.",
         float((early - logits["without"][:, -1].log_softmax(-1)[:, output]).mean())),
    ]  # fmt: skip
    labels = language.token_labels
    where_text = (f"{labels[source]} … {labels[dest]} → {labels[output]} on {n} contexts of "
                  f"{contexts.shape[1]} words")  # fmt: skip
    near = ("Close, but not exact: does every sequence start with BOS (token 0), as in "
            "training, with the source written at `where` of the contexts?")  # fmt: skip
    return Case(
        (model, contexts, where, source, dest, output),
        ref.mean_change,
        mistakes,
        where_text,
        near_miss=near,
    )


@checker
def check_diagonal_top1(diagonal_top1: Callable) -> None:
    """Exercise 2.2: `diagonal_top1(M, ignore) -> float`, the fraction of rows (those not in
    `ignore`) whose largest entry (over the columns not in `ignore`) is on the diagonal."""
    ex = "Exercise 2.2 (diagonal_top1)"
    seed = draw_seed()
    cases = []
    for i, (n, ignore) in enumerate(((9, [0]), (12, [0, 5]), (7, []))):
        M = torch.randn(n, n, generator=generator(seed + i)) + 1.5 * torch.eye(n)
        M[ignore, :] += 5.0  # ignored rows and columns would change the answer
        M[:, ignore] += 3.0
        keep = [j for j in range(n) if j not in ignore]
        sub = M[keep][:, keep]
        expected = circuits.diagonal_top1_accuracy(M, ignore=ignore)
        mistakes = [
            ("the argmax ran over each column (dim=0): a row's largest entry is over dim=-1.",
             float((sub.argmax(0) == torch.arange(len(keep))).float().mean())),
            ("the rows and columns in `ignore` were kept.",
             float((M.argmax(-1) == torch.arange(n)).float().mean())),
            ("only the ignored rows were dropped: drop the ignored columns too (a token that is "
             "never predicted must not win a row).",
             float((M[keep].argmax(-1) == torch.tensor(keep)).float().mean())),
            ("that counts rows whose diagonal entry is positive; the diagonal must be the row's "
             "largest entry.", float((sub.diagonal() > 0).float().mean())),
        ]  # fmt: skip
        cases.append(Case((M, ignore), expected, mistakes, f"a {n}×{n} matrix, ignore={ignore}"))
    check_cases(
        ex, diagonal_top1, "diagonal_top1", cases, withhold=[circuits.diagonal_top1_accuracy]
    )
    passed(ex, "right for three random matrices, with and without ignored tokens.")


@checker
def check_positional_pattern(positional_pattern: Callable) -> None:
    """Exercise 2.6: `positional_pattern(model, head) -> [n_ctx (query), n_ctx (key)]`, a layer-0
    head's attention pattern from positions alone: softmax over keys of the causally masked
    `W_pos W_Q (W_pos W_K)ᵀ / sqrt(d_head)`."""
    ex = "Exercise 2.6 (positional_pattern)"
    cases = []
    for model in random_models(draw_seed()):
        n, d_head = model.cfg.n_ctx, model.cfg.d_head
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        for head in range(model.cfg.n_heads):
            with torch.no_grad():
                Q, K = model.W_pos @ model.W_Q[0, head], model.W_pos @ model.W_K[0, head]
                scores = Q @ K.T / d_head**0.5
                masked = scores.masked_fill(~causal, float("-inf"))
                mistakes = {
                    "no causal mask: a query position may only attend to key positions up to its "
                    "own.": scores.softmax(-1),
                    "the 1/sqrt(d_head) scale is missing.": (masked * d_head**0.5).softmax(-1),
                    "the softmax ran over query positions (dim=0).": masked.softmax(0),
                    "these are token embeddings (W_E): the positional pattern comes from W_pos.": (
                        (model.W_E @ model.W_Q[0, head] @ (model.W_E @ model.W_K[0, head]).T)[
                            :n, :n
                        ]
                        / d_head**0.5
                    )
                    .masked_fill(~causal, float("-inf"))
                    .softmax(-1)
                    if model.cfg.d_vocab >= n
                    else torch.zeros(n, n),
                    "these are the masked scores before the softmax.": masked,
                    "the mask was applied after the softmax: each row no longer sums to 1. Mask "
                    "the scores with -inf first, then softmax.": scores.softmax(-1) * causal,
                }
            expected = circuits.positional_pattern(model, 0, head)
            cases.append(Case((model, head), expected, mistakes, f"head {head}"))
    check_cases(
        ex, positional_pattern, "positional_pattern", cases, block_forward=True,
        withhold=[circuits.positional_pattern, circuits.positional_qk_circuit,
                  circuits.attention_score_terms],
    )  # fmt: skip
    passed(ex, f"the position-only attention pattern for {heads_phrase(2)}.")


@checker
def check_top_skip_trigrams(top_skip_trigrams: Callable) -> None:
    """Exercise 2.8: `top_skip_trigrams(model, head, n) -> list of (source, destination, output)`,
    the n strongest by QK[d, s] · OV'[s, o] (row-centred QK, OV with each row centred, both
    positive), strongest first, BOS (token 0) taking no part."""
    ex = "Exercise 2.8 (top_skip_trigrams)"
    seed = draw_seed()
    cases = []
    for model in random_models(seed, n_heads=2):
        for head in range(model.cfg.n_heads):
            qk = circuits.full_qk_circuit(model, 0, head)
            raw_qk = circuits.full_qk_circuit(model, 0, head, normalise=False)
            ov = circuits.full_ov_circuit(model, 0, head)
            for n in (3, 6):
                expected = circuits.top_skip_trigrams(model, 0, head, n, ignore=[0])
                mistakes = {
                    "the QK circuit was read as [source, destination]: its rows are destinations "
                    "(queries), its columns sources (keys), so the strength uses QK[d, s].": _ranked(
                        qk.T.T, ov, n, centre=True, clamp=True
                    ),
                    "the OV rows were not centred: softmax ignores a constant added to all "
                    "logits, so subtract each row's mean first.": _ranked(
                        qk.T, ov, n, centre=False, clamp=True
                    ),
                    "negative × negative was counted as strong: keep only pairs where both QK and "
                    "OV' are positive.": _ranked(qk.T, ov, n, centre=True, clamp=False),
                    "BOS (token 0) took part: it is never a real source, destination or output.": (
                        _ranked(qk.T, ov, n, centre=True, clamp=True, drop_bos=False)
                    ),
                    "the QK rows were not centred: scores compare only within a destination "
                    "(query), so subtract each row's mean first.": _ranked(
                        raw_qk.T, ov, n, centre=True, clamp=True
                    ),
                }
                cases.append((model, head, n, expected, mistakes))
    wrong = []
    for model, head, n, expected, mistakes in cases:
        out = call_learner(
            ex, top_skip_trigrams, model, head, n,
            withhold=[circuits.top_skip_trigrams, circuits.strongest_skip_trigrams,
                      one_layer._strongest, one_layer._skip_trigram_strength],
            block_forward=True,
        )  # fmt: skip
        got = _as_triples(ex, out, n, model.cfg.d_vocab)
        if got != expected:
            wrong.append((f"head {head}, n = {n}", got, expected, list(mistakes.items())))
    name_mistake(ex, wrong, equal)
    if wrong:
        where, got, expected, _ = wrong[0]
        if sorted(got) == sorted(expected):
            raise CheckFailed(
                ex,
                f"{where}: the right skip-trigrams in the wrong order. Rank them by the "
                "product QK[d, s] · OV'[s, o], largest first: is your strength exactly this "
                "product (no extra scaling, no sum over anything), with QK row-centred and OV "
                "row-centred?",
            )
        raise CheckFailed(ex, f"{where}: got {got}, expected {expected}.")
    passed(ex, "the strongest skip-trigrams, in order, for every head of two random models.")


def _ranked(qk_sd: Tensor, ov: Tensor, n: int, centre: bool, clamp: bool, drop_bos: bool = True):
    """A (possibly mistaken) ranking of skip-trigrams from a `[source, destination]` QK."""
    V = ov.shape[0]
    if centre:
        ov = ov - ov.mean(-1, keepdim=True)
    a, b = (qk_sd.clamp_min(0), ov.clamp_min(0)) if clamp else (qk_sd, ov)
    strength = a[:, :, None] * b[:, None, :]
    if drop_bos:
        strength[0] = strength[:, 0] = strength[:, :, 0] = 0.0
    if not clamp:
        strength = strength.clamp_min(0)
    values, flat = strength.flatten().topk(n)
    return [
        (i // (V * V), i // V % V, i % V)
        for i, v in zip(flat.tolist(), values.tolist(), strict=True)
        if v > 0
    ]


def _as_triple(ex: str, item: object, d_vocab: int, what: str) -> tuple[int, int, int]:
    """One (source, destination, output) triple of token ids, or a CheckFailed naming the
    problem; `what` names it in messages ("rule", "skip-trigram")."""
    ids = item.tolist() if isinstance(item, (Tensor, np.ndarray)) else item
    if not isinstance(ids, (list, tuple)) or len(ids) != 3:
        raise CheckFailed(
            ex, f"each {what} must be a (source, destination, output) triple, got {item!r}."
        )
    try:
        triple = tuple(operator.index(t) for t in ids)
    except TypeError:
        raise CheckFailed(ex, f"a {what} must hold token ids (ints), got {item!r}.") from None
    if not all(0 <= t < d_vocab for t in triple):
        raise CheckFailed(ex, f"token ids run 0..{d_vocab - 1}, got the {what} {item!r}.")
    return triple  # type: ignore[return-value]


def _as_rules(ex: str, rules: object, d_vocab: int) -> set[tuple[int, int, int]]:
    """The learner's rules as a set of (source, destination, output) token ids."""
    return {_as_triple(ex, rule, d_vocab, "rule") for rule in rules}


def _as_triples(ex: str, out: object, n: int, d_vocab: int) -> list[tuple[int, int, int]]:
    """The learner's list of (source, destination, output) triples, as ints, or a CheckFailed."""
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    if isinstance(out, Tensor) and out.ndim == 2 and out.shape[1] == 3:
        if out.dtype.is_floating_point:
            raise CheckFailed(ex, f"the triples must hold token ids (integers), got {out.dtype}.")
        out = out.tolist()
    if not isinstance(out, (list, tuple)):
        raise CheckFailed(
            ex, f"return a list of (source, destination, output) triples, got {type(out).__name__}."
        )
    triples = [_as_triple(ex, item, d_vocab, "skip-trigram") for item in out]
    if len(triples) != n:
        raise CheckFailed(ex, f"return n = {n} skip-trigrams, got {len(triples)}.")
    return triples


@checker
def check_describe_head(describe_head: Callable) -> None:
    """Exercise 2.10: `describe_head(model, head, threshold) -> (previous_token, copying, rules)`
    for a layer-0 head, on mystery models drawn at check time whose heads were set by hand (a
    previous-token head, a copying head, an anti-copying head, a head carrying skip-trigram
    rules, in a random order)."""
    ex = "Exercise 2.10 (describe_head)"
    seed = draw_seed()
    cases = []
    for i in range(2):
        mystery = handmade.mystery_heads(seed + i)
        for head in range(mystery.model.cfg.n_heads):
            for threshold in (3.0, 6.0):
                truth = circuits.describe_head(mystery.model, 0, head, threshold)
                cases.append((mystery, head, threshold, truth))
    for mystery, head, threshold, truth in cases:
        out = call_learner(
            ex, describe_head, mystery.model, head, threshold,
            withhold=[circuits.describe_head, handmade.mystery_heads], block_forward=True,
        )  # fmt: skip
        where = f"a mystery model's head {head} ({mystery.kinds[head]}), threshold {threshold}"
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise CheckFailed(ex, "describe_head must return (previous_token, copying, rules).")
        previous, copying = (
            expect_float(ex, name, v)
            for name, v in zip(("previous_token", "copying"), out[:2], strict=True)
        )
        rules = out[2]
        if not isinstance(rules, (set, frozenset, list, tuple)):
            raise CheckFailed(
                ex,
                f"rules must be a set of (source, destination, output), got {type(rules).__name__}.",
            )
        rules = _as_rules(ex, rules, mystery.model.cfg.d_vocab)
        if not math.isclose(previous, truth.previous_token, abs_tol=1e-3):
            raise CheckFailed(
                ex, f"{where}: previous_token {previous:.3f}, expected {truth.previous_token:.3f}. "
                "Average the diagonal just below the main one (offset -1) of the position-only "
                "pattern (Exercise 2.6), over its query positions 1.."
            )  # fmt: skip
        if not math.isclose(copying, truth.copying, abs_tol=1e-3):
            raise CheckFailed(
                ex,
                f"{where}: copying {copying:.3f}, expected {truth.copying:.3f} (Exercise 2.4's score).",
            )
        if rules != set(truth.rules):
            missing, extra = sorted(set(truth.rules) - rules), sorted(rules - set(truth.rules))
            raise CheckFailed(
                ex, f"{where}: rules missing {missing}, rules that should not be there {extra}."
            )
    passed(ex, "the previous-token attention, copying score and rules of every head of two mystery "
           "models, at two thresholds.")  # fmt: skip
