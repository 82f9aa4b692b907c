"""Chapter 05's checkers accept the reference and reject plausible wrong answers."""

import importlib
from types import SimpleNamespace

import pytest
import torch

from helpers import checks, evals, models, phase_change, recordings
from helpers.checks import CheckFailed
from helpers.data import BOS
from tests.checks.conftest import assert_accepts, assert_rejects

checks_phase_change = importlib.import_module("helpers.checks.phase_change")


def icl_reference(losses, early, late):
    return float(losses[:, late - 1].mean() - losses[:, early - 1].mean())


def test_icl_score_accepts_the_reference():
    assert_accepts(checks.check_icl_score, icl_reference)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda x, e, t: float(x[:, e - 1].mean() - x[:, t - 1].mean()), "sign is flipped"),
        (lambda x, e, t: float(x[:, t - 2].mean() - x[:, e - 2].mean()), "one position off"),
        (lambda x, e, t: float(x[:, t - 1].mean() / x[:, e - 1].mean()), "ratio"),
        (lambda x, e, t: float(x[:, t - 1 :].mean() - x[:, e - 1].mean()), "every position"),
        (lambda x, e, t: float(x[:, 17].mean() - x[:, 1].mean()), None),  # positions fixed
        (lambda x, e, t: -0.4, None),
        (lambda x, e, t: phase_change.icl_score_from_losses(x, e, t), "withholds"),
    ],
)
def test_icl_score_rejects(wrong, diagnosis):
    assert_rejects(checks.check_icl_score, wrong, diagnosis=diagnosis or "")


def test_icl_score_says_when_only_the_sign_is_wrong():
    # the cases' scores have both signs, so an absolute value is wrong in some only, and said
    assert_rejects(
        checks.check_icl_score,
        lambda x, e, t: abs(icl_reference(x, e, t)),
        diagnosis="The right size, the other sign",
    )


def kinds_reference(tokens, pick=-1):
    """The answer (pick -1: the latest earlier occurrence decides); pick 0 is a mistake."""
    out = torch.zeros_like(tokens)
    for b, seq in enumerate(tokens.tolist()):
        for t in range(2, len(seq)):
            before = [j for j in range(t - 1) if seq[j] == seq[t - 1] and seq[j] != BOS]
            if before:
                out[b, t] = 1 if seq[before[pick] + 1] == seq[t] else 2
    return out


def test_continuation_kinds_accepts_the_reference():
    assert_accepts(checks.check_continuation_kinds, kinds_reference)


def test_continuation_kinds_names_position_t_minus_1_counted_as_its_own_occurrence():
    def with_self(tokens):  # j < t: the token before t is its own latest earlier occurrence
        out = torch.zeros_like(tokens)
        for b, seq in enumerate(tokens.tolist()):
            for t in range(2, len(seq)):
                before = [j for j in range(t) if seq[j] == seq[t - 1] and seq[j] != BOS]
                if before:
                    out[b, t] = 1 if seq[before[-1] + 1] == seq[t] else 2
        return out

    assert_rejects(checks.check_continuation_kinds, with_self, diagnosis="j < t - 1")


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda t: kinds_reference(t, pick=0), "earliest occurrence"),
        (lambda t: (lambda k: k.where(k == 0, 3 - k))(kinds_reference(t)), "swapped"),
        (
            lambda t: torch.nn.functional.pad(kinds_reference(t)[:, 1:], (0, 1)),
            "one position early",
        ),
        (
            lambda t: torch.nn.functional.pad(kinds_reference(t)[:, :-1], (1, 0)),
            "one position late",
        ),
        (lambda t: kinds_reference(t).float(), None),
        (lambda t: (kinds_reference(t) > 0).long(), None),
        (lambda t: torch.zeros_like(t), None),
        (lambda t: kinds_reference(t)[:, 1:], None),
        (
            lambda t: (lambda r, c: r.long() + 2 * c.long())(*phase_change.continuation_kinds(t)),
            "withholds",
        ),
    ],
)
def test_continuation_kinds_rejects(wrong, diagnosis):
    assert_rejects(checks.check_continuation_kinds, wrong, diagnosis=diagnosis or "")


