"""Saving and loading trained models, safely.

A checkpoint is one `torch.save` file holding only tensors and plain containers:

    {"format": FORMAT,
     "config": {...},        # HookedTransformerConfig fields (TransformerLens names)
     "state_dict": {...},    # TransformerLens parameter names and shapes (plus smear_logit)
     "task": {...},          # the language's parameters and its planted ground truth
     "history": {...}}       # loss and evaluation scores over training

It is read with `torch.load(weights_only=True)`, which refuses to unpickle anything but tensors
and plain containers, so a malicious file cannot run code when loaded.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from helpers.data import Language, language_from_dict
from helpers.models import AttnOnlyTransformer, HookedTransformerConfig

FORMAT = "transformer-circuits-course/1"
KEYS = ("format", "config", "state_dict", "task", "history")
# The course's models have thousands to a few hundred thousand parameters. A config asking for far
# more than this is not one of ours, and building it could exhaust a laptop's memory.
MAX_PARAMETERS = 50_000_000
REGENERATE = "Regenerate it with `python3 course.py checkpoints`."


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

    @property
    def language(self) -> Language:
        """The language the model was trained on, rebuilt from `task` (with its planted truth)."""
        return language_from_dict(self.task)


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
    """Load a checkpoint written by `save_checkpoint`, refusing anything else with a clear error.

    Every problem with the file is a `CheckpointError` (a missing file is a FileNotFoundError),
    raised before any model is allocated: the config's sizes are checked against the stored
    weights' shapes first.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; give the path of a checkpoint file (.pt)")
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; regenerate the course's checkpoints with "
            "`python3 course.py checkpoints`, or train the model in the notebook (RETRAIN = True)"
        )
    if not zipfile.is_zipfile(path):  # what torch.save writes
        raise CheckpointError(
            f"could not read {path}: the file is truncated or not a PyTorch checkpoint. {REGENERATE}"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err):  # weights_only refused to import a class or function
            raise CheckpointError(
                f"refused to load {path}: it contains Python objects other than tensors and "
                "plain containers, which could run code when unpickled (nothing was executed). "
                "Only checkpoints written by helpers.checkpoints.save_checkpoint are accepted."
            ) from None
        raise CheckpointError(f"could not read {path}: the file is corrupt. {REGENERATE}") from None
    except Exception as err:  # corrupt files fail in many ways, deep inside torch.load
        raise CheckpointError(
            f"could not read {path}: the file is truncated or not a PyTorch checkpoint "
            f"({type(err).__name__}: {err}). {REGENERATE}"
        ) from None
    cfg = _validate_payload(path, payload, device)
    model = AttnOnlyTransformer(cfg)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return Checkpoint(model=model, task=payload["task"], history=payload["history"])


def _validate_payload(path: Path, payload: object, device: str) -> HookedTransformerConfig:
    """The checkpoint's config, once everything in the payload has been checked."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path} is not a course checkpoint: expected format {FORMAT!r}, got {got!r}. "
            f"A course checkpoint is a dict with keys {list(KEYS)}."
        )
    missing = [k for k in KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path} lacks the entries {missing}; expected {list(KEYS)}")
    for key in ("config", "state_dict", "task", "history"):
        if not isinstance(payload[key], dict):
            raise CheckpointError(
                f"{path}: {key!r} must be a dict, got {type(payload[key]).__name__}"
            )
    state_dict = payload["state_dict"]
    not_tensors = sorted(str(k) for k, v in state_dict.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"{path}: the state dict holds non-tensors under {not_tensors}")
    try:
        cfg = HookedTransformerConfig.from_dict({**payload["config"], "device": device})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path} has an invalid config: {err}") from None
    expected = cfg.parameter_shapes()
    n_parameters = sum(math.prod(shape) for shape in expected.values())
    if n_parameters > MAX_PARAMETERS:
        raise CheckpointError(
            f"{path}: its config describes {n_parameters:,} parameters, more than the "
            f"{MAX_PARAMETERS:,} any course model needs; refusing to build it"
        )
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
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
    for k, v in state_dict.items():
        if not v.dtype.is_floating_point:
            raise CheckpointError(f"{path}: weight {k} has dtype {v.dtype}; expected floats")
        if not torch.isfinite(v).all():
            raise CheckpointError(
                f"{path}: weight {k} holds NaN or infinite values (saved from a diverged "
                f"training run?). {REGENERATE}"
            )
    return cfg
