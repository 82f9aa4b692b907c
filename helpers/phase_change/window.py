"""Finding the window: the onsets of the phase change's three changes in a recorded run (the
rise of the prefix-matching score, the fall of the ICL score, the bend of the loss), with the
thresholds that tell a change from noise."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from helpers.phase_change.records import TrainingRecord
from helpers.references import reference

# Thresholds of `find_phase_change`, calibrated on the course's runs (chapter 05 prints them):
# the two-layer model's max prefix-matching score rises by ~0.7 and its ICL score falls by ~1.2
# nats; the one-layer control's change by less than 0.1. Its loss bends down by ~0.4 nats per 100
# steps at the phase change; the control's slope never falls more than ~0.03 below its best.
MIN_RISE = 0.3  # prefix-matching score
MIN_DROP = 0.3  # ICL score, nats
MIN_BEND = 0.1  # held-out loss slope, nats per 100 steps
BEND_ONSET = 0.05  # nats per 100 steps
ONSET_FRACTION = 0.1  # a change starts when a tenth of it is done


def _smooth(values) -> np.ndarray:
    """A 3-point moving average (the ends kept), so that one noisy record moves nothing."""
    v = np.asarray(values, dtype=float)
    if len(v) < 3:
        return v
    inner = np.convolve(v, np.ones(3) / 3, mode="valid")
    return np.concatenate(([v[0]], inner, [v[-1]]))


def change_onset(steps, values, direction: str, min_change: float) -> int | None:
    """The step where a sustained rise (`direction="up"`) or fall ("down") of `values` starts:
    from the curve's extreme before its steepest stretch, the first step by which a tenth of the
    change to its final value is done. None when the change is smaller than `min_change`."""
    if direction not in ("up", "down"):
        raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
    steps = np.asarray(steps)
    v = _smooth(values) * (1 if direction == "up" else -1)  # a rise either way
    if len(v) < 3:
        return None
    steepest = int(np.argmax(np.diff(v))) + 1
    start = int(np.argmin(v[:steepest]))
    change = v[-1] - v[start]
    if not change >= min_change:
        return None
    reached = np.nonzero(v[start:] >= v[start] + ONSET_FRACTION * change)[0]
    return int(steps[start + reached[0]])


@reference
def slope_fall(steps, losses) -> np.ndarray:
    """For each interval between records, how far the loss's slope (nats per 100 steps) lies
    below the best (highest) slope of the intervals up to it: 0 throughout on a convex curve,
    whose slope only rises towards 0; positive where the curve bends down again."""
    steps, losses = np.asarray(steps, dtype=float), np.asarray(losses, dtype=float)
    if steps.shape != losses.shape or steps.ndim != 1 or len(steps) < 2:
        raise ValueError("steps and losses must be 1-d, of the same length >= 2")
    slope = np.diff(losses) / np.diff(steps) * 100
    return np.maximum.accumulate(slope) - slope


def loss_bend(steps, losses) -> tuple[float, int | None]:
    """How far the loss curve (smoothed) departs from convex, and where: the largest
    `slope_fall`, and the first step where it reached `BEND_ONSET` (None if never)."""
    if len(losses) < 3:
        return 0.0, None
    fall = slope_fall(steps, _smooth(losses))
    where = np.nonzero(fall >= BEND_ONSET)[0]
    onset = int(round(float(steps[where[0]]))) if len(where) else None
    return float(fall.max()), onset


@dataclass(frozen=True)
class PhaseChange:
    """Onsets (steps) of the three changes in one run; None where a change did not happen."""

    prefix_matching: int | None
    icl: int | None
    loss_bend: int | None
    bend: float  # nats per 100 steps (see `loss_bend`)
    n_steps: int

    @property
    def onsets(self) -> dict[str, int | None]:
        return {"prefix matching": self.prefix_matching, "ICL": self.icl, "loss": self.loss_bend}

    @property
    def happened(self) -> bool:
        """All three changes found."""
        return None not in self.onsets.values()

    @property
    def spread(self) -> float:
        """Largest distance between two onsets, as a fraction of the run (inf if one is
        missing)."""
        found = [s for s in self.onsets.values() if s is not None]
        if len(found) < 3:
            return math.inf
        return (max(found) - min(found)) / self.n_steps

    @property
    def window(self) -> tuple[int, int] | None:
        found = [s for s in self.onsets.values() if s is not None]
        return (min(found), max(found)) if self.happened else None


def find_phase_change(record: TrainingRecord) -> PhaseChange:
    """The onsets of the phase change in a recorded run: the rise of the largest prefix-matching
    score of any head in the last layer, the fall of the ICL score and the loss's bend."""
    prefix = (
        record.prefix_matching[:, -1].amax(-1).tolist()
        if record.prefix_matching.numel()
        else [0.0] * len(record.steps)
    )
    bend, bend_onset = loss_bend(record.steps, record.heldout_loss)
    return PhaseChange(
        prefix_matching=change_onset(record.steps, prefix, "up", MIN_RISE),
        icl=change_onset(record.steps, record.icl, "down", MIN_DROP),
        loss_bend=bend_onset if bend >= MIN_BEND else None,
        bend=bend,
        n_steps=record.steps[-1],
    )