def _held_and_zeroed(model, tokens, heads, held_layers=None, late_binding=False):
    """The answer, or a mistake: patterns of `held_layers` (default: all) held at their clean
    values, the chosen heads zeroed; `late_binding` makes every hook zero the loop's last head."""
    _, cache = model.run_with_cache(tokens)
    layers = range(model.cfg.n_layers) if held_layers is None else held_layers
    hooks = [(f"blocks.{layer}.attn.hook_pattern",
              lambda x, hook, p=cache[f"blocks.{layer}.attn.hook_pattern"]: p)
             for layer in layers]  # fmt: skip
    for layer, head in heads:

        def zero(result, hook, bound=head):
            result = result.clone()
            result[:, :, heads[-1][1] if late_binding else bound] = 0
            return result

        hooks.append((f"blocks.{layer}.attn.hook_result", zero))
    return model.run_with_hooks(tokens, hooks)


def ablation_reference(model, tokens, heads):
    return _held_and_zeroed(model, tokens, heads)


def test_pattern_preserving_ablation_accepts_the_reference():
    assert_accepts(checks.check_pattern_preserving_ablation, ablation_reference)


def _no_freeze(model, tokens, heads):
    return evals.run_with_ablation(model, tokens, heads)


def _layer_1_only(model, tokens, heads):
    """Holds layer 1's patterns only: enough for two layers, not for three."""
    return _held_and_zeroed(model, tokens, heads, held_layers=[1])


def _late_binding(model, tokens, heads):
    return _held_and_zeroed(model, tokens, heads, late_binding=True)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_no_freeze, "patterns were not held"),
        (lambda m, t, h: evals.run_with_ablation(m, t, h, kind="mean"), "mean"),
        (lambda m, t, h: m(t), "nothing was removed"),
        (_late_binding, "loop sees the loop variable"),
        (_layer_1_only, ""),
        (lambda m, t, h: ablation_reference(m, t, [(0, 0)]), None),
        (lambda m, t, h: evals.run_with_pattern_preserving_ablation(m, t, h), "withholds"),
    ],
)
def test_pattern_preserving_ablation_rejects(wrong, diagnosis):
    assert_rejects(checks.check_pattern_preserving_ablation, wrong, diagnosis=diagnosis or "")


def test_pattern_preserving_ablation_names_log_probabilities():
    assert_rejects(
        checks.check_pattern_preserving_ablation,
        lambda m, t, heads: ablation_reference(m, t, heads).log_softmax(-1),
        diagnosis="log-probabilities",
    )


def _zero_values(model, tokens, heads):  # right: with patterns held, zero values give zero output
    _, cache = model.run_with_cache(tokens)
    hooks = [(f"blocks.{layer}.attn.hook_pattern",
              lambda x, hook, p=cache[f"blocks.{layer}.attn.hook_pattern"]: p)
             for layer in range(model.cfg.n_layers)]  # fmt: skip
    for layer, head in heads:

        def zero(v, hook, head=head):
            v[:, :, head] = 0.0  # in place, returns None

        hooks.append((f"blocks.{layer}.attn.hook_v", zero))
    return model.run_with_hooks(tokens, hooks)


def test_pattern_preserving_ablation_accepts_zeroed_values():
    assert_accepts(checks.check_pattern_preserving_ablation, _zero_values)


def test_a_stub_is_reported_as_not_done():
    def stub(*args):
        raise NotImplementedError("Exercise 5.1: your code here")

    with pytest.raises(checks.ExerciseNotDone, match="5.1"):
        checks.check_icl_score(stub)


def smear_reference(k, alpha):
    keep = torch.sigmoid(alpha)[:, None]
    previous = torch.cat((k[:, :1], k[:, :-1]), dim=1)
    return keep * k + (1 - keep) * previous


