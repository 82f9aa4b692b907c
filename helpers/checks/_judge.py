"""The one judge of every exercise: run the learner's code on each case, read what came back,
compare it with the reference under one tolerance, and name the common mistake behind a wrong
answer only when nothing else explains it.

A case (`Case`) holds the arguments, the right answer (or the requirements a right answer meets,
where many answers are right) and the common mistakes with the answers they give, all computed
before the learner's code runs. The judge (`judge`) calls the learner through one path
(`call_learner`: clones in, references withheld, any error turned into a message that shows the
learner's own lines), reads each answer the same way (`read_answer`: a tensor, a number, or any
value compared exactly) and compares with `same`.
"""

from __future__ import annotations

import math
import numbers
import operator
import re
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from helpers.checks._base import (
    CheckFailed,
    ExerciseNotDone,
    _clone,
    forward_unavailable,
)
from helpers.references import ReferenceWithheld, withheld

# The tolerance, stated once: an answer is right when it is within TOLERANCE of the reference,
# relative to the reference's largest magnitude (and never finer than TOLERANCE · SMALLEST_SCALE,
# so that a reference of exactly 0 is not asked for exact zeros). 1e-4 leaves room for float32
# rounding (about 1e-7 a step) through every exercise's arithmetic and rejects every common
# mistake the checkers know, which all move the answer by far more.
TOLERANCE = 1e-4
SMALLEST_SCALE = 1e-6
# a number this close (relatively) to the right one, but not within TOLERANCE, is a rounding
# matter: the case's `near_miss` says what usually causes it
NEAR_MISS = 5e-3

_CHECKS_DIR = Path(__file__).resolve().parent
_HELPERS_DIR = _CHECKS_DIR.parent


@dataclass(frozen=True)
class Requirement:
    """What a right answer must satisfy where many answers are right (weights set by hand, say):
    `holds(answer)` is True for a right answer; `otherwise` says what is wrong when it is not (a
    text, or a function of the answer that writes one, quoting what was measured)."""

    holds: Callable[[object], bool]
    otherwise: str | Callable[[object], str]

    def explain(self, answer: object) -> str:
        return self.otherwise(answer) if callable(self.otherwise) else self.otherwise


@dataclass(frozen=True)
class Deferred:
    """A right answer worked out only once the learner's answers are in: for an exercise whose
    learner takes no input from the checker (so has nothing to edit) and whose right answer is
    costly, such as training a sweep of models, which a stub must not set off."""

    compute: Callable[[], object]


@dataclass
class Case:
    """One call of the learner's code: its arguments, the right answer (or the `Requirement`s a
    right answer meets) and the common mistakes, each with the answer it gives here, all computed
    before the learner's code runs.

    `where` names the case in a diagnosis ("head 2 of a model with d_model 24"); `shape_hints`
    explain a wrong shape (shape -> why); `near_miss` what to say of a number that is nearly right;
    `alone` what to say when this case is the only one answered wrongly (it holds a structure the
    others do not: a rank-deficient W_O, say); `describe(answer)` what to say of a wrong answer
    that no mistake explains, where the judge's general description says less (e.g. which of
    several predictions missed, and why); `answer(output, args)`, if given, turns what the
    learner's code returned, and the arguments as it left them, into the value judged (an edit
    made in place, a returned model's weights); `tags` name the structures this case exercises
    (the exercise's `covers` must all be among its cases' tags)."""

    args: tuple
    expected: object
    mistakes: Sequence[tuple[str, object]] | Mapping[str, object] = ()
    where: str = ""
    shape_hints: Mapping[tuple[int, ...], str] = field(default_factory=dict)
    near_miss: str = ""
    alone: str = ""
    answer: Callable[[object, tuple], object] | None = None
    tags: frozenset[str] | set[str] = frozenset()
    describe: Callable[[object], str] | None = None  # says what is wrong, where no mistake does
    context: object = None  # what the exercise's own hooks need of this case (its `reveal`)

    def mistake_items(self) -> list[tuple[str, object]]:
        if isinstance(self.mistakes, Mapping):
            return list(self.mistakes.items())
        return list(self.mistakes)


# ---- comparing -------------------------------------------------------------------------------


