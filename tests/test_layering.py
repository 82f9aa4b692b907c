"""The package's layering, in the course's own words: a module may import only from its own layer
or the layers below, never from one above; and imports sit at the top of a module, where a
reader sees every dependency (no imports hidden inside functions)."""

import ast
from pathlib import Path

import pytest

HELPERS = Path(__file__).resolve().parent.parent / "helpers"
LAYERS = [
    {"references", "models", "data"},
    {"train", "checkpoints", "circuits", "attribution", "handmade"},
    {"evals"},
    {"recipes", "phase_change", "recordings"},
    {"checks", "plotting", "widgets", "attention_views"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
MODULES = sorted(p for p in HELPERS.rglob("*.py") if p.name != "__init__.py" or p.parent != HELPERS)


def concept(path: Path) -> str:
    """helpers/data/bigrams.py -> "data"; helpers/models.py -> "models"."""
    return path.relative_to(HELPERS).parts[0].removesuffix(".py")


def helpers_imports(tree: ast.AST) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("helpers"):
            parts = node.module.split(".")
            names = [parts[1]] if len(parts) > 1 else [alias.name for alias in node.names]
            found += [(name, node.lineno) for name in names]
        elif isinstance(node, ast.Import):
            found += [
                (a.name.split(".")[1], node.lineno)
                for a in node.names
                if a.name.startswith("helpers.")
            ]
    return found


def test_every_module_has_a_layer():
    assert {concept(p) for p in MODULES} == set(LAYER)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(HELPERS)))
def test_no_module_imports_from_a_layer_above(path):
    tree = ast.parse(path.read_text())
    mine = LAYER[concept(path)]
    above = [f"{name} (line {line})" for name, line in helpers_imports(tree) if LAYER[name] > mine]
    assert not above, f"{path.name} (layer {mine}) imports from above: {above}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(HELPERS)))
def test_no_imports_hidden_inside_functions(path):
    tree = ast.parse(path.read_text())
    hidden = [
        f"line {inner.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        for inner in ast.walk(node)
        if isinstance(inner, (ast.Import, ast.ImportFrom))
    ]
    assert not hidden, f"{path.name} imports inside a function or class: {hidden}"


def test_measuring_behaviour_does_not_depend_on_training():
    for path in (HELPERS / "evals").glob("*.py"):
        assert "train" not in {name for name, _ in helpers_imports(ast.parse(path.read_text()))}
