"""Training runs side by side: `record_runs` trains and records each setting (model config,
task, training config) in a Python thread of its own, with one progress bar for all of them and,
given a time budget, stops them all once it projects they would overrun it (`OverBudget`)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from tqdm.auto import tqdm

from helpers.models import HookedTransformerConfig
from helpers.phase_change.records import TrainingRecord, record_training
from helpers.train import Task, TrainConfig, one_thread

Setting = tuple[HookedTransformerConfig, Task, TrainConfig]
# `record_runs` projects the time left from the speed after the first steps (before them come
# one-time costs: threads, torch's first calls, the first records), once it has measured it for
# this long: long enough that a short spell of load on the machine weighs little.
PROJECT_AFTER_S = 3.0


class _Cancelled(Exception):
    """Stops the other runs of `record_runs` when one fails or the caller is interrupted."""


class OverBudget(Exception):
    """`record_runs` gave up: the whole would have taken longer than its `budget_s`."""

    def __init__(self, projected_s: float, elapsed_s: float, budget_s: float):
        super().__init__(
            f"the runs would have taken about {projected_s:.0f} s, more than the budget of "
            f"{budget_s:g} s (stopped after {elapsed_s:.1f} s)"
        )
        self.projected_s, self.elapsed_s, self.budget_s = projected_s, elapsed_s, budget_s


def record_runs(
    settings: dict[str, Setting],
    *,
    side_by_side: int = 2,
    progress: bool = True,
    desc: str = "training",
    budget_s: float | None = None,
    **record_kwargs,
) -> dict[str, TrainingRecord]:
    """`record_training` for each setting (name -> (model config, task, training config)),
    `side_by_side` runs at a time, each in a Python thread with torch on one thread
    (`helpers.train.one_thread`); the records come back in the settings' order, under their
    names. `record_kwargs` go to every `record_training` (`every`, `snapshots`, `stop_below` …).

    Why threads: the course's models are too small for torch to spread one run over two cores
    well, but two runs keep both busy; torch lets go of Python's lock inside every operation.
    Each run has its own model, optimiser and batch generator, so a record is the same, number
    for number, as the run alone.

    One progress bar counts the steps of all runs, with the time left projected from the
    average speed so far; a run that stops early (`stop_below`) counts its remaining steps as
    done when it stops, and the bar's note says how many runs are done. With `budget_s`, once
    the speed since the first steps (measured for `PROJECT_AFTER_S` seconds) projects the whole
    to take longer, or the time spent passes it, every run stops and `OverBudget` is raised. If a run fails, or the
    cell is interrupted, the others stop at their next step and the error is raised."""
    if not isinstance(side_by_side, int) or isinstance(side_by_side, bool) or side_by_side < 1:
        raise ValueError(f"side_by_side must be a positive int, got {side_by_side!r}")
    if budget_s is not None and not _is_positive(budget_s):
        raise ValueError(f"budget_s must be None or a number of seconds > 0, got {budget_s!r}")
    for key in ("name", "progress", "on_step"):
        if key in record_kwargs:
            raise ValueError(f"record_runs sets {key!r} itself; pass the others of record_training")
    if not isinstance(settings, Mapping):
        raise ValueError(
            "settings must be a dict of name -> (model config, task, training config), "
            f"got {type(settings).__name__}"
        )
    for name, setting in settings.items():
        if not (isinstance(setting, tuple) and len(setting) == 3
                and isinstance(setting[2], TrainConfig)):  # fmt: skip
            raise ValueError(
                f"settings[{name!r}] must be a tuple (model config, task, training config), "
                f"got {type(setting).__name__}"
            )
    done = dict.fromkeys(settings, 0)
    stop = threading.Event()

    def run(name: str, setting: Setting) -> TrainingRecord:
        cfg, task, train_cfg = setting

        def tick(steps: int) -> None:
            if stop.is_set():
                raise _Cancelled
            done[name] = steps

        try:
            if stop.is_set():  # another run failed before this one had a thread
                raise _Cancelled
            return record_training(cfg, task, train_cfg, name=name, progress=False,
                                   on_step=tick, **record_kwargs)  # fmt: skip
        except BaseException:
            stop.set()  # before this thread takes the next run
            raise
        finally:
            done[name] = train_cfg.n_steps

    total = sum(train_cfg.n_steps for _, _, train_cfg in settings.values())
    # smoothing=0: the time left from the average speed since the start, which the jumps of runs
    # stopping early do not throw about
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress, leave=False,
               smoothing=0)  # fmt: skip
    start, first = time.perf_counter(), None  # first: (seconds, steps) at the first steps done
    with one_thread(), ThreadPoolExecutor(side_by_side) as pool:
        futures = {name: pool.submit(run, name, setting) for name, setting in settings.items()}
        try:
            pending = set(futures.values())
            while pending:
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                steps = sum(done.values())
                bar.update(steps - bar.n)
                bar.set_postfix_str(f"{len(futures) - len(pending)}/{len(futures)} runs done")
                if any(future.exception() is not None for future in finished):
                    wait(futures.values())  # the failed run set `stop`: the others stop soon
                    errors = [f.exception() for f in futures.values() if f.exception()]
                    # the run that failed, not one it stopped
                    raise next((e for e in errors if not isinstance(e, _Cancelled)), errors[0])
                if budget_s is not None and pending:
                    elapsed = time.perf_counter() - start
                    if first is None and steps:
                        first = (elapsed, steps)
                    projected, measured = math.inf, 0.0
                    if first is not None and steps > first[1]:
                        measured = elapsed - first[0]
                        projected = elapsed + (total - steps) * measured / (steps - first[1])
                    if elapsed > budget_s or (measured >= PROJECT_AFTER_S and projected > budget_s):
                        raise OverBudget(projected, elapsed, budget_s)
        except BaseException:
            stop.set()  # the pool's exit waits for the others; they stop at their next step
            for future in futures.values():
                future.cancel()  # and the runs not started yet never start
            raise
        finally:
            bar.close()
    return {name: future.result() for name, future in futures.items()}


def _is_positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf
