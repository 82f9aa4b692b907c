"""What the exercises of chapter 01 share."""

from __future__ import annotations

import math

from helpers.checks._base import CheckFailed
from helpers.checks._judge import Case, expect_float
from helpers.checks._registry import Exercise


def read_nats(exercise: Exercise, out: object, case: Case) -> float:
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
