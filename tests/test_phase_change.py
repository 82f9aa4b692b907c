import _thread
import math
import re
import threading

import numpy as np
import pytest
import torch

from helpers import evals, phase_change, plotting, widgets
from helpers.data import RepeatedSegmentLanguage, induction_probe
from helpers.models import AttnOnlyTransformer, HookedTransformerConfig, next_token_loss
from helpers.train import TrainConfig
from tests.test_plotting import _assert_same_picture

CFG = HookedTransformerConfig(
    n_layers=2, d_model=32, n_heads=2, d_head=8, n_ctx=32, d_vocab=21, seed=3
)
LANGUAGE = RepeatedSegmentLanguage(n_states=20, segment_len=(3, 6), seed=0)


@pytest.fixture(scope="module")
def record():
    return phase_change.record_training(
        CFG, LANGUAGE, TrainConfig(n_steps=30, batch_size=16, lr=5e-3, seed=1), every=10,
        progress=False,
    )  # fmt: skip


def test_icl_positions_and_score():
    assert phase_change.icl_positions(32) == (3, 29)
    assert phase_change.icl_positions(512)[1] == 461
    losses = torch.arange(12.0).repeat(2, 1)  # entry i: the loss of token i + 1 is i
    assert phase_change.icl_score_from_losses(losses, 2, 10) == pytest.approx(8.0)
    with pytest.raises(ValueError, match="early .* must come before late"):
        phase_change.icl_score_from_losses(losses, 10, 2)
    with pytest.raises(ValueError, match="late must be a token position in 1..12"):
        phase_change.icl_score_from_losses(losses, 2, 13)
    with pytest.raises(ValueError, match="n_ctx must be an int >= 4"):
        phase_change.icl_positions(3)


def test_icl_band_score_averages_bands_around_the_positions():
    losses = torch.arange(12.0).repeat(2, 1) ** 2  # entry i: the loss of token i + 1 is i²
    band = phase_change.icl_band_score(losses, 3, 9, half_width=1)
    assert band == pytest.approx((49 + 64 + 81) / 3 - (1 + 4 + 9) / 3)
    assert phase_change.icl_band_score(losses, 3, 9, 0) == phase_change.icl_score_from_losses(
        losses, 3, 9
    )
    with pytest.raises(ValueError, match=r"the bands 2±2 and 9±2 must lie in 1..12"):
        phase_change.icl_band_score(losses, 2, 9, 2)
    with pytest.raises(ValueError, match="and not overlap"):
        phase_change.icl_band_score(losses, 5, 7, 1)
    with pytest.raises(ValueError, match="half_width must be an int >= 0"):
        phase_change.icl_band_score(losses, 3, 9, -1)


def test_icl_score_of_a_model_is_late_minus_early_loss():
    model = AttnOnlyTransformer(CFG)
    tokens = LANGUAGE.sample(8, 24, generator=torch.Generator().manual_seed(0))
    losses = next_token_loss(model(tokens), tokens, per_token=True).detach()
    assert phase_change.icl_score(model, tokens) == pytest.approx(
        float(losses[:, 21].mean() - losses[:, 1].mean()), abs=1e-6
    )


def test_record_training_keeps_scores_and_weights(record):
    n = len(record.steps)
    assert record.steps == [0, 10, 20, 30] and len(record.train_loss) == 30
    assert len(record.heldout_loss) == len(record.icl) == len(record.repeat_ratio) == n
    assert record.prefix_matching.shape == record.previous_token.shape == (n, 2, 2)
    final = record.model_at(-1)
    again = phase_change.record_training(
        CFG, LANGUAGE, TrainConfig(n_steps=30, batch_size=16, lr=5e-3, seed=1), every=10,
        progress=False,
    )  # fmt: skip
    tokens = induction_probe(20, batch_size=4)
    assert torch.equal(final(tokens), again.model_at(-1)(tokens))  # deterministic from the seeds
    assert not torch.equal(record.model_at(0)(tokens), final(tokens))
    scores = evals.induction_scores(final, induction_probe(20, batch_size=50), 10)
    assert torch.allclose(record.prefix_matching[-1], scores, atol=1e-6)
    assert record.index_of(25) == 2 and record.index_of(1000) == n - 1
    with pytest.raises(ValueError, match="index must be an int in 0..3"):
        record.model_at(4)


