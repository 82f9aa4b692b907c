"""What every checker shares: calling the learner's function safely, and diagnosing its answer.

The rules every checker follows:
- the reference answer and every common mistake of every case are computed first, on the checker's
  own inputs, before the learner's function runs at all; the learner's function then gets clones
  (`call_learner`), so editing an input in place changes nothing but the learner's own copy;
- inputs are drawn at check time from a fresh seed (`draw_seed`), from models without symmetries
  that hide mistakes (untied W_E and W_U, heads whose OV eigenvalues are negative or complex), so
  that no constant or lookup can pass;
- the course's reference of the exercise is withheld while the learner's function runs, and so is
  the model's forward pass where the exercise is to rebuild it;
- a diagnosis names a mistake only when the answer matches that mistake and no other.
"""

from __future__ import annotations

import copy
import functools
import math
import numbers
import operator
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from helpers.models import (
    Attention,
    AttnOnlyTransformer,
    Embed,
    HookedTransformerConfig,
    HookPoint,
    PosEmbed,
    TransformerBlock,
    Unembed,
)
from helpers.references import ReferenceWithheld, withheld


class CheckFailed(AssertionError):
    """An exercise answer that is wrong. Shown in a notebook as the diagnosis alone."""

    def __init__(self, exercise: str, diagnosis: str):
        super().__init__(f"{exercise}: {diagnosis}")
        self.exercise, self.diagnosis = exercise, diagnosis

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback: the learner needs the diagnosis, not our stack.
        return [f"✘ {self.exercise} is not right yet.", *self.diagnosis.splitlines()]


class ExerciseNotDone(NotImplementedError):
    """The learner's function is still the stub. Shown in a notebook as one line, not a traceback:
    an unfinished exercise is expected, and the notebook carries on with the course's reference."""

    def _render_traceback_(self) -> list[str]:
        return [
            f"… {self} The rest of the notebook uses the course's reference, so it runs anyway."
        ]


def checker(check: Callable) -> Callable:
    """Decorate a checker: a stub's NotImplementedError becomes a short ExerciseNotDone."""

    @functools.wraps(check)
    def wrapped(*args, **kwargs):
        try:
            return check(*args, **kwargs)
        except ExerciseNotDone:
            raise
        except NotImplementedError as err:
            raise ExerciseNotDone(str(err)) from None

    return wrapped


def passed(exercise: str, detail: str) -> None:
    print(f"✔ {exercise} passed: {detail}")


# ---- inputs drawn at check time -----------------------------------------------------------------

_fixed_seed: list[int] = []


def draw_seed() -> int:
    """A fresh seed for this check's inputs, so that an answer cannot be looked up in advance
    (tests fix it with `fixed_seed`)."""
    return _fixed_seed[-1] if _fixed_seed else secrets.randbelow(2**31)


@contextmanager
def fixed_seed(seed: int) -> Iterator[None]:
    """Within the block, checkers draw their inputs from `seed` (for reproducible tests)."""
    _fixed_seed.append(seed)
    try:
        yield
    finally:
        _fixed_seed.pop()


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sizes(rng: torch.Generator, taken: list[dict]) -> dict | None:
    """Sizes for a test model: within the model all different (so that a transposed or wrongly
    sized answer cannot have the right shape; d_model is neither d_head², where dividing by
    sqrt(d_model) and by d_head agree, nor d_head · n_heads, where the habit d_head =
    d_model // n_heads holds), and each different from the other models' (so that no size can
    be hard-coded)."""

    def pick(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (), generator=rng))

    for _ in range(1000):
        d_head = pick(3, 6)
        sizes = {
            "d_vocab": pick(9, 15),
            "d_head": d_head,
            "n_heads": pick(2, 4),
            "d_model": d_head * pick(3, 6),
            "n_ctx": pick(6, 10),
        }
        values = list(sizes.values())
        if len(set(values)) < len(values) or sizes["d_model"] in (
            d_head**2,  # where dividing by sqrt(d_model) and by d_head agree
            d_head * sizes["n_heads"],  # where d_head = d_model // n_heads, a habit, holds
        ):
            continue
        if any(other[k] == v for other in taken for k, v in sizes.items()):
            continue
        return sizes
    return None  # the models drawn before took the sizes this one could have


