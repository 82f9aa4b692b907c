"""Exercise checkers: one `check_…` per exercise, derived from the exercise's declaration.

Each chapter's module declares its exercises (`helpers.checks._registry.Exercise`): number and
title, the learner's function, the reference, what is withheld, how its cases are drawn and the
common mistakes each case knows. The checker of an exercise runs the learner's code on the cases
it draws at check time, judges every answer against the reference the one way
(`helpers.checks._judge.judge`), and either prints a one-line confirmation or raises `CheckFailed`
with a diagnosis: what is wrong, on which input, and which common mistake the answer matches. A
stub that still raises NotImplementedError becomes a one-line `ExerciseNotDone`.
"""

# importing each chapter's package declares its exercises
from helpers.checks import (  # noqa: F401
    bigrams,
    composition,
    induction,
    one_layer,
    phase_change,
    real_text,
    residual_stream,
)
from helpers.checks._base import CheckFailed, ExerciseNotDone, fixed_seed
from helpers.checks._registry import EXERCISES, Exercise, exercises

__all__ = ["CheckFailed", "ExerciseNotDone", "fixed_seed", "EXERCISES", "Exercise", "exercises"]

# every declared exercise's checker, under its name (`check_<function>`)
for _exercise in exercises():
    globals()[_exercise.checker_name] = _exercise.checker_function()
    __all__.append(_exercise.checker_name)