def test_onsets_of_changes():
    steps = np.arange(0, 1001, 20)
    rise = 0.1 + 0.7 / (1 + np.exp(-(steps - 400) / 25))  # a jump centred at step 400
    onset = phase_change.change_onset(steps, rise, "up", 0.3)
    assert 300 <= onset <= 380
    assert phase_change.change_onset(steps, -rise, "down", 0.3) == onset
    assert phase_change.change_onset(steps, 0.1 + 0.01 * np.sin(steps), "up", 0.3) is None
    with pytest.raises(ValueError, match="direction must be"):
        phase_change.change_onset(steps, rise, "sideways", 0.3)
    convex = 3 + np.exp(-steps / 200)
    bend, where = phase_change.loss_bend(steps, convex)
    assert bend < 1e-9 and where is None
    bent = convex - rise  # the loss falls again at step ~400
    bend, where = phase_change.loss_bend(steps, bent)
    assert bend > phase_change.MIN_BEND and 280 <= where <= 400


def test_find_phase_change_on_a_run_without_one(record):
    found = phase_change.find_phase_change(record)
    assert found.prefix_matching is None and not found.happened and found.spread == math.inf
    assert found.window is None and set(found.onsets) == {"prefix matching", "ICL", "loss"}


def test_continuation_kinds_dursleys_and_mrs_potter():
    # BOS a b c a b d a: the second "b" repeats "a b"; "d" contradicts "b c"; the last "a"
    # follows "d", which never occurred before
    tokens = torch.tensor([[0, 1, 2, 3, 1, 2, 4, 1]])
    repeats, conflicts = phase_change.continuation_kinds(tokens)
    assert repeats[0].nonzero().flatten().tolist() == [5]
    assert conflicts[0].nonzero().flatten().tolist() == [6]
    # the latest earlier occurrence decides: "a b … a c … a" then "b" contradicts "a c"
    tokens = torch.tensor([[0, 1, 2, 1, 3, 1, 2]])
    repeats, conflicts = phase_change.continuation_kinds(tokens)
    assert conflicts[0].nonzero().flatten().tolist() == [4, 6] and not repeats.any()
    with pytest.raises(ValueError, match=r"\[batch, pos\]"):
        phase_change.continuation_kinds(tokens[0])


def test_pattern_preserving_ablation_of_a_last_layer_head_removes_its_direct_effect():
    model = AttnOnlyTransformer(CFG)
    tokens = LANGUAGE.sample(4, 24, generator=torch.Generator().manual_seed(1))
    logits, cache = model.run_with_cache(tokens)
    ablated = evals.run_with_pattern_preserving_ablation(model, tokens, [(1, 0)])
    direct = cache["blocks.1.attn.hook_result"][:, :, 0] @ model.W_U
    assert torch.allclose(ablated, logits - direct, atol=1e-5)
    assert torch.allclose(
        evals.run_with_pattern_preserving_ablation(model, tokens, []), logits, atol=1e-5
    )
    # a layer-0 head: the layer-1 patterns stay as they were, unlike a plain ablation
    frozen = evals.run_with_pattern_preserving_ablation(model, tokens, [(0, 1)])
    plain = evals.run_with_ablation(model, tokens, [(0, 1)])
    assert not torch.allclose(frozen, plain, atol=1e-4)
    with pytest.raises(ValueError):
        evals.run_with_pattern_preserving_ablation(model, tokens, (0, 1))


def test_phase_change_replay_moves_and_blits_what_a_full_drawing_shows(record):
    tokens = induction_probe(20, batch_size=1, seed=2)
    replay = widgets.phase_change_replay(record, tokens)
    (step,) = replay.controls
    first = replay.output.outputs[0]["data"]["image/png"]
    step.value = 1
    assert replay.error is None and replay.output.outputs[0]["data"]["image/png"] != first
    figure = replay._figure
    changed = plotting.update_phase_change_panel(figure, 2, title="two")
    blitted = plotting.figure_png_blit(figure, changed)
    patterns = torch.stack(
        [torch.stack([c[f"blocks.{layer}.attn.hook_pattern"][0] for layer in range(2)])
         for c in (record.model_at(i).run_with_cache(tokens)[1] for i in range(4))]
    )  # fmt: skip
    full = plotting.figure_png(
        plotting.phase_change_panel(
            record.steps,
            patterns,
            record.prefix_matching,
            record.previous_token,
            record.heldout_loss,
            record.icl,
            2,
            title="two",
        )  # fmt: skip
    )
    _assert_same_picture(blitted, full)
    with pytest.raises(ValueError, match="index must be a record in 0..3"):
        plotting.update_phase_change_panel(figure, 4)


def test_phase_change_replay_needs_weights():
    record = phase_change.record_training(
        CFG, LANGUAGE, TrainConfig(n_steps=2, batch_size=4, seed=0), every=1, snapshots=False,
        progress=False,
    )  # fmt: skip
    with pytest.raises(ValueError, match="kept no weights"):
        widgets.phase_change_replay(record, induction_probe(20, batch_size=1))


