"""Write the common mistakes of each exercise into TEACHING.md, from the checkers' own diagnoses.

The checker tests (tests/checks) feed every wrong answer the course knows of to its checker, so
the diagnoses raised there are the mistakes learners make, in the words learners see. This tool
runs those tests in-process, records every `CheckFailed` constructed while a test runs, and
writes one list per exercise between the markers of TEACHING.md (`<!-- mistakes: start -->` and
`<!-- mistakes: end -->`), exercises titled as in the learner notebooks.

    python tools/mistakes.py                 # harvest and write TEACHING.md
    python tools/mistakes.py --check         # exit 1 if TEACHING.md's section is out of date
    python tools/mistakes.py --file PATH     # another file (e.g. a scratch copy)
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from progress import exercise_order, exercises  # noqa: E402  (the course's declared exercises)

START, END = "<!-- mistakes: start -->", "<!-- mistakes: end -->"
CAP = 8  # entries per exercise: a teacher's guide lists what is common, not every message
SHORT = 200  # characters of a diagnosis kept at most

NAMED = "common mistake: "
EXERCISE = re.compile(r"Exercise (\d+)\.(\d+)")
NO_MISTAKES = "(no named mistakes; the checker reports wrong values)"

Record = tuple[str, str]  # (CheckFailed.exercise, CheckFailed.diagnosis)


# ---- harvest ------------------------------------------------------------------------------------


class Collector:
    """A pytest plugin that records every CheckFailed constructed while a test body runs (not in
    collection or fixtures, where a failure would not be a diagnosed answer)."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.in_test = False

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item):
        self.in_test = True
        try:
            return (yield)
        finally:
            self.in_test = False


def harvest() -> tuple[list[Record], int]:
    """Run the checker tests with CheckFailed's constructor wrapped; return the records and
    pytest's exit code."""
    from helpers.checks import CheckFailed  # the class the tests and checkers raise

    collector = Collector()
    original = CheckFailed.__init__

    def recording_init(self, *a, **kw):
        original(self, *a, **kw)
        if collector.in_test:
            collector.records.append((self.exercise, self.diagnosis))

    CheckFailed.__init__ = recording_init
    try:
        # in-process and serial: the records live in this process (xdist's workers would keep them)
        checks = str(ROOT / "tests" / "checks")
        args = [checks, "-p", "no:xdist", "-q", "-p", "no:cacheprovider"]
        code = pytest.main(args, plugins=[collector])
    finally:
        CheckFailed.__init__ = original  # the class is shared with whatever runs after us
    return collector.records, int(code)


