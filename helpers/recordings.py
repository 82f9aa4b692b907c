"""Chapter 05's runs, live or recorded: its training runs and its sweep are trained here while
the learner watches, or, when this machine is too slow or the learner stops them, loaded from
`data/phase_change_runs.pt`, which holds the very records these settings give (tests check it).

`phase_change_runs` and `phase_change_sweep` are what the notebook calls; `make_recording` writes
the file, `load_recording` reads it back. `python -m helpers.recordings [NAME ...]`, which is what
`python3 course.py checkpoints` runs, rebuilds every file of `data/`: the recipes' checkpoints
(`helpers.recipes`) and this recording (NAME `phase_change_runs`).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import pickle
import platform
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from pathlib import Path

import torch
from torch import Tensor

from helpers import phase_change, recipes
from helpers.checkpoints import CheckpointError
from helpers.models import HookedTransformerConfig
from helpers.phase_change import Setting, TrainingRecord
from helpers.recipes import DATA_DIR, RECIPES, ROOT

PHASE_CHANGE_EVERY = 20  # steps between the records of the chapter's runs: its replay's frames
# the runs whose weights the chapter uses (its replay, ablations, the smeared keys' mixes); the
# one-layer control's are not kept, which makes the recording a third smaller
PHASE_CHANGE_WEIGHTS = ("two layers", "one layer, smeared keys")
RECORDING_FORMAT = "transformer-circuits-course/phase-change-runs/1"
RECORDING_NAME = "phase_change_runs"
REGENERATE_RECORDING = f"Regenerate it with `python3 course.py checkpoints {RECORDING_NAME}`."
_RECORD_FIELDS = [f.name for f in fields(TrainingRecord) if f.name != "source"]


# Where a whole run of the course is checked rather than watched (the everyday test suite, a
# teacher's `course.py progress` or `course.py site`), this environment variable decides what
# `live=None` does: "recorded" loads the recording, "live" trains. The test suite sets "recorded"
# (conftest.py): the live runs are checked against the recording by tests of their own.
RUNS_ENV = "COURSE_PHASE_CHANGE_RUNS"


def phase_change_settings() -> dict[str, Setting]:
    """Chapter 05's runs: induction_2l and induction_1l trained afresh, for 600 steps instead
    of 1500 (the phase change comes well before the end), and the one-layer model with smeared
    keys, whose phase change comes earlier (250 steps)."""
    two, one = RECIPES["induction_2l"], RECIPES["induction_1l"]
    language = two.make_task()
    training = replace(two.training, n_steps=600)
    return {
        "two layers": (two.model, language, training),
        "one layer": (one.model, language, training),
        "one layer, smeared keys": (
            replace(one.model, smeared_keys=True),
            language,
            replace(training, n_steps=250),
        ),  # fmt: skip
    }


def recording_path() -> Path:
    return DATA_DIR / f"{RECORDING_NAME}.pt"


def _train_phase_change(names: Sequence[str], progress: bool, budget_s: float | None = None):
    settings = phase_change_settings()
    runs = phase_change.record_runs({name: settings[name] for name in names},
                                    every=PHASE_CHANGE_EVERY, progress=progress,
                                    budget_s=budget_s)  # fmt: skip
    for name, run in runs.items():
        if name not in PHASE_CHANGE_WEIGHTS:
            run.snapshots = []
    return runs


def phase_change_runs(
    names: Sequence[str], *, live: bool | None = None, budget_s: float = 60.0, progress: bool = True
) -> dict[str, TrainingRecord]:
    """The named runs of `phase_change_settings()` (two side by side, `phase_change.record_runs`),
    after a line saying which they are: trained here (`live=True`), loaded from their recording
    (`live=False`), or, by default (`live=None`, unless `RUNS_ENV` is set), trained here unless
    this machine is too slow:
    once the steps done so far project the whole to take longer than `budget_s` seconds,
    training stops and the recording is loaded, as it is when the cell is interrupted. The
    recording holds the records these very settings give (a test checks it), so the rest of the
    chapter is the same either way."""
    _check_live(live, budget_s)
    settings = phase_change_settings()
    if isinstance(names, str) or not names or any(name not in settings for name in names):
        raise ValueError(f"names must be a list of runs among {list(settings)}, got {names!r}")
    names = list(names)

    def train_here(budget: float | None) -> dict[str, TrainingRecord]:
        return _train_phase_change(names, progress, budget)

    return _live_or_recorded("runs", names, train_here, live, budget_s)[0]


_SWEEPS: dict[str, tuple[dict[str, TrainingRecord], str]] = {}  # source -> (runs, its line)


def phase_change_sweep(
    *, live: bool | None = None, budget_s: float = 60.0, progress: bool = True
) -> dict[str, TrainingRecord]:
    """Exercise 5.6's sweep, `phase_change.sweep(phase_change.sweep_settings())`, trained here or
    recorded as `phase_change_runs` decides, once per session: the checker and the chapter's claim
    share it (`live=None` takes whichever this session already has)."""
    _check_live(live, budget_s)
    for source in {True: ("live",), False: ("recorded",), None: ("live", "recorded")}[live]:
        if source in _SWEEPS:
            runs, line = _SWEEPS[source]
            print(f"{line}; kept from earlier in this session")
            return runs
    settings = phase_change.sweep_settings()

    def train_here(budget: float | None) -> dict[str, TrainingRecord]:
        return phase_change.sweep(settings, progress=progress, budget_s=budget)

    runs, line = _live_or_recorded("sweep", list(settings), train_here, live, budget_s)
    _SWEEPS[runs["base"].source] = (runs, line)
    return runs


def _check_live(live: object, budget_s: object) -> None:
    if live not in (True, False, None) or not isinstance(live, (bool, type(None))):
        raise ValueError(f"live must be True, False or None (decide by speed), got {live!r}")
    if not (isinstance(budget_s, (int, float)) and not isinstance(budget_s, bool)
            and 0 < budget_s < math.inf):  # fmt: skip
        raise ValueError(f"budget_s must be a number of seconds > 0, got {budget_s!r}")


def _live_or_recorded(
    part: str, names: list[str], train_here: Callable, live: bool | None, budget_s: float
) -> tuple[dict[str, TrainingRecord], str]:
    """The runs `names` of the recording's `part` ("runs" or "sweep"), or `train_here(budget)`,
    as `phase_change_runs` says, and the line saying which they are (printed)."""
    path = recording_path()
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    asked = "as asked (LIVE = False)"
    if live is None and os.environ.get(RUNS_ENV):
        choice = os.environ[RUNS_ENV]
        if choice not in ("live", "recorded"):
            raise ValueError(f"{RUNS_ENV} must be 'live' or 'recorded', got {choice!r}")
        live, asked = choice == "live", f"as {RUNS_ENV}={choice} asks"
    recorded, missing = None, ""
    if live is not True:
        try:
            recording = load_recording(path)[part]
            recorded = {name: recording[name] for name in names}
        except (FileNotFoundError, CheckpointError) as err:
            if live is False:
                raise
            missing = f" (no recording to fall back on: {err})"
    if live is False:
        runs, line = recorded, f"recorded runs from {shown}, {asked}"
    else:
        start = time.perf_counter()
        try:
            runs = train_here(None if recorded is None else budget_s)
            line = f"live: trained here in {time.perf_counter() - start:.1f} s{missing}"
        except phase_change.OverBudget as err:
            runs = recorded
            slow = (f"would have needed about {err.projected_s:.0f} s to train them"
                    if math.isfinite(err.projected_s)
                    else f"had not done one training step after {err.elapsed_s:.0f} s")  # fmt: skip
            line = (f"recorded runs from {shown}: this machine {slow} (the budget is "
                    f"{budget_s:g} s); set LIVE = True to train here anyway")  # fmt: skip
        except KeyboardInterrupt:
            if recorded is None:
                raise
            runs = recorded
            line = (f"recorded runs from {shown}: training here was interrupted after "
                    f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    print(line)
    return runs, line


def _settings_of(settings: dict[str, Setting], **record_kwargs) -> dict[str, dict]:
    """What the recording keeps of the settings it was made with, to tell when they changed."""
    return {
        name: {
            "model": cfg.to_dict(),
            "task": {k: v for k, v in task.to_dict().items() if not isinstance(v, Tensor)},
            "training": train_cfg.to_dict(),
            **record_kwargs,
        }
        for name, (cfg, task, train_cfg) in settings.items()
    }


@functools.cache  # the settings are the code's: building their languages once is enough
def _recorded_settings() -> dict[str, dict]:
    return {
        "runs": _settings_of(phase_change_settings(), every=PHASE_CHANGE_EVERY,
                             weights=list(PHASE_CHANGE_WEIGHTS)),
        "sweep": _settings_of(phase_change.sweep_settings(), every=phase_change.SWEEP_EVERY,
                              below=phase_change.FORMED_BELOW),
    }  # fmt: skip


def make_recording(path: str | Path, progress: bool = True) -> Path:
    """Train chapter 05's runs and its sweep, and save their records to `path`: tensors,
    numbers, strings and plain containers only, with the settings they were made with and what
    made them (`load_recording` reads it back)."""
    path = Path(path)
    runs = _train_phase_change(list(phase_change_settings()), progress)
    swept = phase_change.sweep(phase_change.sweep_settings(), progress=progress)
    payload = {
        "format": RECORDING_FORMAT,
        "made_with": {"torch": str(torch.__version__), "python": platform.python_version(),
                      "machine": platform.machine(), "processor": platform.processor()},
        "settings": _recorded_settings(),
        **{part: {name: {key: getattr(record, key) for key in _RECORD_FIELDS}
                  | {"cfg": record.cfg.to_dict()} for name, record in records.items()}
           for part, records in (("runs", runs), ("sweep", swept))},
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # never leave a half-written recording under the real name
    return path


def load_recording(path: str | Path | None = None) -> dict[str, dict[str, TrainingRecord]]:
    """The recording (default `recording_path()`): {"runs": chapter 05's records, "sweep": the
    sweep's}, each record's `source` "recorded". Read with `torch.load(weights_only=True)`, which
    unpickles nothing but tensors and plain containers; a file that is missing, corrupt, of
    another kind or made with other settings than the code's now is refused with the reason."""
    path = recording_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"the recording {path} does not exist. {REGENERATE_RECORDING}")
    if not zipfile.is_zipfile(path):  # what torch.save writes
        raise CheckpointError(f"could not read {path}: the file is truncated or not a recording "
                              f"of chapter 05's runs. {REGENERATE_RECORDING}")  # fmt: skip
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" not in str(err):
            raise CheckpointError(
                f"could not read {path}: it is corrupt. {REGENERATE_RECORDING}"
            ) from None
        raise CheckpointError(
            f"refused to load {path}: it holds Python objects other than tensors and plain "
            "containers, which could run code when unpickled (nothing was executed). "
            f"{REGENERATE_RECORDING}"
        ) from None
    except Exception as err:  # corrupt files fail in many ways, deep inside torch.load
        raise CheckpointError(
            f"could not read {path} ({type(err).__name__}: {err}). {REGENERATE_RECORDING}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != RECORDING_FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a recording of chapter 05's runs: expected format "
                              f"{RECORDING_FORMAT!r}, got {got!r}")  # fmt: skip
    if payload.get("settings") != _recorded_settings():
        raise CheckpointError(f"{path} was recorded with other settings than the code's now "
                              f"(phase_change_settings, phase_change.sweep_settings). "
                              f"{REGENERATE_RECORDING}")  # fmt: skip
    return {part: {name: _record_from(path, f"{part} {name!r}", entry)
                   for name, entry in _dict_of(path, part, payload.get(part)).items()}
            for part in ("runs", "sweep")}  # fmt: skip


