"""Exercises of chapter 01, declared: bigram counts, log-probabilities, the zero-layer circuit, the
entropy rate, the expected loss of a table, the best rank-k approximation and a zero-layer model
set by hand."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from helpers import attribution, circuits, handmade
from helpers.checks._base import CheckFailed, generator, random_model
from helpers.checks._judge import Case, describe, expect_float
from helpers.checks._registry import Exercise, declare
from helpers.data import BigramLanguage, next_token_counts, stationary_distribution
from helpers.data import entropy_rate as data_entropy_rate
from helpers.models import AttnOnlyTransformer

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
        cases.append(Case((tokens, V), expected, mistakes, where, tags=tags))
    return cases


declare(Exercise(
    number="1.1", title="count the bigram table", functions=("count_bigrams",),
    cases=_count_cases, reference=next_token_counts, withhold=(next_token_counts,),
    covers=frozenset({"tokens that never occur", "a count above 255"}),
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


# ---- 1.3 the zero-layer circuit ------------------------------------------------------------------


def _circuit_cases(seed: int) -> list[Case]:
    """Three zero-layer models: d_model above d_vocab (as the notebook's), below it (as its
    rank-4 model's) and equal to it, where W_U @ W_E has the right shape and only its values
    tell it from W_E @ W_U."""
    g = generator(seed)

    def pick(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (), generator=g))

    V1, V2, V3 = pick(9, 12), pick(13, 16), pick(17, 20)  # three vocabularies, never the same
    sizes = ((V1, V1 + pick(4, 8)), (V2, pick(3, 7)), (V3, V3))
    cases = []
    for i, (V, d_model) in enumerate(sizes):
        model = random_model(seed + i, n_layers=0, n_heads=0, d_vocab=V, d_model=d_model)
        W_E, W_U = model.W_E.detach(), model.W_U.detach()
        expected = circuits.direct_path(model)
        swapped = ("that is W_U @ W_E, d_model × d_model; the circuit goes from tokens to logits, "
                   "W_E @ W_U.")  # fmt: skip
        mistakes = [
            ("the matrix is transposed: in the row convention it is W_E @ W_U, with row = current "
             "token and column = next-token logit (the paper writes W_U W_E).", expected.T),
            ("these are probabilities: the circuit is the logits, before any softmax.",
             expected.softmax(-1)),
            ("these are log-probabilities: the circuit is the raw logits, before log_softmax.",
             expected.log_softmax(-1)),
            ("each row was centred: the circuit is the logits as the model outputs them (centring "
             "comes later, to compare them with log-probabilities).",
             expected - expected.mean(-1, keepdim=True)),
            ("W_E @ W_E.T assumes the unembedding is the embedding transposed (tied weights); "
             "these models have their own W_U: W_E @ W_U.", W_E @ W_E.T),
        ]  # fmt: skip
        if d_model == V:
            mistakes.append((swapped, W_U @ W_E))
        relation = "=" if d_model == V else ("<" if d_model < V else ">")
        cases.append(Case(
            (model,), expected, mistakes, f"d_vocab {V}, d_model {d_model}",
            shape_hints={(d_model, d_model): swapped}, tags={f"d_model {relation} d_vocab"},
        ))  # fmt: skip
    return cases


declare(Exercise(
    number="1.3", title="the zero-layer circuit", functions=("zero_layer_circuit",),
    cases=_circuit_cases, reference=circuits.direct_path,
    withhold=(circuits.direct_path, attribution.direct_path_logits,
              attribution.logit_contributions),
    block_forward=True,
    covers=frozenset({"d_model > d_vocab", "d_model < d_vocab", "d_model = d_vocab"}),
    passed="W_E @ W_U, row = current token, for three random zero-layer models (d_model above, "
    "below and equal to d_vocab).",
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


def _read_nats(exercise: Exercise, out: object, case: Case) -> float:
    """The learner's number of nats, or a CheckFailed on its form; a NaN or an infinity gets the
    case's hint (`case.context`) on what usually causes it."""
    name = exercise.functions[0]
    hint = f" {case.context}" if case.context else ""
    try:
        value = expect_float(exercise.name, name, out, "a float (nats)")
    except CheckFailed as err:
        if "NaN" in err.diagnosis:
            raise CheckFailed(exercise.name, f"{case.where}: {err.diagnosis}{hint}") from None
        raise
    if math.isinf(value):
        raise CheckFailed(exercise.name, f"{case.where}: {name} returned {value}.{hint}")
    return value


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
    read=lambda out, case: _read_nats(_ENTROPY, out, case),
    covers=frozenset({"float32", "float64", "non-symmetric P", "eigenvalue 1 not listed first"}),
    passed="right for three random chains of different sizes, in float64 and float32.",
)  # fmt: skip
declare(_ENTROPY)


