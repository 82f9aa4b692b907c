"""Chapter 05's runs, live or recorded (helpers.recordings)."""

import _thread
import re
import time
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch

from helpers import phase_change, recipes, recordings
from helpers.checkpoints import CheckpointError


@pytest.fixture
def as_a_learner(monkeypatch):
    """`live=None` decides by speed, as in a learner's notebook (the suite sets RUNS_ENV)."""
    monkeypatch.delenv(recordings.RUNS_ENV, raising=False)


@pytest.fixture
def fresh_session(monkeypatch):
    """No sweep made earlier in this session (helpers.recordings keeps the first for the session)."""
    monkeypatch.setattr(recordings, "_SWEEPS", {})


def test_the_recording_holds_every_run_of_the_chapter_and_its_sweep():
    recording = recordings.load_recording()
    settings = recordings.phase_change_settings()
    assert list(recording["runs"]) == list(settings)
    assert list(recording["sweep"]) == list(phase_change.sweep_settings())
    for name, run in recording["runs"].items():
        cfg, _, training = settings[name]
        assert run.name == name and run.cfg == cfg and run.source == "recorded"
        every = recordings.PHASE_CHANGE_EVERY  # and at the end
        assert run.steps == [*range(0, training.n_steps, every), training.n_steps]
        n = len(run.steps)
        assert len(run.heldout_loss) == len(run.icl) == len(run.repeat_ratio) == n
        assert run.prefix_matching.shape == run.previous_token.shape == (n, cfg.n_layers, 4)
        assert len(run.train_loss) == training.n_steps
        kept = name in recordings.PHASE_CHANGE_WEIGHTS
        assert len(run.snapshots) == (n if kept else 0)
    assert recording["runs"]["two layers"].model_at(-1).cfg == settings["two layers"][0]
    for run in recording["sweep"].values():
        assert not run.snapshots and run.steps[-1] <= 300


def test_recorded_runs_say_so(capsys, fresh_session):
    runs = recordings.phase_change_runs(["one layer"], live=False)
    assert list(runs) == ["one layer"] and runs["one layer"].source == "recorded"
    assert capsys.readouterr().out == (
        "recorded runs from data/phase_change_runs.pt, as asked (LIVE = False)\n"
    )
    swept = recordings.phase_change_sweep(live=False)
    assert swept["base"].source == "recorded"
    assert recordings.phase_change_sweep() is swept  # kept for the session
    assert "; kept from earlier in this session" in capsys.readouterr().out


def test_a_machine_too_slow_gets_the_recorded_runs(capsys, fresh_session, as_a_learner):
    start = time.perf_counter()
    runs = recordings.phase_change_runs(["two layers", "one layer"], budget_s=0.01, progress=False)
    assert time.perf_counter() - start < 10  # gave up at once
    assert [r.source for r in runs.values()] == ["recorded"] * 2
    out = capsys.readouterr().out
    assert re.match(r"recorded runs from data/phase_change_runs.pt: this machine (would have "
                    r"needed about \d+ s to train them|had not done one training step after 0 s) "
                    r"\(the budget is 0.01 s\); set LIVE = True to train here anyway\n$", out)  # fmt: skip
    assert recordings.phase_change_sweep(budget_s=0.01, progress=False)["base"].source == "recorded"


class _Interrupting:
    """A task that interrupts the main thread (Jupyter's stop button) at its `at`-th batch."""

    def __init__(self, task, at: int) -> None:
        self.task, self.at, self.batches, self.d_vocab = task, at, 0, task.d_vocab

    def sample(self, batch_size, n_ctx, generator=None):
        self.batches += 1
        if self.batches == self.at:
            _thread.interrupt_main()
        return self.task.sample(batch_size, n_ctx, generator=generator)

    def to_dict(self) -> dict:
        return self.task.to_dict()


