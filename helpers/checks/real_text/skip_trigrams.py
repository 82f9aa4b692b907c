"""Exercise 6.3: the strongest skip-trigrams at a real vocabulary, without the cube of it.

The exercise's point is what the answer does not build: a `[V, V, V]` tensor of every product.
While the learner's function runs, a torch function mode (`_SizeLimit`) watches every tensor a
torch function returns and refuses, with a diagnosis, any larger than the notebook's bound,
max(V · n², V²) entries; one case has a vocabulary large enough that the cube exceeds it."""

from __future__ import annotations

import numbers
import tracemalloc

import numpy as np
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from helpers import circuits
from helpers.checks._base import CheckFailed, generator
from helpers.checks._judge import Case, read_triple, same
from helpers.checks._registry import Exercise, declare
from helpers.circuits import one_layer

Products = list[tuple[float, tuple[int, int, int]]]


def _strongest(qk: Tensor, ov: Tensor, n: int, keep_zeros: bool = False) -> Products:
    """The n largest products, largest first, zeros left out (unless `keep_zeros`): from each
    source's n strongest destinations and outputs, in float64 (both factors are at least 0, so no
    other product can be among the n largest; the tests compare it with the whole cube)."""
    k = min(n, qk.shape[1])
    q, d = qk.double().topk(k, dim=1)
    o_values, o = ov.double().topk(k, dim=1)
    products = q[:, :, None] * o_values[:, None, :]  # [V, k, k]
    values, flat = products.flatten().topk(min(n, products.numel()))
    found = []
    for v, i in zip(values.tolist(), flat.tolist(), strict=True):
        s, a, b = i // (k * k), i // k % k, i % k
        if v > 0 or keep_zeros:
            found.append((v, (s, int(d[s, a]), int(o[s, b]))))
    return found