def read_titles(notebooks: Path = ROOT / "notebooks") -> dict[str, str]:
    """Titles: each exercise's as declared ({"2.1": "the full OV circuit", …}) and each chapter's
    from its learner notebook's `# ` title ({"2": "02 · One layer: …"})."""
    titles = {e.number: e.title for e in exercises()}
    for path in sorted(notebooks.glob("0*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        markdown = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
        chapter = re.search(r"^# (.+?)\s*$", markdown, re.MULTILINE)
        if chapter:
            titles[str(int(path.name[:2]))] = chapter.group(1)
    return titles


# ---- rendering ----------------------------------------------------------------------------------


# A sentence ends at . ! ? before a capital ("e.g. log 0", "0.5 %" and "i.e. W_E" end none), or
# at a line break before a capital ("… missed:\n  'one layer': …\nWhy? …" ends before "Why?").
SENTENCE_END = re.compile(r"(?<![ei]\.[eg]\.)(?<=[.!?])\s+(?=[A-Z])|\n\s*(?=[A-Z])")


def shorten(diagnosis: str) -> str:
    """The first sentence, cut to SHORT characters: after its last whole clause (before ": " or
    "; ") if that keeps a third of them, else at a word."""
    text = " ".join(SENTENCE_END.split(diagnosis.strip(), maxsplit=1)[0].split())
    if len(text) <= SHORT:
        return text
    text = text[:SHORT]
    clause = max(text.rfind(": "), text.rfind("; "))
    text = text[:clause] if clause > SHORT // 3 else text.rsplit(" ", 1)[0]
    if text.count("`") % 2:  # a code span cut in two would swallow the rest of the line
        text = text[: text.rindex("`")]
    return text.rstrip(" ,;:(") + " …"


# What every checker says, whatever the exercise: not a mistake a teacher needs explained.
CATCH_ALL = re.compile(
    r"which this exercise withholds|forward pass .* is not available|matches none of the common "
    r"mistakes"
)


def entries(diagnoses: list[str]) -> tuple[list[str], int]:
    """The entries of one exercise, most telling first, and how many were left out by the cap.

    Diagnoses that differ only in numbers (shapes, head indices, values) are one entry, shown as
    first seen; named mistakes come before other diagnoses, then the most frequent first. The
    catch-all diagnoses every checker gives (`CATCH_ALL`) are left out."""
    seen: dict[str, tuple[str, bool]] = {}  # key -> (first text, named)
    counts: Counter[str] = Counter()
    for diagnosis in diagnoses:
        if CATCH_ALL.search(diagnosis):
            continue
        named = NAMED in diagnosis
        text = shorten(diagnosis.split(NAMED, 1)[1] if named else diagnosis)
        key = re.sub(r"\d+(?:\.\d+)?", "#", text)
        seen.setdefault(key, (text, named))
        counts[key] += 1
    keys = sorted(seen, key=lambda k: (not seen[k][1], -counts[k]))  # stable: first seen first
    return [seen[k][0] for k in keys[:CAP]], max(0, len(keys) - CAP)


def group(records: list[Record]) -> dict[str, list[str]]:
    """The diagnoses per exercise number ("2.1"), from exercises named "Exercise N.M …" (others,
    like the "Ex" of the base tests, are not exercises)."""
    diagnoses: dict[str, list[str]] = {}
    for exercise, diagnosis in records:
        if match := EXERCISE.match(exercise):
            diagnoses.setdefault(f"{match[1]}.{match[2]}", []).append(diagnosis)
    return diagnoses


def render(records: list[Record], titles: dict[str, str]) -> str:
    """The section's markdown: a `### Chapter …` heading per chapter, and per exercise of the
    notebooks (`titles`, from `read_titles`) its title and a bullet list of its mistakes. The
    diagnoses are kept as written: the checkers write them in markdown (`code`, *emphasis*)."""
    diagnoses = group(records)
    lines: list[str] = []
    chapter = None
    for number in sorted((n for n in titles if "." in n), key=exercise_order):
        if number.split(".")[0] != chapter:
            chapter = number.split(".")[0]
            lines += [f"### Chapter {titles.get(chapter, f'{int(chapter):02d}')}", ""]
        lines += [f"**Exercise {number} — {titles[number]}**", ""]
        shown, left_out = entries(diagnoses.get(number, []))
        lines += [f"- {text}" for text in shown] or [f"- {NO_MISTAKES}"]
        if left_out:
            lines.append(f"- (and {left_out} rarer diagnos{'is' if left_out == 1 else 'es'})")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ---- TEACHING.md --------------------------------------------------------------------------------


def splice(text: str, section: str) -> str | None:
    """`text` with `section` between the markers, the rest as it was; None without markers."""
    start = text.find(START)
    end = text.find(END, start)
    if start < 0 or end < 0:
        return None
    note = "<!-- generated by tools/mistakes.py from the checker tests; edit there, not here -->"
    body = f"{START}\n{note}\n\n{section.rstrip()}\n\n"
    return text[:start] + body + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, default=ROOT / "TEACHING.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if the section is stale")
    options = parser.parse_args(argv)

    began = time.perf_counter()
    records, code = harvest()
    took = time.perf_counter() - began
    if code != 0:  # a failing checker test would leave its mistakes out unnoticed
        print(f"the checker tests failed (pytest exit code {code}); nothing written")
        return 2
    titles = read_titles()
    section = render(records, titles)
    diagnoses = group(records)
    exercises = [n for n in titles if "." in n]
    shown = sum(len(entries(diagnoses.get(n, []))[0]) for n in exercises)
    print(
        f"harvested {len(records)} diagnoses in {took:.1f} s: "
        f"{len(exercises)} exercises, {shown} entries"
    )
    if unknown := sorted(set(diagnoses) - set(exercises), key=exercise_order):
        # made up by a test (e.g. of how a failure is shown), or a checker without its notebook
        print(f"left out, as no learner notebook has them: Exercise {', '.join(unknown)}")

    return update(options.file, section, check=options.check)


def update(path: Path, section: str, check: bool = False) -> int:
    """Write `section` between the markers of `path` (with `check`, only compare); the exit
    code: 1 if `check` finds it out of date, or cannot (no file, no markers)."""
    text = path.read_text() if path.exists() else None
    updated = splice(text, section) if text is not None else None
    if updated is None:
        why = "does not exist" if text is None else f"lacks the markers {START} … {END}"
        print(f"{path} {why}; nothing written. The section would be:\n\n{section}")
        return 1 if check else 0
    if check:
        stale = updated != text
        print(f"{path}: the mistakes section is " + ("out of date" if stale else "up to date"))
        return int(stale)
    path.write_text(updated)
    print(f"wrote the mistakes section of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
