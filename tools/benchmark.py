"""Benchmarks of the course against its performance targets (`TARGETS`, written at the top of
BENCHMARKS.md). Times things; asserts nothing.

    .venv/bin/python tools/benchmark.py [SECTION ...]     (default: all sections)

Sections: `notebooks` (each solution notebook's execution time and its kernel's peak memory; the
size of circuitsvis views in notebook 02), `widgets` (the median response of every widget, value
change -> redrawn figure), `training` (the two-layer model from scratch until induction, loss on
repeats <= 0.25 x loss on fresh tokens, with 1 and 2 threads, on a quiet machine and beside a
busy process, and each recipe retrained), `chapter05` (chapter 05's training cells, live and
recorded), `peers` (our model against TransformerLens's, see tools/peer_benchmark.py; it
installs TransformerLens into .venv-peers/ first, from tools/requirements-peers.txt), `install`
(the first-time set-up a learner waits for: a new virtual environment with every requirement).

Each section prints its results and writes them into BENCHMARKS.md (its own part of the file,
under a description of this machine), so the file always holds the latest run of each section.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import venv
from dataclasses import replace
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient

from helpers import evals, phase_change, recipes, widgets
from helpers.data import PROBE_LENGTH, induction_probe
from helpers.models import AttnOnlyTransformer
from helpers.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
# VmHWM rather than ru_maxrss, which a kernel inherits from the process that started it
PEAK_MEMORY_CELL = (
    "import re as _re, sys as _s, pathlib as _p\n"
    "_hwm = int(_re.search(r'VmHWM:\\s*(\\d+)', _p.Path('/proc/self/status').read_text()).group(1))\n"
    "print('PEAK_RSS_MB', _hwm / 1024, file=_s.stderr)"
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


ROUNDS = 5


def widget_response() -> None:
    print(
        f"widget response (value change -> redrawn figure): median of {ROUNDS} interleaved rounds"
        " of about 10 changes per widget"
    )
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
        "memory_traffic_explorer": widgets.memory_traffic_explorer(induction.model),
        "attention_explorer": widgets.attention_explorer(
            induction.model,
            induction_probe(52, batch_size=1),
            lang3.token_labels,
        ),
        "phase_change_replay": widgets.phase_change_replay(
            phase_change.record_training(
                induction.model.cfg,
                lang3,
                TrainConfig(n_steps=400, batch_size=64, lr=5e-3),
                every=20,
                progress=False,
            ),
            induction_probe(52, batch_size=1),
        ),  # fmt: skip
    }
    # rounds interleave the widgets, so that a spell of load on the machine hits them alike
    times: dict[str, list[float]] = {name: [] for name in explorers}
    for _ in range(ROUNDS):
        for name, explorer in explorers.items():
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
                    times[name].append(time.perf_counter() - start)
    for name in explorers:
        ms = [1000 * t for t in times[name]]
        q = statistics.quantiles(ms, n=4)
        print(
            f"  {name:28s} {statistics.median(ms):6.0f} ms   (quartiles {q[0]:.0f}-{q[2]:.0f} ms)"
        )


def _seconds_to_induction(
    threads: int, setting: tuple | None = None, every: int = 50
) -> tuple[int, float, float] | None:
    """(step, seconds of training, ratio) when a model first reaches loss on repeats <= 0.25 x
    loss on fresh tokens, checked every `every` steps (the time spent checking is not counted),
    with `threads` threads. `setting` is (model config, task, training config); by default the
    recipe of induction_2l."""
    torch.set_num_threads(threads)
    if setting is None:
        recipe = recipes.RECIPES["induction_2l"]
        setting = (recipe.model, recipe.make_task(), recipe.training)
    model_cfg, task, training = setting
    tokens = induction_probe(model_cfg.d_vocab - 1, batch_size=50)
    model = AttnOnlyTransformer(model_cfg)
    cfg = TrainConfig(n_steps=training.n_steps, batch_size=training.batch_size, lr=training.lr,
                      seed=training.seed, eval_every=every)  # fmt: skip
    state = {"check_seconds": 0.0, "reached": None, "step": 0}
    start = time.perf_counter()

    def check(m) -> float:
        t0 = time.perf_counter()
        ratio = evals.repeated_tokens_loss(m, tokens, PROBE_LENGTH).ratio
        if ratio <= 0.25 and state["reached"] is None:
            state["reached"] = (state["step"], t0 - start - state["check_seconds"], ratio)
            raise _Reached
        state["step"] += cfg.eval_every
        state["check_seconds"] += time.perf_counter() - t0
        return ratio

    with contextlib.suppress(_Reached):
        train(model, task, cfg, {"ratio": check}, progress=False)
    return state["reached"]


class _Reached(Exception):
    pass


@contextlib.contextmanager
def _busy_core():
    """Another process keeping one core busy, as a browser or a second notebook would."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        busy.kill()
        busy.wait()


