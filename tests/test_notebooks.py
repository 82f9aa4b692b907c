"""The notebooks themselves: stored without outputs, learner versions up to date, and each learner
notebook's unfinished exercises fail with NotImplementedError and nothing else.

nbval executes every notebook (solutions and learner versions) as part of the same pytest run;
see `testpaths` and `addopts` in pyproject.toml.
"""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "notebooks" / "solutions").glob("[0-9][0-9]_*.ipynb"))
LEARNER = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

sys.path.insert(0, str(ROOT / "tools"))
import build_learner_notebooks as builder  # noqa: E402


def test_there_are_notebooks_and_each_has_both_versions():
    assert len(SOLUTIONS) >= 2
    assert [p.name for p in SOLUTIONS] == [p.name for p in LEARNER]


@pytest.mark.parametrize("path", SOLUTIONS + LEARNER, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_notebooks_carry_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None


def test_learner_notebooks_are_up_to_date():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_learner_notebooks.py"), "--check"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", LEARNER, ids=lambda p: p.name)
def test_learner_stubs_raise_not_implemented_and_nothing_else_fails(path):
    nb = nbformat.read(path, as_version=4)
    exercises = [c for c in nb.cells if "exercise" in c.metadata.get("tags", [])]
    assert exercises and all("raise NotImplementedError" in c.source for c in exercises)
    assert all("# BEGIN SOLUTION" not in c.source for c in nb.cells)
    NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()  # fmt: skip
    checked = 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if "raises-exception" in cell.metadata.get("tags", []):
            # a checker turns the stub's NotImplementedError into its subclass ExerciseNotDone
            assert [e.ename for e in errors] == ["ExerciseNotDone"], (index, cell.source)
            checked += 1
        else:
            assert not errors, (index, cell.source, errors)
    assert checked == len(exercises)


def test_stubbing_rules():
    source = "def f(x):\n    y = 1\n    # BEGIN SOLUTION\n    return x + y\n    # END SOLUTION\n"
    stubbed, solution = builder.stub_solution(source, "Exercise 9.1", "test")
    assert stubbed == (
        'def f(x):\n    y = 1\n    raise NotImplementedError("Exercise 9.1: your code here '
        '(hint above the cell; solution below it)")'
    )
    assert solution == "def f(x):\n    y = 1\n    return x + y"
    for bad, message in [
        ("x = 1", "no # BEGIN SOLUTION block"),
        ("# BEGIN SOLUTION\nx = 1", "never closed"),
        ("# END SOLUTION", "without # BEGIN SOLUTION"),
        ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION", "nested"),
    ]:
        with pytest.raises(builder.SourceError, match=message):
            builder.stub_solution(bad, "Exercise 9.1", "test")
