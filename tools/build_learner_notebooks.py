"""Generate the learner notebooks from the solution notebooks (the single source).

    python tools/build_learner_notebooks.py          rewrite notebooks/NN_*.ipynb
    python tools/build_learner_notebooks.py --check  exit 1 if any learner notebook is out of date

In a solution notebook (notebooks/solutions/NN_*.ipynb):
- the lines between `# BEGIN SOLUTION` and `# END SOLUTION` in a code cell become
  `raise NotImplementedError(...)`, at the same indentation, pointing to the hint; the cell must
  carry the tag `exercise`;
- a code cell tagged `check` calls the learner's code (usually a checker); in the learner notebook it
  gets Jupyter's `raises-exception` tag, so "Run All" goes on past an unfinished exercise and nbval
  expects the error. Every exercise is followed by its check, and the solution, folded, comes right
  after the check: the learner meets the checker before the solution.
Both notebooks are written without outputs.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "notebooks" / "solutions"
LEARNER = ROOT / "notebooks"
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
EXERCISE_ID = re.compile(r"Exercise (\d+\.\d+)")


class SourceError(ValueError):
    pass


def strip_outputs(nb: nbformat.NotebookNode) -> None:
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)


def stub_solution(source: str, exercise: str, where: str) -> tuple[str, str]:
    """Replace each BEGIN/END SOLUTION block by a NotImplementedError; return (stubbed, solution)."""
    lines = source.splitlines()
    out: list[str] = []
    inside = False
    found = False
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise SourceError(f"{where}: line {number}: nested {BEGIN}")
            inside, found = True, True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(
                f'{indent}raise NotImplementedError("{exercise}: your code here '
                '(hint above the cell; solution below it)")'
            )
        elif stripped == END:
            if not inside:
                raise SourceError(f"{where}: line {number}: {END} without {BEGIN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise SourceError(f"{where}: {BEGIN} is never closed")
    if not found:
        raise SourceError(f"{where}: a cell tagged 'exercise' has no {BEGIN} block")
    solution = "\n".join(line for line in lines if line.strip() not in (BEGIN, END))
    return "\n".join(out), solution


def learner_version(solution_nb: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    nb = copy.deepcopy(solution_nb)
    strip_outputs(nb)
    cells = []
    # for the learner: how the exercises work. (Authors edit the solution notebook and regenerate
    # this one: CONTRIBUTING.md says how; the learner need not know.)
    banner = nbformat.v4.new_markdown_cell(
        "*Exercise version: where a cell raises `NotImplementedError`, write your code in its "
        "place, then run the check cell right after it. Each exercise has a hint above it and its "
        f"solution, folded, below its check; the complete notebook is `solutions/{name}`.*"
    )
    banner.metadata["tags"] = ["generated-banner"]
    cells.append(banner)
    last_exercise = "Exercise"
    pending: nbformat.NotebookNode | None = None  # a solution waiting for its exercise's check
    for index, cell in enumerate(nb.cells):
        tags = cell.metadata.get("tags", [])
        if cell.cell_type == "markdown":
            if match := EXERCISE_ID.search(cell.source):
                last_exercise = f"Exercise {match.group(1)}"
        if cell.cell_type == "code" and "exercise" in tags:
            if pending is not None:
                raise SourceError(f"{name} cell {index}: the previous exercise has no check cell")
            stubbed, solution = stub_solution(cell.source, last_exercise, f"{name} cell {index}")
            cell.source = stubbed
            cells.append(cell)
            pending = nbformat.v4.new_markdown_cell(
                f"<details><summary>Solution to {last_exercise}</summary>\n\n"
                f"```python\n{solution}\n```\n\n</details>"
            )
            pending.metadata["tags"] = ["solution"]
            continue
        if cell.cell_type == "code" and "check" in tags:
            cell.metadata["tags"] = [*tags, "raises-exception"]
            cells.append(cell)
            if pending is not None:
                cells.append(pending)
                pending = None
            continue
        cells.append(cell)
    if pending is not None:
        raise SourceError(f"{name}: the last exercise has no check cell")
    nb.cells = cells
    return nb


def canonical(nb: nbformat.NotebookNode) -> str:
    """The notebook as it is written to disk; cell ids are derived, so the text is stable."""
    nb = copy.deepcopy(nb)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"
    return nbformat.writes(nb) + "\n"


def build(check: bool) -> int:
    sources = sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb"))
    if not sources:
        print(f"no solution notebooks found in {SOLUTIONS}")
        return 1
    stale = []
    for path in sources:
        solution = nbformat.read(path, as_version=4)
        expected_solution = copy.deepcopy(solution)
        strip_outputs(expected_solution)
        text = canonical(learner_version(solution, path.name))
        target = LEARNER / path.name
        if check:
            if not target.exists() or target.read_text() != text:
                stale.append(f"{target.relative_to(ROOT)} is out of date")
            if path.read_text() != canonical(expected_solution):
                stale.append(f"{path.relative_to(ROOT)} has outputs or non-canonical cell ids")
        else:
            target.write_text(text)
            path.write_text(canonical(expected_solution))
            print(f"wrote {target.relative_to(ROOT)}")
    orphans = sorted(
        p.name for p in LEARNER.glob("[0-9][0-9]_*.ipynb") if not (SOLUTIONS / p.name).exists()
    )
    stale += [f"notebooks/{name} has no solution notebook" for name in orphans]
    for line in stale:
        print(line)
    if stale:
        print("Run `python3 course.py notebooks` to regenerate the learner notebooks.")
        return 1
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; change nothing")
    return build(parser.parse_args(argv).check)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