def test_an_interrupted_cell_gets_the_recorded_runs(monkeypatch, capsys, as_a_learner):
    settings = recordings.phase_change_settings()
    cfg, task, training = settings["one layer, smeared keys"]
    interrupting = _Interrupting(task, at=20)
    settings["one layer, smeared keys"] = (cfg, interrupting, training)
    monkeypatch.setattr(recordings, "phase_change_settings", lambda: settings)
    runs = recordings.phase_change_runs(["one layer, smeared keys"], progress=False)
    assert runs["one layer, smeared keys"].source == "recorded"
    assert interrupting.batches < training.n_steps  # training stopped
    assert "training here was interrupted after" in capsys.readouterr().out
    interrupting.batches = 0
    with pytest.raises(KeyboardInterrupt):  # asked to train here: an interruption stops it
        recordings.phase_change_runs(["one layer, smeared keys"], live=True, progress=False)


def test_a_live_runs_first_steps_reproduce_the_recording_exactly():
    """The recording is what these settings give: the first 40 steps trained here equal it, bit
    for bit. Torch's CPU kernels are deterministic on one thread (training's), but another CPU
    or torch version may round differently; a failure there means the recording was made
    elsewhere (its "made_with" says where), not that the settings changed (loading checks
    those)."""
    recorded = recordings.load_recording()["runs"]["two layers"]
    cfg, task, training = recordings.phase_change_settings()["two layers"]
    live = phase_change.record_training(cfg, task, replace(training, n_steps=40),
                                        every=recordings.PHASE_CHANGE_EVERY, progress=False)  # fmt: skip
    n = len(live.steps)
    assert live.steps == recorded.steps[:n] == [0, 20, 40]
    assert live.train_loss == recorded.train_loss[:40]
    for key in ("heldout_loss", "icl", "repeat_ratio"):
        assert getattr(live, key) == getattr(recorded, key)[:n], key
    for key in ("previous_token", "prefix_matching"):
        assert torch.equal(getattr(live, key), getattr(recorded, key)[:n]), key
    for mine, theirs in zip(live.snapshots, recorded.snapshots, strict=False):
        assert all(torch.equal(v, theirs[k]) for k, v in mine.items())


def _assert_same_records(live: dict, recorded: dict) -> None:
    assert list(live) == list(recorded)
    for name, run in live.items():
        other = recorded[name]
        for f in fields(phase_change.TrainingRecord):
            if f.name in ("seconds", "source"):
                continue
            mine, theirs = getattr(run, f.name), getattr(other, f.name)
            if f.name == "snapshots":
                assert len(mine) == len(theirs), name
                assert all(torch.equal(v, b[k]) for a, b in zip(mine, theirs, strict=True)
                           for k, v in a.items()), name  # fmt: skip
            elif isinstance(mine, torch.Tensor):
                assert torch.equal(mine, theirs), (name, f.name)
            else:
                assert mine == theirs, (name, f.name)


@pytest.mark.slow  # trains the chapter's runs and its sweep: run by .ci/run (course.py test -m slow)
def test_the_whole_live_runs_equal_the_recording(fresh_session):
    recording = recordings.load_recording()
    names = list(recordings.phase_change_settings())
    live = recordings.phase_change_runs(names, live=True, progress=False)
    assert all(run.source == "live" for run in live.values())
    _assert_same_records(live, recording["runs"])
    _assert_same_records(
        recordings.phase_change_sweep(live=True, progress=False), recording["sweep"]
    )


RECORDING = recordings.recording_path()  # the course's, before a test moves DATA_DIR