def _smear_in_place_loop(k, alpha):  # each position reads the previous one already smeared
    keep = torch.sigmoid(alpha)[:, None]
    for j in range(1, k.shape[1]):
        k[:, j] = keep * k[:, j] + (1 - keep) * k[:, j - 1]
    return k


def _smear_in_place_at_once(k, alpha):  # right: the right-hand side is computed first
    keep = torch.sigmoid(alpha)[:, None]
    k[:, 1:] = keep * k[:, 1:] + (1 - keep) * k[:, :-1]
    return k


def test_smear_keys_names_an_in_place_loop_and_accepts_an_in_place_slice():
    assert_rejects(checks.check_smear_keys, _smear_in_place_loop, diagnosis="already smeared")
    assert_accepts(checks.check_smear_keys, _smear_in_place_at_once)


def test_smear_keys_accepts_the_reference():
    assert_accepts(checks.check_smear_keys, smear_reference)


def _smear_with(previous, weight=torch.sigmoid):
    def smear(k, alpha):
        keep = weight(alpha)[:, None]
        return keep * k + (1 - keep) * previous(k)

    return smear


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda k, a: smear_reference(k, -a), "weighs the previous key"),
        (_smear_with(lambda k: torch.cat((k[:, :1], k[:, :-1]), 1), lambda a: a), "alpha was used"),
        (_smear_with(lambda k: torch.cat((0 * k[:, :1], k[:, :-1]), 1)), "mixed with zeros"),
        (_smear_with(lambda k: torch.roll(k, 1, dims=1)), "torch.roll"),
        (_smear_with(lambda k: torch.cat((k[:, 1:], k[:, -1:]), 1)), "next position"),
        (_smear_with(lambda k: torch.cat((k[:, :, :1], k[:, :, :-1]), 2)), "head axis"),
        (lambda k, a: k, ""),
        (lambda k, a: 0.5 * k + 0.5 * torch.cat((k[:, :1], k[:, :-1]), 1), ""),
        (lambda k, a: smear_reference(k, a).transpose(1, 2), ""),
        (lambda k, a: models.smear_keys(k, a), "withholds"),
    ],
)
def test_smear_keys_rejects(wrong, diagnosis):
    assert_rejects(checks.check_smear_keys, wrong, diagnosis=diagnosis)


def slope_fall_reference(steps, losses):
    slope = torch.diff(losses) / torch.diff(steps) * 100
    return torch.cummax(slope, 0).values - slope


def test_slope_fall_accepts_the_reference():
    assert_accepts(checks.check_slope_fall, slope_fall_reference)
    assert_accepts(checks.check_slope_fall, lambda s, x: slope_fall_reference(s, x).float())


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda s, x: slope_fall_reference(s, x) / 100, "per step"),
        (lambda s, x: slope_fall_reference(torch.arange(len(s)) * 100.0, x), "not divided"),
        (lambda s, x: slope_fall_reference(torch.arange(len(s)) * 1.0, x), "multiplied by 100"),
        (lambda s, x: -slope_fall_reference(s, x), "sign is flipped"),
        (
            lambda s, x: (lambda d: torch.cummin(d, 0).values - d)(
                torch.diff(x) / torch.diff(s) * 100
            ),
            "running minimum",
        ),
        (lambda s, x: (lambda d: d.max() - d)(torch.diff(x) / torch.diff(s) * 100), "whole run"),
        (lambda s, x: slope_fall_reference(s, x)[1:], ""),
        (lambda s, x: torch.zeros(len(s) - 1), ""),
        (lambda s, x: torch.from_numpy(phase_change.slope_fall(s.numpy(), x.numpy())), "withholds"),
    ],
)
def test_slope_fall_rejects(wrong, diagnosis):
    assert_rejects(checks.check_slope_fall, wrong, diagnosis=diagnosis)


def _best_before(steps, losses):  # the best of the earlier intervals, this one left out
    slope = torch.diff(losses) / torch.diff(steps) * 100
    best = torch.cummax(slope, 0).values
    return torch.cat((torch.zeros(1, dtype=slope.dtype), best[:-1] - slope[1:]))


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_best_before, "earlier intervals only"),
        (lambda s, x: (lambda d: torch.cummax(d, 0).values - d)(torch.diff(x) / s[1:] * 100),
         "the step of each record"),
    ],
)  # fmt: skip
def test_slope_fall_names_more_mistakes(wrong, diagnosis):
    assert_rejects(checks.check_slope_fall, wrong, diagnosis=diagnosis)