def training() -> None:
    print("two-layer model from scratch until induction (repeats <= 0.25 x fresh loss)")
    for load in ("quiet", "beside a busy process"):
        for threads in (1, 2):
            with _busy_core() if load != "quiet" else contextlib.nullcontext():
                reached = _seconds_to_induction(threads)
            if reached is None:
                print(f"  {threads} thread(s), {load}: not reached")
            else:
                step, seconds, ratio = reached
                print(f"  {threads} thread(s), {load:22s} ratio {ratio:.3f} at step {step}, "
                      f"after {seconds:5.1f} s of training")  # fmt: skip
    reached = _seconds_to_induction(1, phase_change.sweep_settings()["base"], every=10)
    if reached is None:
        print("  chapter 05's sweep model (d_model 32, one head of 32 per layer): not reached")
    else:
        step, seconds, ratio = reached
        print(f"  chapter 05's sweep model (d_model 32, one head of 32 per layer), 1 thread, quiet: "
              f"ratio {ratio:.3f} at step {step}, after {seconds:4.1f} s of training")  # fmt: skip
    torch.set_num_threads(1)
    print("each recipe retrained from its seed, as `RETRAIN = True` does in the notebooks")
    for name, recipe in recipes.RECIPES.items():
        if not recipe.live:  # half an hour: timed once, when it was trained (its history)
            print(f"  {name:18s} {recipes.load(name).history['seconds'][0]:5.1f} s (recorded)")
            continue
        start = time.perf_counter()
        recipes.train_recipe(name, progress=False)
        print(f"  {name:18s} {time.perf_counter() - start:5.1f} s")


def chapter05() -> None:
    """Chapter 05's cells that train: its two runs side by side, the smeared-keys run and the
    sweep, each live (quiet, and beside a busy process) and loaded from their recording."""
    from helpers import recordings

    cells = {
        "the two-layer model and its control": lambda live: recordings.phase_change_runs(
            ["two layers", "one layer"], live=live, progress=False),
        "one layer with smeared keys": lambda live: recordings.phase_change_runs(
            ["one layer, smeared keys"], live=live, progress=False),
        "the sweep (exercise 5.6)": lambda live: recordings.phase_change_sweep(
            live=live, progress=False),
    }  # fmt: skip
    print(
        "chapter 05's training cells: trained here (live) or loaded from data/phase_change_runs.pt"
    )
    for name, cell in cells.items():
        times = {}
        for load in ("quiet", "beside a busy process", "recorded"):
            recordings._SWEEPS.clear()  # the sweep is kept per session: time it afresh
            with _busy_core() if load == "beside a busy process" else contextlib.nullcontext():
                with contextlib.redirect_stdout(io.StringIO()):  # the cell's own line
                    start = time.perf_counter()
                    cell(load != "recorded")
                    times[load] = time.perf_counter() - start
        print(f"  {name:38s} live {times['quiet']:5.1f} s quiet, {times['beside a busy process']:5.1f} s "
              f"beside a busy process; recorded {times['recorded']:4.1f} s")  # fmt: skip


PEERS_VENV = ROOT / ".venv-peers"
PEERS_REQUIREMENTS = ROOT / "tools" / "requirements-peers.txt"


def _peers_python() -> Path:
    """The Python of .venv-peers, created and filled from tools/requirements-peers.txt unless
    that was already done (a few minutes, first time only)."""
    python = PEERS_VENV / "bin" / "python"
    stamp = PEERS_VENV / "requirements.sha256"
    wanted = hashlib.sha256(PEERS_REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    print(f"  installing {PEERS_REQUIREMENTS.name} into {PEERS_VENV.name}/ (first time only)")
    venv.EnvBuilder(with_pip=True, clear=True).create(PEERS_VENV)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r",
                    str(PEERS_REQUIREMENTS)], check=True)  # fmt: skip
    stamp.write_text(wanted + "\n")
    return python