def _scale(*values: Tensor) -> float:
    finite = [v[torch.isfinite(v)].abs() for v in values]
    largest = max((float(f.max()) for f in finite if f.numel()), default=0.0)
    return max(largest, SMALLEST_SCALE)


def same(answer: object, reference: object, widen: float = 1.0) -> bool:
    """Whether `answer` is `reference` under the tolerance (widened `widen` times): tensors of the
    same shape within TOLERANCE of the reference's scale (NaN matching NaN, infinities matching
    themselves); numbers likewise; tuples and lists element by element; dicts key by key; sets
    and everything else exactly."""
    if isinstance(reference, Tensor):
        if not isinstance(answer, Tensor) or answer.shape != reference.shape:
            return False
        if not reference.dtype.is_floating_point and not reference.dtype.is_complex:
            # counts, token ids, kinds: integers are right or wrong, at any size
            return not answer.dtype.is_floating_point and bool(
                torch.equal(answer.long(), reference.long())
            )
        a, b = answer.detach().double(), reference.detach().double()
        atol = widen * TOLERANCE * _scale(b)
        return bool(torch.allclose(a, b, atol=atol, rtol=0.0, equal_nan=True))
    if isinstance(reference, numbers.Real) and not isinstance(reference, bool):
        if not isinstance(answer, numbers.Real) or isinstance(answer, bool):
            return False
        a, b = float(answer), float(reference)
        if math.isnan(a) or math.isnan(b) or math.isinf(b):
            return a == b or (math.isnan(a) and math.isnan(b))
        return abs(a - b) <= widen * TOLERANCE * max(abs(b), SMALLEST_SCALE)
    if isinstance(reference, (tuple, list)):
        return (
            isinstance(answer, (tuple, list))
            and len(answer) == len(reference)
            and all(same(a, b, widen) for a, b in zip(answer, reference, strict=True))
        )
    if isinstance(reference, Mapping):
        return (
            isinstance(answer, Mapping)
            and set(answer) == set(reference)
            and all(same(answer[k], reference[k], widen) for k in reference)
        )
    return answer == reference


def _requirements(expected: object) -> bool:
    """Whether a case's right answer is given by `Requirement`s rather than a value."""
    return (
        isinstance(expected, Sequence)
        and bool(expected)
        and all(isinstance(r, Requirement) for r in expected)
    )


def _right(answer: object, expected: object, widen: float = 1.0) -> bool:
    """Whether an answer is right: it meets every `Requirement`, or is `same` as the value."""
    if _requirements(expected):
        return all(r.holds(answer) for r in expected)
    return same(answer, expected, widen=widen)


def _telling(mistake: object, reference: object) -> bool:
    """Whether a mistake gives something other than the right answer here (well outside the
    tolerance; for `Requirement`s, one it does not meet): only then does an answer that matches
    it say anything."""
    return not _right(mistake, reference, widen=10)


def name_mistake(exercise: str, judged: Sequence[tuple[Case, object, bool]]) -> None:
    """Raise a CheckFailed naming the one common mistake that explains the answers, if there is
    one; otherwise return, for the caller to describe the first wrong answer.

    `judged` holds (case, answer, right) for every case. A mistake explains the answers when, in
    every case where it gives something other than the right answer, the answer is the mistake's
    (so the answer was wrong there, the same way), and the first wrong case is among those cases.
    One case can match a mistake by coincidence; all of them cannot. A mistake that would have
    been wrong in a case the learner got right is ruled out, and two mistakes that explain the
    answers equally well are both left unnamed: a diagnosis must be sure."""
    wrong = [(case, answer) for case, answer, right in judged if not right]
    if not wrong:
        return
    first_case, first_answer = wrong[0]
    candidates = {d for d, v in first_case.mistake_items()
                  if _telling(v, first_case.expected) and same(first_answer, v)}  # fmt: skip
    for case, answer, _ in judged:
        values: dict[str, list[object]] = {}
        for description, value in case.mistake_items():
            values.setdefault(description, []).append(value)
        for description in list(candidates):
            telling = [v for v in values.get(description, []) if _telling(v, case.expected)]
            if telling and not any(same(answer, v) for v in telling):
                candidates.discard(description)  # it gives another answer here than the learner
    if len(candidates) == 1:
        prefix = f"{first_case.where}: " if first_case.where else ""
        raise CheckFailed(exercise, f"{prefix}your answer matches a common mistake: "
                          f"{candidates.pop()}")  # fmt: skip


