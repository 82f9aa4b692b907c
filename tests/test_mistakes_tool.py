"""tools/mistakes.py turns the checkers' diagnoses into TEACHING.md's list of common mistakes: the
rendering and the writing are tested here on hand-made records (the harvest itself runs the
checker tests, minutes long, and is left to running the tool)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# tools/ is not a package: load the script from its path
_spec = importlib.util.spec_from_file_location("mistakes", ROOT / "tools" / "mistakes.py")
mistakes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mistakes)

TITLES = {
    "2": "02 · One layer",
    "2.1": "the full OV circuit",
    "2.9": "quantify the bug",
    "2.10": "describe a head",
    "10": "10 · Ten",
    "10.1": "a late one",
}
NAMED = "your answer matches a common mistake: "


def bullets(section: str, number: str) -> list[str]:
    """The bullets under one exercise's title."""
    after = section.split(f"**Exercise {number} — ", 1)[1].split("\n\n", 2)[1]
    return after.splitlines()


def test_diagnoses_differing_only_in_numbers_are_one_entry_shown_as_first_seen():
    records = [
        ("Exercise 2.1 (full_ov_circuit)", f"head 0: {NAMED}the scale is missing for d_head 4."),
        ("Exercise 2.1 (full_ov_circuit)", f"head 3: {NAMED}the scale is missing for d_head 6."),
        ("Exercise 2.1 (full_ov_circuit)", "f returned shape (3, 4); expected (4, 3)."),
        ("Exercise 2.1 (full_ov_circuit)", "f returned shape (12, 5); expected (5, 12)."),
    ]
    assert bullets(mistakes.render(records, TITLES), "2.1") == [
        "- the scale is missing for d_head 4.",  # the named mistake alone, without its case
        "- f returned shape (3, 4); expected (4, 3).",
    ]


def test_exercises_are_in_numeric_order_under_their_chapters():
    section = mistakes.render([], TITLES)
    order = [section.index(f"**Exercise {n} ") for n in ("2.1", "2.9", "2.10", "10.1")]
    assert order == sorted(order)  # 2.10 after 2.9, chapter 10 after chapter 2
    assert section.index("### Chapter 02 · One layer") < order[0]
    assert order[2] < section.index("### Chapter 10 · Ten") < order[3]


def test_an_exercise_without_diagnoses_is_listed_and_others_are_left_out():
    records = [
        ("Exercise 2.1", f"{NAMED}wrong axis."),
        ("Ex", "made up by a base test"),
        ("Exercise 9.9", "made up by a test of the display"),
    ]
    section = mistakes.render(records, TITLES)
    assert bullets(section, "2.9") == [f"- {mistakes.NO_MISTAKES}"]
    assert "made up" not in section and "9.9" not in section


def test_the_cap_keeps_named_mistakes_first_then_the_most_frequent():
    records = [("Exercise 2.1", "f returned dtype int; expected a float tensor.")] * 20
    for i, name in enumerate("abcdefghijkl"):
        records += [("Exercise 2.1", f"{NAMED}mistake {name}.")] * (1 + i % 3)
    shown = bullets(mistakes.render(records, TITLES), "2.1")
    assert len(shown) == mistakes.CAP + 1 and shown[-1] == "- (and 5 rarer diagnoses)"
    # three of each count (3, 2, 1), first seen first within a count; the frequent dtype
    # message is not a named mistake, and gives way to them
    assert shown[:-1] == [f"- mistake {n}." for n in "cfilbehk"]


def test_a_diagnosis_is_cut_to_its_first_sentence_or_a_clause():
    assert mistakes.shorten("the sign is flipped. Use -Σ p log p.") == "the sign is flipped."
    assert mistakes.shorten("i.e. W_E @ W_U, e.g. Log.") == "i.e. W_E @ W_U, e.g. Log."
    assert (
        mistakes.shorten("3 of 7 missed:\n  'a': said later\nWhy?")
        == "3 of 7 missed: 'a': said later"
    )
    withheld = "your answer calls the course's `circuits.full_ov_circuit`, which is withheld"
    long = f"{withheld}: it computes " + "the answer you are asked to build " * 5
    assert mistakes.shorten(long) == f"{withheld} …"  # cut at its last clause
    assert mistakes.shorten("short: " + "word " * 50).endswith("word …")  # clause too short
    unbalanced = "see " + "word " * 37 + "`code span that runs on and on`"
    assert mistakes.shorten(unbalanced).endswith("word …")  # no half code span


def test_the_section_is_written_between_the_markers_and_the_rest_kept(tmp_path, capsys):
    path = tmp_path / "TEACHING.md"
    before, after = "# Teaching\n\nIntro.\n\n", "\n\n## Later\n\nMore.\n"
    path.write_text(f"{before}{mistakes.START}\nold list\n{mistakes.END}{after}")
    assert mistakes.update(path, "- new list\n", check=True) == 1  # stale: reported, not written
    assert "old list" in path.read_text()
    assert mistakes.update(path, "- new list\n") == 0
    text = path.read_text()
    assert text.startswith(before + mistakes.START) and text.endswith(mistakes.END + after)
    assert "- new list" in text and "old list" not in text
    assert mistakes.update(path, "- new list\n", check=True) == 0  # up to date now
    assert mistakes.update(path, "- new list\n") == 0 and path.read_text() == text  # idempotent


def test_without_markers_the_section_is_printed_and_nothing_written(tmp_path, capsys):
    path = tmp_path / "TEACHING.md"
    path.write_text("no markers here\n")
    assert mistakes.update(path, "- a list\n") == 0
    assert mistakes.update(path, "- a list\n", check=True) == 1
    assert mistakes.update(tmp_path / "missing.md", "- a list\n") == 0
    out = capsys.readouterr().out
    assert "lacks the markers" in out and "does not exist" in out and "- a list" in out
    assert path.read_text() == "no markers here\n"


def test_the_catch_all_diagnoses_every_checker_gives_are_left_out():
    shown, left_out = mistakes.entries([
        "your answer calls the course's `circuits.full_ov_circuit`, which this exercise withholds",
        "the model's forward pass (model(tokens), run_with_cache) is not available in this exercise",
        "head 1: your answer differs from the reference by up to 0.5, and matches none of the "
        "common mistakes this checker knows.",
        "full_ov_circuit returned shape (3, 4); expected (4, 4).",
    ])  # fmt: skip
    assert shown == ["full_ov_circuit returned shape (3, 4); expected (4, 4)."] and left_out == 0


def test_teaching_md_lists_every_exercise_of_the_notebooks():
    section = (ROOT / "TEACHING.md").read_text(encoding="utf-8")
    section = section.split("<!-- mistakes: start -->")[1].split("<!-- mistakes: end -->")[0]
    titles = mistakes.read_titles()
    exercises = [n for n in titles if "." in n]
    assert len(exercises) >= 46
    for number in exercises:
        assert f"**Exercise {number} — {titles[number]}**" in section, number


@pytest.mark.slow
def test_teaching_md_mistakes_are_what_the_checkers_say_today():
    """The harvest (the checker tests, in-process; minutes) gives TEACHING.md's section."""
    assert mistakes.main(["--check"]) == 0, "run `python tools/mistakes.py` to update TEACHING.md"
