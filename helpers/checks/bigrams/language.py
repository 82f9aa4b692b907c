"""Exercises 1.1, 1.2 and 1.4: a bigram language's statistics (counts, log-probabilities, its
entropy rate)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from helpers import circuits
from helpers.checks._base import generator
from helpers.checks._judge import Case, describe
from helpers.checks._registry import Exercise, declare
from helpers.checks.bigrams._shared import read_nats
from helpers.data import BigramLanguage, next_token_counts, stationary_distribution
from helpers.data import entropy_rate as data_entropy_rate

# ---- 1.1 count the bigram table ------------------------------------------------------------------


def _wrapped(counts: Tensor, dtype: torch.dtype) -> Tensor:
    """The counts as a small integer type holds them: wrapped round past its largest value."""
    bits = torch.iinfo(dtype).bits
    low = torch.iinfo(dtype).min
    return (counts - low) % 2**bits + low


def _count_cases(seed: int) -> list[Case]:
    """Random batches of the bigram language: one as the notebook draws it; one whose vocabulary
    is larger than the tokens drawn need (its last ids never occur, so the table's size must come
    from d_vocab, not from the tokens); and one long batch over two letters, 20 × 79 pairs of
    which 1,560 fall into the four cells between letters, so that one of them holds at least 390
    (counts kept in 8 bits wrap round) and none reaches 2,000 (the judge's tolerance, relative to
    the largest count, stays below one count: counts are in effect compared exactly)."""
    cases = []
    for i, (n_states, unused, batch, n) in enumerate(((5, 0, 6, 9), (8, 3, 7, 10),
                                                      (2, 0, 20, 80))):  # fmt: skip
        lang = BigramLanguage(n_states=n_states, seed=seed + i)
        tokens = lang.sample(batch, n, generator=generator(seed + 10 + i))
        V = lang.d_vocab + unused
        expected = next_token_counts(tokens, V)
        mistakes = [
            ("rows and columns are swapped: counts[current, next], so row = the current token.",
             expected.T),
            ("the tokens were flattened before pairing, so the last token of each sequence was "
             "paired with the BOS of the next sequence. Pair within each row: tokens[:, :-1] with "
             "tokens[:, 1:].", next_token_counts(tokens.flatten()[None], V)),
            ("the pairs were taken down the batch axis (tokens[:-1] with tokens[1:]): consecutive "
             "tokens sit along the positions, tokens[:, :-1] with tokens[:, 1:].",
             next_token_counts(tokens.T, V)),
            ("only the first sequence was counted; count every sequence in the batch.",
             next_token_counts(tokens[:1], V)),
            ("each pair was counted once however often it occurs: `counts[a, b] += 1` with "
             "tensors of indices writes each cell once. Use `counts.index_put_((a, b), ones, "
             "accumulate=True)` or `torch.bincount`.", (expected > 0).long()),
            ("the pairs that start at BOS were left out: count every consecutive pair, (BOS, first "
             "token) included.", next_token_counts(tokens[:, 1:], V)),
        ]  # fmt: skip
        wrap = ("the counts wrapped round: an 8-bit integer type holds 0..255 (uint8) or "
                "-128..127 (int8). Count in torch.long (bincount does).")  # fmt: skip
        mistakes += [
            (wrap, _wrapped(expected, torch.uint8)),
            (wrap, _wrapped(expected, torch.int8)),
        ]
        tags = set()
        if int(tokens.max()) < V - 1:
            tags.add("tokens that never occur")
        if int(expected.max()) > 255:
            tags.add("a count above 255")
        where = f"{batch} sequences of {n} tokens, d_vocab = {V}"
        seen = int(tokens.max()) + 1
        hints = {} if seen == V else {
            (seen, seen): f"the table's size came from the tokens (their largest id + 1 = {seen}); "
            "ids up to d_vocab - 1 may never occur in a sample: make it [d_vocab, d_vocab] "
            "(torch.bincount(..., minlength=d_vocab * d_vocab)).",
        }  # fmt: skip
        cases.append(Case((tokens, V), expected, mistakes, where, shape_hints=hints, tags=tags))
    return cases


declare(Exercise(
    number="1.1", title="count the bigram table", functions=("count_bigrams",),
    cases=_count_cases, reference=next_token_counts, withhold=(next_token_counts,),
    covers=frozenset({"tokens that never occur", "a count above 255"}),
    on_error={"RuntimeError": "If it is about a shape that is invalid for the input's size: "
              "torch.bincount returns only as many counts as the largest code + 1, and ids up "
              "to d_vocab - 1 may never occur in a sample; pass minlength=d_vocab * d_vocab."},
    passed="counted the consecutive pairs of three random batches exactly, counts above 255 "
    "among them.",
))  # fmt: skip


# ---- 1.2 from counts to log P(next | current) ----------------------------------------------------


def _log_prob_cases(seed: int) -> list[Case]:
    """Count tables with the BOS column empty (a token that never follows anything: log P = -inf
    there), one sparse (pairs never seen scattered everywhere, as in a small sample) and one
    with every pair seen (no -inf at all, so that -inf put by hand in column 0 shows). No row is
    empty: its distribution would be 0/0."""
    cases = []
    for i, (n, high, bos_column) in enumerate(((6, 50, True), (9, 3, True), (7, 50, False))):
        g = generator(seed + i)
        counts = torch.randint(0, high, (n, n), generator=g)
        if bos_column:
            counts[:, 0] = 0
            counts[torch.arange(n), 1 + torch.arange(n) % (n - 1)] += 1  # no empty row
        else:
            counts += 1  # every pair seen
        c = counts.double()
        expected = (c / c.sum(-1, keepdim=True)).log()
        by_hand = expected.clone()
        by_hand[:, 0] = float("-inf")
        mistakes = [
            ("each column sums to 1 instead of each row: normalise over the next token (dim=-1), "
             "since row = current token.", (c / c.sum(0, keepdim=True)).log()),
            ("these are log P(current, next), the joint; divide each row by its own total to get "
             "P(next | current).", (c / c.sum()).log()),
            ("these are probabilities, not log-probabilities.", c / c.sum(-1, keepdim=True)),
            ("these are the log counts, not normalised.", c.log()),
            ("that is log base 2; log-probabilities in this course are natural logs (nats).",
             expected / math.log(2)),
            ("the row totals were divided along the wrong axis: `c / c.sum(-1)` divides column "
             "j by row j's total. Keep the axis: `c.sum(-1, keepdim=True)`.",
             (c / c.sum(-1)).log()),
            ("that is log_softmax of the counts, which exponentiates them first: divide the counts "
             "by their row's total, then take the log.", c.log_softmax(-1)),
            ("the counts were divided as integers (counts // total, or a division that "
             "rounds): convert them to float before dividing.",
             (counts // counts.sum(-1, keepdim=True)).double().log()),
            ("the counts were smoothed (+1 each): leave a pair never seen at probability 0, "
             "log-probability -inf.", ((c + 1) / (c + 1).sum(-1, keepdim=True)).log()),
            ("column 0 was set to -inf by hand (BOS's column in the notebook): a pair never seen "
             "can sit anywhere, and log 0 = -inf comes out of the log by itself.", by_hand),
        ]  # fmt: skip
        zeros = counts == 0
        tags = {"zero counts"} if zeros.any() else {"no zero counts"}
        if zeros[:, 1:].any():
            tags.add("a pair never seen outside column 0")
        where = f"a {n}×{n} table of counts" + ("" if zeros.any() else " with no zeros")
        cases.append(Case((counts,), expected, mistakes, where, tags=tags))
    return cases


declare(Exercise(
    number="1.2", title="from counts to log P(next | current)",
    functions=("empirical_log_probs",), cases=_log_prob_cases,
    covers=frozenset({"zero counts", "no zero counts", "a pair never seen outside column 0"}),
    passed="each row is log P(next | current) (-inf where a pair never occurs), for three random "
    "count tables, one with every pair seen.",
))  # fmt: skip


# ---- 1.4 the entropy rate ------------------------------------------------------------------------


def _mixing_chain(n: int, scale: float, seed: int, dtype: torch.dtype) -> Tensor:
    """A planted chain, in `dtype`, that mixes within a few hundred steps (second eigenvalue's
    modulus at most 0.9), so that the hint's power iteration converges as well as an
    eigensolver, and whose eigenvalue 1 is not the first that `torch.linalg.eig(P.T)` lists in
    this dtype (so that taking the first eigenvector cannot pass by luck)."""
    for attempt in range(100):
        P = BigramLanguage(n_states=n, scale=scale, seed=seed + attempt).transition_matrix
        P = P.to(dtype)
        values = torch.linalg.eigvals(P.T)
        if values.abs().sort(descending=True).values[1] <= 0.9 and (values[0] - 1).abs() > 1e-4:
            return P
    raise RuntimeError("no chain found")  # not reached: most draws mix this fast


def _symmetric_eigenvector(P: Tensor, pick: str) -> Tensor | None:
    """π as `torch.linalg.eigh(P.T)` gives it (a mistake: eigh reads one triangle, as if the
    matrix were symmetric), its eigenvalue the closest to 1 or the largest; None if it cannot
    be normalised."""
    values, vectors = torch.linalg.eigh(P.T)
    i = int((values - 1).abs().argmin()) if pick == "closest" else -1
    v = vectors[:, i]
    if abs(float(v.sum())) < 1e-3:
        return None
    return v / v.sum()


def _entropy_cases(seed: int) -> list[Case]:
    """Three planted chains of different sizes, none symmetric (so that π is not uniform and
    lining π up with the wrong axis shows), one in float32."""
    cases = []
    for i, (n, dtype) in enumerate(((4, torch.float64), (7, torch.float32), (10, torch.float64))):
        P = _mixing_chain(n, 2.5 + i, seed + 100 * i, dtype)
        Pd = P.double()
        pi = stationary_distribution(Pd)
        rows = -(Pd * Pd.log()).sum(-1)  # the entropy of each row
        H = float(pi @ rows)
        mistakes = [
            ("each row's entropy was averaged uniformly (which is also what the eigenvector of P, "
             "not of P.T, gives: P's rows sum to 1, so its right eigenvector is uniform): weight "
             "row i by π_i, the stationary distribution (the left eigenvector of P with "
             "eigenvalue 1, π P = π, an eigenvector of P.T).", float(rows.mean())),
            ("each row's entropy was summed: weight row i by π_i, which sums to 1.",
             float(rows.sum())),
            ("that is in bits (log base 2); the course works in nats (natural log).",
             H / math.log(2)),
            ("that is in log base 10; the course works in nats (natural log).", H / math.log(10)),
            ("the sign is flipped: an entropy is -Σ p log p >= 0.", -H),
            ("the terms were averaged (.mean()) over the n × n table; sum them.", H / n**2),
            ("that is the entropy of the stationary distribution alone, -Σ π log π; the entropy "
             "rate is the average uncertainty of the next state, Σ_i π_i H(P_i).",
             float(-(pi * pi.log()).sum())),
            ("π lined up with the next state (columns) instead of the current one (rows): "
             "weight row i by π_i, `pi[:, None] * P`.", float(-(pi * Pd * Pd.log()).sum())),
        ]  # fmt: skip
        values, vectors = torch.linalg.eig(P.T)
        row = vectors[int((values - 1).abs().argmin())].real.double()  # a row, not a column
        if abs(float(row.sum())) > 1e-3:
            mistakes.append((
                "that π is a row of the eigenvector matrix: torch.linalg.eig returns the "
                "eigenvectors as its columns, so the one for eigenvalue i is vectors[:, i].",
                float(row / row.sum() @ rows),
            ))  # fmt: skip
        for pick in ("closest", "largest"):
            v = _symmetric_eigenvector(P, pick)
            if v is not None:
                mistakes.append((
                    "torch.linalg.eigh is for symmetric matrices (it reads one triangle only); P "
                    "is not symmetric: use torch.linalg.eig and the real part of its eigenvector.",
                    float(v.double() @ rows),
                ))  # fmt: skip
        unit = "π was normalised to unit length; a distribution sums to 1: divide by π.sum()."
        mistakes += [(unit, H / float(pi.norm())), (unit, -H / float(pi.norm()))]
        near = (
            "Close: is π exact? Check that π @ P equals π to 1e-9 (power iteration needs enough "
            "steps) and that π sums to 1."
        )
        tags = {str(dtype).removeprefix("torch.")}
        if not torch.allclose(P, P.T):
            tags.add("non-symmetric P")
        if (torch.linalg.eigvals(P.T)[0] - 1).abs() > 1e-4:
            tags.add("eigenvalue 1 not listed first")
        cases.append(Case((P,), H, mistakes, f"{n} states ({dtype})", near_miss=near,
                          describe=_entropy_bounds(H, n, near), context=_NOT_THE_EIGENVALUE_1,
                          tags=tags))  # fmt: skip
    return cases


# what a NaN, an infinite or a huge entropy rate usually comes from
_NOT_THE_EIGENVALUE_1 = (
    "π = v / v.sum() is 0/0 or huge for an eigenvector v whose eigenvalue is not 1: the entries "
    "of such a v sum to 0 (it is orthogonal to P's right eigenvector, all ones). torch.linalg.eig "
    "returns eigenvalues in no particular order: take the one whose eigenvalue is closest to 1."
)


def _entropy_bounds(H: float, n: int, near: str) -> Callable[[float], str]:
    """What to say of a wrong entropy rate that no common mistake explains: whether it lies
    outside 0..log n, where no entropy rate of n states can, and why it may be huge."""

    def explain(answer: float) -> str:
        if abs(answer) > 100 * math.log(n):
            return (
                f"got {answer:.4g}, and an entropy rate of {n} states lies between 0 and log {n} "
                f"= {math.log(n):.4f}. {_NOT_THE_EIGENVALUE_1}"
            )
        if not 0 <= answer <= math.log(n):
            return (
                f"got {answer:.4f}, expected {H:.4f}: an entropy rate of {n} states lies between "
                f"0 and log {n} = {math.log(n):.4f}. Is π a distribution (all entries >= 0, "
                "summing to 1)?"
            )
        return describe(answer, H, near)

    return explain


_ENTROPY = Exercise(
    number="1.4", title="the entropy rate", functions=("entropy_rate",), cases=_entropy_cases,
    reference=data_entropy_rate,
    withhold=(data_entropy_rate, stationary_distribution, circuits.expected_loss),
    read=lambda out, case: read_nats(_ENTROPY, out, case),
    covers=frozenset({"float32", "float64", "non-symmetric P", "eigenvalue 1 not listed first"}),
    passed="right for three random chains of different sizes, in float64 and float32.",
)  # fmt: skip
declare(_ENTROPY)