def _describe_tensor(out: Tensor, expected: Tensor) -> str:
    if out.dtype.is_floating_point and torch.isnan(out).any() and not torch.isnan(expected).any():
        return "your answer holds NaN values (0/0 or inf - inf?)."
    if out.dtype.is_floating_point and (torch.isinf(out) != torch.isinf(expected)).any():
        return (
            "your answer is finite where the right answer is infinite, or the other way round "
            "(e.g. log 0 = -inf for something that never happens: no smoothing)."
        )
    err = (out.double() - expected.double()).abs()
    finite = err[torch.isfinite(err)]
    worst = float(finite.max()) if finite.numel() else float("inf")
    return (
        f"your answer differs from the right one by up to {worst:.3g} (its entries reach "
        f"{_scale(expected.double()):.3g}), and matches none of the common mistakes this checker "
        "knows."
    )


def _describe_number(out: float, expected: float, near_miss: str) -> str:
    digits = 4
    while digits < 8 and f"{out:.{digits}f}" == f"{expected:.{digits}f}":
        digits += 1  # show where they differ
    message = f"got {out:.{digits}f}, expected {expected:.{digits}f}."
    if near_miss and abs(out - expected) <= NEAR_MISS * max(1.0, abs(expected)):
        message += f" {near_miss}"
    return message


def describe(out: object, expected: object, near_miss: str = "") -> str:
    """What is wrong with an answer no common mistake explains, in a sentence."""
    if isinstance(expected, Tensor) and isinstance(out, Tensor):
        return _describe_tensor(out, expected)
    if isinstance(expected, numbers.Real) and isinstance(out, numbers.Real):
        return _describe_number(float(out), float(expected), near_miss)
    if isinstance(expected, Mapping) and isinstance(out, Mapping):
        keys = [k for k in expected if k not in out or not same(out[k], expected[k])]
        extra = [k for k in out if k not in expected]
        parts = [f"{k!r}: you gave {out.get(k, 'nothing')!r}, expected {expected[k]!r}"
                 for k in keys[:4]]  # fmt: skip
        parts += [f"unexpected key {k!r}" for k in extra[:2]]
        return "; ".join(parts) + "."
    if isinstance(expected, (tuple, list)) and isinstance(out, (tuple, list)):
        for i, (a, b) in enumerate(zip(out, expected, strict=False)):
            if not same(a, b):
                return f"item {i} of your answer: {describe(a, b, near_miss)}"
        return f"your answer has {len(out)} items, expected {len(expected)}."
    return f"got {out!r}, expected {expected!r}."


# ---- reading an answer -------------------------------------------------------------------------


def expect_tensor(
    exercise: str, name: str, out: object, shape: Sequence[int], floating: bool = True
) -> Tensor:
    """The learner's tensor, detached, or a CheckFailed saying what is wrong with it."""
    if not isinstance(out, Tensor):
        hint = " (did you forget the return?)" if out is None else ""
        raise CheckFailed(
            exercise, f"{name} must return a torch.Tensor, got {type(out).__name__}{hint}."
        )
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
        hint = " (did you forget the return?)" if out is None else ""
        raise CheckFailed(exercise, f"{name} must return {what}, got {type(out).__name__}{hint}.")
    out = float(out)
    if math.isnan(out):
        raise CheckFailed(exercise, f"{name} returned NaN.")
    return out


