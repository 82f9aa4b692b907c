"""Exercises of chapter 02, declared: the full OV circuit, the diagonal, the path expansion by
hand, the copying score, the full QK circuit, the position-only pattern, the skip-trigrams of a
source and a head's strongest ones, the bug quantified, and a head described from its weights."""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from helpers import attribution, circuits, evals, handmade
from helpers.checks._base import CheckFailed, generator, heads_phrase, random_models, random_tokens
from helpers.checks._judge import Case, expect_float, same
from helpers.checks._judge import describe as describe_number
from helpers.checks._registry import Exercise, declare
from helpers.circuits import one_layer
from helpers.data import BOS, SkipTrigramLanguage
from helpers.models import AttnOnlyTransformer


def _where(model: AttnOnlyTransformer, head: int) -> str:
    """How a diagnosis names a head of a test model: by its model's sizes, there being two."""
    c = model.cfg
    return (
        f"head {head} of a model with {c.n_heads} heads, d_model {c.d_model}, d_vocab {c.d_vocab}"
    )


def _size_tags(model: AttnOnlyTransformer) -> set[str]:
    """The structures of a test model that the exercises on its heads name."""
    c = model.cfg
    tags = {"several heads of one layer"} if c.n_heads > 1 else set()
    if c.d_model != c.d_head * c.n_heads:  # the notebook's model has d_head = d_model / n_heads
        tags.add("d_head other than d_model / n_heads")
    return tags


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
            tags = _size_tags(model)
            if not torch.equal(W_U, W_E.T):
                tags.add("W_U untied from W_E")
            cases.append(Case((model, head), expected, mistakes, _where(model, head),
                              shape_hints=hints, tags=tags))  # fmt: skip
    return cases


declare(Exercise(
    number="2.1", title="the full OV circuit", functions=("full_ov_circuit",),
    cases=_full_ov_cases, reference=circuits.full_ov_circuit,
    withhold=(circuits.full_ov_circuit,), block_forward=True,
    covers=frozenset({"several heads of one layer", "W_U untied from W_E"}),
    passed=f"W_E @ W_V @ W_O @ W_U for {heads_phrase(2)}.",
))  # fmt: skip


# ---- 2.2 the diagonal --------------------------------------------------------------------------


def _top1(M: Tensor, rows: list[int], cols: list[int]) -> float:
    """The share of `rows` whose argmax over `cols` is the row's own index (the first maximum
    wins a tie, as torch.argmax has it)."""
    best = M[rows][:, cols].argmax(-1)
    return float((torch.tensor(cols)[best] == torch.tensor(rows)).float().mean())


def _without_later_ties(M: Tensor, keep: list[int]) -> None:
    """Lower, in place, every kept entry right of the diagonal that ties a row's largest
    diagonal: whether such a tie counts is a convention (argmax takes the first), where "more
    than any other" says nothing; the ties left are those every convention agrees on."""
    for i in keep:
        row_max = M[i, keep].max()
        for j in keep:
            if j > i and M[i, i] == row_max and M[i, j] == row_max:
                M[i, j] -= 1


