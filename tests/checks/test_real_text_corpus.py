"""Checkers of chapter 06's corpus exercises: bigrams counted inside documents (6.1), the smoothed
bigram table (6.2) and the strongest skip-trigram products without the cube (6.3)."""

import math
import time

import numpy as np
import pytest
import torch

from helpers import checks, circuits
from helpers.checks.real_text.skip_trigrams import _strongest
from helpers.data import next_token_counts
from helpers.evals import real_text
from helpers.references import original
from tests.checks.conftest import assert_accepts, assert_rejects

# ---- 6.1 ------------------------------------------------------------------------------------------


def counts_reference(documents, d_vocab):
    pairs = [doc[:-1].long() * d_vocab + doc[1:].long() for doc in documents if len(doc) > 1]
    flat = torch.cat(pairs) if pairs else torch.zeros(0, dtype=torch.long)
    return torch.bincount(flat, minlength=d_vocab * d_vocab).view(d_vocab, d_vocab)


def counts_by_loop(documents, d_vocab):
    counts = torch.zeros(d_vocab, d_vocab, dtype=torch.int32)
    for doc in documents:
        for current, following in zip(doc[:-1].tolist(), doc[1:].tolist(), strict=True):
            counts[current, following] += 1
    return counts


def counts_in(dtype):
    def count(documents, d_vocab):
        counts = torch.zeros(d_vocab, d_vocab, dtype=dtype)
        for doc in documents:
            doc = doc.long()
            counts.index_put_((doc[:-1], doc[1:]), torch.ones(len(doc) - 1, dtype=dtype),
                              accumulate=True)  # fmt: skip
        return counts.long()

    return count


def counts_once(documents, d_vocab):
    counts = torch.zeros(d_vocab, d_vocab, dtype=torch.long)
    for doc in documents:
        counts[doc[:-1].long(), doc[1:].long()] += 1  # each cell written once
    return counts


@pytest.mark.parametrize("answer", [counts_reference, counts_by_loop, counts_in(torch.long)])
def test_document_bigram_counts_accepts_right_answers(answer):
    assert_accepts(checks.check_document_bigram_counts, answer)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda docs, V: counts_reference(docs, V).T, "rows and columns are swapped"),
        (lambda docs, V: counts_reference([torch.cat(docs)], V), "joined before pairing"),
        (lambda docs, V: counts_reference(docs[:1], V), "only the first document"),
        (lambda docs, V: counts_reference(docs[:-1], V), "the last document was left out"),
        (  # `if len(doc) > 2`: one off, a document of two tokens holds one pair
            lambda docs, V: counts_reference([d for d in docs if len(d) > 2], V),
            "the documents of two tokens were left out",
        ),
        (counts_once, "counted once per document however often it occurs there"),
        (
            lambda docs, V: (counts_reference(docs, V) > 0).long(),
            "each pair was counted once however often it occurs:",
        ),
        (counts_in(torch.uint8), "wrapped round"),
        (counts_in(torch.int8), "wrapped round"),
        (
            lambda docs, V: counts_reference(docs, int(torch.cat(docs).max()) + 1),
            "the table's size came from the tokens",
        ),
        (
            lambda docs, V: torch.bincount(
                torch.cat([d[:-1].long() * V + d[1:].long() for d in docs])
            ).view(V, V),
            "pass minlength=d_vocab * d_vocab",
        ),
        (lambda docs, V: counts_reference(docs, V).float(), "expected integer counts"),
        (lambda docs, V: counts_reference(docs, V).to(torch.uint8), "expected integer counts"),
        (lambda docs, V: torch.ones(V, V, dtype=torch.long), "Exercise 6.1"),  # a constant
        (
            lambda docs, V: next_token_counts(torch.stack([d.long() for d in docs]), V),
            "Exercise 6.1",  # documents of one length stacked: withheld, or of several lengths
        ),
        (real_text.document_bigram_counts, "which this exercise withholds"),
        (  # pairs (first, second) of each document only
            lambda docs, V: counts_reference([d[:2] for d in docs], V),
            "matches none",
        ),
    ],
)
def test_document_bigram_counts_rejects(wrong, diagnosis):
    assert_rejects(checks.check_document_bigram_counts, wrong, diagnosis=diagnosis)


