"""When does it happen? `formation_step` says when induction formed in a recorded run; `sweep`
trains many small runs, each until induction forms; `sweep_settings` is the chapter's sweep
(exercise 5.6), `sweep_changes` says what each of its runs changes from the base run, and
`sweep_outcomes` when induction formed in each, compared with the base run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace

from torch import Tensor

from helpers.data import RepeatedSegmentLanguage
from helpers.models import HookedTransformerConfig
from helpers.phase_change.records import TrainingRecord
from helpers.phase_change.runs import Setting, record_runs
from helpers.train import TrainConfig

# Induction has formed once the loss on repeated tokens is below half the loss on fresh ones: the
# ratio starts near 1, stays near it in a model that predicts from the bigram background alone,
# and falls far below it with induction (chapter 04's checkpoints: above 0.6 with one layer,
# below 0.25 with two).
FORMED_BELOW = 0.5


def formation_step(record: TrainingRecord, below: float = FORMED_BELOW) -> int | None:
    """The first recorded step at which the loss ratio on repeats was below `below`: when
    induction (or some other use of the context) had formed; None if it never was."""
    return next(
        (s for s, r in zip(record.steps, record.repeat_ratio, strict=True) if r < below), None
    )


SWEEP_EVERY = 25  # steps between the sweep's records: when a run checks whether it is done


def sweep(
    settings: dict[str, Setting],
    *,
    every: int = SWEEP_EVERY,
    below: float = FORMED_BELOW,
    progress: bool = True,
    budget_s: float | None = None,
) -> dict[str, TrainingRecord]:
    """Train one fresh model per setting (name -> (model config, task, training config)), each
    stopping as soon as the loss on repeats falls below `below` times the fresh loss (see
    `formation_step`), and return the records (without weights). Two runs at a time
    (`record_runs`, which also says what `budget_s` does)."""
    return record_runs(settings, every=every, snapshots=False, stop_below=below,
                       progress=progress, desc="sweep", budget_s=budget_s)  # fmt: skip


SWEEP_OUTCOMES = ("earlier", "the same", "later", "never")  # compared with the base run


def sweep_settings() -> dict[str, Setting]:
    """The chapter's sweep: "base", a small, fast two-layer model (one head per layer), and seven
    runs that each change one thing of it (`sweep_changes` says what). Each run stops at
    induction (`formation_step`) or at the end of its steps."""
    language = RepeatedSegmentLanguage(n_states=100, segment_len=(8, 15), scale=1.0, seed=0)
    base = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=1, d_head=32, n_ctx=32,
                                   d_vocab=101, initializer_range=0.2, seed=0)  # fmt: skip
    training = TrainConfig(n_steps=300, batch_size=64, lr=1.5e-2, seed=0)
    short = RepeatedSegmentLanguage(n_states=100, segment_len=(4, 8), scale=1.0, seed=0)
    return {
        "base": (base, language, training),
        "half the learning rate": (base, language, replace(training, lr=7.5e-3)),
        "a fifth of the learning rate": (base, language, replace(training, lr=3e-3)),
        "segments of 4-8 tokens": (base, short, training),
        "standard positions": (
            replace(base, positional_embedding_type="standard"),
            language,
            training,
        ),  # fmt: skip
        "smeared keys": (replace(base, smeared_keys=True), language, training),
        "one layer": (replace(base, n_layers=1), language, training),
        "one layer, smeared keys": (
            replace(base, n_layers=1, smeared_keys=True),
            language,
            training,
        ),  # fmt: skip
    }


def sweep_changes(settings: Mapping[str, Setting] | None = None) -> dict[str, str]:
    """What each run of a sweep (default: `sweep_settings()`) changes from its "base" run, read
    off the settings themselves: the fields of the model config, the language and the training
    config that differ, e.g. {"one layer": "n_layers 1 instead of 2"}."""
    settings = sweep_settings() if settings is None else settings
    if "base" not in settings:
        raise ValueError(f"a sweep needs a run named 'base', got {list(settings)}")

    def fields_of(setting: Setting) -> list[dict]:
        cfg, task, training = setting
        language = {k: tuple(v) if isinstance(v, list) else v
                    for k, v in task.to_dict().items() if not isinstance(v, Tensor)}  # fmt: skip
        return [{f.name: getattr(cfg, f.name) for f in fields(cfg)}, language,
                {f.name: getattr(training, f.name) for f in fields(training)}]  # fmt: skip

    base = fields_of(settings["base"])
    changes = {}
    for name, setting in settings.items():
        if name == "base":
            continue
        differ = [f"{key} {part[key]!r} instead of {base_part.get(key)!r}"
                  for part, base_part in zip(fields_of(setting), base, strict=True)
                  for key in part if part[key] != base_part.get(key)]  # fmt: skip
        changes[name] = "; ".join(differ) or "nothing"
    return changes


def sweep_outcomes(runs: Mapping[str, TrainingRecord]) -> dict[str, str]:
    """For each run but "base": when induction formed (`formation_step`) compared with the base
    run, one of `SWEEP_OUTCOMES` ("never": not by its last step)."""
    base = formation_step(runs["base"])
    outcomes = {}
    for name, run in runs.items():
        step = formation_step(run)
        if name != "base":
            outcomes[name] = ("never" if step is None else "earlier" if base is None or step < base
                              else "later" if step > base else "the same")  # fmt: skip
    return outcomes
