"""Training while recording what forms: `record_training` trains a model and records, every
`every` steps, the held-out loss, the ICL score, each head's previous-token and prefix-matching
scores, the loss ratio on repeats and a copy of the weights, in a `TrainingRecord`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from helpers.data import PROBE_LENGTH, induction_probe
from helpers.evals import induction_scores, previous_token_scores, repeat_loss
from helpers.models import AttnOnlyTransformer, HookedTransformerConfig, next_token_loss
from helpers.phase_change.icl import icl_positions, icl_score_from_losses
from helpers.train import Task, TrainConfig, train


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
    seconds: float  # of training, the records included (where it was trained)
    snapshots: list[dict[str, Tensor]] = field(default_factory=list, repr=False)
    source: str = "live"  # "live": trained in this session; "recorded": loaded from data/

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