def random_models(
    seed: int, count: int = 2, per_model: Sequence[dict] = (), **overrides
) -> list[AttnOnlyTransformer]:
    """`count` small models with random, untied weights (W_U is not W_Eᵀ), drawn from `seed`, with
    sizes that differ within and between models (unless fixed by `overrides`, for all models, or
    by `per_model[i]`, for model i)."""
    rng = generator(seed)
    for _ in range(100):  # draw every model's sizes again if a later model finds none left
        taken: list[dict] = []
        for _ in range(count):
            sizes = _sizes(rng, taken)
            if sizes is None:
                break
            taken.append(sizes)
        if len(taken) == count:
            break
    else:
        raise RuntimeError("no sizes found")  # not reached: the ranges leave many choices
    models = []
    for i, sizes in enumerate(taken):
        cfg = {"n_layers": 1, **sizes, "initializer_range": 0.5, "seed": seed + i, **overrides}
        cfg |= per_model[i] if i < len(per_model) else {}
        models.append(AttnOnlyTransformer(HookedTransformerConfig(**cfg)))
    return models


def random_model(seed: int, **overrides) -> AttnOnlyTransformer:
    """One model as in `random_models`."""
    return random_models(seed, 1, **overrides)[0]


def random_tokens(model: AttnOnlyTransformer, seed: int, batch: int = 3) -> Tensor:
    """`[batch, n_ctx]` random token ids for `model`, BOS first."""
    tokens = torch.randint(
        1, model.cfg.d_vocab, (batch, model.cfg.n_ctx), generator=generator(seed)
    )
    tokens[:, 0] = 0
    return tokens


# ---- calling the learner's function -------------------------------------------------------------


def _clone(value: object) -> object:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    return copy.deepcopy(value)  # models, languages, layouts


def _forward_unavailable(*args, **kwargs):
    raise ReferenceWithheld(
        "model(tokens)",
        "the model's forward pass (model(tokens), run_with_cache, run_with_hooks, or any of its "
        "layers) is not available in this exercise: its point is to compute the answer from the "
        "weights and tensors you are given",
    )


@contextmanager
def forward_unavailable() -> Iterator[None]:
    """Within the block, no model (nor any of its layers) can run: the forward methods of the
    classes themselves are replaced, so a copy or a rebuilt model cannot run either."""
    classes = (
        AttnOnlyTransformer,
        TransformerBlock,
        Attention,
        HookPoint,
        Embed,
        PosEmbed,
        Unembed,
    )
    saved = {
        (cls, name): cls.__dict__[name]
        for cls in classes
        for name in ("forward", "forward_fused")
        if name in cls.__dict__
    }
    for cls, name in saved:
        setattr(cls, name, _forward_unavailable)
    try:
        yield
    finally:
        for (cls, name), method in saved.items():
            setattr(cls, name, method)


def call_learner(
    exercise: str,
    fn: Callable,
    *args: object,
    withhold: Sequence[Callable] = (),
    block_forward: bool = False,
    clone: bool = True,
    where: str = "",
) -> object:
    """`fn(*clones of args)`, with the exercise's references withheld (and, with `block_forward`,
    the forward pass of every model). Clones mean the checker's own inputs, from which it computed
    the reference first, cannot be changed by the learner's function. `clone=False` is for
    exercises whose point is to edit their input in place. An error raised by the learner's code
    goes back to them as it is (its traceback points into their code), with a note saying which
    check's input it failed on."""
    if not callable(fn):
        raise CheckFailed(exercise, f"pass your function itself, got {type(fn).__name__}.")
    clones = [_clone(a) for a in args] if clone else list(args)
    try:
        with ExitStack() as stack:
            stack.enter_context(withheld(*withhold))
            if block_forward:
                stack.enter_context(forward_unavailable())
            return fn(*clones)
    except ReferenceWithheld as err:
        raise CheckFailed(exercise, f"{err} (the course's version runs after the check).") from None
    except (CheckFailed, ExerciseNotDone):
        raise
    except Exception as err:
        on = f" on {where}" if where else ""
        err.add_note(
            f"{exercise}: your function raised this{on}, an input the checker drew. Does it "
            "assume sizes (layers, heads, positions, vocabulary) of the notebook's model?"
        )
        raise


