"""Where each learner stands: run a learner's copies of the notebooks headless and report, for
every exercise, done / failing (with the checker's one-line diagnosis) / not started.

    python3 course.py progress                  the notebooks in notebooks/
    python3 course.py progress alice/ bob/      one folder per learner (a room's notebooks)
    python3 course.py progress DIR --json       the same as JSON, for tooling

The learner's files are never written: each folder is copied into a temporary directory and the
copies are executed there (so even a notebook that writes files next to itself changes nothing).
Every cell runs, failing or not, as in JupyterLab's "Run All" with errors allowed: an unfinished
exercise does not stop the rest, since the notebooks carry on with the course's reference.

Every exercise the course declares for a chapter (`helpers.checks.exercises`) is read off its
check cell, the first cell that calls its checker (`checks.check_...`):
- done: the checker printed "✔ Exercise N.M passed";
- not started: the checker raised ExerciseNotDone (the function is still the stub);
- failing: the checker raised CheckFailed (its diagnosis is shown), or the cell raised anything
  else (the learner's code crashed: the error is shown), or it ran past the time limit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from helpers.checks import exercises  # noqa: E402  (the exercises each chapter declares)

COURSE_NOTEBOOKS = ROOT / "notebooks"
STATUSES = ("done", "failing", "not started", "not run")


@dataclass
class Exercise:
    learner: str
    chapter: str  # the notebook's file name, e.g. "02_one_layer_skip_trigrams.ipynb"
    exercise: str  # "2.1"
    title: str
    status: str  # one of STATUSES
    diagnosis: str = ""  # for "failing" and "not run": what went wrong, one line


def exercise_order(number: str) -> tuple[int, ...]:
    """A sort key putting exercise "2.10" after "2.9": the numbers compared, not the strings."""
    return tuple(int(part) for part in number.split("."))


def chapters() -> list[str]:
    """The course's chapter notebooks, by file name, in order."""
    return sorted(p.name for p in COURSE_NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _one_line(text: str, limit: int = 200) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # IPython colours error values
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def check_cells(
    nb: nbformat.NotebookNode, chapter: str
) -> list[tuple[str, str, nbformat.NotebookNode | None]]:
    """(exercise number, title, check cell) for every exercise the course declares for
    `chapter` ("02", `helpers.checks.exercises`), in order: its check cell is the first code cell
    that calls its checker, None if the learner deleted it."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    found = []
    for exercise in exercises(chapter):
        call = re.compile(rf"\bchecks\.{exercise.checker_name}\(")
        cell = next((c for c in code if call.search(c.source)), None)
        found.append((exercise.number, exercise.title, cell))
    return found


def status_of(cell: nbformat.NotebookNode, timeout: float) -> tuple[str, str]:
    """The status of an exercise from its executed check cell's outputs."""
    outputs = cell.get("outputs", [])
    for out in outputs:
        if out.get("output_type") != "error":
            continue
        name, value = out.get("ename", ""), out.get("evalue", "")
        if name == "ExerciseNotDone":
            return "not started", ""
        if name == "CheckFailed":
            value = re.sub(r"^Exercise \d+\.\d+[^:]*:\s*", "", value)  # the row names it
            return "failing", _one_line(value.replace("your answer matches a ", ""))
        if name == "KeyboardInterrupt":
            return "failing", f"the check ran longer than {timeout:.0f} s and was stopped"
        return "failing", _one_line(f"{name}: {value}")
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    if "✔" in printed and "passed" in printed:
        return "done", ""
    if not outputs and cell.get("execution_count") is None:
        return "not run", "the check cell was not executed"
    return "failing", "the check cell printed no verdict (was it edited?)"


def execute(path: Path, workdir: Path, timeout: float) -> tuple[nbformat.NotebookNode, str]:
    """Run every cell of the notebook at `path` in `workdir`, errors allowed. Returns the
    executed notebook and, if the run broke off (the kernel died), why."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        interrupt_on_timeout=True,  # a cell past the limit fails; the rest still runs
        allow_errors=True,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    try:
        client.execute()
    except DeadKernelError as err:
        return nb, f"the kernel died ({_one_line(str(err))})"
    return nb, ""


def report_notebook(learner: str, chapter: str, path: Path | None, workdir: Path, timeout: float):
    """The Exercise rows of one learner's copy of one chapter."""
    reference = [(e.number, e.title) for e in exercises(chapter[:2])]
    if path is None:
        return [
            Exercise(learner, chapter, n, t, "not run", "notebook not found in the folder")
            for n, t in reference
        ]
    try:
        nb, broke_off = execute(path, workdir, timeout)
    except Exception as err:  # unreadable JSON, not a notebook, no kernel: say so, go on
        why = f"could not run {path.name}: {type(err).__name__}: {_one_line(str(err))}"
        return [Exercise(learner, chapter, n, t, "not run", why) for n, t in reference]
    rows = []
    for number, title, cell in check_cells(nb, chapter[:2]):
        if cell is None:
            rows.append(Exercise(learner, chapter, number, title, "not run",
                                 "its check cell was deleted"))  # fmt: skip
            continue
        status, diagnosis = status_of(cell, timeout)
        if status == "not run" and broke_off:
            diagnosis = broke_off
        rows.append(Exercise(learner, chapter, number, title, status, diagnosis))
    return rows


def find_copy(folder: Path, chapter: str) -> Path | None:
    """The learner's copy of `chapter` in `folder`: the same file name, or else the only
    notebook whose name starts with the chapter's number (e.g. a renamed copy)."""
    if (folder / chapter).is_file():
        return folder / chapter
    prefix = chapter.split("_")[0] + "_"
    candidates = sorted(folder.glob(prefix + "*.ipynb"))
    return candidates[0] if len(candidates) == 1 else None


def progress(
    folders: list[Path], timeout: float = 600, jobs: int | None = None, only: list[str] = ()
) -> list[Exercise]:
    """Every exercise of every learner folder, each folder run in a temporary copy; `only`:
    chapter numbers ("00", "05") to run, all when empty."""
    known = [c[:2] for c in chapters()]
    for number in only:
        if number not in known:
            raise ValueError(f"no chapter {number!r}; the chapters are {', '.join(known)}")
    for folder in folders:
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder; give folders holding the notebooks")
    names = [f.resolve().name or str(f) for f in folders]
    if len(set(names)) < len(names):  # alice/notebooks and bob/notebooks: use the parent too
        names = [f"{f.resolve().parent.name}/{f.resolve().name}" for f in folders]
    jobs = jobs or max(1, min(4, os.cpu_count() or 1))
    # one thread per kernel: several kernels side by side beat one kernel with several threads
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    with tempfile.TemporaryDirectory(prefix="course-progress-") as scratch:
        work = []
        for index, (folder, name) in enumerate(zip(folders, names, strict=True)):
            copy = Path(scratch) / str(index)
            shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
            for chapter in chapters():
                if only and chapter[:2] not in only:
                    continue
                path = find_copy(copy, chapter)
                work.append((name, chapter, path, path.parent if path else copy))
        with ThreadPoolExecutor(jobs) as pool:
            parts = pool.map(lambda w: report_notebook(*w, timeout), work)
            return [row for part in parts for row in part]


def table(rows: list[Exercise]) -> str:
    """A plain-text table, one line per exercise, and a summary line per learner."""
    several = len({r.learner for r in rows}) > 1
    lines = []
    header = ("learner  " if several else "") + f"{'chapter':32s} {'exercise':8s} {'status':11s}"
    lines.append(header + " title / diagnosis")
    for r in rows:
        who = f"{r.learner:8.8s} " if several else ""
        text = r.title if not r.diagnosis else f"{r.title}: {r.diagnosis}"
        lines.append(f"{who}{r.chapter[:-6]:32.32s} {r.exercise:8s} {r.status:11s} {text}")
    lines.append("")
    for learner in dict.fromkeys(r.learner for r in rows):
        mine = [r for r in rows if r.learner == learner]
        counts = ", ".join(f"{sum(r.status == s for r in mine)} {s}" for s in STATUSES)
        lines.append(f"{learner}: {counts} (of {len(mine)} exercises)")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="course.py progress", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("folders", nargs="*", type=Path, help="one folder of notebooks per learner")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per cell (600)")
    parser.add_argument("--jobs", type=int, default=None, help="notebooks run side by side")
    parser.add_argument(
        "--only", default="", help="chapter numbers to run, comma-separated (e.g. 00,03)"
    )
    args = parser.parse_args(argv)
    folders = args.folders or [COURSE_NOTEBOOKS]
    try:
        only = [n.strip().zfill(2) for n in args.only.split(",") if n.strip()]
        rows = progress(folders, args.timeout, args.jobs, only)
    except ValueError as err:
        print(f"course.py progress: {err}", file=sys.stderr)
        return 2
    print(json.dumps([asdict(r) for r in rows], indent=1) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
