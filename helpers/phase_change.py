"""The induction-head phase change (chapter 05): train while recording what forms, measure
in-context learning, and find the window where everything changes at once.

Olsson et al. (2022), "In-context Learning and Induction Heads", Argument 1: early in training,
in one narrow window, induction heads form (the prefix-matching score jumps), in-context learning
appears (the ICL score drops from > -0.15 to about -0.4 nats) and the training loss bends down, the
one place where its curve is not convex; a one-layer model shows none of these.
`record_training` trains a model and records, every `every` steps, the held-out loss, the ICL
score, each head's previous-token and prefix-matching scores and a copy of the weights;
`find_phase_change` finds the onset of each change; `continuation_kinds` splits tokens into the
paper's "Dursleys" (an earlier bigram repeated) and "Mrs Potter" (an earlier bigram contradicted).
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from helpers.data import BOS, PROBE_LENGTH, RepeatedSegmentLanguage, induction_probe
from helpers.evals import induction_scores, previous_token_scores, repeat_loss
from helpers.models import AttnOnlyTransformer, HookedTransformerConfig, next_token_loss
from helpers.references import reference
from helpers.train import Task, TrainConfig, one_thread, train

# Thresholds of `find_phase_change`, calibrated on the course's runs (chapter 05 prints them):
# the two-layer model's max prefix-matching score rises by ~0.7 and its ICL score falls by ~1.2
# nats; the one-layer control's change by less than 0.1. Its loss bends down by ~0.4 nats per 100
# steps at the phase change; the control's slope never falls more than ~0.03 below its best.
MIN_RISE = 0.3  # prefix-matching score
MIN_DROP = 0.3  # ICL score, nats
MIN_BEND = 0.1  # held-out loss slope, nats per 100 steps
BEND_ONSET = 0.05  # nats per 100 steps
ONSET_FRACTION = 0.1  # a change starts when a tenth of it is done


def icl_positions(n_ctx: int) -> tuple[int, int]:
    """(early, late) token positions of the ICL score for sequences of `n_ctx` tokens: about a
    tenth and nine tenths of the way in (Olsson et al. use the 50th and 500th of 512)."""
    if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx < 4:
        raise ValueError(f"n_ctx must be an int >= 4, got {n_ctx!r}")
    return max(1, round(0.1 * n_ctx)), min(n_ctx - 1, round(0.9 * n_ctx))


@reference
def icl_score_from_losses(losses: Tensor, early: int, late: int) -> float:
    """The in-context-learning score from per-token losses `[batch, pos - 1]` (entry i is the
    loss of predicting token i + 1): mean loss of the token at position `late` minus mean loss
    of the token at position `early`. Negative when later tokens are easier (Olsson et al.,
    "In-context learning score"; they quote it with the opposite sign, as early minus late)."""
    if not isinstance(losses, Tensor) or losses.ndim != 2:
        raise ValueError("losses must be a [batch, pos - 1] tensor of per-token losses")
    n = losses.shape[1] + 1
    for name, position in (("early", early), ("late", late)):
        if not isinstance(position, int) or isinstance(position, bool) or not 1 <= position < n:
            raise ValueError(f"{name} must be a token position in 1..{n - 1}, got {position!r}")
    if early >= late:
        raise ValueError(f"early ({early}) must come before late ({late})")
    return float(losses[:, late - 1].mean().detach() - losses[:, early - 1].mean().detach())


@reference
@torch.no_grad()
def icl_score(
    model: AttnOnlyTransformer, tokens: Tensor, early: int | None = None, late: int | None = None
) -> float:
    """The model's ICL score on `tokens` (held-out sequences from the training distribution);
    positions default to `icl_positions` of the sequence length."""
    tokens = model.validate_tokens(tokens)
    default = icl_positions(tokens.shape[1])
    early, late = default[0] if early is None else early, default[1] if late is None else late
    losses = next_token_loss(model(tokens), tokens, per_token=True)
    return icl_score_from_losses(losses, early, late)


@dataclass
class TrainingRecord:
    """What `record_training` saw, one entry per record (every `every` steps and at the end)."""

    name: str
    cfg: HookedTransformerConfig
    steps: list[int]
    heldout_loss: list[float]  # mean loss over every position of the held-out batch
    icl: list[float]
    repeat_ratio: list[float]  # loss on repeated / fresh tokens of the induction probe
    previous_token: Tensor  # [record, layer, head]
    prefix_matching: Tensor  # [record, layer, head]
    train_loss: list[float]  # every step
    seconds: float  # of training, the records included
    snapshots: list[dict[str, Tensor]] = field(default_factory=list, repr=False)

    def model_at(self, index: int) -> AttnOnlyTransformer:
        """The model as it was at record `index` (needs snapshots)."""
        if not self.snapshots:
            raise ValueError("this record kept no weights (record_training(snapshots=False))")
        if not isinstance(index, int) or not -len(self.steps) <= index < len(self.steps):
            raise ValueError(f"index must be an int in 0..{len(self.steps) - 1}, got {index!r}")
        model = AttnOnlyTransformer(self.cfg)
        model.load_state_dict(self.snapshots[index])
        return model.eval()

    def index_of(self, step: int) -> int:
        """The record at `step`, or the last one before it."""
        return max(0, int(np.searchsorted(self.steps, step, side="right")) - 1)


def record_training(
    cfg: HookedTransformerConfig,
    task: Task,
    train_cfg: TrainConfig,
    *,
    name: str = "",
    every: int = 20,
    snapshots: bool = True,
    heldout: Tensor | None = None,
    progress: bool = True,
    stop_below: float | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainingRecord:
    """Train a fresh model of `cfg` on `task` and record, every `every` steps: the held-out loss
    and ICL score on `heldout` (default: 256 sequences of the task, a fixed seed), each head's
    previous-token and prefix-matching scores on the induction probe, the loss ratio on repeats,
    and (if `snapshots`) the weights. With `stop_below`, training stops at the first record
    where the loss ratio on repeats is below it (induction has formed). `on_step` is passed to
    `train`."""
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"every must be a positive int, got {every!r}")
    seq_len = train_cfg.sequence_length(cfg)
    probe = induction_probe(cfg.d_vocab - 1, batch_size=50, seed=0)
    if probe.shape[1] > cfg.n_ctx:
        raise ValueError(
            f"the induction probe has {probe.shape[1]} positions; the model's n_ctx must be at "
            f"least that to score its heads, got {cfg.n_ctx}"
        )
    if heldout is None:
        heldout = task.sample(256, seq_len, generator=torch.Generator().manual_seed(12345))
    early, late = icl_positions(heldout.shape[1])
    record = TrainingRecord(name, cfg, [], [], [], [], torch.empty(0), torch.empty(0), [], 0.0)
    previous, prefix = [], []
    model = AttnOnlyTransformer(cfg)

    def observe(m: AttnOnlyTransformer) -> float:
        losses = next_token_loss(m(heldout), heldout, per_token=True)
        record.heldout_loss.append(float(losses.mean()))
        record.icl.append(icl_score_from_losses(losses, early, late))
        record.repeat_ratio.append(repeat_loss(m(probe), probe, PROBE_LENGTH).ratio)
        if cfg.n_layers:
            previous.append(previous_token_scores(m, probe))
            prefix.append(induction_scores(m, probe, PROBE_LENGTH))
        if snapshots:
            record.snapshots.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        return record.heldout_loss[-1]

    def formed(_history) -> bool:
        return stop_below is not None and record.repeat_ratio[-1] < stop_below

    history = train(model, task, replace(train_cfg, eval_every=every), {"heldout": observe},
                    progress=progress, stop_when=formed, on_step=on_step)  # fmt: skip
    record.steps = list(history["eval_step"])
    record.train_loss = history["loss"]
    record.seconds = history["seconds"][0]
    empty = torch.zeros(len(record.steps), 0, 0)
    record.previous_token = torch.stack(previous) if previous else empty
    record.prefix_matching = torch.stack(prefix) if prefix else empty
    return record


# -- finding the window --------------------------------------------------------------------


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


# -- "Mrs Potter" -------------------------------------------------------------------------


@reference
def continuation_kinds(tokens: Tensor) -> tuple[Tensor, Tensor]:
    """(repeats, conflicts), both `[batch, pos]` bool: token t repeats an earlier bigram when the
    token before it, t - 1, occurred earlier and was followed there by the same token as now (the
    paper's " The Dursleys" the second time); it conflicts when the most recent earlier
    occurrence of token t - 1 was followed by a different token (the first " Mrs Potter" after
    two " Mrs Dursley"). BOS and the first token are neither."""
    if not isinstance(tokens, Tensor) or tokens.ndim != 2:
        raise ValueError("tokens must be a [batch, pos] tensor of token ids")
    batch, n = tokens.shape
    previous = tokens[:, :-1]  # token t - 1 for t = 1..n-1
    # same[b, t, j]: token at j (< t - 1) equals token t - 1
    same = previous[:, :, None] == previous[:, None, :]
    earlier = torch.ones(n - 1, n - 1).tril(-1).bool()
    occurs = same & earlier & (previous[:, None, :] != BOS)
    any_earlier = occurs.any(-1)
    # the most recent earlier occurrence j, and what followed it (token j + 1)
    latest = torch.where(occurs, torch.arange(n - 1), -1).amax(-1).clamp_min(0)
    followed_by = tokens.gather(1, latest + 1)
    now = tokens[:, 1:]
    repeats = torch.zeros(batch, n, dtype=torch.bool)
    conflicts = torch.zeros(batch, n, dtype=torch.bool)
    repeats[:, 1:] = any_earlier & (followed_by == now)
    conflicts[:, 1:] = any_earlier & (followed_by != now)
    return repeats, conflicts


def formation_step(record: TrainingRecord, below: float = 0.5) -> int | None:
    """The first recorded step at which the loss ratio on repeats was below `below`: when
    induction (or some other use of the context) had formed; None if it never was."""
    return next(
        (s for s, r in zip(record.steps, record.repeat_ratio, strict=True) if r < below), None
    )


# -- when does it happen? ------------------------------------------------------------------

Setting = tuple[HookedTransformerConfig, Task, TrainConfig]


class _Cancelled(Exception):
    """Stops the other runs of `record_runs` when one fails or the caller is interrupted."""


def record_runs(
    settings: dict[str, Setting],
    *,
    side_by_side: int = 2,
    progress: bool = True,
    desc: str = "training",
    **record_kwargs,
) -> dict[str, TrainingRecord]:
    """`record_training` for each setting (name -> (model config, task, training config)),
    `side_by_side` runs at a time, each in a Python thread with torch on one thread
    (`helpers.train.one_thread`); the records come back in the settings' order, under their
    names. `record_kwargs` go to every `record_training` (`every`, `snapshots`, `stop_below` …).

    Why threads: the course's models are too small for torch to spread one run over two cores
    well, but two runs keep both busy; torch lets go of Python's lock inside every operation. On a
    2-core machine the chapter's sweep took 12 s instead of 20. Each run has its own model,
    optimiser and batch generator, so a record is the same, number for number, as the run alone.
    One progress bar counts the steps of all runs (a run stopped early counts as complete). If a
    run fails, or the cell is interrupted, the others stop at their next step and the error is
    raised."""
    if not isinstance(side_by_side, int) or isinstance(side_by_side, bool) or side_by_side < 1:
        raise ValueError(f"side_by_side must be a positive int, got {side_by_side!r}")
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
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress, leave=False)
    with one_thread(), ThreadPoolExecutor(side_by_side) as pool:
        futures = {name: pool.submit(run, name, setting) for name, setting in settings.items()}
        try:
            pending = set(futures.values())
            while pending:
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                bar.update(sum(done.values()) - bar.n)
                bar.set_postfix_str(f"{len(futures) - len(pending)}/{len(futures)} runs done")
                if any(future.exception() is not None for future in finished):
                    wait(futures.values())  # the failed run set `stop`: the others stop soon
                    errors = [f.exception() for f in futures.values() if f.exception()]
                    # the run that failed, not one it stopped
                    raise next((e for e in errors if not isinstance(e, _Cancelled)), errors[0])
        except BaseException:
            stop.set()  # the pool's exit waits for the others; they stop at their next step
            for future in futures.values():
                future.cancel()  # and the runs not started yet never start
            raise
        finally:
            bar.close()
    return {name: future.result() for name, future in futures.items()}


def sweep(
    settings: dict[str, Setting], *, every: int = 25, below: float = 0.5, progress: bool = True
) -> dict[str, TrainingRecord]:
    """Train one fresh model per setting (name -> (model config, task, training config)), each
    stopping as soon as the loss on repeats falls below `below` times the fresh loss (see
    `formation_step`), and return the records (without weights). Two runs at a time
    (`record_runs`)."""
    return record_runs(settings, every=every, snapshots=False, stop_below=below,
                       progress=progress, desc="sweep")  # fmt: skip


def sweep_settings() -> dict[str, Setting]:
    """The chapter's sweep: a small, fast two-layer model (one head of 32 per layer, induction
    after about 150 steps, 2-3 s on a 2-core laptop) and seven changes of one thing each. Each run
    stops at induction or after 300 steps."""
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


@functools.cache
def chapter_sweep() -> dict[str, TrainingRecord]:
    """`sweep(sweep_settings())`, run once per session (exercise 5.6's checker and the
    chapter's figure share it)."""
    return sweep(sweep_settings())