def _draw(
    seed: int,
    V: int,
    n: int,
    zeros: float,
    dtype: torch.dtype,
    sparse: bool = False,
    strong: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Two non-negative factors (a share `zeros` of their entries 0, as chapter 02's clamped
    factors are), redrawn until the n + 1 largest products are well apart, so that no order
    among them is a matter of rounding; `sparse`: only a few products not 0, fewer than n;
    `strong`: a source whose factors are three times the others', so that the strongest
    products share it."""
    for attempt in range(100):
        g = generator(seed + 1000 * attempt)
        qk, ov = (torch.randn(V, V, generator=g).clamp_min(0) for _ in range(2))
        for factor in (qk, ov):
            factor *= torch.rand(V, V, generator=g) >= zeros
        if sparse:  # two sources, two destinations and two outputs: fewer than n not 0
            for factor in (qk, ov):
                factor[[0, 2, *range(4, V)]] = 0.0
                factor[:, : V - 2] = 0.0
            if len(_strongest(qk, ov, n)) in (0, n):
                continue
        if strong is not None:
            qk[strong] *= 3.0
            ov[strong] *= 3.0
        qk, ov = qk.to(dtype), ov.to(dtype)
        top = [v for v, _ in _strongest(qk, ov, n + 1)]
        gaps = [a - b for a, b in zip(top, top[1:], strict=False)]
        if all(gap > 1e-3 * top[0] for gap in gaps):
            return qk, ov
    raise RuntimeError("no well-separated draw found")  # not reached: most draws are


def _case(qk: Tensor, ov: Tensor, n: int, what: str) -> Case:
    V = qk.shape[0]
    expected = _strongest(qk, ov, n)
    with_zeros = _strongest(qk, ov, n, keep_zeros=True)
    # each source's single strongest destination and output (k = 1), then the n best sources
    single = sorted(((float(qk[s].max()) * float(ov[s].max()),
                      (s, int(qk[s].argmax()), int(ov[s].argmax()))) for s in range(V)),
                    key=lambda x: -x[0])  # fmt: skip
    single = [x for x in single[:n] if x[0] > 0]
    k = min(n, V)
    first_d, first_o = qk[0].topk(k).indices.tolist(), ov[0].topk(k).indices.tolist()
    d_rank = {s: qk[s].topk(k).indices.tolist() for s, _, _ in (t for _, t in expected)}
    o_rank = {s: ov[s].topk(k).indices.tolist() for s, _, _ in (t for _, t in expected)}
    mistakes = [
        ("products of 0 were kept: leave them out (a product of 0 is no skip-trigram).",
         with_zeros),
        ("the list is in ascending order: largest first.", list(reversed(expected))),
        ("the triples are (source, output, destination): return (s, d, o), the destination "
         "(qk's column) before the output (ov's column).",
         [(v, (s, o, d)) for v, (s, d, o) in expected]),
        ("the triples are (destination, source, output): return (s, d, o), the source (the "
         "rows of both factors) first.", [(v, (d, s, o)) for v, (s, d, o) in expected]),
        ("the flat index was taken apart the wrong way round: in a [V, k, k] tensor of "
         "products[s, d, o], flat index i is s = i // k², d = i // k % k, o = i % k.",
         [(v, (s, d_rank[s][o_rank[s].index(o)], o_rank[s][d_rank[s].index(d)]))
          for v, (s, d, o) in expected]),
        ("the positions among the top k were read through the first source's lists "
         "(destinations[0, i]): each source has its own, destination = destinations[s, i] and "
         "output = outputs[s, j].",
         [(v, (s, first_d[d_rank[s].index(d)], first_o[o_rank[s].index(o)]))
          for v, (s, d, o) in expected]),
        ("only each source's single strongest destination and output were taken (k = 1): "
         "several of the strongest products can share a source, so keep k = min(n, V) of each.",
         single),
    ]  # fmt: skip
    tags = {"n = 1" if n == 1 else "n above 1"}
    if n > V:
        tags.add("n above V")
    if len(with_zeros) > len(expected):
        tags.add("products of 0 among the n largest")
    if len({s for _, (s, _, _) in expected}) < len(expected):
        tags.add("several of the strongest share a source")
    if qk.dtype == torch.float64:
        tags.add("float64")
    if V**3 > max(V * n * n, V * V):
        tags.add("the cube over the size limit")
    return Case((qk, ov, n), expected, mistakes, f"{what}: V = {V}, n = {n} ({qk.dtype})",
                tags=tags, describe=_describer(expected))  # fmt: skip


def _strongest_products_cases(seed: int) -> list[Case]:
    """Random clamped factors: a vocabulary of 200 with n = 5 (its cube, 8 million products, is
    far above the bound of max(V · n², V²) = 40,000 entries, so an answer that builds it is
    refused), float64; a small one with n above V (k = min(n, V)); one where most entries are 0,
    so that fewer than n products are not 0; n = 1; and one with one source far stronger than the
    rest, so that the strongest products share their source."""
    cases = []
    qk, ov = _draw(seed, 200, 5, 0.0, torch.float64)
    cases.append(_case(qk, ov, 5, "a large vocabulary"))
    qk, ov = _draw(seed + 1, 4, 7, 0.2, torch.float32)
    cases.append(_case(qk, ov, 7, "n above the vocabulary"))
    qk, ov = _draw(seed + 2, 9, 6, 0.3, torch.float32, sparse=True)
    cases.append(_case(qk, ov, 6, "mostly zeros"))
    qk, ov = _draw(seed + 3, 11, 1, 0.3, torch.float32)
    cases.append(_case(qk, ov, 1, "n = 1"))
    strong = int(torch.randint(1, 8, (), generator=generator(seed + 5)))
    qk, ov = _draw(seed + 4, 8, 4, 0.2, torch.float64, strong=strong)
    cases.append(_case(qk, ov, 4, "one strong source"))
    return cases


# ---- refusing the cube ----------------------------------------------------------------------------


class _SizeLimit(TorchFunctionMode):
    """While active, any tensor a torch function returns with more than `limit` entries ends the
    check with a diagnosis (the cube of the vocabulary, or another tensor too large)."""

    def __init__(self, exercise: str, V: int, n: int):
        super().__init__()
        self.exercise, self.V, self.n = exercise, V, n
        self.limit = max(V * n * n, V * V)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, Tensor) and leaf.numel() > self.limit:
                raise CheckFailed(self.exercise, self._refusal(leaf))
        return out

    def _refusal(self, tensor: Tensor) -> str:
        V, n, k = self.V, self.n, min(self.n, self.V)
        what = (f"your answer built a tensor of {tensor.numel():,} entries (shape "
                f"{tuple(tensor.shape)}), more than this exercise allows: max(V · n², V²) = "
                f"{self.limit:,} with V = {V}, n = {n}.")  # fmt: skip
        if tensor.numel() >= V**3:
            return (f"{what} That is the V x V x V cube of every product (4 GB at d_vocab "
                    f"1,024): take each source's k = min(n, V) strongest destinations and outputs "
                    f"first (topk along dim=1 of qk and of ov), so that only [V, k, k] = "
                    f"{V * k * k:,} products are candidates.")  # fmt: skip
        return (f"{what} Only each source's k = min(n, V) strongest destinations and outputs "
                "can take part (topk along dim=1 of both qk and ov, each source's own row): "
                f"the products are then [V, k, k] = {V * k * k:,}.")  # fmt: skip


def _run(exercise: Exercise, functions, case: Case) -> object:
    """The learner's function under the size limit, on this case's V and n; and, since the torch
    mode sees no numpy array or Python list, the memory Python and numpy allocate traced
    (`tracemalloc`) and refused past 3 bytes per entry of the cube: a cube of float32 or float64
    in numpy (4 or 8 bytes an entry), or of Python floats, is over it, while the tables of
    V² entries a right answer may hold as Python objects (about 32 bytes each) are far below it
    at V = 200 (the only case whose cube, a million entries or more, makes the test telling)."""
    qk, _, n = case.args
    V = qk.shape[0]
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    else:
        tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    try:
        with _SizeLimit(exercise.name, V, n):
            out = exercise.call(functions[0], case)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        if started:
            tracemalloc.stop()
    if V**3 >= 10**6 and peak > 3 * V**3:  # the large case only: a few kB are nothing
        raise CheckFailed(exercise.name, (
            f"your answer took {peak / 1e6:.0f} MB of memory outside torch (numpy arrays or "
            f"Python lists) at V = {V}, n = {n}: as much as the V x V x V cube of every product "
            f"({V**3:,} entries), which this exercise is about not building, in numpy as in "
            f"torch. Take each source's k = min(n, V) strongest destinations and outputs first "
            f"(topk along dim=1 of qk and of ov), so that only [V, k, k] products are candidates."
        ))  # fmt: skip
    return out


# ---- reading and describing the answer --------------------------------------------------------------


def _read(out: object, case: Case) -> Products:
    """The learner's list of (product, (s, d, o)) as floats and ints, or a CheckFailed on its
    form."""
    ex = _STRONGEST_PRODUCTS.name
    qk, _, n = case.args
    if not isinstance(out, (list, tuple)):
        hint = " (did you forget the return?)" if out is None else ""
        raise CheckFailed(ex, "strongest_products must return a list of (product, (s, d, o)), "
                          f"got {type(out).__name__}{hint}.")  # fmt: skip
    if len(out) > n:
        raise CheckFailed(ex, f"return at most n = {n} products, got {len(out)}.")
    found = []
    for item in out:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise CheckFailed(ex, f"each item must be a pair (product, (s, d, o)), got {item!r}.")
        value, triple = item
        if isinstance(value, (Tensor, np.ndarray)) and value.ndim == 0:
            value = value.item()
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise CheckFailed(ex, f"each product must be a number, got {value!r}.")
        found.append((float(value), read_triple(ex, triple, qk.shape[0], "triple")))
    return found


def _describer(expected: Products):
    def describe(answer: Products) -> str:
        if [t for _, t in answer] == [t for _, t in expected]:
            (v, t), (right, _) = next((a, e) for a, e in zip(answer, expected, strict=True)
                                      if not same(a[0], e[0]))  # fmt: skip
            return (
                f"the right triples in the right order, but the product of {t} is {v:.6g}, "
                f"expected {right:.6g}: return each one's qk[s, d] * ov[s, o] itself."
            )
        if sorted(t for _, t in answer) == sorted(t for _, t in expected):
            return ("the right triples in the wrong order: largest product first (topk "
                    "returns its values in descending order).")  # fmt: skip
        mine = {t for _, t in answer}
        missing = [x for x in expected if x[1] not in mine]
        if missing:
            v, t = missing[0]
            return (
                f"your answer lacks {t}, whose product {v:.4g} is among the {len(expected)} "
                f"largest (the right answer: {_short(expected)}; yours: {_short(answer)})."
            )
        return f"got {_short(answer)}, expected {_short(expected)}."

    return describe


def _short(products: Products) -> str:
    return "[" + ", ".join(f"({v:.4g}, {t})" for v, t in products) + "]"


_STRONGEST_PRODUCTS = declare(Exercise(
    number="6.3", title="the strongest skip-trigrams without the cube",
    functions=("strongest_products",), cases=_strongest_products_cases, run=_run, read=_read,
    reference=circuits.strongest_products,
    withhold=(circuits.strongest_products, one_layer._strongest, one_layer._skip_trigram_strength,
              circuits.top_skip_trigrams, circuits.strongest_skip_trigrams),
    on_error={"RuntimeError": lambda err: "topk's k must be at most the size of its dimension: "
              "take k = min(n, V) of each source's entries." if "out of range" in str(err)
              else None},
    covers=frozenset({"n = 1", "n above 1", "n above V", "products of 0 among the n largest",
                      "several of the strongest share a source", "float64",
                      "the cube over the size limit"}),
    passed="the n largest products, largest first, zeros left out, at V = 200 without the cube, "
    "n above V, n = 1 and several of them from one source.",
))  # fmt: skip