def peers() -> None:
    print("against TransformerLens's HookedTransformer (induction_2l's shape, batch 64, AdamW;")
    print("same weights, same batches; medians of interleaved rounds, one process)")
    python = _peers_python()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for threads in (1, 2):
        out = subprocess.run(
            [str(python), str(ROOT / "tools" / "peer_benchmark.py"), "--threads", str(threads)],
            capture_output=True, text=True, check=True, env=env,
        )  # fmt: skip
        r = json.loads(out.stdout.strip().splitlines()[-1])
        ms, speed = r["ms"], r["speedup"]
        print(
            f"  {threads} thread(s), TransformerLens {r['transformer_lens']}, torch {r['torch']}:"
        )
        for label, key, ratio in (("training step", "train", "train"),
                                  ("run_with_cache", "cache", "run_with_cache"),
                                  ("forward (no hooks)", "forward", "forward")):  # fmt: skip
            print(f"    {label:20s} ours {ms[key + '_ours']:6.2f} ms   TransformerLens "
                  f"{ms[key + '_tl']:6.2f} ms   {speed[ratio]:.2f}x")  # fmt: skip
        print(f"    cache size           ours {r['cache_mb']['ours']:.2f} MB   TransformerLens "
              f"{r['cache_mb']['tl']:.2f} MB; peak memory of 30 training steps, whole process: "
              f"ours {r['peak_mb']['train_ours']:.0f} MB, TransformerLens "
              f"{r['peak_mb']['train_tl']:.0f} MB")  # fmt: skip
        print(f"    max |logit difference| {r['max_logit_diff']:.1e} (logits up to "
              f"{r['logit_scale']:.2f})")  # fmt: skip


# ---- BENCHMARKS.md ------------------------------------------------------------------------------

BENCHMARKS = ROOT / "BENCHMARKS.md"


def install() -> None:
    """The first-time set-up as a learner meets it: a fresh virtual environment and every pinned
    requirement installed into it, with pip's cache switched off (nothing downloaded before)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        venv.EnvBuilder(with_pip=True).create(Path(tmp) / "venv")
        created = time.perf_counter() - start
        python = Path(tmp) / "venv" / "bin" / "python"
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--no-cache-dir", "-r",
             str(ROOT / "requirements.txt")],
            cwd=ROOT, check=True, env={**os.environ, "PIP_NO_CACHE_DIR": "1"},
        )  # fmt: skip
        total = time.perf_counter() - start
        size = sum(f.stat().st_size for f in (Path(tmp) / "venv").rglob("*") if f.is_file())
    print("first-time set-up: a new virtual environment and requirements.txt, pip's cache off")
    print(f"  virtual environment created     {created:6.1f} s")
    print(f"  everything installed            {total:6.1f} s   ({size / 1e6:.0f} MB on disk)")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = re.findall(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        cpu = names[0] if names else cpu
    torch.set_num_threads(1)
    a = torch.randn(1024, 1024)
    a @ a
    start = time.perf_counter()
    for _ in range(10):
        a @ a
    gflops = 2 * 1024**3 * 10 / (time.perf_counter() - start) / 1e9
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch "
            f"{torch.__version__}; a 1024² float32 matmul runs at {gflops:.0f} GFLOP/s on one "
            "thread")  # fmt: skip


def record(name: str, text: str) -> None:
    """Put `text` into BENCHMARKS.md as section `name`, keeping the other sections."""
    old = BENCHMARKS.read_text() if BENCHMARKS.exists() else ""
    sections = dict(re.findall(r"<!-- (\w+): start -->\n(.*?)<!-- \1: end -->", old, re.S))
    stamp = datetime.date.today().isoformat()
    sections[name] = f"## {name} ({stamp}; {machine()})\n\n```\n{text.rstrip()}\n```\n"
    order = [s for s in SECTIONS if s in sections]
    body = "\n".join(f"<!-- {s}: start -->\n{sections[s]}<!-- {s}: end -->\n" for s in order)
    BENCHMARKS.write_text(
        "# Benchmarks\n\nWritten by `tools/benchmark.py` (each section by its latest run). Times "
        "are wall-clock seconds or milliseconds on the machine named in each section.\n\n"
        + TARGETS
        + "\n"
        + body
    )


# What the course aims for on a 2-core laptop without a GPU: a floor that every change must keep,
# and a goal. The sections below report the measurements to compare with.
TARGETS = """## Targets