def test_document_bigram_counts_refuses_next_token_counts():
    documents = [torch.tensor([1, 2, 3]), torch.tensor([3, 2, 1])]
    cheat = lambda docs, V: next_token_counts(torch.stack(documents), V)  # noqa: E731
    with pytest.raises(checks.CheckFailed, match="next_token_counts"):
        checks.check_document_bigram_counts(cheat)


# ---- 6.2 ------------------------------------------------------------------------------------------


def smoothed_reference(counts, beta):
    counts = counts.double()
    unigram = (counts.sum(0) + 1) / (counts.sum() + counts.shape[1])
    return ((counts + beta * unigram) / (counts.sum(1, keepdim=True) + beta)).log()


def smoothed_float32(counts, beta):
    counts = counts.float()
    unigram = (counts.sum(0) + 1) / (counts.sum() + counts.shape[1])
    return ((counts + beta * unigram) / (counts.sum(1, keepdim=True) + beta)).log()


def smoothed_by_loop(counts, beta):
    V = counts.shape[0]
    total = float(counts.sum())
    columns = [float(counts[:, n].sum()) for n in range(V)]
    out = torch.empty(V, V, dtype=torch.float64)
    for c in range(V):
        row = float(counts[c].sum())
        for n in range(V):
            unigram = (columns[n] + 1) / (total + V)
            out[c, n] = math.log((float(counts[c, n]) + beta * unigram) / (row + beta))
    return out


@pytest.mark.parametrize("answer", [smoothed_reference, smoothed_float32, smoothed_by_loop])
def test_smoothed_bigram_log_probs_accepts_right_answers(answer):
    assert_accepts(checks.check_smoothed_bigram_log_probs, answer)


def smoothed_wrong(counts, beta, add_one=1, axis=0, plus_v=True, beta_below=True, row_axis=1,
                   uniform=False, unigram_row=False, keepdim=True):  # fmt: skip
    c = counts.double()
    V = c.shape[1]
    unigram = (c.sum(axis) + add_one) / (c.sum() + (V * add_one if plus_v else 0))
    if uniform:
        unigram = torch.full((V,), 1 / V, dtype=torch.float64)
    smoothing = beta * (unigram[:, None] if unigram_row else unigram)
    return ((c + smoothing) / (c.sum(row_axis, keepdim=keepdim) + beta * beta_below)).log()


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda c, b: smoothed_wrong(c, b, add_one=0), "lacks its add-one"),
        (lambda c, b: smoothed_wrong(c, b, axis=1), "came from the row sums"),
        (lambda c, b: smoothed_wrong(c, b, beta_below=False), "beta is missing from the denom"),
        (lambda c, b: smoothed_reference(c, b).exp(), "these are probabilities"),
        (lambda c, b: smoothed_wrong(c, b, row_axis=0), "the columns were normalised"),
        (lambda c, b: smoothed_wrong(c, b, plus_v=False), "lacks the d_vocab extra counts"),
        (lambda c, b: smoothed_wrong(c, b, uniform=True), "the smoothing is uniform"),
        (lambda c, b: smoothed_wrong(c, b, unigram_row=True), "lined up with the rows"),
        (lambda c, b: smoothed_reference(c, b) / math.log(2), "log base 2"),
        (
            lambda c, b: smoothed_wrong(c, b, keepdim=False),  # entry [c, n] / row n's total
            "without keepdim=True",
        ),
        (lambda c, b: smoothed_reference(c, 30.0), "Exercise 6.2"),  # beta fixed at the default
        (lambda c, b: torch.zeros(c.shape, dtype=torch.float64), "Exercise 6.2"),
        (real_text.smoothed_bigram_log_probs, "which this exercise withholds"),
        (lambda c, b: smoothed_reference(c, b).T, "matches none"),
        (lambda c, b: smoothed_reference(c, b)[1:], "returned shape"),
    ],
)
def test_smoothed_bigram_log_probs_rejects(wrong, diagnosis):
    assert_rejects(checks.check_smoothed_bigram_log_probs, wrong, diagnosis=diagnosis)