@dataclass
class Case:
    """One call of the learner's function: its arguments, the right answer, and the common
    mistakes (description -> the answer it gives), all computed before the learner's code runs."""

    args: tuple
    expected: Tensor | float
    mistakes: dict[str, Tensor] | list[tuple[str, Tensor | float]] = field(default_factory=dict)
    where: str = ""  # how a failure names this case, e.g. "head 2"
    shape_hints: dict[tuple[int, ...], str] = field(default_factory=dict)  # wrong shape -> why
    near_miss: str = (
        ""  # for a number: said when the answer is within NEAR_MISS (0.5 %) but not right
    )


def check_cases(
    exercise: str,
    fn: Callable,
    name: str,
    cases: Sequence[Case],
    *,
    withhold: Sequence[Callable] = (),
    block_forward: bool = False,
    atol: float = 1e-4,
    what: str = "a float",
) -> None:
    """Run the learner's function on every case (references withheld, inputs cloned), then judge
    the answers together. A wrong answer is named as a common mistake only when it matches that
    mistake in every wrong case where the mistake gives something other than the right answer,
    including the first, and no other mistake does the same: one case can match a mistake by
    coincidence, all of them cannot.
    Otherwise the first wrong case is described (tensors by `diagnose`, numbers by value)."""
    answers = []
    for case in cases:
        out = call_learner(
            exercise, fn, *case.args, withhold=withhold, block_forward=block_forward,
            where=case.where,
        )  # fmt: skip
        if isinstance(case.expected, Tensor):
            shape = tuple(out.shape) if isinstance(out, Tensor) else None
            if shape != tuple(case.expected.shape) and shape in case.shape_hints:
                raise CheckFailed(
                    exercise, f"{name} returned shape {shape}: {case.shape_hints[shape]}"
                )
            floating = case.expected.dtype.is_floating_point
            out = expect_tensor(exercise, name, out, case.expected.shape, floating)
        else:
            out = expect_float(exercise, name, out, what)
        answers.append(out)

    def right(out, case) -> bool:
        if isinstance(case.expected, Tensor):
            return matches(out, case.expected, atol)
        return _close(out, case.expected)

    wrong = [(out, case) for out, case in zip(answers, cases, strict=True) if not right(out, case)]
    if not wrong:
        return
    name_mistake(
        exercise,
        [(c.where, a, c.expected, _mistake_items(c.mistakes)) for a, c in wrong],
        functools.partial(_same, atol=atol),
    )
    out, case = wrong[0]
    if isinstance(case.expected, Tensor):
        diagnose(exercise, out, case.expected, {}, atol=atol, where=case.where)
    where = f"{case.where}: " if case.where else ""
    digits = 4
    while digits < 8 and f"{out:.{digits}f}" == f"{case.expected:.{digits}f}":
        digits += 1  # show where they differ
    message = f"{where}got {out:.{digits}f}, expected {case.expected:.{digits}f}."
    if case.near_miss and abs(out - case.expected) <= NEAR_MISS * max(1.0, abs(case.expected)):
        message += f" {case.near_miss}"
    raise CheckFailed(exercise, message)


NEAR_MISS = 0.005  # a number this close (relatively) to the right one is a rounding matter


def _mistake_items(mistakes: dict | Sequence[tuple[str, object]]) -> list[tuple[str, object]]:
    return list(mistakes.items()) if isinstance(mistakes, dict) else list(mistakes)


def _close(a: float, b: float, widen: float = 1.0, rel: float = 2e-4, abs_tol: float = 1e-6):
    return math.isclose(a, b, rel_tol=widen * rel, abs_tol=widen * abs_tol)


def _same(a: object, b: object, atol: float, widen: float = 1.0) -> bool:
    if isinstance(b, Tensor):
        return isinstance(a, Tensor) and matches(a, b, widen * atol)
    return not isinstance(a, Tensor) and _close(float(a), float(b), widen)


