"""Training: an AdamW loop with a progress bar, a loss history and evaluation callbacks.

Deterministic: the model's initial weights come from its config's seed and every training batch
from a generator seeded by `TrainConfig.seed`, so the same configs on the same machine give the
same model. The global RNG is never used.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from helpers.models import AttnOnlyTransformer, HookedTransformerConfig, next_token_loss


class Task(Protocol):
    """What `train` needs from a language in `helpers.data`."""

    d_vocab: int

    def sample(
        self, batch_size: int, n_ctx: int, generator: torch.Generator | None = None
    ) -> Tensor: ...

    def to_dict(self) -> dict: ...


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class TrainConfig:
    n_steps: int
    batch_size: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    seq_len: int | None = None  # None: the model's n_ctx (see `sequence_length`)
    seed: int = 0
    eval_every: int = 100
    # The learning rate rises linearly over the first `warmup_steps` (large steps from an untrained
    # model's noisy gradients can kick it somewhere it never leaves: the real-text models of
    # chapter 06 need it), then stays at `lr` or, with `final_lr`, falls linearly to it by the end.
    warmup_steps: int = 0
    final_lr: float | None = None

    def __post_init__(self) -> None:
        for name in ("n_steps", "batch_size", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not (_is_number(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (_is_number(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(
                f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}"
            )
        if len(self.betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.seq_len is not None and (
            not isinstance(self.seq_len, int) or isinstance(self.seq_len, bool) or self.seq_len < 2
        ):
            raise ValueError(
                f"seq_len must be None (the model's n_ctx) or an int >= 2 (one position has "
                f"nothing to predict), got {self.seq_len!r}"
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if (
            not isinstance(self.warmup_steps, int)
            or isinstance(self.warmup_steps, bool)
            or not (0 <= self.warmup_steps < self.n_steps)
        ):
            raise ValueError(
                f"warmup_steps must be an int in [0, n_steps={self.n_steps}), "
                f"got {self.warmup_steps!r}"
            )
        if self.final_lr is not None and not (_is_number(self.final_lr) and self.final_lr >= 0):
            raise ValueError(
                f"final_lr must be None or a finite number >= 0, got {self.final_lr!r}"
            )

    def lr_at(self, step: int) -> float:
        """The learning rate of step `step` (0-based): warm-up, then constant or falling."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.final_lr is None:
            return self.lr
        done = (step - self.warmup_steps) / max(1, self.n_steps - 1 - self.warmup_steps)
        return self.lr + (self.final_lr - self.lr) * done

    def sequence_length(self, model_cfg: HookedTransformerConfig) -> int:
        """The length of the training sequences for a model: `seq_len`, or its n_ctx."""
        seq_len = model_cfg.n_ctx if self.seq_len is None else self.seq_len
        if seq_len > model_cfg.n_ctx:
            raise ValueError(
                f"seq_len={seq_len} is longer than the model's n_ctx={model_cfg.n_ctx}"
            )
        if seq_len < 2:
            raise ValueError(f"the model's n_ctx={seq_len} leaves nothing to predict; need >= 2")
        return seq_len

    def to_dict(self) -> dict:
        """The fields, for a checkpoint's history; a constant learning rate's schedule fields are
        left out, so the checkpoints made before schedules existed still match their recipes."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        if self.warmup_steps == 0:
            del d["warmup_steps"]
        if self.final_lr is None:
            del d["final_lr"]
        return d


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite. `history` holds what was recorded up to then."""

    def __init__(self, message: str, history: dict[str, list]):
        super().__init__(message)
        self.history = history


Callback = Callable[[AttnOnlyTransformer], float]
RESERVED_HISTORY_KEYS = ("loss", "eval_step", "seconds", "training")


