"""What a Run All of a learner notebook must show, wherever it ran (nbclient in
tests/test_notebooks.py, or JupyterLab in tests/browser): each unfinished exercise fails in its
check cell with ExerciseNotDone and nothing else fails; the claims it prints are the README
table's rows. Each learner notebook is executed once per test run: in the browser tests when they
run (Chromium present), otherwise by tests/test_notebooks.py (see tests/conftest.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import claims  # noqa: E402


def from_jupyterlab(model_json: dict) -> nbformat.NotebookNode:
    """A notebook from JupyterLab's model (`toJSON()`), whose sources and stream texts may be
    lists of lines, as nbformat notebooks with joined strings."""
    join = lambda v: "".join(v) if isinstance(v, list) else (v or "")  # noqa: E731
    cells = []
    for cell in model_json["cells"]:
        outputs = []
        for o in cell.get("outputs") or []:
            o = dict(o)
            if "text" in o:
                o["text"] = join(o["text"])
            outputs.append(nbformat.NotebookNode(o))
        cells.append(nbformat.NotebookNode(
            cell_type=cell["cell_type"], source=join(cell.get("source")),
            metadata=nbformat.NotebookNode(cell.get("metadata") or {}), outputs=outputs,
        ))  # fmt: skip
    return nbformat.NotebookNode(cells=cells, metadata={})


def learner_run_problems(nb: nbformat.NotebookNode, name: str) -> list[str]:
    """Problems of an executed learner notebook `nb` (an empty list: all is well)."""
    problems = []
    exercises = [c for c in nb.cells if "exercise" in c.metadata.get("tags", [])]
    if not exercises or not all("raise NotImplementedError" in c.source for c in exercises):
        problems.append("the exercise cells are not all stubs raising NotImplementedError")
    if any("# BEGIN SOLUTION" in c.source for c in nb.cells):
        problems.append("a solution block was left in the learner notebook")
    checked = 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if "raises-exception" in cell.metadata.get("tags", []):
            # a checker turns the stub's NotImplementedError into its subclass ExerciseNotDone
            if [e.get("ename") for e in errors] != ["ExerciseNotDone"]:
                problems.append(
                    f"cell {index} should fail with ExerciseNotDone only, got "
                    f"{[e.get('ename') for e in errors]}: {cell.source[:80]!r}"
                )
            checked += 1
        elif errors:
            problems.append(f"cell {index} failed: {errors[0].get('ename')}: {cell.source[:80]!r}")
    if checked != len(exercises):
        problems.append(f"{checked} check cells for {len(exercises)} exercises")
    problems += figure_text_problems(nb)
    try:
        printed = claims.claims_of(nb, name)  # learner and solution notebooks print the same
    except ValueError as err:
        return [*problems, str(err)]
    table = claims.readme_rows()
    rows = claims.table(printed).splitlines()[2:]  # one per claim, in order
    for number, row in zip(sorted(printed), rows, strict=True):
        if table.get(number) != row:
            problems.append(
                f"README.md's row for claim {number} is out of date; run `python tools/claims.py`."
                f"\nREADME:   {table.get(number)}\nnotebook: {row}"
            )
    return problems


def figure_text_problems(nb: nbformat.NotebookNode) -> list[str]:
    """Every figure in the notebook's outputs was drawn by helpers.plotting, which records its
    smallest text, and none is smaller than `plotting.MIN_TEXT_PX` at JupyterLab's default width
    (a wider figure is shown scaled down, its text with it)."""
    import base64

    from helpers import plotting

    problems = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if not png:
                continue
            data = base64.b64decode(png if isinstance(png, str) else "".join(png))
            shown = plotting.displayed_text_px(data)
            if shown is None:
                problems.append(f"cell {index}: a figure that does not record its text size")
            elif shown < plotting.MIN_TEXT_PX:
                problems.append(
                    f"cell {index}: a figure's smallest text is {shown:.1f} px at JupyterLab's "
                    f"default width (floor {plotting.MIN_TEXT_PX} px): {cell.source[:60]!r}"
                )
    return problems