def name_mistake(
    exercise: str,
    wrong: Sequence[tuple[str, object, object, Sequence[tuple[str, object]]]],
    same: Callable[..., bool],
) -> None:
    """Raise a CheckFailed naming the common mistake behind the wrong answers, if exactly one
    explains them all; otherwise return, for the caller to describe the first wrong answer.

    `wrong` holds (where, answer, right answer, mistakes) per wrong case, the first wrong case
    first; a mistake may list several values under one description. A mistake explains a case
    if one of its values there is `same` as the answer; cases where the mistake comes out
    (nearly: `same(value, expected, widen=10)`) right tell nothing and are skipped. The named
    mistake must explain the first wrong case and every case where it tells something: one
    case can match a mistake by coincidence, all of them cannot. Mistakes whose text names its
    case (e.g. "for K, ...") thus only count where they are defined."""
    if not wrong:
        return
    verdicts: dict[str, list[bool]] = {}
    for _, out, expected, mistakes in wrong:
        telling: dict[str, bool] = {}
        for description, value in mistakes:
            if same(value, expected, widen=10):
                continue  # the mistake gives the right answer here
            telling[description] = telling.get(description, False) or same(out, value)
        for description, hit in telling.items():
            verdicts.setdefault(description, []).append(hit)
    where, out, expected, mistakes = wrong[0]
    first = {d for d, v in mistakes if same(out, v) and not same(v, expected, widen=10)}
    named = {d for d, hits in verdicts.items() if all(hits)} & first
    if len(named) == 1:
        prefix = f"{where}: " if where else ""
        raise CheckFailed(exercise, f"{prefix}your answer matches a common mistake: {named.pop()}")


def equal(a: object, b: object, widen: float = 1.0) -> bool:
    """`same` for answers compared exactly (lists, sets of token ids)."""
    return a == b


# ---- checking what came back --------------------------------------------------------------------


def expect_tensor(
    exercise: str, name: str, out: object, shape: Sequence[int], floating: bool = True
) -> Tensor:
    """The learner's tensor, detached, or a CheckFailed saying what is wrong with it."""
    if not isinstance(out, Tensor):
        raise CheckFailed(exercise, f"{name} must return a torch.Tensor, got {type(out).__name__}.")
    if tuple(out.shape) != tuple(shape):
        raise CheckFailed(
            exercise, f"{name} returned shape {tuple(out.shape)}; expected {tuple(shape)}."
        )
    if floating and not out.dtype.is_floating_point:
        raise CheckFailed(exercise, f"{name} returned dtype {out.dtype}; expected a float tensor.")
    if not floating and out.dtype not in (torch.int64, torch.int32):
        raise CheckFailed(
            exercise,
            f"{name} returned dtype {out.dtype}; expected integer counts (torch.long: smaller "
            "integer types overflow on real amounts of data).",
        )
    return out.detach()


def expect_float(exercise: str, name: str, out: object, what: str = "a float") -> float:
    """The learner's scalar answer as a float: a Python or numpy number, or a 0-d tensor."""
    if isinstance(out, (Tensor, np.ndarray)):
        if out.ndim != 0:
            raise CheckFailed(
                exercise,
                f"{name} must return {what}, got a {type(out).__name__} of shape "
                f"{tuple(out.shape)}: return one number (float(...) or .item()).",
            )
        if isinstance(out, Tensor) and out.dtype.is_complex:
            raise CheckFailed(exercise, f"{name} returned a complex number; expected {what}.")
        out = out.item()
    if not isinstance(out, numbers.Real) or isinstance(out, bool):
        raise CheckFailed(exercise, f"{name} must return {what}, got {type(out).__name__}.")
    out = float(out)
    if math.isnan(out):
        raise CheckFailed(exercise, f"{name} returned NaN.")
    return out