# ---- 1.5 the loss of a table of logits ---------------------------------------------------------


def _loss_cases(seed: int) -> list[Case]:
    """Planted chains (not symmetric) with random logit tables: in float64, in float32, and in
    float32 with logits in the hundreds (one at 180), where exponentiating them overflows (to
    inf, and inf / inf is NaN) while log_softmax does not."""
    cases = []
    for i, (n, dtype, scale) in enumerate(((5, torch.float64, 2.0), (8, torch.float32, 2.0),
                                           (6, torch.float32, 60.0))):  # fmt: skip
        lang = BigramLanguage(n_states=n, seed=seed + i)
        P, pi = lang.transition_matrix, lang.stationary  # float64
        logits = torch.randn(n, n, generator=generator(seed + 10 + i), dtype=torch.float64) * scale
        logits[0, 0] = 3 * scale  # one logit far out, whatever the draw
        P, pi, logits = P.to(dtype), pi.to(dtype), logits.to(dtype)
        Pd, pid, L = P.double(), pi.double(), logits.double()
        log_q = L.log_softmax(-1)
        loss = circuits.expected_loss(L, Pd, pid)
        mistakes = [
            ("the logits were used as log-probabilities: apply log_softmax over each row first.",
             float(-(pid[:, None] * Pd * L).sum())),
            ("the softmax ran over the current token (dim=0); each row (a current token) is a "
             "distribution over next tokens.",
             float(-(pid[:, None] * Pd * L.log_softmax(0)).sum())),
            ("the softmax ran over the whole table; each row (a current token) is a distribution "
             "over next tokens of its own: log_softmax(dim=-1).",
             float(-(pid[:, None] * Pd * L.flatten().log_softmax(0).view(n, n)).sum())),
            ("the rows were averaged uniformly: weight row i by π_i, how often the chain is in "
             "state i.", float(-(Pd * log_q).sum(-1).mean())),
            ("the sign is flipped: cross-entropy is -Σ π_i P_ij log q_ij >= 0.",
             float((pid[:, None] * Pd * log_q).sum())),
            ("π lined up with the next state (columns) instead of the current one (rows): "
             "`pi[:, None] * P`.", float(-(pid * Pd * log_q).sum())),
            ("the terms were averaged (.mean()) over the n × n table; sum them.", loss / n**2),
        ]  # fmt: skip
        near = "Close: use the `pi` you are given (exact), rather than one you estimated."
        overflow = None
        if float(logits.max()) > math.log(torch.finfo(dtype).max):  # exp(logit) is inf
            overflow = ("The logits here reach the hundreds: exp of them overflows to inf (and "
                        "inf / inf is NaN). logits.log_softmax(dim=-1) never exponentiates a "
                        "large logit.")  # fmt: skip
        tags = {str(dtype).removeprefix("torch.")}
        if not torch.allclose(P, P.T):
            tags.add("non-symmetric P")
        if overflow:
            tags.add("logits whose exp overflows")
        where = f"{n} states ({dtype}), logits of scale {scale:g}"
        cases.append(Case((logits, P, pi), loss, mistakes, where, near_miss=near,
                          context=overflow, tags=tags))  # fmt: skip
    return cases