def train(
    model: AttnOnlyTransformer,
    task: Task,
    cfg: TrainConfig,
    callbacks: Mapping[str, Callback] | None = None,
    progress: bool = True,
    stop_when: Callable[[dict[str, list]], bool] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, list]:
    """Train `model` in place on batches from `task`; return the history.

    The history holds `loss` (every step) and, every `cfg.eval_every` steps and at the end, the
    value of each callback under its name, at the steps listed in `eval_step`.
    Callbacks run in `torch.no_grad()` mode with the model in eval mode. A loss that becomes NaN
    or infinite stops training with `TrainingDiverged`. `stop_when(history)`, if given, is asked
    after each evaluation; True ends training there (e.g. once induction heads have formed).
    `on_step(steps_done)`, if given, is called after each step (progress reported elsewhere, as
    `helpers.phase_change.record_runs` does; an exception it raises stops training).
    """
    if task.d_vocab != model.cfg.d_vocab:
        raise ValueError(f"task has d_vocab={task.d_vocab} but the model {model.cfg.d_vocab}")
    cfg.sequence_length(model.cfg)  # a sequence length the model cannot take fails here, first
    callbacks = dict(callbacks or {})
    if clash := sorted(set(callbacks) & set(RESERVED_HISTORY_KEYS)):
        raise ValueError(
            f"callback names {clash} are taken by the history itself; "
            f"reserved: {list(RESERVED_HISTORY_KEYS)}"
        )
    generator = torch.Generator().manual_seed(cfg.seed)
    # fused: one kernel for every parameter's update instead of a dozen small ops each (about
    # 3 % of a step of the course's models; the same arithmetic, to float rounding)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True
    )
    history: dict[str, list] = {"loss": [], "eval_step": [], **{k: [] for k in callbacks}}

    def evaluate(step: int) -> None:
        if not callbacks:
            return
        model.eval()
        with torch.no_grad():
            history["eval_step"].append(step)
            for name, fn in callbacks.items():
                history[name].append(float(fn(model)))
        model.train()

    with one_thread():  # see one_thread: faster here, and much faster beside other work
        return _train_loop(
            model, task, cfg, progress, optimizer, history, evaluate, generator, stop_when, on_step
        )


@contextmanager
def one_thread() -> Iterator[None]:
    """Within the block, torch runs on one thread: the safe choice for the course's small
    models. On a quiet machine a second thread gains little on them, and beside other work it
    can lose a lot: two threads spin waiting for each other when another process takes a core,
    and a notebook rarely has the machine to itself (a browser, a second kernel, a teacher's
    screen share). `tools/benchmark.py training` times both, quiet and beside a busy process
    (BENCHMARKS.md). The second core is better spent on a second run beside the first
    (`helpers.phase_change.record_runs`).

    Torch's thread count belongs to the Python thread that sets it (new threads start from the
    last count set), so the block saves and gives back the count of the thread it runs in: blocks
    nest, and may be open in several threads at once (runs side by side)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train_loop(
    model, task, cfg, progress, optimizer, history, evaluate, generator, stop_when, on_step
):
    """The loop of `train`: a step per batch, the callbacks every `cfg.eval_every` steps."""
    device = model.W_E.device
    seq_len = cfg.sequence_length(model.cfg)
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(cfg.n_steps), disable=not progress, desc="training", leave=False)
    stopped = False
    scheduled = cfg.warmup_steps > 0 or cfg.final_lr is not None
    for step in bar:
        if step % cfg.eval_every == 0:
            evaluate(step)
            if step and stop_when is not None and stop_when(history):
                stopped = True
                break
        tokens = task.sample(cfg.batch_size, seq_len, generator=generator).to(device)
        if scheduled:
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr_at(step)
        loss = next_token_loss(model(tokens), tokens)
        if not torch.isfinite(loss):
            bar.close()
            model.eval()
            raise TrainingDiverged(
                f"the loss became {loss.item()} at step {step} (lr={cfg.lr}): training diverged. "
                "Lower the learning rate, or the initializer_range of the model's config.",
                history,
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history["loss"].append(loss.item())
        if on_step is not None:
            on_step(step + 1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    if stopped:
        bar.close()
    else:
        evaluate(cfg.n_steps)
    model.eval()
    history["seconds"] = [time.perf_counter() - start]
    return history