def test_training_stops_once_induction_has_formed():
    never = phase_change.record_training(
        CFG, LANGUAGE, TrainConfig(n_steps=30, batch_size=8, seed=0), every=10, snapshots=False,
        progress=False, stop_below=0.0,
    )  # fmt: skip
    assert never.steps == [0, 10, 20, 30] and phase_change.formation_step(never, 0.0) is None
    at_once = phase_change.record_training(
        CFG, LANGUAGE, TrainConfig(n_steps=30, batch_size=8, seed=0), every=10, snapshots=False,
        progress=False, stop_below=2.0,  # any ratio is below 2: stops at the first check
    )  # fmt: skip
    assert at_once.steps == [0, 10] and len(at_once.train_loss) == 10
    assert phase_change.formation_step(at_once, 2.0) == 0


def test_sweep_trains_each_setting_until_induction_or_the_end():
    settings = {
        "tiny": (CFG, LANGUAGE, TrainConfig(n_steps=20, batch_size=8, seed=0)),
        "tinier": (CFG, LANGUAGE, TrainConfig(n_steps=10, batch_size=8, seed=1)),
    }
    runs = phase_change.sweep(settings, every=5, below=0.0, progress=False)
    assert list(runs) == ["tiny", "tinier"] and runs["tiny"].steps[-1] == 20
    assert runs["tinier"].steps[-1] == 10 and not runs["tiny"].snapshots
    chapter = phase_change.sweep_settings()
    assert len(chapter) >= 8 and "base" in chapter
    assert all(cfg.n_ctx >= 31 for cfg, _, _ in chapter.values())  # the induction probe fits