def _tied(n: int, ignore: list[int], g: torch.Generator) -> Tensor:
    """Integer entries (counts, say) with ties of three kinds: the diagonal tied with an earlier
    kept column (no token is "more than any other": not on the diagonal), the diagonal tied with
    an ignored column (which must not count: on the diagonal), two other columns tied above the
    diagonal (not on the diagonal)."""
    M = torch.randint(0, 5, (n, n), generator=g).float() + 3 * torch.eye(n)
    keep = [i for i in range(n) if i not in ignore]
    a, b, c = keep[-1], keep[1], keep[len(keep) // 2]
    top = M[a, keep].max() + 1
    M[a, a] = M[a, keep[0]] = top  # ties an earlier kept column
    others = [j for j in keep if j != b]
    M[b, b] = M[b, min(ignore)] = M[b, others].max() + 1  # ties an ignored column only
    j1, j2 = [j for j in keep if j != c][:2]
    M[c, j1] = M[c, j2] = M[c, keep].max() + 1  # two other columns tie above the diagonal
    _without_later_ties(M, keep)
    return M


def _diagonal_cases(seed: int) -> list[Case]:
    """Square matrices and `ignore` lists of every kind: BOS alone; several indices, unsorted; none
    (entries far below 1); one that is not BOS (entries all negative, like log-probabilities);
    several, with ties (integer entries, like counts). The ignored rows and columns are made
    large enough to change the answer if they were kept."""
    cases = []
    specs = ((9, [0], "random"), (12, [9, 0, 5], "random"), (7, [], "tiny"), (8, [3], "negative"),
             (10, [6, 0], "ties"))  # fmt: skip
    for i, (n, ignore, kind) in enumerate(specs):
        g = generator(seed + i)
        if kind == "ties":
            M = _tied(n, ignore, g)
        elif kind == "negative":
            M = (2 * torch.randn(n, n, generator=g) + 2 * torch.eye(n)).log_softmax(-1)
            M[:, ignore] = M[:, ignore] / 20  # nearer 0 than any other entry, still negative
        else:
            M = torch.randn(n, n, generator=g) + 1.5 * torch.eye(n)
            M[ignore, :] += 5.0  # ignored rows and columns would change the answer
            M[:, ignore] += 3.0
            M = M * 1e-8 if kind == "tiny" else M
        keep = [j for j in range(n) if j not in ignore]
        sub = M[keep][:, keep]
        expected = circuits.diagonal_top1_accuracy(M, ignore=ignore)
        zeroed = M.clone()
        zeroed[:, ignore] = 0.0
        diagonal = sub.diagonal()
        mistakes = [
            ("the argmax ran over each column (dim=0): a row's largest entry is over dim=-1.",
             float((sub.argmax(0) == torch.arange(len(keep))).float().mean())),
            ("the rows and columns in `ignore` were kept.", _top1(M, list(range(n)),
                                                                  list(range(n)))),
            ("only the ignored rows were dropped: drop the ignored columns too (a token that is "
             "never predicted must not win a row).", _top1(M, keep, list(range(n)))),
            ("that counts rows whose diagonal entry is positive; the diagonal must be the row's "
             "largest entry.", float((diagonal > 0).float().mean())),
            ("only BOS (index 0) was left out: leave out the indices in `ignore`, whichever they "
             "are.", _top1(M, list(range(1, n)), list(range(1, n)))),
            ("the count was divided by every row of the matrix; divide by the rows kept.",
             _top1(M, keep, keep) * len(keep) / n),
            ("the ignored columns were set to 0 rather than left out: in a row whose entries are "
             "all negative (log-probabilities, say), 0 is the largest. Drop them (M[keep][:, "
             "keep]) or set them to -inf.", _top1(zeroed, keep, list(range(n)))),
            ("the argmax over the kept columns was compared with the original indices "
             "(`keep`): in the submatrix, row r's diagonal is column r, torch.arange(len(keep)).",
             float((sub.argmax(-1) == torch.tensor(keep)).float().mean())),
            ("a tie was counted as on the diagonal: the diagonal must be larger than every other "
             "entry of its row (\"more than any other\"), not merely as large.",
             float((diagonal >= sub.max(-1).values).float().mean())),
        ]  # fmt: skip
        tags = {"no index ignored" if not ignore else
                "one index ignored" if len(ignore) == 1 else "several indices ignored"}  # fmt: skip
        if any(j != BOS for j in ignore):
            tags.add("an ignored index other than BOS")
        if ignore != sorted(ignore):
            tags.add("ignore not sorted")
        if ((sub == sub.max(-1, keepdim=True).values).sum(-1) > 1).any():
            tags.add("ties")
        if (M < 0).all():
            tags.add("entries all negative")
        if M.abs().max() < 1e-3:
            tags.add("entries far below 1")
        cases.append(Case((M, ignore), expected, mistakes, f"a {n}×{n} matrix, ignore={ignore}",
                          tags=tags))  # fmt: skip
    return cases


declare(Exercise(
    number="2.2", title="the diagonal", functions=("diagonal_top1",), cases=_diagonal_cases,
    reference=circuits.diagonal_top1_accuracy, withhold=(circuits.diagonal_top1_accuracy,),
    covers=frozenset({"no index ignored", "one index ignored", "several indices ignored",
                      "an ignored index other than BOS", "ignore not sorted", "ties",
                      "entries all negative", "entries far below 1"}),
    passed="right for five matrices, ignoring no index, BOS, another index or several, with "
    "ties and entries all negative or far below 1.",
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
            tags = _size_tags(model)
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


# ---- 2.4 the copying score ---------------------------------------------------------------------


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


def _score_of(matrix: Tensor) -> float:
    e = torch.linalg.eigvals(matrix)
    return float(e.sum().real / e.abs().sum())


def _copying_cases(seed: int) -> list[Case]:
    """Every head of a model whose OV spectra are drawn at check time: mostly positive, mostly
    negative, a complex pair, random."""
    model = _with_spectra(seed)
    same_sums = (
        "a score of exactly ±1 for a head that is not a pure copier means numerator and "
        "denominator are the same sum. The numerator is Σλ (its real part), the denominator Σ|λ|, "
        "the sum of each eigenvalue's absolute value, not |Σλ|."
    )
    near = (
        "Close, but not equal: if you took the eigenvalues of the full d_vocab × d_vocab "
        "circuit, its zero eigenvalues come out as rounding noise that adds to Σ|λ|. Use the "
        "d_head × d_head matrix W_O @ W_U @ W_E @ W_V (or compute in float64)."
    )
    W_E, W_U = model.W_E.detach().double(), model.W_U.detach().double()
    cases = []
    for head in range(model.cfg.n_heads):
        W_V, W_O = model.W_V[0, head].detach().double(), model.W_O[0, head].detach().double()
        small = W_O @ W_U @ W_E @ W_V
        eig = circuits.ov_eigenvalues(model, 0, head)
        symmetric = torch.linalg.eigvalsh(small)  # what eigvalsh reads: the lower triangle
        mistakes = [
            (same_sums, 1.0),
            (same_sums, -1.0),
            ("the numerator is |Σλ|: keep the sign, Σλ is negative for a head that "
             "anti-copies.", float(eig.sum().abs() / eig.abs().sum())),
            ("only the real parts were summed in the denominator: use the absolute value "
             "(modulus) of each complex eigenvalue.", float(eig.sum().real / eig.real.abs().sum())),
            ("the OV part is transposed: the circuit is W_E @ W_V @ W_O @ W_U, so the small "
             "matrix is W_O @ W_U @ W_E @ W_V.", _score_of(W_U @ W_E @ (W_V @ W_O).T)),
            ("W_E.T was used in place of W_U: the unembedding is W_U (not tied to W_E here).",
             _score_of(W_O @ W_E.T @ W_E @ W_V)),
            ("these are the eigenvalues of W_V @ W_O alone; the full OV circuit includes the "
             "embedding and unembedding (W_O @ W_U @ W_E @ W_V).", _score_of(W_V @ W_O)),
            ("torch.linalg.eigvalsh assumes a symmetric matrix (it reads one triangle): the OV "
             "circuit is not symmetric, use torch.linalg.eigvals.",
             float(symmetric.sum() / symmetric.abs().sum())),
            ("the denominator is the sum of the singular values; it is the sum of the "
             "eigenvalues' absolute values, Σ|λ| (they differ for a matrix that is not "
             "symmetric).", float(eig.sum().real / torch.linalg.svdvals(small).sum())),
        ]  # fmt: skip
        expected = circuits.copying_score(model, 0, head)
        tags = _size_tags(model)
        if expected > 0.5:
            tags.add("mostly positive eigenvalues")
        if expected < -0.5:
            tags.add("mostly negative eigenvalues")
        if (eig.imag.abs() > 1e-6).any():
            tags.add("complex eigenvalues")
        if (eig.real > 0).any() and (eig.real < 0).any():
            tags.add("eigenvalues of both signs")
        cases.append(Case((model, head), expected, mistakes, f"head {head}", near_miss=near,
                          tags=tags))  # fmt: skip
    return cases


declare(Exercise(
    number="2.4", title="the copying score", functions=("copying_score",), cases=_copying_cases,
    reference=circuits.copying_score,
    withhold=(circuits.copying_score, circuits.ov_eigenvalues), block_forward=True,
    covers=frozenset({"mostly positive eigenvalues", "mostly negative eigenvalues",
                      "complex eigenvalues", "eigenvalues of both signs"}),
    passed="Σλ/Σ|λ| right for a copying head, an anti-copying head, a head with complex "
    "eigenvalues and a random head, with eigenvalues drawn at check time.",
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
            cases.append(Case((model, head), expected, mistakes, _where(model, head),
                              shape_hints={(c.d_model, c.d_model): "that is W_Q W_Kᵀ alone: "
                                           "embed the tokens with W_E on both sides."},
                              tags=_size_tags(model)))  # fmt: skip
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
            cases.append(Case((model, head), expected, mistakes, _where(model, head),
                              shape_hints=hints, tags=_size_tags(model)))  # fmt: skip
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


# ---- reading token ids ---------------------------------------------------------------------------


def _token_list(ex: str, name: str, out: object, k: int, d_vocab: int) -> list[int]:
    """`out` as k distinct token ids (from a list, tuple, set or 1-d integer tensor), or a
    CheckFailed saying what is wrong with it."""
    if isinstance(out, (set, frozenset)):
        out = sorted(out)
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    if isinstance(out, Tensor):
        if out.ndim != 1:
            raise CheckFailed(ex, f"{name} must be a list of token ids, got a tensor "
                              f"{tuple(out.shape)}.")  # fmt: skip
        if out.dtype.is_floating_point:
            raise CheckFailed(ex, f"{name} must hold integer token ids, got a tensor of "
                              f"{out.dtype}.")  # fmt: skip
        out = out.tolist()
    if not isinstance(out, (list, tuple)):
        raise CheckFailed(ex, f"{name} must be a list of token ids, got {type(out).__name__}.")
    ids = []
    for t in out:
        try:  # ints, numpy integers, 0-d integer tensors
            index = None if isinstance(t, bool) else operator.index(t)
        except TypeError:
            index = None
        if index is None or not 0 <= index < d_vocab:
            raise CheckFailed(ex, f"{name} must hold token ids in 0..{d_vocab - 1}, got {t!r}.")
        ids.append(index)
    if len(ids) != k:
        raise CheckFailed(ex, f"{name} must hold k = {k} token ids, got {len(ids)}.")
    if len(set(ids)) != k:
        raise CheckFailed(ex, f"{name} holds a token more than once: {ids}; the top k are "
                          "distinct.")  # fmt: skip
    return ids


def _as_triple(ex: str, item: object, d_vocab: int, what: str) -> tuple[int, int, int]:
    """One (source, destination, output) triple of token ids, or a CheckFailed naming the
    problem; `what` names it in messages ("rule", "skip-trigram")."""
    ids = item.tolist() if isinstance(item, (Tensor, np.ndarray)) else item
    if not isinstance(ids, (list, tuple)) or len(ids) != 3:
        raise CheckFailed(
            ex, f"each {what} must be a (source, destination, output) triple, got {item!r}."
        )
    try:
        if any(isinstance(t, bool) for t in ids):
            raise TypeError
        triple = tuple(operator.index(t) for t in ids)
    except TypeError:
        raise CheckFailed(ex, f"a {what} must hold token ids (ints), got {item!r}.") from None
    if not all(0 <= t < d_vocab for t in triple):
        raise CheckFailed(ex, f"token ids run 0..{d_vocab - 1}, got the {what} {item!r}.")
    return triple  # type: ignore[return-value]


# ---- 2.7 skip-trigrams of a source ---------------------------------------------------------------


def _top(scores: Tensor, k: int, largest: bool = True) -> frozenset[int]:
    return frozenset(scores.topk(k, largest=largest).indices.tolist())


def _without_bos(scores: Tensor) -> Tensor:
    scores = scores.clone()
    scores[BOS] = float("-inf")
    return scores


def _skip_trigram_cases(seed: int) -> list[Case]:
    """Each head of a random model with two heads, whose embeddings share a direction (so that
    each query's row of the QK circuit has an offset of its own), sources drawn at check time, k
    from 1 to 4, and for each head one source whose top k holds BOS (so that leaving BOS out is
    seen)."""
    (model,) = random_models(seed, 1, n_heads=2)
    V = model.cfg.d_vocab
    rng = generator(seed + 1)
    with torch.no_grad():  # a direction every embedding shares, as trained ones do: it adds a
        # constant of its own to each query's row of the QK circuit, which only centring removes
        model.embed.W_E += 2 * model.W_E.std() * torch.randn(model.cfg.d_model, generator=rng)
    qks = [circuits.full_qk_circuit(model, 0, h) for h in range(2)]
    raw_qks = [circuits.full_qk_circuit(model, 0, h, normalise=False) for h in range(2)]
    ovs = [circuits.full_ov_circuit(model, 0, h) for h in range(2)]

    def bos_rank(head: int, source: int) -> int:
        """Where BOS ranks (0 = first) among the destinations or outputs of `source`."""
        return min(int((qks[head][:, source] > qks[head][BOS, source]).sum()),
                   int((ovs[head][source] > ovs[head][source, BOS]).sum()))  # fmt: skip

    draws = []
    for head in range(2):
        for k in (2, 4, 1, 3):
            draws.append((head, int(torch.randint(1, V, (), generator=rng)), k))
        source = min(range(1, V), key=lambda s: bos_rank(head, s))
        draws.append((head, source, max(2, bos_rank(head, source) + 1)))
    cases = []
    for head, source, k in draws:
        qk, ov = qks[head][:, source], ovs[head][source]
        dests, outs = _top(qk, k), _top(ov, k)
        other = 1 - head
        mistakes = [
            ("the destinations were read from the source's row of the QK circuit: that is where "
             "the source token, as a query, looks. A source is a key: read its column, "
             "QK[:, source].", (_top(qks[head][source], k), outs)),
            ("the destinations come from the QK circuit before each query's row was centred; "
             "scores are comparable only within a query, so centre first.",
             (_top(raw_qks[head][:, source], k), outs)),
            ("the outputs were read from the source's column of the OV circuit; its row, "
             "OV[source], is what attending to the source writes to the logits.",
             (dests, _top(ovs[head][:, source], k))),
            ("these are the outputs pushed down most; take the largest.",
             (dests, _top(ov, k, largest=False))),
            ("BOS (token 0) was left out: this exercise ranks all tokens, BOS included.",
             (_top(_without_bos(qk), k), _top(_without_bos(ov), k))),
            ("destinations and outputs are swapped: return (destinations, outputs), the "
             "destinations from the QK circuit.", (outs, dests)),
            ("this is the other head's reading: use the circuits of the head asked for.",
             (_top(qks[other][:, source], k), _top(ovs[other][source], k))),
        ]  # fmt: skip

        def describe(answer, expected=(dests, outs)) -> str:
            for what, got, right in zip(("destinations", "outputs"), answer, expected,
                                        strict=True):  # fmt: skip
                if got != right:
                    return f"the {what} {sorted(got)}, expected {sorted(right)}."
            return ""  # not reached: a wrong answer differs in one of them

        tags = _size_tags(model) | {"k = 1" if k == 1 else "k above 1"}
        tags.add("BOS among the top k" if BOS in dests | outs else "BOS not among the top k")
        if _top(raw_qks[head][:, source], k) != dests:
            tags.add("centring the QK rows changes the destinations")
        cases.append(Case((model, head, source, k), (dests, outs), mistakes,
                          f"head {head}, source {source}, k = {k}", describe=describe,
                          tags=tags))  # fmt: skip
    return cases


def _read_skip_trigrams(out: object, case: Case) -> tuple[frozenset[int], frozenset[int]]:
    """The learner's (destinations, outputs) as two sets of token ids (their order is free), or a
    CheckFailed on their form."""
    ex = _SKIP_TRIGRAMS.name
    model, _, _, k = case.args
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise CheckFailed(ex, "skip_trigrams must return a pair (destinations, outputs).")
    return tuple(  # type: ignore[return-value]
        frozenset(_token_list(ex, f"the {what}", ids, k, model.cfg.d_vocab))
        for what, ids in zip(("destinations", "outputs"), out, strict=True)
    )


_SKIP_TRIGRAMS = declare(Exercise(
    number="2.7", title="skip-trigrams of a source", functions=("skip_trigrams",),
    cases=_skip_trigram_cases, read=_read_skip_trigrams, reference=circuits.skip_trigrams,
    withhold=(circuits.skip_trigrams,), block_forward=True,
    covers=frozenset({"several heads of one layer", "k = 1", "k above 1", "BOS among the top k",
                      "BOS not among the top k", "centring the QK rows changes the destinations"}),
    passed="top-k destinations (QK column) and outputs (OV row) for k = 1 to 4, BOS included.",
))  # fmt: skip


# ---- 2.8 ranking a head's skip-trigrams ------------------------------------------------------------


def _ranked(qk_sd: Tensor, ov: Tensor, n: int, centre: bool, clamp: bool, drop_bos: bool = True):
    """A (possibly mistaken) ranking of skip-trigrams from a `[source, destination]` QK."""
    V = ov.shape[0]
    if centre:
        ov = ov - ov.mean(-1, keepdim=True)
    a, b = (qk_sd.clamp_min(0), ov.clamp_min(0)) if clamp else (qk_sd, ov)
    strength = a[:, :, None] * b[:, None, :]
    if drop_bos:
        strength[BOS] = strength[:, BOS] = strength[:, :, BOS] = 0.0
    if not clamp:
        strength = strength.clamp_min(0)
    values, flat = strength.flatten().topk(n)
    return [
        (i // (V * V), i // V % V, i % V)
        for i, v in zip(flat.tolist(), values.tolist(), strict=True)
        if v > 0
    ]


def _top_skip_trigram_cases(seed: int) -> list[Case]:
    """Each head of two random models with two heads, n = 1, 3 and 6; in the second model BOS's
    embedding is made large, so that BOS would take the first places if it took part."""
    cases = []
    for i, model in enumerate(random_models(seed, n_heads=2)):
        if i == 1:
            with torch.no_grad():
                model.embed.W_E[BOS] *= 3.0
        for head in range(model.cfg.n_heads):
            qk = circuits.full_qk_circuit(model, 0, head)  # [destination, source]
            raw_qk = circuits.full_qk_circuit(model, 0, head, normalise=False)
            ov = circuits.full_ov_circuit(model, 0, head)
            for n in (3, 6, 1):
                expected = circuits.top_skip_trigrams(model, 0, head, n, ignore=[BOS])
                with_bos = _ranked(qk.T, ov, n, centre=True, clamp=True, drop_bos=False)
                mistakes = [
                    ("the QK circuit was read as [source, destination]: its rows are "
                     "destinations (queries), its columns sources (keys), so the strength uses "
                     "QK[d, s].", _ranked(qk, ov, n, centre=True, clamp=True)),
                    ("the OV rows were not centred: softmax ignores a constant added to all "
                     "logits, so subtract each row's mean first.",
                     _ranked(qk.T, ov, n, centre=False, clamp=True)),
                    ("negative × negative was counted as strong: keep only pairs where both QK "
                     "and OV' are positive.", _ranked(qk.T, ov, n, centre=True, clamp=False)),
                    ("BOS (token 0) took part: it is never a real source, destination or "
                     "output.", with_bos),
                    ("the QK rows were not centred: scores compare only within a destination "
                     "(query), so subtract each row's mean first.",
                     _ranked(raw_qk.T, ov, n, centre=True, clamp=True)),
                    ("the triples are (destination, source, output): return (source, "
                     "destination, output).", [(d, s, o) for s, d, o in expected]),
                    ("the triples are (source, output, destination): return (source, "
                     "destination, output); with strength[s, d, o], flat index i is s = i // V², "
                     "d = i // V % V, o = i % V.", [(s, o, d) for s, d, o in expected]),
                ]  # fmt: skip

                def describe(answer, expected=expected) -> str:
                    if sorted(answer) == sorted(expected):
                        return ("the right skip-trigrams in the wrong order. Rank them by the "
                                "product QK[d, s] · OV'[s, o], largest first: is your strength "
                                "exactly this product (no extra scaling, no sum over anything), "
                                "with QK row-centred and OV row-centred?")  # fmt: skip
                    return f"got {list(answer)}, expected {expected}."

                tags = _size_tags(model) | {"n = 1" if n == 1 else "n above 1"}
                if with_bos != expected:
                    tags.add("BOS would rank among the strongest")
                if _ranked(qk.T, ov, n, centre=True, clamp=False) != expected:
                    tags.add("negative × negative would rank among the strongest")
                cases.append(Case((model, head, n), expected, mistakes,
                                  f"{_where(model, head)}, n = {n}", describe=describe,
                                  tags=tags))  # fmt: skip
    return cases


def _read_triples(out: object, case: Case) -> list[tuple[int, int, int]]:
    """The learner's list of (source, destination, output) triples, as ints, or a CheckFailed."""
    ex = _TOP_SKIP_TRIGRAMS.name
    model, _, n = case.args
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
    triples = [_as_triple(ex, item, model.cfg.d_vocab, "skip-trigram") for item in out]
    if len(triples) != n:
        raise CheckFailed(ex, f"return n = {n} skip-trigrams, got {len(triples)}.")
    return triples


_TOP_SKIP_TRIGRAMS = declare(Exercise(
    number="2.8", title="ranking a head's skip-trigrams", functions=("top_skip_trigrams",),
    cases=_top_skip_trigram_cases, read=_read_triples, reference=circuits.top_skip_trigrams,
    withhold=(circuits.top_skip_trigrams, circuits.strongest_skip_trigrams, one_layer._strongest,
              one_layer._skip_trigram_strength),
    block_forward=True,
    covers=frozenset({"several heads of one layer", "n = 1", "n above 1",
                      "BOS would rank among the strongest",
                      "negative × negative would rank among the strongest"}),
    passed="the strongest skip-trigrams, in order, for every head of two random models.",
))  # fmt: skip


# ---- 2.9 quantify the bug ----------------------------------------------------------------------


def _crossed_cases(seed: int, model: object, language: object) -> list[Case]:
    """The notebook's own model on its two crossed rules and a random triple of words, and a random
    model of the same vocabulary, on filler contexts of 6 to 8 words drawn at check time (the
    source written at a different position in each context, right after BOS in some)."""
    if not isinstance(model, AttnOnlyTransformer) or not isinstance(language, SkipTrigramLanguage):
        raise TypeError("call check_crossed_effect(crossed_effect, model, language)")
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
        which = "the notebook's model" if m is model else "a random model of its vocabulary"
        case = _crossed_case(m, language, contexts, where, source, dest, output, which)
        case.tags = {"the notebook's model" if m is model else "a random model"}
        if (where == 0).any():
            case.tags.add("the source right after BOS")
        cases.append(case)
    return cases


def _crossed_case(model, language, contexts, where, source, dest, output, which: str) -> Case:
    """The reference and the common mistakes of Exercise 2.9 for one set of contexts."""
    n = contexts.shape[0]
    ref = evals.skip_trigram_effect(model, contexts, where, source, dest, output)
    rows = torch.arange(n)
    bos, end = torch.zeros(n, 1, dtype=torch.long), torch.full((n, 1), dest)
    with_source = contexts.clone()
    with_source[rows, where] = source
    everywhere = contexts.clone()  # [:, where]: every position of `where` in every context
    everywhere[:, where] = source
    at_first = contexts.clone()  # the source at where[0] in every context
    at_first[:, int(where[0])] = source
    shifted = torch.cat([bos, contexts, end], 1)  # the source written at `where` of the
    shifted[rows, where] = source  # sequence with BOS: one position early

    def last(tokens: Tensor) -> Tensor:
        with torch.no_grad():
            return model(tokens).double()[:, -1]

    def change(with_: Tensor, without: Tensor) -> float:
        return float((with_.log_softmax(-1)[:, output] - without.log_softmax(-1)[:, output]).mean())

    logits = {"with": last(torch.cat([bos, with_source, end], 1)),
              "without": last(torch.cat([bos, contexts, end], 1))}  # fmt: skip
    lp = {name: x.log_softmax(-1)[:, output] for name, x in logits.items()}
    mistakes = [
        ("the sign is flipped: take log P with the source minus log P without it.",
         -ref.mean_change),
        ("that is a change in probability; take the change in log-probability (nats).",
         ref.mean_p_with - ref.mean_p_without),
        ("that is the log of the ratio of mean probabilities; average the per-context "
         "changes of log-probability instead.",
         float(lp["with"].exp().mean().log() - lp["without"].exp().mean().log())),
        ("that is the change of the raw logit; take log-probabilities (log_softmax) first.",
         float((logits["with"][:, output] - logits["without"][:, output]).mean())),
        ("that was read one position too early (or without `dest` appended, which gives the "
         "same): the prediction after `dest` is at the last position of BOS + context + dest, "
         "[:, -1].",
         float((_second_last(model, bos, with_source, end, output)
                - _second_last(model, bos, contexts, end, output)).mean())),
        ("the runs with and without the source were the same (a change of 0): was the source "
         "written into `contexts` itself? Write it into a copy, `contexts.clone()`.", 0.0),
        ("the source went in one position early: `where` indexes the contexts, so in the "
         "sequence with BOS in front it is position where + 1.",
         change(last(shifted), logits["without"])),
        ("with_source[:, where] wrote the source at every position of `where` into every "
         "context; write one position per context, with_source[torch.arange(n), where].",
         change(last(torch.cat([bos, everywhere, end], 1)), logits["without"])),
        ("the changes were summed over the contexts; take their mean.", n * ref.mean_change),
        ("the source was written at the same position, where[0], in every context: each context "
         "has its own, where[i].", change(last(torch.cat([bos, at_first, end], 1)),
                                          logits["without"])),
    ]  # fmt: skip
    labels = language.token_labels
    where_text = (f"{which}, {labels[source]} … {labels[dest]} → {labels[output]} on {n} "
                  f"contexts of {contexts.shape[1]} words")  # fmt: skip
    near = ("Close, but not exact: does every sequence start with BOS (token 0), as in "
            "training, with the source written at `where` of the contexts?")  # fmt: skip
    return Case((model, contexts, where, source, dest, output), ref.mean_change, mistakes,
                where_text, near_miss=near)  # fmt: skip


def _second_last(model, bos: Tensor, contexts: Tensor, end: Tensor, output: int) -> Tensor:
    with torch.no_grad():
        logits = model(torch.cat([bos, contexts, end], 1)).double()
    return logits[:, -2].log_softmax(-1)[:, output]


declare(Exercise(
    number="2.9", title="quantify the bug", functions=("crossed_effect",),
    given=("model", "language"), cases=_crossed_cases, reference=evals.skip_trigram_effect,
    withhold=(evals.skip_trigram_effect, evals.continuation_effect),
    covers=frozenset({"the notebook's model", "a random model", "the source right after BOS"}),
    passed="exact on the notebook's model (keep … in → bay, keep … at → mind, a random triple of "
    "words) and on a random model.",
))  # fmt: skip


# ---- 2.10 describe a head from its weights ---------------------------------------------------------


def _resized(model: AttnOnlyTransformer, d_model: int, d_head: int, seed: int):
    """The same model with a wider residual stream and wider heads (zeros added, the stream then
    rotated so that no direction is visibly unused; W_Q scaled so that every score stays as it
    was): the mystery models otherwise share d_model, n_heads and d_head with the notebook's."""
    old = model.cfg
    big = AttnOnlyTransformer(replace(old, d_model=d_model, d_head=d_head))
    R = torch.linalg.qr(torch.randn(d_model, d_model, generator=generator(seed))).Q

    def pad(W: Tensor, rows: int, cols: int) -> Tensor:
        return torch.nn.functional.pad(W, (0, cols - W.shape[-1], 0, rows - W.shape[-2]))

    with torch.no_grad():
        big.embed.W_E.copy_(pad(model.W_E, old.d_vocab, d_model) @ R)
        big.pos_embed.W_pos.copy_(pad(model.W_pos, old.n_ctx, d_model) @ R)
        big.unembed.W_U.copy_(R.T @ pad(model.W_U, d_model, old.d_vocab))
        a, b = model.blocks[0].attn, big.blocks[0].attn
        scale = (d_head / old.d_head) ** 0.5  # the scores' 1/sqrt(d_head) grows: make up for it
        for head in range(old.n_heads):
            b.W_Q[head] = R.T @ pad(a.W_Q[head], d_model, d_head) * scale
            b.W_K[head] = R.T @ pad(a.W_K[head], d_model, d_head)
            b.W_V[head] = R.T @ pad(a.W_V[head], d_model, d_head)
            b.W_O[head] = pad(a.W_O[head], d_head, d_model) @ R
    return big.eval()


def _rules(model, head: int, threshold: float, *, centre_qk: bool = True, centre_ov: bool = True,
           skip_bos: bool = True,
           keep: Callable[[float, float, float], bool] = lambda q, o, t: q >= t and o >= t,
           ) -> frozenset[tuple[int, int, int]]:  # fmt: skip
    """The head's rules (`circuits.describe_head`), or a common mistake's reading of them."""
    qk = circuits.full_qk_circuit(model, 0, head, normalise=centre_qk).clone()  # [dest, source]
    ov = circuits.full_ov_circuit(model, 0, head)
    ov = ov - ov.mean(-1, keepdim=True) if centre_ov else ov.clone()
    if skip_bos:
        qk[BOS] = qk[:, BOS] = ov[:, BOS] = float("-inf")
    rules = set()
    for s in range(1, model.cfg.d_vocab):
        d, o = int(qk[:, s].argmax()), int(ov[s].argmax())
        if keep(float(qk[d, s]), float(ov[s, o]), threshold):
            rules.add((s, d, o))
    return frozenset(rules)


def _midway(model, head: int, planted: frozenset) -> float:
    """A threshold between two planted rules' margins (the smaller of QK[d, s] and OV'[s, o]),
    in the widest gap, so that planted rules lie on both sides of it."""
    qk = circuits.full_qk_circuit(model, 0, head)
    ov = circuits.full_ov_circuit(model, 0, head)
    ov = ov - ov.mean(-1, keepdim=True)
    margins = sorted(min(float(qk[d, s]), float(ov[s, o])) for s, d, o in planted)
    low, high = max(zip(margins, margins[1:], strict=False), key=lambda pair: pair[1] - pair[0])
    return round((low + high) / 2, 3)


# a threshold below the weak side of the mystery models' half-rules (1.5) and above the copying
# heads' QK scores: each reading that combines the two scores differently keeps other rules here
LOW_THRESHOLD = 1.0


def _describe_cases(seed: int) -> list[Case]:
    """Every head of two mystery models (a previous-token head, a copying head, an anti-copying
    head and a head of planted rules, in a random order), the second resized to other d_model and
    d_head than the notebook's; at the default threshold 3 (below every planted rule), at one
    between two planted rules' margins (so that rules lie on both sides of it) and at a low one
    (below the half-rules' weak sides, where a product or a sum of the two scores reaches the
    threshold for rules that one score alone does not)."""
    cases = []
    for i in range(2):
        mystery = handmade.mystery_heads(seed + i)
        model = mystery.model if i == 0 else _resized(mystery.model, 80, 20, seed + 7)
        rules_head = mystery.kinds.index("skip-trigrams")
        thresholds = (3.0, _midway(model, rules_head, mystery.rules), LOW_THRESHOLD)
        for head in range(model.cfg.n_heads):
            pattern = circuits.positional_pattern(model, 0, head)
            for threshold in thresholds:
                truth = circuits.describe_head(model, 0, head, threshold)
                prev, copying, rules = truth.previous_token, truth.copying, truth.rules
                expected = (prev, copying, rules)

                def rules_read(**how) -> tuple[float, float, frozenset]:
                    return (prev, copying, _rules(model, head, threshold, **how))  # noqa: B023

                mistakes = [
                    ("previous_token read the main diagonal (offset 0), a position's attention "
                     "on itself: the previous position is the diagonal at offset -1.",
                     (float(pattern.diagonal(0).mean()), copying, rules)),
                    ("previous_token was divided by n_ctx: there are n_ctx - 1 query positions "
                     "with a previous position (1, 2, …); take the mean of the offset -1 "
                     "diagonal.",
                     (float(pattern.diagonal(-1).sum()) / model.cfg.n_ctx, copying, rules)),
                    ("the rules were read from the QK circuit before each row was centred: a "
                     "destination's scores compare only within its row.",
                     rules_read(centre_qk=False)),
                    ("the rules were read from the OV circuit before each row was centred: "
                     "softmax ignores a constant added to every logit.",
                     rules_read(centre_ov=False)),
                    ("BOS took part in the rules: leave it out of the destinations (QK row and "
                     "column) and the outputs (OV column).", rules_read(skip_bos=False)),
                    ("rules were kept on the QK score alone: keep a rule only if both QK[d, s] "
                     "and OV'[s, o] reach the threshold.",
                     rules_read(keep=lambda q, o, t: q >= t)),
                    ("rules were kept on the OV score alone: keep a rule only if both QK[d, s] "
                     "and OV'[s, o] reach the threshold.",
                     rules_read(keep=lambda q, o, t: o >= t)),
                    ("rules were kept on the product QK · OV' >= threshold²: each of the two "
                     "must reach the threshold.", rules_read(keep=lambda q, o, t: q * o >= t * t)),
                    ("rules were kept on the sum QK + OV' >= 2 · threshold: each of the two must "
                     "reach the threshold.", rules_read(keep=lambda q, o, t: q + o >= 2 * t)),
                    ("the rules were kept at the default threshold 3.0: use the `threshold` "
                     "argument.", (prev, copying, _rules(model, head, 3.0))),
                    ("the rules are (source, output, destination): return (source, destination, "
                     "output).", (prev, copying, frozenset((s, o, d) for s, d, o in rules))),
                ]  # fmt: skip
                tags = _size_tags(model)
                tags |= {"a previous-token head"} if prev > 0.5 else set()
                tags |= {"a copying head"} if copying > 0.5 else set()
                tags |= {"an anti-copying head"} if copying < -0.5 else set()
                tags |= _threshold_tags(model, head, threshold)
                if model.cfg.d_model != mystery.model.cfg.d_model:
                    tags.add("d_model and d_head other than the notebook's")
                where = (f"head {head} ({mystery.kinds[head]}) of a mystery model with d_head "
                         f"{model.cfg.d_head}, threshold {threshold}")  # fmt: skip
                cases.append(Case((model, head, threshold), expected, mistakes, where,
                                  describe=_description_describer(expected), tags=tags))  # fmt: skip
    return cases


def _threshold_tags(model, head: int, threshold: float) -> set[str]:
    """Which sides of the threshold the head's candidate rules (each source's best destination
    and output) fall on."""
    tags = set()
    loose = _rules(model, head, threshold, keep=lambda q, o, t: True)
    kept = _rules(model, head, threshold)
    qk_only = _rules(model, head, threshold, keep=lambda q, o, t: q >= t > o)
    ov_only = _rules(model, head, threshold, keep=lambda q, o, t: o >= t > q)
    if kept:
        tags.add("a rule kept")
    if loose - kept:
        tags.add("a rule below the threshold")
    if qk_only:
        tags.add("a rule whose QK alone reaches the threshold")
    if ov_only:
        tags.add("a rule whose OV' alone reaches the threshold")
    return tags


def _description_describer(expected: tuple) -> Callable[[object], str]:
    """What is wrong with a description that no common mistake explains: its first wrong part."""
    prev, copying, rules = expected

    def describe(answer) -> str:
        got_prev, got_copying, got_rules = answer
        if not same(got_prev, prev):
            return (f"previous_token: {describe_number(got_prev, prev)} Average the diagonal just "
                    "below the main one (offset -1) of the position-only pattern (Exercise 2.6), "
                    "over its query positions 1..")  # fmt: skip
        if not same(got_copying, copying):
            near = "Close: compute the eigenvalues in float64, of the d_head × d_head matrix."
            return f"copying (Exercise 2.4's score): {describe_number(got_copying, copying, near)}"
        missing, extra = sorted(rules - got_rules), sorted(got_rules - rules)
        return f"rules missing {missing}, rules that should not be there {extra}."

    return describe


def _read_description(out: object, case: Case) -> tuple[float, float, frozenset]:
    """The learner's (previous_token, copying, rules), as two floats and a set of triples of
    token ids, or a CheckFailed on their form."""
    ex = _DESCRIBE_HEAD.name
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise CheckFailed(ex, "describe_head must return (previous_token, copying, rules).")
    previous, copying = (expect_float(ex, name, value)
                         for name, value in zip(("previous_token", "copying"), out[:2],
                                                strict=True))  # fmt: skip
    rules = out[2]
    if not isinstance(rules, (set, frozenset, list, tuple)):
        raise CheckFailed(
            ex, f"rules must be a set of (source, destination, output), got {type(rules).__name__}."
        )
    d_vocab = case.args[0].cfg.d_vocab
    return previous, copying, frozenset(_as_triple(ex, r, d_vocab, "rule") for r in rules)


_DESCRIBE_HEAD = declare(Exercise(
    number="2.10", title="describe a head from its weights", functions=("describe_head",),
    cases=_describe_cases, read=_read_description, reference=circuits.describe_head,
    withhold=(circuits.describe_head, handmade.mystery_heads), block_forward=True,
    covers=frozenset({"several heads of one layer", "a previous-token head", "a copying head",
                      "an anti-copying head", "a rule kept", "a rule below the threshold",
                      "a rule whose QK alone reaches the threshold",
                      "a rule whose OV' alone reaches the threshold",
                      "d_model and d_head other than the notebook's"}),
    passed="the previous-token attention, copying score and rules of every head of two mystery "
    "models (one resized), at thresholds below every planted rule and between two of them.",
))  # fmt: skip