def _rewritten(path, change) -> None:
    """The recording, loaded as plain data, changed by `change` and saved to `path`."""
    payload = torch.load(RECORDING, weights_only=True)
    change(payload)
    torch.save(payload, path)


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda p: p.write_bytes(b"not a zip"), "truncated or not a recording"),
        (lambda p: p.write_bytes(RECORDING.read_bytes()[:100_000]), "could not read"),
        (lambda p: torch.save({"format": "something else"}, p), "not a recording of chapter 05"),
        (lambda p: torch.save({"format": recordings.RECORDING_FORMAT, "x": Path(".")}, p),
         "refused to load"),
        (lambda p: _rewritten(p, lambda d: d["settings"]["runs"]["one layer"]["training"].update(
            lr=1.0)), "recorded with other settings"),
        (lambda p: _rewritten(p, lambda d: d["runs"]["one layer"]["icl"].pop()),
         "runs 'one layer': icl must be a list of 31 numbers"),
        (lambda p: _rewritten(p, lambda d: d["runs"]["two layers"]["snapshots"][3].pop(
            "embed.W_E")), "snapshots must be none or 31 state dicts"),
        (lambda p: _rewritten(p, lambda d: d["sweep"]["base"].pop("icl")), "sweep 'base' has the"),
    ],
)  # fmt: skip
def test_a_broken_recording_is_refused_with_the_reason(tmp_path, monkeypatch, make, error):
    monkeypatch.setattr(recordings, "DATA_DIR", tmp_path)
    make(tmp_path / "phase_change_runs.pt")
    with pytest.raises(CheckpointError, match=re.escape(error)) as info:
        recordings.phase_change_runs(["one layer"], live=False)
    assert str(tmp_path / "phase_change_runs.pt") in str(info.value)
    assert "python3 course.py checkpoints phase_change_runs" in str(info.value) or (
        "expected format" in str(info.value)
    )


def test_without_a_recording_live_false_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.setattr(recordings, "DATA_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="course.py checkpoints phase_change_runs"):
        recordings.phase_change_runs(["one layer"], live=False)


def test_phase_change_runs_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match=r"names must be a list of runs among \['two layers'"):
        recordings.phase_change_runs("two layers")
    with pytest.raises(ValueError, match="names must be a list of runs"):
        recordings.phase_change_runs(["three layers"])
    with pytest.raises(ValueError, match="live must be True, False or None"):
        recordings.phase_change_runs(["one layer"], live="yes")
    with pytest.raises(ValueError, match="budget_s must be a number of seconds > 0"):
        recordings.phase_change_sweep(budget_s=-1)
    with pytest.raises(ValueError, match="no recipe named 'nope'; available: .*phase_change_runs"):
        recordings.main(["nope"])


def test_the_chapters_explanation_of_the_sweep_says_what_the_recorded_sweep_did():
    """Chapter 05 explains each run of exercise 5.6's sweep ("**name: outcome.**"), folded below
    the check; what it says must be what happened (the recorded sweep equals a live one: above)."""
    import nbformat

    path = recipes.ROOT / "notebooks" / "solutions" / "05_phase_change.ipynb"
    (cell,) = [c for c in nbformat.read(path, as_version=4).cells
               if c.cell_type == "markdown" and "Why each run did what it did" in c.source]  # fmt: skip
    explained = dict(
        re.findall(r"^- \*\*(.+?): (earlier|the same|later|never)\.\*\*", cell.source, re.M)
    )
    assert explained == phase_change.sweep_outcomes(recordings.load_recording()["sweep"])


def test_the_environment_decides_what_live_none_does(monkeypatch, capsys, fresh_session):
    monkeypatch.setenv(recordings.RUNS_ENV, "recorded")
    runs = recordings.phase_change_runs(["one layer"], progress=False)
    assert runs["one layer"].source == "recorded"
    assert "as COURSE_PHASE_CHANGE_RUNS=recorded asks" in capsys.readouterr().out
    assert recordings.phase_change_runs(["one layer"], live=False)["one layer"].source == "recorded"
    monkeypatch.setenv(recordings.RUNS_ENV, "sometimes")
    with pytest.raises(ValueError, match="must be 'live' or 'recorded', got 'sometimes'"):
        recordings.phase_change_runs(["one layer"], progress=False)