| what | floor | goal |
|---|---|---|
| the everyday test suite (`python3 course.py test`), warm virtual environment | ≤ 120 s | ≤ 90 s |
| each notebook of chapters 00-04 executed | ≤ 10 s | ≤ 5 s |
| chapter 05 executed, quiet machine | ≤ 45 s | ≤ 30 s |
| a two-layer synthetic model from scratch until induction | ≤ 3 s | ≤ 2 s |
| training steps per second against TransformerLens, same shape, one process | recorded | ≥ 2x |
| `run_with_cache` against TransformerLens | ≥ 1.5x | ≥ 2x |
| widget response (value change to redrawn figure), median, every widget | ≤ 100 ms | ≤ 50 ms |
| peak memory of any notebook's kernel | ≤ 1 GB | ≤ 500 MB |
| first-time set-up (`python3 course.py lab` on a fresh clone) | recorded | |
"""


def realtext() -> None:
    """Chapter 06's models: a training step of the two-layer model of code (eager, one thread),
    in tokens per second, and what its recorded training (its checkpoint's history) reached when;
    each zero- and one-layer recipe retrained as a learner would."""

    recipe = recipes.RECIPES["code_2l"]
    task = recipe.make_task()
    task.sample(1, 2)  # the corpus read and tokenized before the clock starts
    model = AttnOnlyTransformer(recipe.model)
    tokens = recipe.training.batch_size * (recipe.model.n_ctx - 1)  # predicted per step
    warm, timed = 10, 40
    cfg = replace(recipe.training, n_steps=warm + timed, warmup_steps=0, eval_every=10_000)
    starts = []
    train(model, task, cfg, progress=False, on_step=lambda step: starts.append(time.perf_counter()))
    per_step = (starts[-1] - starts[warm - 1]) / timed
    print(
        f"code_2l training step, eager, 1 thread: {per_step * 1e3:.0f} ms, "
        f"{tokens / per_step / 1e3:.1f} k tokens/s"
    )
    history = recipes.load("code_2l").history
    seconds = history["seconds"][0] / recipe.training.n_steps  # per step, as it was trained
    for name, test in (("prefix matching >= 0.3 on repeated held-out code",
                        lambda h, i: h["max_natural_prefix_matching"][i] >= 0.3),
                       ("loss on the repeat <= 0.7 x the first copy's",
                        lambda h, i: h["natural_repeat_ratio"][i] <= 0.7)):  # fmt: skip
        i = next(i for i in range(len(history["eval_step"])) if test(history, i))
        step = history["eval_step"][i]
        print(
            f"  recorded run: {name} at step {step} ({step * seconds / 60:.1f} min of its "
            f"training, {step * recipe.training.batch_size * recipe.model.n_ctx / 1e6:.0f} M tokens)"
        )
    print(
        f"  recorded run: {recipe.training.n_steps} steps in {history['seconds'][0] / 60:.1f} min "
        f"({recipe.training.n_steps * tokens / history['seconds'][0] / 1e3:.1f} k tokens/s, "
        "on the shared machine it was trained on)"
    )
    for name in ("prose_0l", "prose_1l"):
        start = time.perf_counter()
        recipes.train_recipe(name, progress=False)
        print(f"  {name:18s} retrained in {time.perf_counter() - start:5.1f} s")


TOKENIZERS = "tokenizers==0.23.3"  # Hugging Face's; measured against, never a course dependency


def tokenizers() -> None:
    """Chapter 06's tokenizer against a byte-level BPE (tools/tokenizer_comparison.py), with
    `tokenizers` installed into .venv-tokenizers/ (its Rust core alone: no other package)."""
    target = ROOT / ".venv-tokenizers"
    if not (target / "tokenizers").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--target", str(target), TOKENIZERS], check=True)  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), str(ROOT)]))
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "tokenizer_comparison.py")],
                         capture_output=True, text=True, check=True, env=env)  # fmt: skip
    print(out.stdout.rstrip())


SECTIONS = {"notebooks": notebooks, "widgets": widget_response, "training": training,
            "chapter05": chapter05, "realtext": realtext, "tokenizers": tokenizers, "peers": peers,
            "install": install}  # fmt: skip


class _Tee(io.TextIOBase):
    """Standard output that is also kept, for BENCHMARKS.md."""

    def __init__(self) -> None:
        self.kept = io.StringIO()

    def write(self, text: str) -> int:
        sys.__stdout__.write(text)
        sys.__stdout__.flush()
        return self.kept.write(text)


if __name__ == "__main__":
    for name in sys.argv[1:] or list(SECTIONS):
        if name not in SECTIONS:
            sys.exit(f"no section {name!r}; sections: {', '.join(SECTIONS)}")
        tee = _Tee()
        with contextlib.redirect_stdout(tee):
            SECTIONS[name]()
        record(name, tee.kept.getvalue())