@pytest.fixture
def shown(monkeypatch):
    """The figures exercise 5.6's checker displays (outside IPython, `display` would print)."""
    figures = []
    monkeypatch.setattr(checks_phase_change, "display", figures.append)
    return figures


@pytest.fixture
def measured_sweep(monkeypatch, shown):
    """Exercise 5.6's checker against a sweep whose outcomes are set here (the real one trains
    for half a minute, or loads its recording: `test_sweep_predictions_on_the_recorded_sweep`);
    `measured_sweep.calls` counts the sweeps asked for."""
    outcomes = {"base": 150, "half the learning rate": 225, "a fifth of the learning rate": None,
                "segments of 4-8 tokens": None, "standard positions": 225, "smeared keys": 100,
                "one layer": None, "one layer, smeared keys": 150}  # fmt: skip

    def run(name, step):
        steps = list(range(0, (step or 300) + 1, 25))
        ratio = [1.0] * (len(steps) - 1) + [0.4 if step is not None else 0.9]
        n = len(steps)
        return phase_change.TrainingRecord(name, None, steps, [0.0] * n, [0.0] * n, ratio,
                                           torch.empty(0), torch.empty(0), [], 0.0)  # fmt: skip

    calls = []

    def sweep(**kwargs):
        calls.append(kwargs)
        return {n: run(n, s) for n, s in outcomes.items()}

    monkeypatch.setattr(recordings, "phase_change_sweep", sweep)
    answer = {"half the learning rate": "later", "a fifth of the learning rate": "never",
              "segments of 4-8 tokens": "never", "standard positions": "later",
              "smeared keys": "earlier", "one layer": "never", "one layer, smeared keys": "the same"}  # fmt: skip
    return SimpleNamespace(answer=answer, calls=calls)


def test_sweep_predictions_accepts_what_was_measured_and_shows_the_sweep(measured_sweep, shown,
                                                                          capsys):  # fmt: skip
    checks.check_sweep_predictions(lambda: dict(measured_sweep.answer), live=False)
    assert measured_sweep.calls == [{"live": False}]
    (figure,) = shown
    assert figure.axes[0].get_title() == "The sweep's 8 runs trained here: when induction formed"
    notes = [t.get_text() for t in figure.axes[0].texts]
    assert "you said" in notes and "the same ✔" in notes  # the predictions beside the outcomes
    out = capsys.readouterr().out
    assert "✔ Exercise 5.6 (predict) passed: all the predictions right" in out
    assert "the explanation below the figure" in out


@pytest.mark.parametrize(
    "change, diagnosis",
    [
        (
            {"smeared keys": "later"},
            "'smeared keys': you said later, it was earlier (induction at step 100",
        ),
        ({"one layer": "later"}, "no induction by step 300"),
        ({"one layer, smeared keys": "earlier"}, "it was the same"),
    ],
)
def test_sweep_predictions_rejects_and_still_shows_the_sweep(measured_sweep, shown, change,
                                                             diagnosis):  # fmt: skip
    with pytest.raises(CheckFailed) as info:
        checks.check_sweep_predictions(lambda: {**measured_sweep.answer, **change})
    assert diagnosis in str(info.value) and "1 of 7 predictions missed" in str(info.value)
    assert str(info.value).endswith("Why? See the explanation below the figure.")
    assert len(shown) == 1