_EXPECTED_LOSS = Exercise(
    number="1.5", title="the loss of a table of logits", functions=("expected_loss",),
    cases=_loss_cases, reference=circuits.expected_loss, withhold=(circuits.expected_loss,),
    read=lambda out, case: _read_nats(_EXPECTED_LOSS, out, case),
    covers=frozenset({"float32", "float64", "non-symmetric P", "logits whose exp overflows"}),
    passed="right for three random chains and logit tables, in float64 and float32, logits in "
    "the hundreds among them.",
)  # fmt: skip
declare(_EXPECTED_LOSS)


# ---- 1.6 the best rank-k approximation -----------------------------------------------------------


def _rank_k_cases(seed: int) -> list[Case]:
    """Matrices square, tall and wide; k = 1 and k = min(shape) (the matrix itself); one of rank
    2 with k = 4 (its zero singular values must not be divided by); entries of scale 1e-3 (in
    float32) and 1e4 (so that nothing absolute, a threshold or an epsilon, passes)."""
    cases = []
    for i, (shape, k, dtype, scale, rank) in enumerate((
        ((7, 7), 2, torch.float64, 1.0, None),
        ((9, 6), 3, torch.float64, 1.0, None),
        ((6, 10), 4, torch.float64, 1.0, None),
        ((5, 8), 1, torch.float32, 1e-3, None),
        ((8, 5), 5, torch.float64, 1.0, None),
        ((6, 6), 4, torch.float64, 1e4, 2),
    )):  # fmt: skip
        g = generator(seed + i)
        m, n = shape
        if rank is None:
            M = torch.randn(m, n, generator=g, dtype=torch.float64)
        else:
            M = torch.randn(m, rank, generator=g, dtype=torch.float64) @ torch.randn(
                rank, n, generator=g, dtype=torch.float64
            )
        M = (M * scale).to(dtype)
        U, S, Vh = torch.linalg.svd(M.double(), full_matrices=False)
        expected = circuits.best_rank_k(M.double(), k)
        mistakes = [
            ("these are the k *smallest* singular directions; Eckart–Young keeps the largest (the "
             "first k: torch.linalg.svd sorts them in descending order).",
             (U[:, -k:] * S[-k:]) @ Vh[-k:]),
            ("the singular values were applied twice (U S and S Vᵀ): multiply them in once.",
             (U[:, :k] * S[:k] ** 2) @ Vh[:k]),
            ("that keeps k + 1 directions.", (U[:, : k + 1] * S[: k + 1]) @ Vh[: k + 1]),
            ("the singular values are missing: U_k S_k V_kᵀ.", U[:, :k] @ Vh[:k]),
        ]  # fmt: skip
        v_for_vh = (
            "V was used where Vᵀ belongs: torch.linalg.svd returns Vh, already transposed, so V_kᵀ "
            "is Vh[:k] (torch.svd, by contrast, returns V)."
        )
        hints = {}
        if m >= n:  # V's first k rows have the right length only when n <= m
            mistakes.append((v_for_vh, (U[:, :k] * S[:k]) @ Vh.mT[:k]))
        else:
            hints[(m, m)] = v_for_vh
        tags = {
            "square" if m == n else ("tall" if m > n else "wide"),
            str(dtype).removeprefix("torch."),
        }
        if k == 1:
            tags.add("k = 1")
        if k == min(shape):
            tags.add("k = min(shape)")
        size = float(M.abs().max())
        if size < 1e-2 or size > 1e2:
            tags.add("scale far from 1")
        if int(torch.linalg.matrix_rank(M.double())) < k:
            tags.add("M of rank below k")
        where = f"a {m}×{n} matrix ({dtype}, entries up to {size:.2g}), k = {k}"
        cases.append(Case((M, k), expected, mistakes, where, shape_hints=hints, tags=tags))
    return cases


