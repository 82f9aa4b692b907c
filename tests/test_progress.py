"""`course.py progress`: each exercise of a learner's notebooks read as done, failing (with the
checker's diagnosis) or not started, without touching the learner's files."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("progress", ROOT / "tools" / "progress.py")
progress = importlib.util.module_from_spec(spec)
sys.modules["progress"] = progress  # dataclasses look their module up while the file runs
spec.loader.exec_module(progress)

RIGHT = """def attention_pattern(x, W_Q, W_K):
    scores = (x @ W_Q) @ (x @ W_K).transpose(-1, -2) / W_Q.shape[-1] ** 0.5
    n = x.shape[1]
    return scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
"""
# the classic: no causal mask
NO_MASK = """def attention_pattern(x, W_Q, W_K):
    return ((x @ W_Q) @ (x @ W_K).transpose(-1, -2) / W_Q.shape[-1] ** 0.5).softmax(-1)
"""


STUB = 'def head_output(pattern, x, W_V, W_O):\n    raise NotImplementedError("Exercise 0.2")\n'
CONCAT = """def concat_then_project(z, W_O):
    return z.flatten(-2) @ W_O.flatten(0, 1)
"""


def exercise_cells(heading: str, answer: str, checker: str, function: str) -> list:
    """One exercise as a chapter has it: heading, the learner's cell, its check cell."""
    return [
        nbformat.v4.new_markdown_cell(f"### {heading}\nText."),
        nbformat.v4.new_code_cell(answer, metadata={"tags": ["exercise"]}),
        nbformat.v4.new_code_cell(f"checks.{checker}({function})", metadata={"tags": ["check"]}),
    ]


def learner_notebook(first: str = NO_MASK) -> nbformat.NotebookNode:
    """Three of chapter 00's exercises: 0.1 (`first`), 0.2 not started, 0.4 right."""
    cells = [nbformat.v4.new_code_cell("import torch\nfrom helpers import checks")]
    cells += exercise_cells("Exercise 0.1 — the attention pattern", first,
                            "check_attention_pattern", "attention_pattern")  # fmt: skip
    cells += exercise_cells("Exercise 0.2 — what the head writes", STUB, "check_head_output",
                            "head_output")  # fmt: skip
    cells += exercise_cells("Exercise 0.4 — concatenate, then project", CONCAT,
                            "check_concat_then_project", "concat_then_project")  # fmt: skip
    cells.append(nbformat.v4.new_code_cell("print('the notebook goes on')"))
    return nbformat.v4.new_notebook(cells=cells)


def digest(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_reads_not_started_failing_and_done_from_a_real_kernel(tmp_path):
    path = tmp_path / "learner.ipynb"
    nbformat.write(learner_notebook(), path)
    nb, broke_off = progress.execute(path, tmp_path, timeout=120)
    assert broke_off == ""
    assert "the notebook goes on" in nb.cells[-1].outputs[0]["text"]  # errors allowed
    found = {n: (t, cell) for n, t, cell in progress.check_cells(nb, "00")}
    assert found["0.1"][0] == "the attention pattern"  # every declared exercise, in order
    assert list(found) == [e.number for e in progress.exercises("00")]
    assert found["0.3"][1] is None  # no check cell: the learner's copy lost it
    no_mask, stub, right = (progress.status_of(found[n][1], 120) for n in ("0.1", "0.2", "0.4"))
    assert stub == ("not started", "")
    assert right == ("done", "")
    status, diagnosis = no_mask
    assert status == "failing"
    assert "common mistake: no causal mask" in diagnosis
    assert "\n" not in diagnosis


def executed_check(outputs, execution_count=1) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell("checks.check_x(x)", execution_count=execution_count)
    cell.outputs = [nbformat.NotebookNode(o) for o in outputs]
    return cell


def test_status_of_other_errors_timeouts_and_edited_checks():
    crash = {
        "output_type": "error",
        "ename": "TypeError",
        "evalue": "bad operand\nmore",
        "traceback": [],
    }
    assert progress.status_of(executed_check([crash]), 60) == ("failing", "TypeError: bad operand")
    stop = {"output_type": "error", "ename": "KeyboardInterrupt", "evalue": "", "traceback": []}
    assert progress.status_of(executed_check([stop]), 60) == (
        "failing", "the check ran longer than 60 s and was stopped",
    )  # fmt: skip
    assert progress.status_of(executed_check([], execution_count=None), 60)[0] == "not run"
    printed = {"output_type": "stream", "name": "stdout", "text": "hello\n"}
    assert progress.status_of(executed_check([printed]), 60) == (
        "failing", "the check cell printed no verdict (was it edited?)",
    )  # fmt: skip


def test_check_cells_are_found_by_their_checker_even_untagged_or_renamed():
    nb = learner_notebook()
    nb.cells[3].metadata = {}  # a learner's copy that lost its tags still has the call
    nb.cells[1].source = "### my notes on 0.1"  # and headings are the learner's to edit
    found = {n: (t, cell) for n, t, cell in progress.check_cells(nb, "00")}
    assert found["0.1"] == ("the attention pattern", nb.cells[3])
    assert found["0.4"][1] is nb.cells[9] and found["0.10"][1] is None


def test_bad_input_is_named(tmp_path, capsys):
    assert progress.main([str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert progress.main([str(tmp_path), "--only", "09"]) == 2
    assert "no chapter '09'" in capsys.readouterr().err


def test_a_missing_or_corrupt_notebook_is_reported_not_run(tmp_path):
    (tmp_path / "00_residual_stream.ipynb").write_text("{ not json")
    rows = progress.progress([tmp_path], only=["00", "01"])
    by_chapter = {r.chapter: r for r in rows}
    assert {r.status for r in rows} == {"not run"}
    assert (
        "could not run 00_residual_stream.ipynb" in by_chapter["00_residual_stream.ipynb"].diagnosis
    )
    assert by_chapter["01_zero_layer_bigrams.ipynb"].diagnosis == "notebook not found in the folder"


@pytest.mark.slow
def test_pristine_learner_notebooks_none_done_solutions_all_done_files_untouched(tmp_path):
    learner = tmp_path / "learner"
    shutil.copytree(ROOT / "notebooks", learner, ignore=shutil.ignore_patterns("solutions"))
    # one exercise answered wrongly, one rightly: the report tells them apart
    nb = nbformat.read(learner / "00_residual_stream.ipynb", as_version=4)
    [first, second] = [c for c in nb.cells if "exercise" in c.metadata.get("tags", [])][:2]
    first.source = "import torch\n" + NO_MASK
    nbformat.write(nb, learner / "00_residual_stream.ipynb")
    solutions = ROOT / "notebooks" / "solutions"
    before = digest(learner), digest(solutions)
    rows = progress.progress([ROOT / "notebooks", solutions], jobs=2)
    rows += progress.progress([learner], only=["00"])
    assert (digest(learner), digest(solutions)) == before
    by = {
        name: [r for r in rows if r.learner == name]
        for name in ("notebooks", "solutions", "learner")
    }
    assert len(by["notebooks"]) == len(by["solutions"]) >= 46
    assert {r.status for r in by["notebooks"]} == {"not started"}, progress.table(by["notebooks"])
    assert {r.status for r in by["solutions"]} == {"done"}, progress.table(by["solutions"])
    wrong = by["learner"][0]
    assert (wrong.exercise, wrong.status) == ("0.1", "failing") and "mask" in wrong.diagnosis
    assert {r.status for r in by["learner"][1:]} == {"not started"}
    assert "NotImplementedError" in second.source  # the second stays a stub