@pytest.mark.parametrize(
    "answer, diagnosis",
    [
        (lambda a: {**a, "standard positions": "sooner"}, "must be one of ('earlier', "),
        (lambda a: {**a, "standard positions": ["later"]}, "must be one of"),
        (lambda a: {**a, "base": "the same"}, "unexpected ['base']; the base run is what"),
        (lambda a: dict(list(a.items())[:-1]), "missing ['one layer, smeared keys']"),
        (lambda a: {**a, 3: "later"}, "unexpected [3]"),
        (lambda a: None, "predict() must return a dict {setting: outcome}, got NoneType"),
        (lambda a: list(a), "got list"),
    ],
)
def test_sweep_predictions_needs_one_outcome_per_change(measured_sweep, shown, answer, diagnosis):
    """Malformed predictions are refused before anything runs or shows."""
    with pytest.raises(CheckFailed) as info:
        checks.check_sweep_predictions(lambda: answer(measured_sweep.answer))
    assert diagnosis in str(info.value)
    assert not measured_sweep.calls and not shown


def test_sweep_predictions_counts_the_misses(measured_sweep):
    with pytest.raises(CheckFailed, match="4 of 7 predictions missed"):
        checks.check_sweep_predictions(lambda: dict.fromkeys(measured_sweep.answer, "never"))


def test_sweep_predictions_of_a_stub_runs_and_shows_nothing(measured_sweep, shown):
    def predict():
        raise NotImplementedError("Exercise 5.6: your predictions here")

    with pytest.raises(checks.ExerciseNotDone, match="5.6"):
        checks.check_sweep_predictions(predict)
    assert not measured_sweep.calls and not shown


def test_sweep_predictions_says_what_to_pass(measured_sweep, shown):
    with pytest.raises(
        CheckFailed, match=r"pass your function itself \(its name, without calling it\), got a dict"
    ):
        checks.check_sweep_predictions(dict(measured_sweep.answer))
    with pytest.raises(CheckFailed, match="pass your function itself .*, got a str"):
        checks.check_sweep_predictions("later")
    with pytest.raises(
        CheckFailed, match=r"(?s)predict\(\) raised TypeError: .* takes no arguments"
    ):
        checks.check_sweep_predictions(lambda setting: "later")
    with pytest.raises(CheckFailed, match=r"predict\(\) raised NameError: name 'later' is not"):
        checks.check_sweep_predictions(lambda: {"smeared keys": later})  # noqa: F821
    assert not measured_sweep.calls and not shown


def test_sweep_predictions_on_the_recorded_sweep(monkeypatch, shown, capsys):
    """The chapter's reference answer holds for the recorded sweep (which equals the live one:
    tests/test_recordings.py), and the figure says the runs are recorded."""
    monkeypatch.setattr(recordings, "_SWEEPS", {})
    reference = {"half the learning rate": "later", "a fifth of the learning rate": "never",
                 "segments of 4-8 tokens": "never", "standard positions": "later",
                 "smeared keys": "earlier", "one layer": "never",
                 "one layer, smeared keys": "earlier"}  # fmt: skip
    checks.check_sweep_predictions(lambda: reference, live=False)
    out = capsys.readouterr().out
    assert out.startswith("recorded runs from data/phase_change_runs.pt") and "✔" in out
    assert "8 recorded runs" in shown[0].axes[0].get_title()


@pytest.mark.parametrize(
    "peek",
    [
        lambda: phase_change.sweep_outcomes(recordings.phase_change_sweep(live=False)),
        lambda: {name: "never" if phase_change.formation_step(run) is None else "earlier"
                 for name, run in recordings.phase_change_sweep().items() if name != "base"},
    ],
)  # fmt: skip
def test_sweep_predictions_refuses_to_read_the_outcomes(measured_sweep, shown, peek):
    assert_rejects(checks.check_sweep_predictions, peek, diagnosis="instead of predicting")
    assert recordings.phase_change_sweep is not None and len(measured_sweep.calls) == 0
    checks.check_sweep_predictions(lambda: measured_sweep.answer)  # put back once it is done


def test_sweep_predictions_shows_the_misses_in_the_figure(measured_sweep, shown):
    with pytest.raises(CheckFailed):
        checks.check_sweep_predictions(lambda: {**measured_sweep.answer, "one layer": "later"})
    assert "later ✘ (it was never)" in [t.get_text() for t in shown[0].axes[0].texts]
