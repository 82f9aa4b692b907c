"""The notebooks' prose states no number it cannot back: every number typed in a markdown cell is
structural, code, or registered in tools/prose_numbers.py with a reason or a check that passes
(see that module). And the sections of every chapter are numbered in order."""

import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import prose_numbers  # noqa: E402

SOLUTIONS = sorted((ROOT / "notebooks" / "solutions").glob("[0-9][0-9]_*.ipynb"))


def test_every_typed_number_is_accounted_for_and_every_check_passes():
    problems = prose_numbers.problems(prose_numbers.scan())
    assert not problems, "\n".join(problems)


def _notebook(tmp_path: Path, name: str, *markdown: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(m) for m in markdown]
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


def test_a_typed_number_is_caught_and_structure_is_not(tmp_path):
    path = _notebook(
        tmp_path, "07_test.ipynb",
        "## 3. A section\n\n### Exercise 7.1 — x\n> **Difficulty** ●○○○○ · about 10 minutes\n\n"
        "See claim 12 and chapter 04; `x = 17`; $e^{2}$; position 3 of layer 1.",
        "The model reaches a loss of 2.31 nats, 40 % of the time.",
    )  # fmt: skip
    found = prose_numbers.scan([path])
    unaccounted = [f.number for f in found if not f.how]
    assert unaccounted == ["2.31", "40 %"]
    assert all(f.how for f in found if f.cell == 0)
    assert any("'2.31' is typed" in p for p in prose_numbers.problems(found))


def test_a_registered_phrase_must_be_in_the_prose_and_its_check_must_pass(monkeypatch):
    stale = prose_numbers.Registered(
        "00", "a phrase no chapter says, 12 times", "cited", "a source"
    )
    wrong = prose_numbers.Registered("00", "You write 10 exercises", "setting", "", lambda: False)
    unchecked = prose_numbers.Registered("00", "You write 10 exercises", "measured", "")
    monkeypatch.setattr(prose_numbers, "REGISTERED", [stale, wrong, unchecked])
    problems = prose_numbers.problems([])
    assert any("not in the prose any more" in p and "12 times" in p for p in problems)
    assert any("the code disagrees" in p for p in problems)
    assert any("has no check" in p for p in problems)


def test_times_are_checked_against_the_benchmarks():
    measured = prose_numbers._benchmark_seconds("copying_2l")
    assert measured > 0
    assert prose_numbers._about(measured, measured)
    assert not prose_numbers._about(3 * measured, measured)
    assert not prose_numbers._about(measured / 3, measured)


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_sections_are_numbered_in_order(path):
    headings = [
        m.group(1)
        for cell in nbformat.read(path, as_version=4).cells
        if cell.cell_type == "markdown"
        for m in re.finditer(r"(?m)^## (\d+)\. ", cell.source)
    ]
    assert [int(h) for h in headings] == list(range(1, len(headings) + 1)), headings