def read_answer(exercise: str, name: str, out: object, case: Case) -> object:
    """The learner's answer in the form of the case's right answer, or a CheckFailed saying what
    is wrong with its form: a tensor (shape and dtype checked, with the case's shape hints), a
    number (any real scalar, a 0-d tensor included), a tuple of these read item by item; any
    other value is judged as it is (its form is the exercise's `read` to check)."""
    expected = case.expected
    if isinstance(expected, Deferred):
        return out  # its form is the exercise's `read` to check
    if isinstance(expected, Tensor):
        shape = tuple(out.shape) if isinstance(out, Tensor) else None
        if shape != tuple(expected.shape) and shape in case.shape_hints:
            raise CheckFailed(exercise, f"{name} returned shape {shape}: {case.shape_hints[shape]}")
        return expect_tensor(exercise, name, out, expected.shape, expected.dtype.is_floating_point)
    if isinstance(expected, numbers.Real) and not isinstance(expected, bool):
        return expect_float(exercise, name, out)
    if isinstance(expected, tuple) and all(isinstance(e, (Tensor, numbers.Real)) for e in expected):
        if isinstance(out, (Tensor, np.ndarray)) and out.ndim == 1:
            out = list(out)
        if not isinstance(out, (tuple, list)) or len(out) != len(expected):
            raise CheckFailed(
                exercise, f"{name} must return {len(expected)} values, a tuple; got "
                f"{type(out).__name__}" + (f" of {len(out)}" if isinstance(out, (tuple, list)) else "")
                + ".",
            )  # fmt: skip
        return tuple(
            read_answer(exercise, f"item {i} of {name}'s answer", o, Case((), e))
            for i, (o, e) in enumerate(zip(out, expected, strict=True))
        )
    return out


# ---- calling the learner -------------------------------------------------------------------------


def _learner_frames(err: BaseException) -> list[traceback.FrameSummary]:
    """The frames of the traceback that are the learner's: not the checker's, nor the course's
    references it may have called (which were withheld, or are not the point)."""
    frames = traceback.extract_tb(err.__traceback__)
    mine = [f for f in frames if not Path(f.filename).resolve().is_relative_to(_HELPERS_DIR)]
    return [f for f in mine if "site-packages" not in f.filename] or mine


_SIZES_IN_MESSAGE = re.compile(r"(?<![\w.])\d+(?![\w.])")


def _assumes_sizes(err: BaseException, args: Sequence[object]) -> bool:
    """Whether the error message holds a number that is not one of the inputs' sizes: a sign that
    the code has a size built in (of the notebook's model, say), not a mix-up of the inputs' own
    axes (then every number in the message is one of theirs)."""
    sizes: set[int] = set()

    def collect(value: object) -> None:
        if isinstance(value, Tensor):
            sizes.update(value.shape)
        elif isinstance(value, (list, tuple)):
            for v in value:
                collect(v)
        elif hasattr(value, "cfg"):  # a model
            cfg = value.cfg
            sizes.update(getattr(cfg, k) for k in ("d_model", "d_head", "n_heads", "n_layers",
                                                    "n_ctx", "d_vocab") if hasattr(cfg, k))  # fmt: skip

    for a in args:
        collect(a)
    numbers_in = {int(n) for n in _SIZES_IN_MESSAGE.findall(str(err))}
    return bool(numbers_in - sizes - {0, 1, -1})


def call_learner(
    exercise: str,
    fn: Callable,
    args: Sequence[object],
    *,
    name: str = "your function",
    withhold: Sequence[Callable] = (),
    block_forward: bool = False,
    clone: bool = True,
    where: str = "",
    on_error: Mapping[str, str | Callable[[Exception], str | None]] | None = None,
) -> object:
    """`fn(*clones of args)`, the one way the checkers call the learner's code: with the exercise's
    references withheld (and, with `block_forward`, the forward pass of every model), on clones of
    the checker's own inputs (from which it computed the right answer first), so that an edit in
    place changes only the learner's copy (`clone=False` for exercises whose point is an edit in
    place). An error the learner's code raises comes back as a CheckFailed that names it, shows
    the learner's own lines of the traceback (not the checker's), says on which input it happened,
    adds `on_error[type name]` where the exercise knows what causes it (the name of the error's
    type or of a type it derives from; a text, or a function of the error that writes one or says
    None), and asks whether the code assumes the notebook's sizes only when a number in the
    message is none of the inputs'."""
    if not callable(fn):
        raise CheckFailed(
            exercise,
            f"pass your function itself (its name, without calling it), got a {type(fn).__name__}.",
        )
    clones = [_clone(a) for a in args] if clone else list(args)
    try:
        with ExitStack() as stack:
            stack.enter_context(withheld(*withhold))
            if block_forward:
                stack.enter_context(forward_unavailable())
            return fn(*clones)
    except ReferenceWithheld as err:
        raise CheckFailed(
            exercise, f"{err} (you may use it again once this check is done)."
        ) from None
    except (CheckFailed, ExerciseNotDone):
        raise
    except NotImplementedError as err:  # the stub: the checker decorator makes it ExerciseNotDone
        raise ExerciseNotDone(str(err)) from None
    except Exception as err:
        on = f" on {where}" if where else ""
        lines = [f"{name} raised {type(err).__name__}{on}: {err}"]
        frames = _learner_frames(err)
        if frames:
            lines.append("where, in your code:")
            lines += [f"  line {f.lineno}, in {f.name}: {(f.line or '').strip()}" for f in frames]
        hint = _hint(on_error or {}, err)
        if hint:
            lines.append(hint)
        if _assumes_sizes(err, args):
            lines.append(
                "The checker draws its own inputs, of other sizes than the notebook's: does your "
                "code assume sizes (layers, heads, positions, vocabulary) of the notebook's model?"
            )
        raise CheckFailed(exercise, "\n".join(lines)) from None


