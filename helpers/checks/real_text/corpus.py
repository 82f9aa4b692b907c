"""Exercises 6.1 and 6.2: a corpus's bigrams, counted inside each document, and the bigram table
smoothed toward the unigram distribution."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from helpers.checks._base import generator
from helpers.checks._judge import Case
from helpers.checks._registry import Exercise, declare
from helpers.data import next_token_counts
from helpers.evals import real_text

# ---- 6.1 count the bigrams of a corpus -----------------------------------------------------------


def _counts(documents: list[Tensor], d_vocab: int) -> Tensor:
    """The right counts, pair by pair inside each document (the checker's own, not the reference's
    code, so that the two can be told apart if either is ever wrong)."""
    counts = torch.zeros(d_vocab, d_vocab, dtype=torch.long)
    for doc in documents:
        doc = doc.long()
        counts.index_put_((doc[:-1], doc[1:]), torch.ones(len(doc) - 1, dtype=torch.long),
                          accumulate=True)  # fmt: skip
    return counts


def _wrapped(counts: Tensor, dtype: torch.dtype) -> Tensor:
    """The counts as a small integer type holds them: wrapped round past its largest value."""
    bits = torch.iinfo(dtype).bits
    low = torch.iinfo(dtype).min
    return (counts - low) % 2**bits + low


def _documents(seed: int, sizes: list[int], letters: int, dtype: torch.dtype) -> list[Tensor]:
    """Documents of the given lengths over the first `letters` token ids, in `dtype`."""
    g = generator(seed)
    return [torch.randint(0, letters, (n,), generator=g).to(dtype) for n in sizes]


def _document_count_cases(seed: int) -> list[Case]:
    """Three corpora of documents of different lengths: one as the notebook's corpus stores its
    tokens (int32), with a document of a single token (no pair at all); one whose vocabulary is
    larger than the tokens drawn need (its last ids never occur, so the table's size must come
    from d_vocab, not from the tokens), with a document of two tokens (one pair); and one of long documents over two letters, whose four
    cells hold several hundred pairs each (counts kept in 8 bits wrap round)."""
    g = generator(seed)
    layouts = [  # (document lengths, letters drawn, unused ids, dtype)
        ([7, 1, 12, 5, 9], 6, 0, torch.int32),
        ([11, 2, 8, 6], 5, 4, torch.int64),
        ([420, 380, 450], 2, 0, torch.int64),
    ]
    cases = []
    for i, (sizes, letters, unused, dtype) in enumerate(layouts):
        sizes = [n + int(torch.randint(0, 3, (), generator=g)) * (n > 2) for n in sizes]
        documents = _documents(seed + 10 + i, sizes, letters, dtype)
        V = letters + unused
        expected = _counts(documents, V)
        joined = torch.cat(documents).long()
        mistakes = [
            ("rows and columns are swapped: entry [c, n] counts token n following token c, so "
             "row = the current token.", expected.T),
            ("the documents were joined before pairing, so the last token of each document was "
             "paired with the first of the next: pair inside each document, doc[:-1] with "
             "doc[1:].", _counts([joined], V)),
            ("only the first document was counted; count every document of the list.",
             _counts(documents[:1], V)),
            ("the last document was left out: count every document of the list.",
             _counts(documents[:-1], V)),
            ("the documents of two tokens were left out: a document of two tokens holds one "
             "pair; only a document of one token (or none) has no pair.",
             _counts([doc for doc in documents if len(doc) > 2], V)),
            ("each pair was counted once however often it occurs: `counts[c, n] += 1` with "
             "tensors of indices writes each cell once. Use `torch.bincount` (or `index_put_` "
             "with accumulate=True).", (expected > 0).long()),
        ]  # fmt: skip
        mistakes.append((
            "each pair was counted once per document however often it occurs there: "
            "`counts[doc[:-1], doc[1:]] += 1` writes each cell once. Use `torch.bincount` (or "
            "`index_put_` with accumulate=True).",
            sum((_counts([doc], V) > 0).long() for doc in documents),
        ))  # fmt: skip
        wrap = ("the counts wrapped round: an 8-bit integer type holds 0..255 (uint8) or "
                "-128..127 (int8). Count in torch.long (bincount does).")  # fmt: skip
        mistakes += [
            (wrap, _wrapped(expected, torch.uint8)),
            (wrap, _wrapped(expected, torch.int8)),
        ]
        seen = int(joined.max()) + 1
        hints = {} if seen == V else {
            (seen, seen): f"the table's size came from the tokens (their largest id + 1 = {seen}); "
            "ids up to d_vocab - 1 may never occur in a corpus: make it [d_vocab, d_vocab] "
            "(torch.bincount(..., minlength=d_vocab * d_vocab)).",
        }  # fmt: skip
        tags = {str(dtype).removeprefix("torch.") + " token ids"}
        if seen < V:
            tags.add("tokens that never occur")
        if int(expected.max()) > 255:
            tags.add("a count above 255")
        if min(sizes) <= 1:
            tags.add("a document of one token")
        if 2 in sizes:
            tags.add("a document of two tokens")
        if not torch.equal(_counts([joined], V), expected):
            tags.add("pairs across documents would change the counts")
        where = (f"{len(documents)} documents of {', '.join(map(str, sizes))} tokens ({dtype}), "
                 f"d_vocab = {V}")  # fmt: skip
        cases.append(Case((documents, V), expected, mistakes, where, shape_hints=hints, tags=tags))
    return cases


declare(Exercise(
    number="6.1", title="count the bigrams of a corpus", functions=("document_bigram_counts",),
    cases=_document_count_cases, reference=real_text.document_bigram_counts,
    # next_token_counts gives the same answer on documents of one length, stacked
    withhold=(real_text.document_bigram_counts, next_token_counts),
    covers=frozenset({"int32 token ids", "tokens that never occur", "a count above 255",
                      "a document of one token", "a document of two tokens",
                      "pairs across documents would change the counts"}),
    on_error={"RuntimeError": "If it is about a shape that is invalid for the input's size: "
              "torch.bincount returns only as many counts as the largest code + 1, and ids up "
              "to d_vocab - 1 may never occur; pass minlength=d_vocab * d_vocab."},
    passed="counted the pairs inside each document of three corpora exactly (none across "
    "documents), counts above 255 among them.",
))  # fmt: skip


# ---- 6.2 a smoothed bigram table ----------------------------------------------------------------


def _smoothed(counts: Tensor, beta: float, *, add_one: bool = True, axis: int = 0,
              unigram_total: bool = True, with_beta_below: bool = True,
              uniform: bool = False, unigram_of_row: bool = False,
              normalise_axis: int = 1, keepdim: bool = True) -> Tensor:  # fmt: skip
    """The smoothed table, written out once with every common mistake as a switch (the defaults
    give the right answer, in float64)."""
    c = counts.double()
    V = c.shape[1]
    one = 1.0 if add_one else 0.0
    unigram = (c.sum(axis) + one) / (c.sum() + (V if unigram_total else 0) * one)
    if uniform:
        unigram = torch.full((V,), 1.0 / V, dtype=torch.float64)
    smoothing = beta * (unigram[:, None] if unigram_of_row else unigram)
    total = c.sum(normalise_axis, keepdim=keepdim) + (beta if with_beta_below else 0.0)
    return ((c + smoothing) / total).log()


def _smoothed_cases(seed: int) -> list[Case]:
    """Three tables of counts: a sparse one (most pairs never seen, as in a corpus), with one token
    never seen as the current one (its row is the unigram distribution) and one never seen as the
    next (its column has only its add-one); a dense one with small beta; and one with counts of
    hundreds of millions, far beyond float32's exact integers, with beta an int. The sizes are
    all different and beta varies."""
    layouts = [  # (d_vocab, largest count, density, beta, dtype)
        (7, 40, 0.4, 30.0, torch.int64),
        (10, 9, 0.9, 0.5, torch.int32),
        (6, 3 * 10**8, 0.7, 3, torch.int64),
    ]
    cases = []
    for i, (V, high, density, beta, dtype) in enumerate(layouts):
        g = generator(seed + i)
        counts = torch.randint(1, high + 1, (V, V), generator=g)
        counts *= torch.rand(V, V, generator=g) < density
        empty_row, empty_column = (1, 4) if i == 0 else (None, None)
        if empty_row is not None:
            counts[empty_row] = 0
            counts[:, empty_column] = 0
        counts = counts.to(dtype)
        expected = _smoothed(counts, beta)
        mistakes = [
            ("the unigram distribution lacks its add-one: U(n) = (Σ_c C[c, n] + 1) / (Σ C + "
             "d_vocab), so that a token never seen next is not ruled out.",
             _smoothed(counts, beta, add_one=False)),
            ("the unigram distribution came from the row sums (how often each token comes "
             "first); U(n) counts how often n comes *next*: the column sums, counts.sum(0).",
             _smoothed(counts, beta, axis=1)),
            ("beta is missing from the denominator: each row's total is Σ_n' C[c, n'] + beta, "
             "since the smoothing adds beta · U(n), which sums to beta over the row.",
             _smoothed(counts, beta, with_beta_below=False)),
            ("these are probabilities: return their log.", _smoothed(counts, beta).exp()),
            ("the columns were normalised instead of the rows: each row (the current token) is "
             "a distribution over the next, so divide by the row total, counts.sum(1, "
             "keepdim=True) + beta.", _smoothed(counts, beta, normalise_axis=0)),
            ("the unigram's denominator lacks the d_vocab extra counts: U(n) = (Σ_c C[c, n] + 1) "
             "/ (Σ C + d_vocab) sums to 1.", _smoothed(counts, beta, unigram_total=False)),
            ("the smoothing is uniform (beta / d_vocab for every token); it follows the unigram "
             "distribution, beta · U(n).", _smoothed(counts, beta, uniform=True)),
            ("the unigram was lined up with the rows (U(c), the current token); it is U(n), the "
             "next token's: add beta · unigram broadcast along the rows, as a [d_vocab] "
             "vector, not unigram[:, None].", _smoothed(counts, beta, unigram_of_row=True)),
            ("that is log base 2; log-probabilities in this course are natural logs (nats).",
             expected / math.log(2)),
            ("the row totals were taken without keepdim=True: counts.sum(1) is [d_vocab], which "
             "broadcasts along the last axis, so entry [c, n] was divided by row n's total; "
             "counts.sum(1, keepdim=True) is [d_vocab, 1], one total per row.",
             _smoothed(counts, beta, keepdim=False)),
        ]  # fmt: skip
        tags = {str(dtype).removeprefix("torch.") + " counts"}
        if (counts.sum(1) == 0).any():
            tags.add("a token never seen as the current one")
        if (counts.sum(0) == 0).any():
            tags.add("a token never seen next")
        if int(counts.max()) > 2**24:
            tags.add("counts beyond float32's exact integers")
        if isinstance(beta, int):
            tags.add("beta an int")
        if beta < 1:
            tags.add("beta below 1")
        where = (f"a {V}×{V} table of counts up to {int(counts.max()):,} ({dtype}), "
                 f"beta = {beta}")  # fmt: skip
        cases.append(Case((counts, beta), expected, mistakes, where, tags=tags))
    return cases


declare(Exercise(
    number="6.2", title="a smoothed bigram table", functions=("smoothed_bigram_log_probs",),
    cases=_smoothed_cases, reference=real_text.smoothed_bigram_log_probs,
    withhold=(real_text.smoothed_bigram_log_probs,),
    covers=frozenset({"int32 counts", "a token never seen as the current one",
                      "a token never seen next", "counts beyond float32's exact integers",
                      "beta an int", "beta below 1"}),
    passed="log P(next | current) smoothed toward the add-one unigram, for three tables of "
    "counts (an empty row and column, counts of hundreds of millions) and three betas.",
))  # fmt: skip