class _CountingTask:
    """LANGUAGE, counting the batches drawn from it."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.d_vocab, self.batches, self.fail_at = LANGUAGE.d_vocab, 0, fail_at

    def sample(self, batch_size, n_ctx, generator=None):
        self.batches += 1
        if self.batches == self.fail_at:
            raise RuntimeError("the task broke")
        return LANGUAGE.sample(batch_size, n_ctx, generator=generator)


def test_record_runs_side_by_side_gives_each_run_as_alone(record):
    train_cfg = TrainConfig(n_steps=30, batch_size=16, lr=5e-3, seed=1)
    settings = {
        "two": (CFG, LANGUAGE, train_cfg),
        "one": (HookedTransformerConfig(**{**CFG.to_dict(), "n_layers": 1}), LANGUAGE, train_cfg),
        "other seed": (CFG, LANGUAGE, TrainConfig(n_steps=20, batch_size=16, lr=5e-3, seed=2)),
    }
    before = torch.get_num_threads()
    runs = phase_change.record_runs(settings, every=10, progress=False)
    assert torch.get_num_threads() == before
    assert list(runs) == list(settings) and [r.name for r in runs.values()] == list(settings)
    two = runs["two"]
    assert two.steps == record.steps and two.train_loss == record.train_loss
    assert two.icl == record.icl and torch.equal(two.prefix_matching, record.prefix_matching)
    assert all(torch.equal(two.snapshots[-1][k], v) for k, v in record.snapshots[-1].items())
    assert runs["one"].prefix_matching.shape[1:] == (1, 2) and runs["other seed"].steps[-1] == 20
    one_at_a_time = phase_change.record_runs(settings, side_by_side=1, every=10, progress=False)
    assert one_at_a_time["other seed"].train_loss == runs["other seed"].train_loss


def test_record_runs_stops_the_others_when_a_run_fails():
    slow = _CountingTask()
    settings = {
        "long": (CFG, slow, TrainConfig(n_steps=5000, batch_size=4, seed=0)),
        "fails": (CFG, _CountingTask(fail_at=5), TrainConfig(n_steps=50, batch_size=4)),
    }
    never = _CountingTask()
    settings["queued"] = (CFG, never, TrainConfig(n_steps=50, batch_size=4))
    with pytest.raises(RuntimeError, match="the task broke"):
        phase_change.record_runs(settings, every=10, progress=False)
    assert 0 < slow.batches < 5000  # the long run stopped at its next step, not at its end
    assert never.batches == 0  # the third run, waiting for a free thread, never started


def test_record_runs_rejects_what_it_sets_itself():
    settings = {"a": (CFG, LANGUAGE, TrainConfig(n_steps=2, batch_size=2))}
    with pytest.raises(ValueError, match="side_by_side must be a positive int, got 0"):
        phase_change.record_runs(settings, side_by_side=0)
    with pytest.raises(ValueError, match="record_runs sets 'name' itself"):
        phase_change.record_runs(settings, name="x")
    with pytest.raises(ValueError, match=r"settings\['b'\] must be a tuple \(model config, task, "):
        phase_change.record_runs({**settings, "b": (CFG, LANGUAGE)})
    with pytest.raises(ValueError, match="settings must be a dict of name -> .* got list"):
        phase_change.record_runs(list(settings.items()))


def test_record_runs_stops_every_run_when_the_cell_is_interrupted():
    """Jupyter's "interrupt the kernel" raises KeyboardInterrupt in the main thread, which waits for
    the runs: they must stop at their next step, not run to their end."""
    tasks = [_CountingTask(), _CountingTask()]
    settings = {
        name: (CFG, task, TrainConfig(n_steps=100_000, batch_size=4))
        for name, task in zip("ab", tasks, strict=True)
    }
    before = torch.get_num_threads()
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        phase_change.record_runs(settings, every=1000, progress=False)
    timer.join()
    assert all(0 < task.batches < 100_000 for task in tasks)
    assert torch.get_num_threads() == before


def test_record_runs_gives_up_over_budget_and_stops_every_run():
    tasks = [_CountingTask(), _CountingTask()]
    settings = {
        name: (CFG, task, TrainConfig(n_steps=100_000, batch_size=4))
        for name, task in zip("ab", tasks, strict=True)
    }
    with pytest.raises(phase_change.OverBudget, match="more than the budget of 0.01 s") as info:
        phase_change.record_runs(settings, every=1000, progress=False, budget_s=0.01)
    assert info.value.elapsed_s > 0.01 and info.value.projected_s > 0.01
    assert all(task.batches < 100_000 for task in tasks)  # stopped at their next step
    with pytest.raises(ValueError, match="budget_s must be None or a number of seconds > 0"):
        phase_change.record_runs(settings, budget_s=0)


def test_record_runs_projects_the_whole_from_the_speed_so_far(monkeypatch):
    """Past PROJECT_AFTER_S, a run projected to overrun the budget stops long before it would."""
    monkeypatch.setattr(phase_change.runs, "PROJECT_AFTER_S", 0.3)  # where record_runs reads it
    task = _CountingTask()
    settings = {"long": (CFG, task, TrainConfig(n_steps=100_000, batch_size=4))}
    with pytest.raises(phase_change.OverBudget) as info:
        phase_change.record_runs(settings, every=1000, progress=False, budget_s=60)
    assert info.value.elapsed_s < 30 and info.value.projected_s > 60


def test_record_runs_and_sweep_show_a_bar_with_the_time_left_and_the_runs_done(capsys):
    settings = {
        "tiny": (CFG, LANGUAGE, TrainConfig(n_steps=20, batch_size=8, seed=0)),
        "tinier": (CFG, LANGUAGE, TrainConfig(n_steps=10, batch_size=8, seed=1)),
    }
    phase_change.record_runs(settings, every=5, snapshots=False)
    bar = capsys.readouterr().err  # tqdm writes to stderr outside a notebook
    assert "training:" in bar and "/30 [" in bar and "<" in bar and "runs done" in bar
    phase_change.sweep(settings, every=5, below=0.0)
    assert "sweep:" in capsys.readouterr().err
    phase_change.record_training(CFG, LANGUAGE, TrainConfig(n_steps=5, batch_size=4), every=5)
    assert re.search(r"training: .*\| 0/5 \[00:00<\?", capsys.readouterr().err)


def test_the_sweeps_changes_are_listed_with_their_settings_and_outcomes():
    settings = phase_change.sweep_settings()
    changes = phase_change.sweep_changes(settings)
    assert list(settings) == ["base", *changes]
    assert changes["one layer"] == "n_layers 1 instead of 2"
    assert changes["half the learning rate"] == "lr 0.0075 instead of 0.015"
    assert changes["segments of 4-8 tokens"] == "segment_len (4, 8) instead of (8, 15)"
    assert changes["one layer, smeared keys"] == (
        "n_layers 1 instead of 2; smeared_keys True instead of False"
    )
    with pytest.raises(ValueError, match="needs a run named 'base'"):
        phase_change.sweep_changes({"other": settings["one layer"]})
    base_lr = settings["base"][2].lr
    assert settings["half the learning rate"][2].lr == base_lr / 2
    assert settings["a fifth of the learning rate"][2].lr == pytest.approx(base_lr / 5)

    def run(name, formed_at):
        steps = [0, 100, 200, 300]
        ratio = [1.0 if formed_at is None or s < formed_at else 0.3 for s in steps]
        return phase_change.TrainingRecord(name, CFG, steps, [0.0] * 4, [0.0] * 4, ratio,
                                           torch.empty(0), torch.empty(0), [], 0.0)  # fmt: skip

    runs = {n: run(n, s) for n, s in (("base", 200), ("a", 100), ("b", 200), ("c", 300),
                                      ("d", None))}  # fmt: skip
    assert phase_change.sweep_outcomes(runs) == {
        "a": "earlier", "b": "the same", "c": "later", "d": "never"
    }  # fmt: skip
    assert set(phase_change.sweep_outcomes(runs).values()) == set(phase_change.SWEEP_OUTCOMES)