def _hint(on_error: Mapping, err: Exception) -> str | None:
    """What the exercise knows of this error: the entry for its type, or the nearest type it
    derives from (torch's `_LinAlgError` is a RuntimeError)."""
    for kind in type(err).__mro__:
        if kind.__name__ in on_error:
            hint = on_error[kind.__name__]
            return hint(err) if callable(hint) else hint
    return None


# ---- reading token ids -----------------------------------------------------------------------------


def read_token_ids(ex: str, name: str, out: object, k: int, d_vocab: int) -> list[int]:
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


def read_triple(ex: str, item: object, d_vocab: int, what: str) -> tuple[int, int, int]:
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


# ---- the judge -------------------------------------------------------------------------------------


def judge(
    exercise: str,
    name: str,
    run: Callable[[Case], object],
    cases: Sequence[Case],
    read: Callable[[object, Case], object] | None = None,
    reveal: Callable[[list[object]], None] | None = None,
) -> list[object]:
    """Judge the learner's answers to `cases`: `run(case)` calls the learner's code on one case
    (through `call_learner`); each answer is read in its right form (`read`, else `read_answer`),
    then, where the case has `answer`, turned into the value judged; `reveal(answers)`, if given,
    shows them before the verdict (a "predict, then test" exercise). Every case is run before
    any is judged, so that a mistake can be named across them all; then the first wrong case is
    described, unless one common mistake explains every answer (`name_mistake`). Returns the
    answers, as read, when every one is right."""
    answers = []
    for case in cases:
        out = run(case)
        try:
            if case.answer is not None:
                out = case.answer(out, case.args)
            answers.append(
                read(out, case) if read is not None else read_answer(exercise, name, out, case)
            )
        except CheckFailed as err:  # the answer's form: say on which case
            if case.where and not err.diagnosis.startswith(case.where):
                raise CheckFailed(exercise, f"{case.where}: {err.diagnosis}") from None
            raise
    for case in cases:
        if isinstance(case.expected, Deferred):
            case.expected = case.expected.compute()
    if reveal is not None:
        reveal(answers)
    judged = [
        (case, answer, _right(answer, case.expected))
        for case, answer in zip(cases, answers, strict=True)
    ]
    wrong = [(case, answer) for case, answer, right in judged if not right]
    if not wrong:
        return answers
    name_mistake(exercise, judged)
    case, answer = wrong[0]
    prefix = f"{case.where}: " if case.where else ""
    if len(wrong) == 1 and case.alone:
        raise CheckFailed(exercise, prefix + case.alone)
    if _requirements(case.expected):
        unmet = [r for r in case.expected if not r.holds(answer)]
        raise CheckFailed(exercise, prefix + unmet[0].explain(answer))
    if case.describe is not None:
        raise CheckFailed(exercise, prefix + case.describe(answer))
    raise CheckFailed(exercise, prefix + describe(answer, case.expected, case.near_miss))
