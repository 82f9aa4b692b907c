"""The exercises' counts and times in README.md and TEACHING.md, derived from the exercises'
declarations (`helpers.checks.exercises()`), the notebooks (each exercise's difficulty and minutes,
each chapter's prose and stated time) and BENCHMARKS.md (each notebook's execution time).

    python tools/exercises.py           rewrite both sections
    python tools/exercises.py --check   exit 1 if either is out of date

README.md's section sits between `<!-- exercises: start -->` and `<!-- exercises: end -->`,
TEACHING.md's (the table of chapters and times) between `<!-- chapter times: start -->` and
`<!-- chapter times: end -->`.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from helpers.checks import exercises  # noqa: E402

LEARNER = ROOT / "notebooks"
SOLUTIONS = LEARNER / "solutions"
README, TEACHING, BENCHMARKS = ROOT / "README.md", ROOT / "TEACHING.md", ROOT / "BENCHMARKS.md"
WORDS_A_MINUTE = 200  # reading the prose
HEADING = re.compile(r"###\s*Exercise\s+(\d+\.\d+)\s*[—–-]")
DIFFICULTY = re.compile(r"\*\*Difficulty\*\* ([●○]{5}).*?about (\d+) minutes")
STATED = re.compile(r"\*\*Time:\*\* (about [^.]*?)\. ")
CHAPTER_TITLE = re.compile(r"^# \d\d · (.*)$", re.M)
SHORT_TITLES = {  # the chapters as the tables name them
    "00": "residual stream", "01": "bigrams", "02": "skip-trigrams", "03": "composition",
    "04": "induction heads", "05": "phase change", "06": "real text",
}  # fmt: skip


@dataclass
class Chapter:
    prefix: str
    notebook: str  # file name
    exercises: list[tuple[str, int, int]]  # (number, difficulty in dots, minutes)
    words: int
    stated: str
    run_all: str  # measured, from BENCHMARKS.md


def _words(markdown: str) -> int:
    text = re.sub(r"```.*?```|<[^>]+>|[`*#>|$\\]", " ", markdown, flags=re.S)
    return len(re.findall(r"[\w’'-]+", text))


def chapters() -> list[Chapter]:
    benchmarks = BENCHMARKS.read_text() if BENCHMARKS.exists() else ""
    found = []
    for path in sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb")):
        prefix = path.name[:2]
        cells = nbformat.read(path, as_version=4).cells
        markdown = [c.source for c in cells if c.cell_type == "markdown"]
        difficulty = {}
        for source in markdown:
            for heading in HEADING.finditer(source):
                match = DIFFICULTY.search(source, heading.end())
                difficulty[heading.group(1)] = (match.group(1).count("●"), int(match.group(2)))
        declared = [e.number for e in exercises(prefix)]
        measured = re.search(rf"^  {re.escape(path.name)}\s+([\d.]+) s", benchmarks, re.M)
        stated = STATED.search(markdown[0])
        found.append(Chapter(
            prefix, path.name, [(n, *difficulty[n]) for n in declared], sum(map(_words, markdown)),
            stated.group(1) if stated else "", f"{measured.group(1)} s" if measured else "",
        ))  # fmt: skip
    return found


def _dots(lo: int, hi: int) -> str:
    return "●" * lo if lo == hi else f"{'●' * lo}–{'●' * hi}"


def _hours(minutes: int) -> str:
    quarters = round(minutes / 15)
    whole, part = divmod(quarters, 4)
    return f"{whole}{['', '¼', '½', '¾'][part]} hours" if whole else f"{minutes} minutes"


def readme_section(found: list[Chapter]) -> str:
    counts = [len(c.exercises) for c in found]
    hard = sum(d >= 4 for c in found for _, d, _ in c.exercises)
    listed = ", ".join(map(str, counts[:-1])) + f" and {counts[-1]}"
    return (
        f"The chapters have {listed} exercises ({found[0].prefix} to {found[-1].prefix}): "
        f"{sum(counts)} in all, {hard} of them rated ●●●●○ or harder."
    )


def teaching_section(found: list[Chapter]) -> str:
    rows = [
        "| chapter | exercises (difficulty) | exercises, estimated | prose | stated in the "
        "notebook | Run All, measured |",
        "|---|---|---|---|---|---|",
    ]
    for c in found:
        dots = [d for _, d, _ in c.exercises] or [0]
        minutes = sum(m for _, _, m in c.exercises)
        name = f"[{c.prefix} · {SHORT_TITLES.get(c.prefix, c.notebook)}](notebooks/{c.notebook})"
        run = (
            c.run_all if c.prefix != "05" else f"{c.run_all} (trains live, or loads its recording)"
        )
        rows.append(
            f"| {name} | {len(dots)} ({_dots(min(dots), max(dots))}) | {minutes} min | "
            f"{c.words:,} words, {round(c.words / WORDS_A_MINUTE)} min | {c.stated} | {run} |"
        )
    total = sum(len(c.exercises) for c in found)
    exercise_minutes = sum(m for c in found for _, _, m in c.exercises)
    reading = sum(c.words for c in found) / WORDS_A_MINUTE
    rows += [
        "",
        f"All {len(found)} chapters: {total} exercises, about {_hours(exercise_minutes)} of "
        f"exercises and {_hours(round(reading))} of reading.",
    ]
    return "\n".join(rows)


SECTIONS = {
    README: ("<!-- exercises: start -->", "<!-- exercises: end -->", readme_section),
    TEACHING: ("<!-- chapter times: start -->", "<!-- chapter times: end -->", teaching_section),
}


def update(check: bool) -> list[str]:
    """Rewrite the sections (or, with `check`, list the stale ones)."""
    found = chapters()
    stale = []
    for path, (start, end, make) in SECTIONS.items():
        text = path.read_text()
        if start not in text or end not in text:
            stale.append(f"{path.name} has no section {start} … {end}")
            continue
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        new = f"{head}{start}\n{make(found)}\n{end}{tail}"
        if new != text:
            stale.append(f"{path.name}'s section {start} is out of date")
            if not check:
                path.write_text(new)
    return stale


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; change nothing")
    args = parser.parse_args(argv)
    stale = update(args.check)
    for line in stale:
        print(line)
    if args.check and stale:
        print("Run `python tools/exercises.py` to rewrite them.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
