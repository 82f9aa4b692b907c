"""The notebooks themselves: stored without outputs, learner versions up to date, each learner
notebook's unfinished exercises fail with NotImplementedError and nothing else, the paper's claims
tagged and asserted, the README's claims table what the notebooks print, and the exercises counted.

nbval executes every solution notebook as part of the same pytest run; each learner notebook is
executed here, in the everyday suite. The browser tests (`-m slow`) run every notebook again in
JupyterLab; a run that selects both executes a learner notebook only there (conftest.py).
"""

import re
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
import claims  # noqa: E402

from tests.learner_run import learner_run_problems  # noqa: E402

# Claims 29-31 belong to the residual-stream work, when it exists.
REQUIRED_CLAIMS = set(range(1, 32))
DIFFICULTY = re.compile(r"\*\*Difficulty\*\* ([●○]{5})")


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


# Chapter 05 trains four models live (about a minute): its learner version is slow by nature and
# runs with `-m slow` (in the browser when Chromium is there); nbval runs its solution every day.
LIVE_TRAINING = {"05_phase_change.ipynb"}


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, id=p.name, marks=[pytest.mark.slow] * (p.name in LIVE_TRAINING))
        for p in LEARNER
    ],
)
def test_learner_notebook_runs_and_prints_the_readmes_claims(path):
    """Run All on the learner notebook (when the browser tests do not: tests/conftest.py)."""
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()  # fmt: skip
    problems = learner_run_problems(nb, path.name)
    assert not problems, "\n".join(problems)


def _tags(path: Path) -> dict[int, list]:
    found: dict[int, list] = {}
    for cell in nbformat.read(path, as_version=4).cells:
        for n in claims.claim_tags(cell):
            found.setdefault(n, []).append(cell)
    return found


def test_every_claim_is_asserted_in_a_tagged_cell_and_listed_in_the_readme():
    tagged: dict[int, str] = {}
    for path in SOLUTIONS:
        for n, cells in _tags(path).items():
            assert n not in tagged, f"claim {n} is tagged in {tagged[n]} and in {path.name}"
            assert len(cells) == 1, f"claim {n} is tagged in {len(cells)} cells of {path.name}"
            (cell,) = cells
            assert cell.cell_type == "code" and "assert " in cell.source, (
                f"claim-{n} cell asserts nothing"
            )
            assert f'"Claim {n} ✔' in cell.source or f"'Claim {n} ✔" in cell.source
            tagged[n] = path.name
    assert REQUIRED_CLAIMS <= set(tagged), (
        f"claims not asserted anywhere: {sorted(REQUIRED_CLAIMS - set(tagged))}"
    )
    assert set(claims.readme_rows()) == set(tagged), (
        "README's claims table lists other claims than the notebooks tag"
    )
    for n, name in tagged.items():
        assert f"(notebooks/solutions/{name})" in claims.readme_rows()[n]


def _exercises(path: Path) -> list[tuple[str, str]]:
    """(exercise id, difficulty) for every exercise heading of a notebook."""
    found = []
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "markdown" and (
            m := re.search(r"### Exercise (\d+\.\d+)", cell.source)
        ):
            difficulty = DIFFICULTY.search(cell.source)
            assert difficulty, f"{path.name}: Exercise {m.group(1)} has no difficulty line"
            found.append((m.group(1), difficulty.group(1)))
    return found


def test_exercise_counts_and_difficulty():
    per_chapter = {path.name[:2]: _exercises(path) for path in SOLUTIONS}
    for chapter in ("00", "01", "02", "03", "04"):
        ids = [i for i, _ in per_chapter[chapter]]
        assert len(ids) >= 6, f"chapter {chapter} has {len(ids)} exercises"
        assert ids == [f"{int(chapter)}.{k}" for k in range(1, len(ids) + 1)], (
            f"chapter {chapter} numbers: {ids}"
        )
    everything = [d for exercises in per_chapter.values() for _, d in exercises]
    assert len(everything) >= 40
    assert sum(d.count("●") >= 4 for d in everything) >= 8


@pytest.mark.parametrize("path", LEARNER, ids=lambda p: p.name)
def test_each_solution_follows_its_check(path):
    cells = nbformat.read(path, as_version=4).cells
    for i, cell in enumerate(cells):
        if "exercise" in cell.metadata.get("tags", []):
            assert "check" in cells[i + 1].metadata.get("tags", []), (
                f"cell {i}: no check right after"
            )
            assert "solution" in cells[i + 2].metadata.get("tags", []), (
                f"cell {i}: no solution after the check"
            )


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


def test_an_exercise_without_a_check_is_refused():
    nb = nbformat.v4.new_notebook()
    exercise = nbformat.v4.new_code_cell(
        "def f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION"
    )
    exercise.metadata["tags"] = ["exercise"]
    nb.cells = [nbformat.v4.new_markdown_cell("### Exercise 9.1"), exercise]
    with pytest.raises(builder.SourceError, match="has no check cell"):
        builder.learner_version(nb, "test.ipynb")
