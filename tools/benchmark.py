"""Benchmarks of the course against DESIGN.md's performance targets. Times things; asserts nothing.

    .venv/bin/python tools/benchmark.py

Reports: each solution notebook's execution time and its kernel's peak memory; the median
response of every widget (value change -> redrawn figure); the training time of the two-layer
model until induction (loss on repeats <= 0.25 x loss on fresh tokens); the size of circuitsvis
views in an executed notebook 02.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient

from helpers import evals, recipes, widgets
from helpers.data import PROBE_LENGTH, induction_probe
from helpers.models import AttnOnlyTransformer
from helpers.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
PEAK_MEMORY_CELL = (
    "import resource as _r, sys as _s\n"
    "print('PEAK_RSS_MB', _r.getrusage(_r.RUSAGE_SELF).ru_maxrss / 1024, file=_s.stderr)"
)


def notebooks() -> None:
    print("notebook execution (solution versions)")
    for path in sorted((ROOT / "notebooks" / "solutions").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nb.cells.append(nbformat.v4.new_code_cell(PEAK_MEMORY_CELL))
        start = time.perf_counter()
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()  # fmt: skip
        seconds = time.perf_counter() - start
        peak = next(
            float(o.text.split()[1])
            for o in nb.cells[-1].outputs
            if "PEAK_RSS_MB" in o.get("text", "")
        )
        size = len(nbformat.writes(nb).encode())
        print(
            f"  {path.name:38s} {seconds:6.1f} s   peak kernel memory {peak:6.0f} MB   executed {size / 1e6:.2f} MB"
        )
        if path.name.startswith("02_"):
            views = [
                len(o["data"]["text/html"])
                for cell in nb.cells
                for o in cell.get("outputs", [])
                if "text/html" in o.get("data", {}) and "circuits-vis-" in o["data"]["text/html"]
            ]
            print(f"    circuitsvis views: {', '.join(f'{v / 1e3:.1f} KB' for v in views)}")


def widget_response() -> None:
    print("widget response (value change -> redrawn figure), median of 10")
    copying = recipes.load("copying_2l")
    lang0 = copying.language
    bigram = recipes.load("bigram_0l")
    lang1 = bigram.language
    skip = recipes.load("skip_trigrams_1l")
    lang2 = skip.language
    induction = recipes.load("induction_2l")
    lang3 = induction.language
    probs = torch.ones(26, 26) / 26
    explorers = {
        "logit_attribution_explorer": widgets.logit_attribution_explorer(
            copying.model, lang0.sample(1, 16, torch.Generator().manual_seed(0)), lang0.token_labels
        ),
        "bigram_explorer": widgets.bigram_explorer(
            probs, lang1.transition_matrix, lang1.token_labels[1:]
        ),
        "circuit_explorer": widgets.circuit_explorer(skip.model, lang2.token_labels),
        "composition_explorer": widgets.composition_explorer(induction.model, lang3.token_labels),
        "attention_explorer": widgets.attention_explorer(
            induction.model,
            induction_probe(52, batch_size=1),
            lang3.token_labels,
        ),
    }
    for name, explorer in explorers.items():
        times = []
        for control in explorer.controls:
            options = getattr(control, "options", None)
            values = [o[1] if isinstance(o, tuple) else o for o in options] if options else None
            for _ in range(10 // len(explorer.controls) + 1):
                if values:
                    new = values[(values.index(control.value) + 1) % len(values)]
                else:
                    new = control.min + (control.value - control.min + 1) % (
                        control.max - control.min + 1
                    )
                start = time.perf_counter()
                control.value = new
                times.append(time.perf_counter() - start)
        print(f"  {name:28s} {1000 * statistics.median(times):6.0f} ms")


def training() -> None:
    print("two-layer model from scratch until induction (repeats <= 0.25 x fresh loss)")
    recipe = recipes.RECIPES["induction_2l"]
    tokens = induction_probe(52, batch_size=50)
    model = AttnOnlyTransformer(recipe.model)
    # the recipe's training, checked every 50 steps; time spent checking is subtracted
    cfg = TrainConfig(n_steps=recipe.training.n_steps, batch_size=recipe.training.batch_size,
                      lr=recipe.training.lr, seed=recipe.training.seed, eval_every=50)  # fmt: skip
    state = {"check_seconds": 0.0, "reached": None, "step": 0}
    start = time.perf_counter()

    def check(m) -> float:
        t0 = time.perf_counter()
        ratio = evals.repeated_tokens_loss(m, tokens, PROBE_LENGTH).ratio
        if ratio <= 0.25 and state["reached"] is None:
            state["reached"] = (state["step"], t0 - start - state["check_seconds"], ratio)
        state["step"] += cfg.eval_every
        state["check_seconds"] += time.perf_counter() - t0
        return ratio

    train(model, recipe.make_task(), cfg, {"ratio": check}, progress=False)
    if state["reached"] is None:
        print(f"  not reached in {cfg.n_steps} steps")
    else:
        step, seconds, ratio = state["reached"]
        print(f"  ratio {ratio:.3f} at step {step}, after {seconds:.1f} s of training")


if __name__ == "__main__":
    sections = {"notebooks": notebooks, "widgets": widget_response, "training": training}
    for name in sys.argv[1:] or list(sections):
        sections[name]()
