"""One declaration per exercise (helpers.checks._registry): every exercise of the notebooks is
declared, and the other way round, with the same number, title, function and checker; every
checker accepts the solution notebook's own answer, whatever it draws; and its cases exercise what
the exercise's text names and both sides of every branch of that answer."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import nbformat
import pytest

from helpers import checks

ROOT = Path(__file__).resolve().parent.parent.parent
SOLUTIONS = sorted((ROOT / "notebooks" / "solutions").glob("[0-9][0-9]_*.ipynb"))
HEADING = re.compile(r"^###\s*Exercise\s+(\d+\.\d+)\s*[—–-]\s*(.*?)\s*$", re.M)
SEEDS = (0, 1, 2)


def notebook_exercises() -> dict[str, dict]:
    """Every exercise of the solution notebooks: number -> its chapter, title, the functions its
    exercise cell defines (with that cell's source) and the checker its check cell calls."""
    found: dict[str, dict] = {}
    for path in SOLUTIONS:
        current, imports = None, []
        for cell in nbformat.read(path, as_version=4).cells:
            tags = cell.metadata.get("tags", [])
            if cell.cell_type == "code":
                imports += [ast.unparse(n) for n in ast.parse(cell.source).body
                            if isinstance(n, (ast.Import, ast.ImportFrom))]  # fmt: skip
            if cell.cell_type == "markdown" and (m := HEADING.search(cell.source)):
                current = found.setdefault(
                    m.group(1), {"chapter": path.name[:2], "title": m.group(2)}
                )
            elif current is not None and "exercise" in tags:
                tree = ast.parse(cell.source)
                current["functions"] = tuple(
                    n.name for n in tree.body if isinstance(n, ast.FunctionDef)
                )
                current["source"] = cell.source
                current["imports"] = "\n".join(imports)  # what the notebook imported by then
            elif current is not None and "check" in tags:
                call = re.search(r"checks\.(check_\w+)\(", cell.source)
                current["checker"] = call.group(1) if call else None
                current = None
    return found


NOTEBOOK = notebook_exercises()
DECLARED = {e.number: e for e in checks.exercises()}


def test_every_exercise_is_declared_once_and_every_declaration_is_an_exercise():
    assert sorted(NOTEBOOK, key=_order) == sorted(DECLARED, key=_order), (
        f"in the notebooks only: {sorted(set(NOTEBOOK) - set(DECLARED))}; "
        f"declared only: {sorted(set(DECLARED) - set(NOTEBOOK))}"
    )


def _order(number: str) -> tuple[int, int]:
    major, minor = number.split(".")
    return int(major), int(minor)


@pytest.mark.parametrize("number", sorted(DECLARED, key=_order))
def test_the_notebook_and_the_declaration_agree(number):
    exercise, cell = DECLARED[number], NOTEBOOK.get(number)
    assert cell, f"Exercise {number} is declared but no notebook has it"
    assert cell["chapter"] == exercise.chapter
    assert cell["title"] == exercise.title, f"notebook: {cell['title']!r}"
    assert cell["functions"] == exercise.functions, f"notebook: {cell['functions']}"
    assert cell["checker"] == exercise.checker_name, f"notebook calls {cell['checker']}"
    assert getattr(checks, exercise.checker_name).__name__ == exercise.checker_name


def solution(number: str):
    """The solution notebook's own answer to an exercise: its exercise cell, run."""
    namespace: dict = {}
    exec(NOTEBOOK[number]["imports"], namespace)  # noqa: S102
    exec(compile(NOTEBOOK[number]["source"], f"<Exercise {number}>", "exec"), namespace)  # noqa: S102
    return [namespace[name] for name in DECLARED[number].functions]


def given(exercise) -> list:
    """What the checker takes from the notebook, as the notebook has it."""
    from helpers import recipes

    if exercise.given == ("model", "language"):
        ckpt = recipes.load("skip_trigrams_1l")
        return [ckpt.model, ckpt.language]
    assert not exercise.given, f"no notebook objects known for {exercise.given}"
    return []


@pytest.mark.parametrize("number", sorted(DECLARED, key=_order))
def test_every_checker_accepts_the_solution_notebooks_answer(number, monkeypatch):
    exercise = DECLARED[number]
    if exercise.options.get("live", "absent") is None:  # its right answer trains: use the recording
        monkeypatch.setitem(exercise.options, "live", False)
    for seed in SEEDS:
        with checks.fixed_seed(seed):
            getattr(checks, exercise.checker_name)(*solution(number), *given(exercise))


@pytest.mark.parametrize("number", sorted(DECLARED, key=_order))
def test_the_cases_exercise_every_structure_the_exercise_names(number):
    exercise = DECLARED[number]
    tags = set()
    for seed in SEEDS:
        for case in exercise.cases(seed, *given(exercise), **exercise.options):
            tags |= set(case.tags)
    assert exercise.covers <= tags, f"not exercised: {sorted(exercise.covers - tags)}"


class _Arcs:
    """The (line, next line) steps taken inside one code object, traced."""

    def __init__(self, code):
        self.code, self.arcs, self.last = code, set(), None

    def __call__(self, frame, event, arg):
        if frame.f_code is not self.code:
            return None if event == "call" else self
        if event == "line":
            if self.last is not None:
                self.arcs.add((self.last, frame.f_lineno))
            self.last = frame.f_lineno
        return self


def _branches(function) -> dict[int, set[int]]:
    """Each `if`/`while` statement of a function (its line) with the first line of its body:
    taking the branch goes there, not taking it goes anywhere else."""
    tree = ast.parse(_dedented_source(function))
    offset = function.__code__.co_firstlineno - 1
    return {node.lineno + offset: node.body[0].lineno + offset
            for node in ast.walk(tree) if isinstance(node, (ast.If, ast.While))}  # fmt: skip


def _dedented_source(function) -> str:
    import inspect
    import textwrap

    try:
        return textwrap.dedent(inspect.getsource(function))
    except OSError:  # defined by exec: the notebook cell's source
        source = NOTEBOOK[function.__code__.co_filename.strip("<>").split()[-1]]["source"]
        lines = source.splitlines()
        start = function.__code__.co_firstlineno - 1
        return textwrap.dedent("\n".join(lines[start:]))


@pytest.mark.parametrize("number", sorted(DECLARED, key=_order))
def test_the_cases_take_both_sides_of_every_branch_of_the_solution(number):
    """Run the solution notebook's answer on the cases, traced: every `if` and `while` of it must be
    both taken and not taken by some case (a case on each side of it)."""
    exercise = DECLARED[number]
    functions = solution(number)
    if all(not c.args for c in exercise.cases(0, *given(exercise), **exercise.options)):
        # no input (5.6's predictions): no case can take a branch either way, so there is none
        assert not any(_branches(f) for f in functions), "a branch that no input decides"
        return
    missing = []
    for function in functions:
        branches = _branches(function)
        if not branches:
            continue
        tracer = _Arcs(function.__code__)
        previous = sys.gettrace()
        sys.settrace(tracer)
        try:
            for seed in SEEDS:
                for case in exercise.cases(seed, *given(exercise), **exercise.options):
                    try:
                        _run_solution(exercise, functions, function, case)
                    except Exception:  # noqa: BLE001, S112 (a case meant to fail the solution)
                        continue
        finally:
            sys.settrace(previous)
        for line, body in branches.items():
            taken = {(a, b) for a, b in tracer.arcs if a == line}
            if (line, body) not in taken:
                missing.append(f"{function.__name__}: the branch at line {line} is never taken")
            if not taken - {(line, body)}:
                missing.append(f"{function.__name__}: the branch at line {line} is always taken")
    assert not missing, "\n".join(missing)


def _run_solution(exercise, functions, function, case):
    from helpers.checks._base import _clone

    args = [_clone(a) for a in case.args]
    if exercise.run is not None and len(functions) > 1:
        exercise.run(exercise, functions, case)
    else:
        function(*args)


def _traced(function, inputs):
    tracer, previous = _Arcs(function.__code__), sys.gettrace()
    sys.settrace(tracer)
    try:
        for x in inputs:
            function(x)
    finally:
        sys.settrace(previous)
    return tracer.arcs


def test_the_branch_tracing_tells_both_sides_apart():
    def answer(x):
        if x > 0:
            return 1
        return 0

    ((line, body),) = _branches(answer).items()
    one_side = _traced(answer, [1, 2])
    assert (line, body) in one_side and not {a for a in one_side if a[0] == line} - {(line, body)}
    both = _traced(answer, [1, -1])
    assert (line, body) in both and {a for a in both if a[0] == line} - {(line, body)}