def _dict_of(path: Path, where: str, value: object) -> dict:
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: {where} must be a dict, got {type(value).__name__}")
    return value


def _record_from(path: Path, where: str, entry: object) -> TrainingRecord:
    """The record `where` of the file, once every field has been checked."""
    entry = _dict_of(path, where, entry)
    if sorted(entry) != sorted(_RECORD_FIELDS):
        raise CheckpointError(f"{path}: {where} has the fields {sorted(entry)}; expected "
                              f"{sorted(_RECORD_FIELDS)}. {REGENERATE_RECORDING}")  # fmt: skip
    try:
        cfg = HookedTransformerConfig.from_dict(_dict_of(path, f"{where} cfg", entry["cfg"]))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: {where} has an invalid config: {err}") from None
    n = len(entry["steps"]) if isinstance(entry["steps"], list) else -1
    problems = [f"{key} must be a list of {n} numbers"
                for key in ("steps", "heldout_loss", "icl", "repeat_ratio")
                if not _numbers(entry[key], n)]  # fmt: skip
    if not _numbers(entry["train_loss"]):
        problems.append("train_loss must be a list of numbers")
    heads = (n, cfg.n_layers, cfg.n_heads) if cfg.n_layers else (n, 0, 0)
    for key in ("previous_token", "prefix_matching"):
        if not (isinstance(entry[key], Tensor) and tuple(entry[key].shape) == heads):
            problems.append(f"{key} must be a tensor of shape {heads}")
    shapes = cfg.parameter_shapes()
    snapshots = entry["snapshots"]
    if not (isinstance(snapshots, list) and len(snapshots) in (0, n)
            and all(_state_shapes(s) == shapes for s in snapshots)):  # fmt: skip
        problems.append(f"snapshots must be none or {n} state dicts of the config's shapes")
    if problems:
        raise CheckpointError(f"{path}: {where}: {'; '.join(problems)}. {REGENERATE_RECORDING}")
    return TrainingRecord(**{**entry, "cfg": cfg, "source": "recorded"})


def _numbers(values: object, n: int | None = None) -> bool:
    if not isinstance(values, list) or (n is not None and len(values) != n):
        return False
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _state_shapes(state: object) -> dict | None:
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        return None
    return {k: tuple(v.shape) for k, v in state.items()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description="Rebuild the course's files in data/: checkpoints and recorded runs."
    )
    choices = [*RECIPES, RECORDING_NAME]
    parser.add_argument("names", nargs="*", help=f"what to build (default: all of {choices})")
    args = parser.parse_args(argv)
    for name in args.names:
        if name not in choices:
            raise ValueError(f"no recipe named {name!r}; available: {', '.join(choices)}")
    names = args.names or choices
    progress = sys.stderr.isatty()
    recipes.build([n for n in names if n in RECIPES], progress=progress)
    if RECORDING_NAME in names:
        start = time.perf_counter()
        path = make_recording(recording_path(), progress=progress)
        print(f"{path.name}: {path.stat().st_size / 1e6:.1f} MB in "
              f"{time.perf_counter() - start:.1f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
