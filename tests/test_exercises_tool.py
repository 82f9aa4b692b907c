"""tools/exercises.py: the exercise counts in README.md and the chapter times in TEACHING.md are
derived from the declarations, the notebooks and BENCHMARKS.md, and kept current."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import exercises as tool  # noqa: E402

from helpers import checks  # noqa: E402


def test_readme_and_teaching_are_current():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "exercises.py"), "--check"],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_counts_come_from_the_declarations():
    found = tool.chapters()
    assert sum(len(c.exercises) for c in found) == len(checks.exercises())
    assert [n for c in found for n, _, _ in c.exercises] == [e.number for e in checks.exercises()]
    assert f"{len(checks.exercises())} in all" in tool.readme_section(found)


def test_hours_read_as_a_teacher_would():
    assert tool._hours(75) == "1¼ hours" and tool._hours(660) == "11 hours"
    assert tool._hours(40) == "40 minutes" and tool._hours(150) == "2½ hours"