declare(Exercise(
    number="1.6", title="the best rank-k approximation", functions=("best_rank_k",),
    cases=_rank_k_cases, reference=circuits.best_rank_k,
    withhold=(circuits.best_rank_k, circuits.row_space),  # M @ projector(row_space(M)[:k])
    covers=frozenset({"square", "tall", "wide", "k = 1", "k = min(shape)", "scale far from 1",
                      "M of rank below k", "float32", "float64"}),
    passed="the truncated SVD for six random matrices: square, tall and wide, k from 1 to the "
    "full rank, one of rank below k, scales from 1e-3 to 1e4.",
))  # fmt: skip


# ---- 1.7 a zero-layer model built by hand --------------------------------------------------------


def _set_weights_cases(seed: int) -> list[Case]:
    """Zero-layer models of four widths: d_model below d_vocab, d_model = 1 and d_model = d_vocab
    (the table itself fits), with random tables, one in float64 (the model stays float32). The
    model's positions and head size are the vocabulary's and 1, so that every size a correct
    answer meets is d_vocab or d_model: an error naming another size comes from a size built
    into the code. The learner edits the model itself (no clone); the case keeps the model's
    config and every parameter as they were, for `_read_model`."""
    cases = []
    for i, (V, k, dtype) in enumerate(((9, 3, torch.float32), (12, 5, torch.float32),
                                       (7, 1, torch.float64), (6, 6, torch.float32))):  # fmt: skip
        model = random_model(seed + i, n_layers=0, n_heads=0, d_vocab=V, d_model=k, d_head=1,
                             n_ctx=V)  # fmt: skip
        table = torch.randn(V, V, generator=generator(seed + 10 + i), dtype=torch.float64)
        table = table.to(dtype)
        T = table.double()
        U, S, Vh = torch.linalg.svd(T)
        expected = circuits.best_rank_k(T, k)
        centred = T - T.mean(-1, keepdim=True)
        mistakes = [
            ("W_E @ W_U keeps the k smallest singular directions; Eckart–Young keeps the largest.",
             (U[:, -k:] * S[-k:]) @ Vh[-k:]),
            ("the singular values went in twice (W_E = U S and W_U = S Vᵀ): split them, e.g. √S "
             "into each, or S into one of the two.", (U[:, :k] * S[:k] ** 2) @ Vh[:k]),
            ("the singular values are missing (W_E = U_k, W_U = V_kᵀ): put S_k into W_E or W_U, "
             "or √S_k into each.", U[:, :k] @ Vh[:k]),
            ("W_E @ W_U is the transpose of the approximation: row = current token (W_E), "
             "column = next token (W_U).", expected.T),
            ("W_U was set to W_Eᵀ: the table is not symmetric, its right singular vectors (Vh) "
             "go into W_U.", (U[:, :k] * S[:k]) @ U[:, :k].T),
            ("each row of the table was centred first: approximate the table as it is given.",
             circuits.best_rank_k(centred, k)),
            ("W_E @ W_U did not change: set the weights of the model you are given, in place "
             "(`model.embed.W_E.copy_(...)`), not of a copy or a new model.",
             (model.W_E @ model.W_U).detach().double()),
        ]  # fmt: skip
        before = {name: (p, p.detach().clone()) for name, p in model.named_parameters()}
        tags = {str(dtype).removeprefix("torch.") + " table"}
        tags.add("d_model = d_vocab" if k == V else "d_model < d_vocab")
        if k == 1:
            tags.add("d_model = 1")
        where = f"d_vocab {V}, d_model {k} ({dtype} table)"
        cases.append(Case(
            (model, table.clone()), expected, mistakes, where, tags=tags,
            answer=lambda out, args: args[0],  # the model as the learner's code left it
            context={"cfg": model.cfg, "before": before},
        ))  # fmt: skip
    return cases


