"""Exercises 4.1-4.3: a head's previous-token, duplicate-token and induction scores from its
pattern."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from helpers import evals
from helpers.checks._base import generator
from helpers.checks._judge import Case, read_answer, same
from helpers.checks._registry import Exercise, declare

# ---- 4.1 - 4.3 scores of one head's pattern ----------------------------------------------------


def _random_patterns(seed: int, n: int, batch: int, dtype=torch.float32, boost=None) -> Tensor:
    """`[batch, n, n]` random causal attention patterns; `boost` (a `[n, n]` mask) raises the
    logits there, for the sharp pattern of a head that does what a score measures."""
    logits = torch.randn(batch, n, n, generator=generator(seed), dtype=torch.float64) * 2
    if boost is not None:
        logits = logits + 6 * boost
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    return logits.masked_fill(~causal, float("-inf")).softmax(-1).to(dtype)


def _previous_token_cases(seed: int) -> list[Case]:
    """Random patterns of four shapes: a batch of one, two positions only (one entry (1, 0) per
    sequence), float64, and the sharp pattern of a previous-token head (a score near 1)."""
    cases = []
    for i, (batch, n, dtype, head) in enumerate(((4, 11, torch.float32, False),
                                                 (1, 7, torch.float64, True),
                                                 (3, 16, torch.float32, False),
                                                 (5, 2, torch.float32, False))):  # fmt: skip
        previous = torch.ones(n, n).tril(-1).triu(-1)  # the entries (i, i - 1)
        pattern = _random_patterns(seed + i, n, batch, dtype, previous if head else None)
        p = pattern.double()
        entries = p.diagonal(-1, -2, -1)  # [batch, n - 1]
        expected = float(entries.mean())
        mistakes = [
            ("that is the attention on the current position (the main diagonal); the previous "
             "position is one below it: diagonal(offset=-1).", float(p.diagonal(0, -2, -1).mean())),
            ("that is the attention on the next position: diagonal(offset=+1) is above the "
             "diagonal, where a causal pattern is 0.", float(p.diagonal(1, -2, -1).mean())),
            ("the sum was taken instead of the mean.", float(entries.sum())),
            ("the mean was taken over the whole pattern rather than over the entries (i, i - 1).",
             float(p.mean())),
            ("position 0 was averaged in: it has no previous position (an index i - 1 = -1 wraps "
             "round to the last key, where a causal pattern is 0). Average over positions "
             "1 .. n - 1.",
             float(entries.sum() / (batch * n))),
            ("only the first sequence of the batch was scored: the pattern is [batch, query_pos, "
             "key_pos]; average over the batch too.", float(entries[0].mean())),
        ]  # fmt: skip
        tags = {"float64"} if dtype == torch.float64 else set()
        tags |= {"one sequence"} if batch == 1 else set()
        tags |= {"two positions"} if n == 2 else set()
        tags |= {"a previous-token head's pattern"} if expected > 0.5 else set()
        where = f"{batch} pattern(s) over {n} positions ({dtype})"
        cases.append(Case((pattern,), expected, mistakes, where, tags=tags))
    return cases


declare(Exercise(
    number="4.1", title="previous-token score", functions=("previous_token_score",),
    cases=_previous_token_cases,
    covers=frozenset({"float64", "one sequence", "two positions",
                      "a previous-token head's pattern"}),
    passed="right on random patterns of four shapes (one sequence, two positions, float64) and "
    "on a previous-token head's.",
))  # fmt: skip


def _block_score(
    pattern: Tensor,
    length: int,
    shift: int,
    *,
    earliest: int = 1,
    latest: bool = False,
    average: bool = False,
    first: int | None = None,
    stop_short: bool = False,
) -> float:
    """The score as a learner's loop computes it, right or wrong: for each query q from `first`
    (default: the first position of the second block), the attention summed over the keys
    q - r·length + shift for r = 1 .. (q - earliest) // length, the copies at `earliest` or later
    (`latest`: r = 1 only; `average`: the mean over them, Olsson et al.'s evaluator;
    `stop_short`: r = 1 .. (q - earliest) // length - 1, a range whose end is left out), then the
    mean over queries and batch. Right: earliest=1, after BOS."""
    n, p = pattern.shape[-1], pattern.double()
    per_query = []
    for q in range(1 + length if first is None else first, n):
        rs = list(range(1, (q - earliest) // length + (0 if stop_short else 1)))
        rs = rs[:1] if latest else rs
        total = p[:, q, [q - r * length + shift for r in rs]].sum(-1)  # [batch]
        per_query.append(total / len(rs) if average and rs else total)
    return float(torch.stack(per_query).mean())


def _course_score(pattern: Tensor, length: int, shift: int) -> float:
    """The course's score (`evals.earlier_occurrence_mask`): the right answer."""
    target = evals.earlier_occurrence_mask(pattern.shape[-1], length, shift)
    queries = target.any(-1)
    return float((pattern.double() * target).sum(-1)[:, queries].mean())


_BOS_OFFSET = (
    "the positions are one off: the sequence starts with BOS, so block b (from 0) covers "
    "positions 1 + b·length .. (b + 1)·length, and a query's earlier copies lie a multiple of "
    "length before it, never at BOS."
)
_ONE_COPY_TOO_MANY = (
    "r ran to q // length, one copy too far at the end of each block: the earliest copy, "
    "q - r·length, must be a token of the sequence (position 1 or later), not BOS: r runs to "
    "(q - 1) // length."
)
_FIRST_BLOCK = (
    "the queries of the first block (or BOS) were averaged in: they have no earlier copy to "
    "attend to. Average over the queries of the later blocks only, q = 1 + length .. n - 1."
)
_QUERIES_FROM_LENGTH = (
    "the queries start at q = length, the last position of the first block, which has no "
    "earlier copy (its score of 0 was averaged in): with BOS at position 0 the second block "
    "starts at q = 1 + length."
)
_STOP_SHORT = (
    "the earliest copy of each token was left out: r must run over 1 .. (q - 1) // length "
    "inclusive, range(1, (q - 1) // length + 1) (a range leaves out its end)."
)
_FIRST_SEQUENCE = (
    "only the first sequence of the batch was scored: the pattern is [batch, query_pos, "
    "key_pos]; average over the batch too."
)


def _slip_mistakes(
    pattern: Tensor, score: Callable[..., float], length: int, shift: int
) -> list[tuple[str, float]]:
    """Off-by-ones of the loop that 4.2 and 4.3 share, and a batch of one scored."""
    return [
        (_QUERIES_FROM_LENGTH, score(first=length)),
        (_STOP_SHORT, score(stop_short=True)),
        (_FIRST_SEQUENCE, _block_score(pattern[:1], length, shift)),
    ]  # fmt: skip


# (length, blocks, batch, dtype, a sharp pattern): one earlier copy (two blocks) and several,
# float64, a batch of one, blocks of 2, and the sharp pattern of a head that does what is scored
_BLOCKS = ((5, 2, 4, torch.float32, False), (4, 4, 3, torch.float32, False),
           (3, 3, 2, torch.float64, False), (6, 3, 2, torch.float32, True),
           (2, 6, 1, torch.float32, False))  # fmt: skip


def _block_tags(length: int, blocks: int, pattern: Tensor, score: float) -> set[str]:
    tags = {"two blocks (one earlier copy)" if blocks == 2 else "three blocks or more"}
    tags |= {"float64"} if pattern.dtype == torch.float64 else set()
    tags |= {"one sequence"} if pattern.shape[0] == 1 else set()
    tags |= {"blocks of 2"} if length == 2 else set()
    tags |= {"a head's sharp pattern"} if score > 0.5 else set()
    return tags


def _score_cases(seed: int, shift: int, own_mistakes, context=None) -> list[Case]:
    """The cases of 4.2 (`shift` 0) and 4.3 (`shift` 1): random patterns over every layout of
    `_BLOCKS` (sharpened toward the right keys where the layout says so) with the course's score,
    the exercise's own mistakes (`own_mistakes(score)`, `score` being `_block_score` on the
    case's pattern) and those both exercises share; `context(score)`, if given, is each case's."""
    cases = []
    for i, (length, blocks, batch, dtype, sharp) in enumerate(_BLOCKS):
        n = 1 + length * blocks
        boost = evals.earlier_occurrence_mask(n, length, shift).float() if sharp else None
        pattern = _random_patterns(seed + i, n, batch, dtype, boost)
        expected = _course_score(pattern, length, shift)
        score = functools.partial(_block_score, pattern, length, shift=shift)
        mistakes = [
            *own_mistakes(score),
            (_BOS_OFFSET, score(earliest=0, first=length)),
            (_ONE_COPY_TOO_MANY, score(earliest=0)),
            (_FIRST_BLOCK, score(first=1)),
            (_FIRST_BLOCK, score(first=0)),
            *_slip_mistakes(pattern, score, length, shift),
        ]  # fmt: skip
        where = f"blocks of {length}, {blocks} blocks, {batch} pattern(s) ({dtype})"
        tags = _block_tags(length, blocks, pattern, expected)
        cases.append(Case((pattern, length), expected, mistakes, where, tags=tags,
                          context=None if context is None else context(score)))  # fmt: skip
    return cases


def _duplicate_cases(seed: int) -> list[Case]:
    return _score_cases(seed, 0, lambda score: [
        ("this is the induction score: the token *after* each earlier copy (key + 1). A "
         "duplicate-token head attends to the earlier copies themselves.", score(shift=1)),
        ("only the most recent earlier copy was counted; sum over every earlier copy.",
         score(latest=True)),
        ("the attention was averaged over the earlier copies; sum it over them (a head "
         "that splits its attention between two copies of its token still attends to it).",
         score(average=True)),
        ("this looks one position too early (key - 1): the token before each earlier copy.",
         score(shift=-1)),
    ])  # fmt: skip


_SCORE_ERRORS = {
    "IndexError": "An index fell outside the pattern: the queries run over 1 + length .. n - 1, "
    "and a query q's earlier copies are q - r·length for r = 1 .. (q - 1) // length.",
}

declare(Exercise(
    number="4.2", title="duplicate-token score", functions=("duplicate_token_score",),
    cases=_duplicate_cases, reference=evals.duplicate_token_scores,
    withhold=(evals.earlier_occurrence_mask, evals.duplicate_token_scores),
    on_error=_SCORE_ERRORS,
    covers=frozenset({"two blocks (one earlier copy)", "three blocks or more", "float64",
                      "one sequence", "blocks of 2", "a head's sharp pattern"}),
    passed="right for five block lengths and numbers of blocks (one earlier copy and several, "
    "float64, one sequence) and for a duplicate-token head's pattern.",
))  # fmt: skip


def _induction_cases(seed: int) -> list[Case]:
    # Olsson et al. average over the earlier copies instead: accepted (`_read_olsson`)
    return _score_cases(seed, 1, lambda score: [
        ("this is the duplicate-token score: attention to earlier copies of the *current* "
         "token. Induction attends to the token *after* an earlier copy (key + 1).",
         score(shift=0)),
        ("these are the keys q - r·length - 1, one position *before* each earlier copy (the "
         "token that preceded it): the diagonal was shifted the wrong way. Induction looks "
         "one position *after* it, q - r·length + 1.", score(shift=-1)),
        ("this looks one position too far: key + 2.", score(shift=2)),
        ("only the most recent earlier copy was counted; with several repeats, sum the "
         "attention over every earlier copy.", score(latest=True)),
    ], context=lambda score: {"averaged": score(average=True), "olsson": False})  # fmt: skip


def _read_olsson(out: object, case: Case) -> object:
    """The learner's score; Olsson et al.'s (averaged over the earlier copies) is right too, where
    it differs from the course's sum (three blocks or more): it is read as the right answer, and
    noted (`_note_olsson`)."""
    answer = read_answer(_INDUCTION.name, "induction_score", out, case)
    averaged = case.context["averaged"]
    if not same(averaged, case.expected, widen=10) and same(answer, averaged):
        case.context["olsson"] = True
        return case.expected
    return answer


def _note_olsson(answers: list, cases: Sequence[Case]) -> None:
    if any(case.context["olsson"] for case in cases):
        print(
            "You averaged the attention over the earlier occurrences, as Olsson et al. do; the "
            "course sums it (a perfect induction head that splits its attention over several "
            "earlier copies then still scores 1). Both agree when a token has occurred once "
            "before, and the checker accepts either."
        )


_INDUCTION = declare(Exercise(
    number="4.3", title="induction score", functions=("induction_score",),
    cases=_induction_cases, reference=evals.induction_scores,
    withhold=(evals.earlier_occurrence_mask, evals.induction_scores),
    read=_read_olsson, reveal=_note_olsson, on_error=_SCORE_ERRORS,
    covers=frozenset({"two blocks (one earlier copy)", "three blocks or more", "float64",
                      "one sequence", "blocks of 2", "a head's sharp pattern"}),
    passed="prefix-matching score right for five block lengths and numbers of blocks (one "
    "earlier copy and several, float64, one sequence) and for an induction head's pattern.",
))  # fmt: skip
