"""Our model against TransformerLens's HookedTransformer, in one process, interleaved.

Run by `tools/benchmark.py peers` inside `.venv-peers` (TransformerLens is not a course
dependency); prints one JSON object. Both models have the shape of the course's `induction_2l`
(2 layers, d_model 64, 4 heads of 16, n_ctx 32, 53 tokens, shortformer positions), the same
weights (ours loaded into TransformerLens's) and the same batches of 64 sequences; training is
AdamW at the recipe's learning rate. Each round times a block of steps of one model then of the
other (the order alternating), so that a change of load on the machine hits both alike.

    python tools/peer_benchmark.py [--threads N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from helpers.models import AttnOnlyTransformer, HookedTransformerConfig, next_token_loss

SHAPE = dict(n_layers=2, d_model=64, n_heads=4, d_head=16, n_ctx=32, d_vocab=53)
BATCH, LR = 64, 5e-3


def ours() -> AttnOnlyTransformer:
    return AttnOnlyTransformer(HookedTransformerConfig(**SHAPE, seed=0))


def theirs(state_dict: dict | None = None):
    from transformer_lens import HookedTransformer
    from transformer_lens import HookedTransformerConfig as TLConfig

    cfg = TLConfig(**SHAPE, attn_only=True, normalization_type=None, act_fn=None,
                   positional_embedding_type="shortformer", device="cpu", seed=0)  # fmt: skip
    model = HookedTransformer(cfg)
    if state_dict is not None:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        # TransformerLens keeps its causal mask and its -inf constant as buffers, and always
        # has biases (zero at initialisation); our models have none of these
        extra = [k for k in missing if not k.endswith(("mask", "IGNORE"))]
        assert not unexpected and all(
            k.split(".")[-1].startswith("b_") and not model.state_dict()[k].any() for k in extra
        ), (missing, unexpected)
    return model


def batches(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randint(0, SHAPE["d_vocab"], (BATCH, SHAPE["n_ctx"]), generator=g) for _ in range(n)
    ]


def train_steps(model, optimizer, tokens: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    for t in tokens:
        loss = next_token_loss(model(t), t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / len(tokens)


def cache_calls(model, tokens: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for t in tokens:
            model.run_with_cache(t)
    return (time.perf_counter() - start) / len(tokens)


def forward_calls(model, tokens: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for t in tokens:
            model(t)
    return (time.perf_counter() - start) / len(tokens)


def peak_memory(which: str, task: str, threads: int) -> float:
    """Peak resident memory (MB) of a fresh process that builds one model and runs 30 training
    steps (or 30 calls of run_with_cache): the libraries' own memory included, since that is
    what a learner's laptop pays."""
    code = (
        "import torch, sys\n"
        f"torch.set_num_threads({threads})\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "from peer_benchmark import *\n"
        f"m = {'ours()' if which == 'ours' else 'theirs()'}\n"
        "ts = batches(30)\n"
        + ("train_steps(m, torch.optim.AdamW(m.parameters(), lr=5e-3), ts)\n" if task == "train"
           else "cache_calls(m, ts)\n")
        # VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork and exec
        + "import re, pathlib\n"
        + "status = pathlib.Path('/proc/self/status').read_text()\n"
        + "print(int(re.search(r'VmHWM:\\s*(\\d+)', status).group(1)) / 1024)\n"
    )  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformer_lens

    a = ours()
    b = theirs(a.state_dict())
    probe = batches(1)[0]
    with torch.no_grad():
        diff = float((a(probe) - b(probe)).abs().max())
        scale = float(a(probe).abs().max())
    opt_a = torch.optim.AdamW(a.parameters(), lr=LR)
    opt_b = torch.optim.AdamW(b.parameters(), lr=LR)
    steps = batches(20)
    times: dict[str, list[float]] = {k: [] for k in (
        "train_ours", "train_tl", "cache_ours", "cache_tl", "forward_ours", "forward_tl")}  # fmt: skip
    train_steps(a, opt_a, steps[:3]), train_steps(b, opt_b, steps[:3])  # warm-up
    for r in range(args.rounds):
        pairs = [("ours", a, opt_a), ("tl", b, opt_b)]
        for name, model, opt in pairs if r % 2 == 0 else pairs[::-1]:
            times[f"train_{name}"].append(train_steps(model, opt, steps))
            times[f"cache_{name}"].append(cache_calls(model, steps))
            times[f"forward_{name}"].append(forward_calls(model, steps))
    median = {k: statistics.median(v) for k, v in times.items()}
    with torch.no_grad():
        cache_mb = {
            name: sum(
                t.numel() * t.element_size() for t in dict(model.run_with_cache(probe)[1]).values()
            )
            / 1e6
            for name, model in (("ours", a), ("tl", b))
        }
    result = {
        "threads": args.threads,
        "rounds": args.rounds,
        "transformer_lens": transformer_lens.__version__
        if hasattr(transformer_lens, "__version__")
        else _version("transformer-lens"),
        "torch": torch.__version__,
        "max_logit_diff": diff,
        "logit_scale": scale,
        "ms": {k: 1000 * v for k, v in median.items()},
        "speedup": {
            "train": median["train_tl"] / median["train_ours"],
            "run_with_cache": median["cache_tl"] / median["cache_ours"],
            "forward": median["forward_tl"] / median["forward_ours"],
        },
        "cache_mb": cache_mb,
        "peak_mb": {
            f"{task}_{which}": peak_memory(which, task, args.threads)
            for task in ("train", "cache")
            for which in ("ours", "tl")
        },
    }
    print(json.dumps(result))


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    main()