# ---- 6.3 ------------------------------------------------------------------------------------------


def products_reference(qk, ov, n):
    k = min(n, qk.shape[1], ov.shape[1])
    qk_values, destinations = qk.topk(k, dim=1)
    ov_values, outputs = ov.topk(k, dim=1)
    products = qk_values[:, :, None] * ov_values[:, None, :]
    values, flat = products.flatten().topk(min(n, products.numel()))
    s, d, o = flat // (k * k), flat // k % k, flat % k
    return [(float(v), (int(s_), int(destinations[s_, d_]), int(outputs[s_, o_])))
            for v, s_, d_, o_ in zip(values, s, d, o, strict=True) if v > 0]  # fmt: skip


def products_by_source(qk, ov, n):
    """One source at a time: a [V, V] table of its products, never more."""
    found = []
    for s in range(qk.shape[0]):
        table = qk[s, :, None] * ov[s, None, :]
        values, flat = table.flatten().topk(min(n, table.numel()))
        found += [(v, (s, i // ov.shape[1], i % ov.shape[1]))
                  for v, i in zip(values.tolist(), flat.tolist(), strict=True) if v > 0]  # fmt: skip
    return sorted(found, key=lambda x: -x[0])[:n]


def products_as_tensors(qk, ov, n):
    return [(torch.tensor(v), torch.tensor(t)) for v, t in products_reference(qk, ov, n)]


@pytest.mark.parametrize(
    "answer",
    [products_reference, products_by_source, products_as_tensors,
     lambda qk, ov, n: products_reference(qk.double(), ov.double(), n),
     lambda qk, ov, n: tuple(products_reference(qk.float(), ov.float(), n))],
)  # fmt: skip
def test_strongest_products_accepts_right_answers(answer):
    assert_accepts(checks.check_strongest_products, answer)


def test_strongest_products_cases_agree_with_the_whole_cube():
    """The checker's right answers, from each source's top k, are the n largest of every product
    (the cube, built here where the checker must not), and the reference's."""
    exercise = checks.exercises("06")[2]
    for seed in range(5):
        for case in exercise.cases(seed):
            qk, ov, n = case.args
            cube = qk.double()[:, :, None] * ov.double()[:, None, :]
            values, flat = cube.flatten().topk(min(n, cube.numel()))
            V = qk.shape[0]
            whole = [(v, (i // (V * V), i // V % V, i % V))
                     for v, i in zip(values.tolist(), flat.tolist(), strict=True) if v > 0]  # fmt: skip
            assert [t for _, t in case.expected] == [t for _, t in whole]
            assert [t for _, t in original(circuits.strongest_products)(qk, ov, n)] == [
                t for _, t in whole
            ]


def cube(qk, ov, n):
    V = qk.shape[0]
    products = qk[:, :, None] * ov[:, None, :]
    values, flat = products.flatten().topk(n)
    return [(float(v), (i // (V * V), i // V % V, i % V))
            for v, i in zip(values.tolist(), flat.tolist(), strict=True) if v > 0]  # fmt: skip


def destinations_only(qk, ov, n):
    """Each source's top-k destinations, but every output: a [V, k, V] tensor."""
    k = min(n, qk.shape[1])
    qk_values, destinations = qk.topk(k, dim=1)
    products = qk_values[:, :, None] * ov[:, None, :]
    V = ov.shape[1]
    values, flat = products.flatten().topk(n)
    return [(float(v), (i // (k * V), int(destinations[i // (k * V), i // V % k]), i % V))
            for v, i in zip(values.tolist(), flat.tolist(), strict=True) if v > 0]  # fmt: skip


def with_zeros(qk, ov, n):
    k = min(n, qk.shape[1])
    qk_values, destinations = qk.topk(k, dim=1)
    ov_values, outputs = ov.topk(k, dim=1)
    values, flat = (qk_values[:, :, None] * ov_values[:, None, :]).flatten().topk(n)
    s, d, o = flat // (k * k), flat // k % k, flat % k
    return [(float(v), (int(s_), int(destinations[s_, d_]), int(outputs[s_, o_])))
            for v, s_, d_, o_ in zip(values, s, d, o, strict=True)]  # fmt: skip


def swapped_decoding(qk, ov, n):
    k = min(n, qk.shape[1])
    qk_values, destinations = qk.topk(k, dim=1)
    ov_values, outputs = ov.topk(k, dim=1)
    values, flat = (qk_values[:, :, None] * ov_values[:, None, :]).flatten().topk(n)
    s, o, d = flat // (k * k), flat // k % k, flat % k  # d and o taken apart the wrong way
    return [(float(v), (int(s_), int(destinations[s_, d_]), int(outputs[s_, o_])))
            for v, s_, d_, o_ in zip(values, s, d, o, strict=True) if v > 0]  # fmt: skip


def first_source_lists(qk, ov, n):
    k = min(n, qk.shape[1])
    qk_values, destinations = qk.topk(k, dim=1)
    ov_values, outputs = ov.topk(k, dim=1)
    values, flat = (qk_values[:, :, None] * ov_values[:, None, :]).flatten().topk(n)
    s, d, o = flat // (k * k), flat // k % k, flat % k
    return [(float(v), (int(s_), int(destinations[0, d_]), int(outputs[0, o_])))
            for v, s_, d_, o_ in zip(values, s, d, o, strict=True) if v > 0]  # fmt: skip


def k_is_n(qk, ov, n):
    qk_values, destinations = qk.topk(n, dim=1)  # fails when n > V
    ov_values, outputs = ov.topk(n, dim=1)
    values, flat = (qk_values[:, :, None] * ov_values[:, None, :]).flatten().topk(n)
    s, d, o = flat // (n * n), flat // n % n, flat % n
    return [(float(v), (int(s_), int(destinations[s_, d_]), int(outputs[s_, o_])))
            for v, s_, d_, o_ in zip(values, s, d, o, strict=True) if v > 0]  # fmt: skip


def products_k1(qk, ov, n):
    """Each source's single strongest destination and output, then the n best sources."""
    q, d = qk.max(1)
    o_values, o = ov.max(1)
    values, sources = (q * o_values).topk(min(n, len(q)))
    return [(float(v), (int(s), int(d[s]), int(o[s])))
            for v, s in zip(values, sources, strict=True) if v > 0]  # fmt: skip


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (cube, "the V x V x V cube"),
        (destinations_only, "more than this exercise allows"),
        (with_zeros, "products of 0 were kept"),
        (lambda qk, ov, n: products_reference(qk, ov, n)[::-1], "ascending order"),
        (
            lambda qk, ov, n: [(v, (s, o, d)) for v, (s, d, o) in products_reference(qk, ov, n)],
            "(source, output, destination)",
        ),
        (
            lambda qk, ov, n: [(v, (d, s, o)) for v, (s, d, o) in products_reference(qk, ov, n)],
            "(destination, source, output)",
        ),
        (swapped_decoding, "taken apart the wrong way round"),
        (first_source_lists, "through the first source's lists"),
        (products_k1, "k = 1"),
        (k_is_n, "take k = min(n, V)"),
        (circuits.strongest_products, "which this exercise withholds"),
        (
            lambda qk, ov, n: [t for _, t in products_reference(qk, ov, n)],
            "each item must be a pair",
        ),
        (lambda qk, ov, n: [(1.0, (0, 0, 0))] * min(n, 3), "Exercise 6.3"),  # a constant
        (lambda qk, ov, n: products_reference(qk, ov, n)[:-1], "lacks"),  # one short
        (lambda qk, ov, n: products_reference(qk.T, ov, n), "Exercise 6.3"),  # qk transposed
    ],
)
def test_strongest_products_rejects(wrong, diagnosis):
    assert_rejects(checks.check_strongest_products, wrong, diagnosis=diagnosis)


def numpy_cube(qk, ov, n):
    """The cube built in numpy, which the torch mode does not see."""
    q, o = qk.numpy(), ov.numpy()
    V = q.shape[0]
    cube = q[:, :, None] * o[:, None, :]
    flat = np.argsort(-cube, axis=None)[:n]
    return [(float(cube.flat[i]), (int(i // (V * V)), int(i // V % V), int(i % V)))
            for i in flat if cube.flat[i] > 0]  # fmt: skip


def numpy_einsum_cube(qk, ov, n):
    cube = np.einsum("sd,so->sdo", qk.float().numpy(), ov.float().numpy())
    V = cube.shape[0]
    flat = np.argsort(-cube, axis=None)[:n]
    return [(float(cube.flat[i]), (int(i // (V * V)), int(i // V % V), int(i % V)))
            for i in flat if cube.flat[i] > 0]  # fmt: skip


@pytest.mark.parametrize("wrong", [numpy_cube, numpy_einsum_cube])
def test_strongest_products_refuses_the_cube_in_numpy(wrong):
    assert_rejects(checks.check_strongest_products, wrong, diagnosis="memory outside torch")


def products_in_numpy(qk, ov, n):
    """The right answer in numpy: each source's top k by argsort, then the [V, k, k] products."""
    q, o = qk.numpy(), ov.numpy()
    k = min(n, q.shape[1])
    d = np.argsort(-q, axis=1)[:, :k]
    out = np.argsort(-o, axis=1)[:, :k]
    p = np.take_along_axis(q, d, 1)[:, :, None] * np.take_along_axis(o, out, 1)[:, None, :]
    found = []
    for i in np.argsort(-p, axis=None, kind="stable")[:n]:
        s, a, b = i // (k * k), i // k % k, i % k
        if p.flat[i] > 0:
            found.append((float(p.flat[i]), (int(s), int(d[s, a]), int(out[s, b]))))
    return found


def products_in_python_lists(qk, ov, n):
    """Python lists of V² entries (the factors, each source's best), never V³ at once."""
    q, o = qk.tolist(), ov.tolist()
    k = min(n, len(q[0]))
    found = []
    for s in range(len(q)):
        dests = sorted(range(len(q[s])), key=lambda d: -q[s][d])[:k]
        outs = sorted(range(len(o[s])), key=lambda x: -o[s][x])[:k]
        found += [(q[s][d] * o[s][x], (s, d, x)) for d in dests for x in outs]
    found.sort(key=lambda t: -t[0])
    return [t for t in found[:n] if t[0] > 0]


@pytest.mark.parametrize("answer", [products_in_numpy, products_in_python_lists])
def test_strongest_products_accepts_numpy_and_python_lists(answer):
    assert_accepts(checks.check_strongest_products, answer)


def test_the_size_limit_holds_only_while_the_answer_runs():
    with checks.fixed_seed(0), pytest.raises(checks.CheckFailed, match="8,000,000 entries"):
        checks.check_strongest_products(cube)
    assert torch.zeros(200, 200, 200).numel() == 8_000_000  # no mode left behind


def test_strongest_products_reference_matches_the_brute_force():
    g = torch.Generator().manual_seed(0)
    qk, ov = torch.rand(30, 30, generator=g), torch.rand(30, 30, generator=g)
    assert [t for _, t in _strongest(qk, ov, 8)] == [t for _, t in cube(qk, ov, 8)]


@pytest.mark.parametrize(
    "check, answer",
    [(checks.check_document_bigram_counts, counts_reference),
     (checks.check_smoothed_bigram_log_probs, smoothed_reference),
     (checks.check_strongest_products, products_reference)],
)  # fmt: skip
def test_the_checkers_are_fast(check, answer):
    with checks.fixed_seed(0):
        start = time.perf_counter()
        check(answer)
        assert time.perf_counter() - start < 1.0