def expect_token_list(exercise: str, name: str, out: object, k: int, d_vocab: int) -> list[int]:
    """A list of k distinct token ids (a list, tuple or 1-d integer tensor)."""
    if isinstance(out, (set, frozenset)):
        out = sorted(out)
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    if isinstance(out, Tensor):
        if out.ndim != 1:
            raise CheckFailed(
                exercise, f"{name} must be a list of token ids, got a tensor {tuple(out.shape)}."
            )
        if out.dtype.is_floating_point:
            raise CheckFailed(
                exercise, f"{name} must hold integer token ids, got a tensor of {out.dtype}."
            )
        out = out.tolist()
    if not isinstance(out, (list, tuple)):
        raise CheckFailed(
            exercise, f"{name} must be a list of token ids, got {type(out).__name__}."
        )
    ids = []
    for t in out:
        try:  # ints, numpy integers, 0-d integer tensors
            index = None if isinstance(t, bool) else operator.index(t)
        except TypeError:
            index = None
        if index is None or not 0 <= index < d_vocab:
            raise CheckFailed(
                exercise, f"{name} must hold token ids in 0..{d_vocab - 1}, got {t!r}."
            )
        ids.append(index)
    if len(ids) != k:
        raise CheckFailed(exercise, f"{name} must hold k = {k} token ids, got {len(ids)}.")
    if len(set(ids)) != k:
        raise CheckFailed(
            exercise, f"{name} holds a token more than once: {ids}; the top k are distinct."
        )
    return ids


def matches(a: Tensor, b: Tensor, atol: float = 1e-5) -> bool:
    """Same shape and close values: within `atol` times the size of the values (rounding errors
    grow with them), or 1e-4 relatively; NaN matches NaN (a mistake may divide 0 by 0 where the
    learner's answer does too) and infinities match themselves."""
    if a.shape != b.shape:
        return False
    a, b = a.detach().double(), b.detach().double()
    finite = b[torch.isfinite(b)]
    scale = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
    return torch.allclose(a, b, atol=atol * scale, rtol=1e-4, equal_nan=True)


def diagnose(
    exercise: str,
    out: Tensor,
    expected: Tensor,
    mistakes: dict[str, Tensor],
    atol: float = 1e-5,
    where: str = "",
) -> None:
    """Pass if `out` matches `expected`; otherwise name the mistake it matches, if exactly one.

    Mistakes that come near the right answer on these inputs (within 10 times the tolerance) are
    not considered, and an answer that matches two different mistakes gets no diagnosis: a
    diagnosis must be sure.
    """
    if matches(out, expected, atol):
        return
    candidates = {d: w for d, w in mistakes.items() if not matches(w, expected, 10 * atol)}
    hits = [d for d, wrong in candidates.items() if matches(out, wrong, atol)]
    prefix = f"{where}: " if where else ""
    if len(hits) == 1:
        raise CheckFailed(exercise, f"{prefix}your answer matches a common mistake: {hits[0]}")
    if out.dtype.is_floating_point and torch.isnan(out).any():
        raise CheckFailed(exercise, f"{prefix}your answer holds NaN values (0/0 or inf - inf?).")
    infinite = torch.isinf(expected)
    if out.dtype.is_floating_point and (torch.isinf(out) != infinite).any():
        raise CheckFailed(
            exercise,
            f"{prefix}your answer is finite where the right answer is infinite, or the other way "
            "round (e.g. log 0 = -inf for something that never happens: no smoothing).",
        )
    err = (out.double() - expected.double()).abs()
    err = err[torch.isfinite(err)].max().item() if torch.isfinite(err).any() else float("inf")
    raise CheckFailed(
        exercise,
        f"{prefix}your answer differs from the reference by up to {err:.3g}, and matches none of "
        "the common mistakes this checker knows. Re-read the hint.",
    )


def diagnose_float(
    exercise: str,
    out: float,
    expected: float,
    mistakes: Sequence[tuple[str, float]],
    otherwise: str,
    rel: float = 2e-4,
    abs_tol: float = 1e-6,
) -> None:
    """`diagnose` for a number: pass within the tolerance, else name the one mistake it matches.
    A mistake is named only if its value lies well away (ten tolerances) from the right answer."""

    def close(a: float, b: float, widen: float = 1.0) -> bool:
        return _close(a, b, widen, rel, abs_tol)

    if close(out, expected):
        return
    hits = {d for d, v in mistakes if close(out, v) and not close(v, expected, widen=10)}
    if len(hits) == 1:
        raise CheckFailed(exercise, f"your answer matches a common mistake: {hits.pop()}")
    raise CheckFailed(exercise, otherwise)


def heads_phrase(n_models: int) -> str:
    """How the pass messages describe the test models, which are not the learner's."""
    return (
        f"every head of {n_models} random test models"
        if n_models > 1
        else "every head of a random test model"
    )
