"""Saving and loading trained models, safely.

A checkpoint is one `torch.save` file holding only tensors and plain containers:

    {"format": FORMAT,
     "config": {...},        # HookedTransformerConfig fields (TransformerLens names)
     "state_dict": {...},    # TransformerLens parameter names and shapes
     "task": {...},          # the language's parameters and its planted ground truth
     "history": {...}}       # loss and evaluation scores over training

It is read with `torch.load(weights_only=True)`, which refuses to unpickle anything but tensors
and plain containers, so a malicious file cannot run code when loaded.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch

from helpers.models import AttnOnlyTransformer, HookedTransformerConfig

FORMAT = "transformer-circuits-course/1"
KEYS = ("format", "config", "state_dict", "task", "history")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the reason and what to do about it."""


@dataclass
class Checkpoint:
    model: AttnOnlyTransformer
    task: dict
    history: dict = field(default_factory=dict)

    @property
    def cfg(self) -> HookedTransformerConfig:
        return self.model.cfg


def save_checkpoint(
    path: str | Path, model: AttnOnlyTransformer, task: dict, history: dict
) -> Path:
    """Write `model`, the task's ground truth and the training history to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "config": model.cfg.to_dict() | {"device": "cpu"},
        "state_dict": state_dict,
        "task": task,
        "history": history,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint under the real name
    return path


def load_checkpoint(path: str | Path, device: str = "cpu") -> Checkpoint:
    """Load a checkpoint written by `save_checkpoint`, refusing anything else with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; regenerate the course's checkpoints with "
            "`python3 course.py checkpoints`, or train the model in the notebook (RETRAIN = True)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refused to load {path}: it contains Python objects other than tensors and plain "
            "containers, which could run code when unpickled (nothing was executed). Only "
            f"checkpoints written by helpers.checkpoints.save_checkpoint are accepted. [{err}]"
        ) from None
    except Exception as err:  # corrupt files fail in many ways, deep inside torch.load
        raise CheckpointError(
            f"could not read {path}: the file is truncated or not a PyTorch checkpoint ({err}). "
            "Regenerate it with `python3 course.py checkpoints`."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path} is not a course checkpoint: expected format {FORMAT!r}, got {got!r}. "
            f"A course checkpoint is a dict with keys {list(KEYS)}."
        )
    missing = [k for k in KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path} lacks the entries {missing}; expected {list(KEYS)}")
    try:
        cfg = HookedTransformerConfig.from_dict({**payload["config"], "device": device})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path} has an invalid config: {err}") from None
    model = AttnOnlyTransformer(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in payload["state_dict"].items()}
    if expected != got:
        problems = []
        if extra := sorted(set(got) - set(expected)):
            problems.append(f"unexpected keys {extra}")
        if lacking := sorted(set(expected) - set(got)):
            problems.append(f"missing keys {lacking}")
        for k in sorted(set(got) & set(expected)):
            if got[k] != expected[k]:
                problems.append(f"{k} has shape {got[k]}, the config implies {expected[k]}")
        raise CheckpointError(
            f"{path}: the weights do not belong to its config "
            f"(n_layers={cfg.n_layers}, d_model={cfg.d_model}, n_heads={cfg.n_heads}, "
            f"d_head={cfg.d_head}, n_ctx={cfg.n_ctx}, d_vocab={cfg.d_vocab}): "
            + "; ".join(problems)
        )
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return Checkpoint(model=model, task=payload["task"], history=payload["history"])
