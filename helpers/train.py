"""Training: an AdamW loop with a progress bar, a loss history and evaluation callbacks.

Deterministic: the model's initial weights come from its config's seed and every training batch
from a generator seeded by `TrainConfig.seed`, so the same configs on the same machine give the
same model. The global RNG is never used.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from helpers.models import AttnOnlyTransformer


class Task(Protocol):
    """What `train` needs from a language in `helpers.data`."""

    d_vocab: int

    def sample(
        self, batch_size: int, n_ctx: int, generator: torch.Generator | None = None
    ) -> Tensor: ...

    def to_dict(self) -> dict: ...


@dataclass(frozen=True)
class TrainConfig:
    n_steps: int
    batch_size: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    seq_len: int | None = None  # None: the model's n_ctx
    seed: int = 0
    eval_every: int = 100

    def __post_init__(self) -> None:
        for name in ("n_steps", "batch_size", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


def next_token_loss(logits: Tensor, tokens: Tensor, per_token: bool = False) -> Tensor:
    """Cross-entropy of predicting tokens[:, i + 1] from logits[:, i], in nats.

    Returns the mean, or `[batch, pos - 1]` losses with `per_token=True`.
    """
    log_probs = logits[:, :-1].log_softmax(dim=-1)  # [batch, pos - 1, d_vocab]
    losses = -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]
    return losses if per_token else losses.mean()


Callback = Callable[[AttnOnlyTransformer], float]


def train(
    model: AttnOnlyTransformer,
    task: Task,
    cfg: TrainConfig,
    callbacks: Mapping[str, Callback] | None = None,
    progress: bool = True,
) -> dict[str, list]:
    """Train `model` in place on batches from `task`; return the history.

    The history holds `loss` (every step) and, every `cfg.eval_every` steps and at the end, the
    value of each callback under its name, at the steps listed in `eval_step`.
    Callbacks run in `torch.no_grad()` mode with the model in eval mode.
    """
    if task.d_vocab != model.cfg.d_vocab:
        raise ValueError(f"task has d_vocab={task.d_vocab} but the model {model.cfg.d_vocab}")
    seq_len = cfg.seq_len or model.cfg.n_ctx
    if seq_len > model.cfg.n_ctx:
        raise ValueError(f"seq_len={seq_len} is longer than the model's n_ctx={model.cfg.n_ctx}")
    callbacks = dict(callbacks or {})
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )
    history: dict[str, list] = {"loss": [], "eval_step": [], **{k: [] for k in callbacks}}
    device = model.W_E.device

    def evaluate(step: int) -> None:
        if not callbacks:
            return
        model.eval()
        with torch.no_grad():
            history["eval_step"].append(step)
            for name, fn in callbacks.items():
                history[name].append(float(fn(model)))
        model.train()

    start = time.perf_counter()
    model.train()
    bar = tqdm(range(cfg.n_steps), disable=not progress, desc="training", leave=False)
    for step in bar:
        if step % cfg.eval_every == 0:
            evaluate(step)
        tokens = task.sample(cfg.batch_size, seq_len, generator=generator).to(device)
        loss = next_token_loss(model(tokens), tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history["loss"].append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    evaluate(cfg.n_steps)
    model.eval()
    history["seconds"] = [time.perf_counter() - start]
    return history
