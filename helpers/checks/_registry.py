"""One declaration per exercise, from which everything else about it is derived.

An `Exercise` says, once: its number and title (as the notebook's heading gives them), the
function(s) the learner writes, the course's reference it rebuilds, the functions withheld while
the learner's code runs, how to draw its cases (each with its named mistakes) and what the
cases must cover. `declare` registers it; from the registry come the checkers in `helpers.checks`
(`check_<function>`, or the declared `checker` name), the exercise number in every message, the
list the tests run every checker's reference answer against, the exercise counts in README.md and
TEACHING.md, and the exercises `course.py progress` and `tools/mistakes.py` report on. A test
fails when a notebook's exercise and its declaration disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from helpers.checks._base import checker, draw_seed, passed
from helpers.checks._judge import Case, call_learner, judge


@dataclass(frozen=True)
class Exercise:
    """An exercise, declared once (see the module's docstring).

    `functions`: the names of what the learner writes, in the order the checker takes them (one,
    usually). `given`: the names of what the checker takes from the notebook besides (the
    notebook's model, say). `cases(seed, *given)`: the cases, drawn from `seed`, every right answer
    and mistake computed before the learner's code runs. `run(exercise, functions, case)`: how a
    case calls the learner's code, through `exercise.call`; by default the one function on
    `case.args`. `read(answer,
    case)`: the answer in its right form or a CheckFailed on its form, where the default
    (`read_answer`: a tensor, a number or a tuple of these) does not fit. `reveal(answers, cases)`:
    shown before the verdict. `passed`: what the pass line says (a text, or a function of the
    answers and the cases that writes one, quoting what was measured). `options`: keywords the checker takes, with their defaults, passed
    to `cases` (e.g. whether to train or load a recording). `covers`: the structures the exercise's text names (biases, a
    rank-deficient W_O, several heads of one layer …) that its cases must exercise (`Case.tags`)."""

    number: str
    title: str
    functions: tuple[str, ...]
    cases: Callable[..., Sequence[Case]]
    passed: str | Callable[[list, Sequence[Case]], str]
    reference: Callable | None = None
    withhold: tuple[Callable, ...] = ()
    block_forward: bool = False
    clone: bool = True
    given: tuple[str, ...] = ()
    run: Callable[[Exercise, Sequence[Callable], Case], object] | None = None
    read: Callable[[object, Case], object] | None = None
    reveal: Callable[[list, Sequence[Case]], None] | None = None
    on_error: Mapping[str, str | Callable[[Exception], str | None]] = field(default_factory=dict)
    covers: frozenset[str] = frozenset()
    checker: str = ""
    options: Mapping[str, object] = field(default_factory=dict)  # the checker's keywords: defaults

    @property
    def chapter(self) -> str:
        """The notebook's two-digit prefix: "0.9" -> "00"."""
        return f"{int(self.number.split('.')[0]):02d}"

    @property
    def name(self) -> str:
        """How every message names it: "Exercise 0.9 (rotate_residual)"."""
        return f"Exercise {self.number} ({', '.join(self.functions)})"

    @property
    def checker_name(self) -> str:
        return self.checker or f"check_{self.functions[0]}"

    @property
    def order(self) -> tuple[int, int]:
        major, minor = self.number.split(".")
        return int(major), int(minor)

    def call(
        self, fn: Callable, case: Case, name: str | None = None, args: tuple | None = None
    ) -> object:
        """The learner's `fn` on the case's arguments (or on `args`, for an exercise whose `run`
        calls several functions in turn), the one way: `call_learner`."""
        return call_learner(
            self.name, fn, case.args if args is None else args,
            name=name or f"{self.functions[0]}()", withhold=self.withhold,
            block_forward=self.block_forward, clone=self.clone, where=case.where,
            on_error=self.on_error,
        )  # fmt: skip

    def check(self, *arguments: object, **options: object) -> None:
        """Judge the learner's function(s) (and what the checker takes from the notebook)."""
        functions, given = arguments[: len(self.functions)], arguments[len(self.functions) :]
        if (
            len(functions) != len(self.functions)
            or len(given) != len(self.given)
            or (set(options) - set(self.options))
        ):
            names = ", ".join([*self.functions, *self.given,
                              *(f"{k}={v!r}" for k, v in self.options.items())])  # fmt: skip
            raise TypeError(f"{self.checker_name} takes ({names})")
        cases = list(self.cases(draw_seed(), *given, **{**self.options, **options}))

        def run(case: Case) -> object:
            if self.run is not None:
                return self.run(self, functions, case)
            return self.call(functions[0], case)

        reveal = None if self.reveal is None else (lambda answers: self.reveal(answers, cases))
        answers = judge(self.name, self.functions[0], run, cases, read=self.read, reveal=reveal)
        passed(self.name, self.passed(answers, cases) if callable(self.passed) else self.passed)

    def checker_function(self) -> Callable:
        """`helpers.checks.check_…`: the checker the notebook calls."""

        def check(*arguments, **options):
            return self.check(*arguments, **options)

        check.__name__ = check.__qualname__ = self.checker_name
        args = ", ".join(
            [*self.functions, *self.given, *(f"{k}={v!r}" for k, v in self.options.items())]
        )
        check.__doc__ = f"Exercise {self.number}, {self.title}: `{self.checker_name}({args})`."
        return checker(check)


EXERCISES: dict[str, Exercise] = {}


def declare(exercise: Exercise) -> Exercise:
    """Register an exercise (its number once: a second declaration of it is an error)."""
    if exercise.number in EXERCISES:
        raise ValueError(f"Exercise {exercise.number} is declared twice")
    EXERCISES[exercise.number] = exercise
    return exercise


def exercises(chapter: str | None = None) -> list[Exercise]:
    """The declared exercises in the course's order, or those of one chapter ("03")."""
    found = sorted(EXERCISES.values(), key=lambda e: e.order)
    return [e for e in found if chapter is None or e.chapter == chapter]
