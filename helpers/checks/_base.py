"""What every checker shares besides the judge (`_judge.py`): the two ways a check ends early
(`CheckFailed`, `ExerciseNotDone`), the pass line, the inputs drawn at check time, and the
forward pass withheld.

Inputs are drawn at check time from a fresh seed (`draw_seed`), from models without symmetries
that hide mistakes (untied W_E and W_U, heads whose OV eigenvalues are negative or complex, sizes
that avoid the notebook's habits), so that no constant or lookup can pass.
"""

from __future__ import annotations

import copy
import functools
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

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
from helpers.references import ReferenceWithheld


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


def heads_phrase(n_models: int) -> str:
    """How the pass messages describe the test models, which are not the learner's."""
    return (
        f"every head of {n_models} random test models"
        if n_models > 1
        else "every head of a random test model"
    )
