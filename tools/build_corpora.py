"""Rebuild chapter 06's pinned corpora (`data/text/*.json.xz`) from a local CPython standard library.

    python tools/build_corpora.py            # from this interpreter's standard library
    python tools/build_corpora.py --lib DIR  # from another copy of CPython's Lib/
    python tools/build_corpora.py --check    # rebuild in memory and report, write nothing

The corpora are pinned (shipped in `data/text/`) because standard libraries differ between Python
versions, and chapter 06 asserts numbers measured on them. This command is for authors: it says
which CPython it read, and what changed against the shipped files (documents added, removed and
edited, characters), so that a rebuild from another version is a visible choice.

Two corpora, each a list of documents, one per source file (a model's training window never
crosses from one document into another):

- **prose**: the reference manual's text in `pydoc_data/topics.py` (one document per topic) and the
  docstrings of every non-test module (one document per file: its docstrings in order), with
  whitespace collapsed to single spaces and typographic quotes, dashes and ellipses written in ASCII.
- **code**: every non-empty, non-test `.py` file, except `encodings/` (codec tables) and
  `pydoc_data/` (the topics as one string), verbatim.

Only documents written in printable ASCII (plus newlines and tabs) are kept, so that the course's
tokenizer spells every character of the corpora and decoding gives the text back exactly; the
report says how many documents that leaves out.
"""

from __future__ import annotations

import argparse
import ast
import json
import lzma
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "text"
ALLOWED = set(map(chr, range(32, 127))) | {"\n", "\t"}
TEST_DIRS = {"test", "tests", "idle_test", "site-packages"}


def is_test(relative: Path) -> bool:
    return any(part in TEST_DIRS or part.startswith("test_") for part in relative.parts)


def source_files(lib: Path) -> list[Path]:
    """The standard library's non-test `.py` files, relative to `lib`, in a fixed order."""
    found = (p.relative_to(lib) for p in lib.rglob("*.py"))
    return sorted(p for p in found if not is_test(p))


def docstrings(source: str) -> list[str]:
    """The docstrings of a module, its classes and functions, in the order they appear."""
    tree = ast.parse(source)
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    nodes = [n for n in ast.walk(tree) if isinstance(n, kinds)]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    return [d for n in nodes if (d := ast.get_docstring(n, clean=True))]


# The reference manual's typographic punctuation, written in ASCII (prose only; code is verbatim)
TYPOGRAPHIC = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                             "\u2013": "-", "\u2014": "--", "\u2026": "..."})  # fmt: skip


def collapse(text: str) -> str:
    return " ".join(text.translate(TYPOGRAPHIC).split())


def is_plain(text: str) -> bool:
    return set(text) <= ALLOWED


def build(lib: Path) -> tuple[dict[str, list[list[str]]], dict[str, int]]:
    """Both corpora as {name: [[document name, text], ...]}, and counts of what was left out."""
    prose, code = [], []
    left_out = {"prose": 0, "code": 0}
    topics_file = lib / "pydoc_data" / "topics.py"
    namespace: dict = {}
    exec(compile(topics_file.read_text(encoding="utf-8"), str(topics_file), "exec"), namespace)
    for key in sorted(namespace["topics"]):
        text = collapse(namespace["topics"][key])
        if not is_plain(text):
            left_out["prose"] += 1
        elif text:
            prose.append([f"pydoc_data/topics.py#{key}", text])
    for relative in source_files(lib):
        try:
            source = (lib / relative).read_text(encoding="utf-8")
            strings = docstrings(source)
        except (UnicodeDecodeError, SyntaxError):  # a few files are deliberately broken
            left_out["code"] += 1
            continue
        top = relative.parts[0]
        if top != "pydoc_data":
            text = collapse(" ".join(strings))
            if text and is_plain(text):
                prose.append([relative.as_posix(), text])
            elif text:
                left_out["prose"] += 1
        if top not in ("encodings", "pydoc_data"):
            if not source.strip():
                continue  # an empty __init__.py is not a document
            if is_plain(source):
                code.append([relative.as_posix(), source])
            else:
                left_out["code"] += 1
    return {"prose": prose, "code": code}, left_out


def describe_change(name: str, old: list[list[str]], new: list[list[str]]) -> str:
    old_docs, new_docs = dict(map(tuple, old)), dict(map(tuple, new))
    added = sorted(set(new_docs) - set(old_docs))
    removed = sorted(set(old_docs) - set(new_docs))
    edited = sorted(k for k in set(old_docs) & set(new_docs) if old_docs[k] != new_docs[k])
    if not (added or removed or edited):
        return f"{name}: unchanged"
    chars = sum(map(len, new_docs.values())) - sum(map(len, old_docs.values()))
    lines = [f"{name}: {len(added)} added, {len(removed)} removed, {len(edited)} edited, "
             f"{chars:+,} characters"]  # fmt: skip
    for label, names in (("added", added), ("removed", removed), ("edited", edited)):
        if names:
            lines.append(f"  {label}: {', '.join(names[:8])}{' …' if len(names) > 8 else ''}")
    return "\n".join(lines)


def read_shipped(name: str) -> dict | None:
    path = OUT / f"{name}.json.xz"
    return json.loads(lzma.decompress(path.read_bytes())) if path.exists() else None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]),
                        help="CPython's Lib/ directory (default: this interpreter's)")  # fmt: skip
    parser.add_argument("--version", default=None,
                        help="the CPython version LIB belongs to (default: this interpreter's)")  # fmt: skip
    parser.add_argument("--check", action="store_true", help="report only; write nothing")
    args = parser.parse_args(argv)
    version = args.version or ".".join(map(str, sys.version_info[:3]))
    if not (args.lib / "pydoc_data" / "topics.py").is_file():
        parser.error(f"{args.lib} is not CPython's Lib/ directory (no pydoc_data/topics.py)")
    corpora, left_out = build(args.lib)
    print(f"read CPython {version}'s standard library at {args.lib}")
    for name, documents in corpora.items():
        shipped = read_shipped(name)
        chars = sum(len(text) for _, text in documents)
        print(f"{name}: {len(documents)} documents, {chars:,} characters "
              f"({left_out[name]} left out: not plain ASCII, or not Python 3 source)")  # fmt: skip
        if shipped is not None:
            if shipped["python"] != version:
                print(f"  the shipped file was built from CPython {shipped['python']}")
            print("  " + describe_change(name, shipped["documents"], documents))
        if not args.check:
            OUT.mkdir(parents=True, exist_ok=True)
            payload = {"name": name, "python": version, "documents": documents}
            data = json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode()
            (OUT / f"{name}.json.xz").write_bytes(
                lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)
            )
    if not args.check:
        licence = args.lib / "LICENSE.txt"
        if licence.is_file():
            (OUT / "LICENSE-PSF.txt").write_text(licence.read_text(encoding="utf-8"))
        else:
            print(f"warning: no LICENSE.txt in {args.lib}; keep the shipped licence file")
        print(f"wrote {OUT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
