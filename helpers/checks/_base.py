"""What every checker shares: the failure type, shape checks and diagnosis by common mistakes."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from helpers.models import AttnOnlyTransformer, HookedTransformerConfig


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


def _passed(exercise: str, detail: str) -> None:
    print(f"✔ {exercise} passed: {detail}")


def _expect_tensor(exercise: str, name: str, out: object, shape: tuple, floating: bool) -> Tensor:
    if not isinstance(out, Tensor):
        raise CheckFailed(exercise, f"{name} must return a torch.Tensor, got {type(out).__name__}.")
    if tuple(out.shape) != tuple(shape):
        raise CheckFailed(
            exercise,
            f"{name} returned shape {tuple(out.shape)}; expected {tuple(shape)}.",
        )
    if floating and not out.dtype.is_floating_point:
        raise CheckFailed(exercise, f"{name} returned dtype {out.dtype}; expected a float tensor.")
    if not floating and (out.dtype.is_floating_point or out.dtype.is_complex):
        raise CheckFailed(exercise, f"{name} returned dtype {out.dtype}; expected integer counts.")
    if floating and torch.isnan(out).any():
        raise CheckFailed(exercise, f"{name} returned NaN values.")
    return out


def _expect_float(exercise: str, name: str, out: object, what: str = "a float") -> float:
    """The learner's scalar answer as a float, or a CheckFailed saying what came back instead."""
    if isinstance(out, Tensor):
        if out.numel() != 1:
            raise CheckFailed(
                exercise,
                f"{name} must return {what}, got a tensor of shape {tuple(out.shape)}: it must "
                "return one number.",
            )
        out = out.item()
    if not isinstance(out, (int, float)) or isinstance(out, bool):
        raise CheckFailed(exercise, f"{name} must return {what}, got {type(out).__name__}.")
    return float(out)


def _diagnose_float(
    exercise: str,
    out: float,
    expected: float,
    mistakes: list[tuple[str, float]],
    tolerance: float,
    otherwise: str,
) -> None:
    """Pass if `out` is within `tolerance` of `expected`; otherwise name the first mistake
    (description, value) it matches, or fail with `otherwise`."""
    if abs(out - expected) <= tolerance:
        return
    for description, value in mistakes:
        if abs(out - value) <= tolerance:
            raise CheckFailed(exercise, f"Your answer matches a common mistake: {description}")
    raise CheckFailed(exercise, otherwise)


def _matches(a: Tensor, b: Tensor, atol: float = 1e-5) -> bool:
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-4)


def _diagnose(
    exercise: str, out: Tensor, expected: Tensor, mistakes: dict[str, Tensor], atol: float = 1e-5
) -> None:
    """Pass if `out` matches `expected`; otherwise name the first mistake it matches, if any."""
    if _matches(out, expected, atol):
        return
    for description, wrong in mistakes.items():
        if _matches(out, wrong, atol):
            raise CheckFailed(exercise, f"Your answer matches a common mistake: {description}")
    err = (out.double() - expected.double()).abs().max().item()
    raise CheckFailed(
        exercise,
        f"Your answer differs from the reference by up to {err:.3g}, and matches none of the "
        "common mistakes this checker knows. Re-read the hint.",
    )


def _tiny_model(seed: int = 0, **overrides) -> AttnOnlyTransformer:
    cfg = HookedTransformerConfig(
        **{
            "n_layers": 1,
            "d_model": 12,
            "n_heads": 3,
            "d_head": 4,
            "n_ctx": 7,
            "d_vocab": 11,
            "initializer_range": 0.6,
            "seed": seed,
            **overrides,
        }
    )
    return AttnOnlyTransformer(cfg)
