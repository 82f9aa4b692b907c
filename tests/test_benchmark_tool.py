"""tools/benchmark.py keeps BENCHMARKS.md as one part per section, each from its latest run (the
timings themselves are measured by running the tool, never asserted in tests)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import benchmark  # noqa: E402


def test_a_section_is_replaced_and_the_others_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "BENCHMARKS", tmp_path / "BENCHMARKS.md")
    monkeypatch.setattr(benchmark, "machine", lambda: "a test machine")
    benchmark.record("training", "first run")
    benchmark.record("widgets", "widgets run")
    benchmark.record("training", "second run")
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "second run" in text and "first run" not in text and "widgets run" in text
    assert text.index("widgets run") < text.index("second run")  # in the tool's section order
    assert text.count("a test machine") == 2


def test_the_peer_requirements_pin_transformer_lens_2_18_and_the_courses_torch():
    pins = (ROOT / "tools" / "requirements-peers.txt").read_text()
    course = (ROOT / "requirements.txt").read_text()
    assert "transformer-lens==2.18.0" in pins
    torch_pin = next(line for line in course.splitlines() if line.startswith("torch=="))
    assert torch_pin in pins.splitlines()