def _read_model(model: AttnOnlyTransformer, case: Case) -> Tensor:
    """W_E @ W_U of the model as the learner's code left it, or a CheckFailed saying what else
    changed: its config, another parameter, W_E's or W_U's shape, dtype or very Parameter."""
    ex = _SET_WEIGHTS.name
    prefix = f"{case.where}: "
    if model.cfg != case.context["cfg"]:
        raise CheckFailed(
            ex, prefix + "the model's config changed; set the weights, keep its sizes."
        )
    now = dict(model.named_parameters())
    V, k = model.cfg.d_vocab, model.cfg.d_model
    for name, (param, value) in case.context["before"].items():
        short = name.split(".")[-1]
        if short not in ("W_E", "W_U"):
            if name not in now or not torch.equal(now[name].detach(), value):
                raise CheckFailed(ex, prefix + f"only W_E and W_U are yours to set; {short} "
                                  "changed.")  # fmt: skip
            continue
        got = now.get(name)
        shape = (V, k) if short == "W_E" else (k, V)
        if got is None or tuple(got.shape) != shape:
            have = "is gone" if got is None else f"now has shape {tuple(got.shape)}"
            raise CheckFailed(
                ex,
                prefix + f"{short} {have}; it must keep its shape {shape} "
                f"(d_model = {k} is the rank the model can hold: copy the factors into it, e.g. "
                f"model.{'embed' if short == 'W_E' else 'unembed'}.{short}.copy_(...)).",
            )
        if got.dtype != value.dtype:
            raise CheckFailed(ex, prefix + f"{short} is now {got.dtype}; the model's weights are "
                              f"{value.dtype}. Copy the factors into the weights, "
                              f"`model.{name}.copy_(...)`, which converts them, rather than "
                              "replacing `.data`.")  # fmt: skip
        if got is not param:
            raise CheckFailed(ex, prefix + f"{short} was replaced by a new Parameter; set the "
                              f"model's own, in place: `model.{name}.copy_(...)` (the notebook's "
                              "optimiser, hooks and anything else holding the old one would not "
                              "see a new one).")  # fmt: skip
    if extra := sorted(set(now) - set(case.context["before"])):
        raise CheckFailed(
            ex, prefix + f"the model gained parameters {extra}; set W_E and W_U only."
        )
    return (model.W_E @ model.W_U).detach()


def _run_without_grad(exercise: Exercise, functions: Sequence[Callable], case: Case) -> object:
    """The learner's code edits parameters in place, which autograd allows only without grad."""
    with torch.no_grad():
        return exercise.call(functions[0], case)


_SET_WEIGHTS = Exercise(
    number="1.7", title="a zero-layer model built by hand", functions=("set_zero_layer_weights",),
    cases=_set_weights_cases, reference=handmade.set_zero_layer_weights,
    withhold=(handmade.set_zero_layer_weights, circuits.best_rank_k, circuits.row_space),
    clone=False,
    run=_run_without_grad, read=_read_model,
    on_error={
        "AttributeError": "If it is model.W_E or model.W_U that cannot be set: they are read-only "
        "views of the parameters; write into those, in place: model.embed.W_E.copy_(...), "
        "model.unembed.W_U.copy_(...).",
        "TypeError": "If a tensor cannot be assigned as a parameter: write into the parameter, in "
        "place, model.embed.W_E.copy_(...) and model.unembed.W_U.copy_(...).",
    },
    covers=frozenset({"d_model < d_vocab", "d_model = 1", "d_model = d_vocab", "float32 table",
                      "float64 table"}),
    passed="W_E @ W_U is the truncated SVD and nothing else changed, for four random tables and "
    "widths (d_model from 1 to d_vocab).",
)  # fmt: skip
declare(_SET_WEIGHTS)
