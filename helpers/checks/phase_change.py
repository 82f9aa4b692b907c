"""Checkers of chapter 05: the in-context-learning score, Dursleys and Mrs Potter, the
pattern-preserving ablation, smeared keys, the loss's bend and the sweep's predictions."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from IPython.display import display
from torch import Tensor

from helpers import evals, models, phase_change, plotting, recordings
from helpers.checks._base import (
    Case,
    CheckFailed,
    call_learner,
    check_cases,
    checker,
    draw_seed,
    generator,
    passed,
    random_models,
    random_tokens,
)
from helpers.data import BOS


@checker
def check_icl_score(icl_score: Callable) -> None:
    """Exercise 5.1: `icl_score(losses, early, late) -> float` from per-token losses
    `[batch, pos - 1]` (entry i: the loss of predicting token i + 1)."""
    ex = "Exercise 5.1 (icl_score)"
    seed = draw_seed()
    cases = []
    for i, (batch, n) in enumerate(((6, 21), (4, 33))):
        losses = torch.rand(batch, n - 1, generator=generator(seed + i)) * 4
        early, late = phase_change.icl_positions(n)
        late -= i  # not always the default positions
        expected = phase_change.icl_score_from_losses(losses, early, late)
        mistakes = [
            ("the sign is flipped: the score is late minus early, negative when later tokens are "
             "easier.", -expected),
            ("one position off: entry i of the losses predicts token i + 1, so the token at "
             "position p is entry p - 1.", float(losses[:, late].mean() - losses[:, early].mean())
             if late < n - 1 else float("nan")),
            ("one position off the other way: the token at position p is entry p - 1.",
             float(losses[:, late - 2].mean() - losses[:, early - 2].mean())),
            ("a ratio was taken; the score is a difference of losses, in nats.",
             float(losses[:, late - 1].mean() / losses[:, early - 1].mean())),
            ("the losses were averaged over every position from `late` on, not at `late`.",
             float(losses[:, late - 1 :].mean() - losses[:, early - 1].mean())),
        ]  # fmt: skip
        where = f"{batch} sequences of {n} tokens, early={early}, late={late}"
        cases.append(Case((losses, early, late), expected, mistakes, where))
    check_cases(ex, icl_score, "icl_score", cases,
                withhold=[phase_change.icl_score_from_losses, phase_change.icl_score])  # fmt: skip
    passed(ex, "right on random losses of two lengths.")


def _kinds(tokens: Tensor, latest: bool = True, shift: int = 1, skip_bos: bool = True) -> Tensor:
    """0 neither, 1 repeats an earlier bigram, 2 contradicts it; the variants are mistakes:
    `latest=False` compares with the first earlier occurrence, `shift=0` looks for earlier
    occurrences of the token itself, `skip_bos=False` counts BOS as a token that occurred."""
    batch, n = tokens.shape
    out = torch.zeros(batch, n, dtype=torch.long)
    for b in range(batch):
        seq = tokens[b].tolist()
        for t in range(1, n):
            key = seq[t - shift] if shift else seq[t]
            if skip_bos and key == BOS:
                continue
            before = [j for j in range(t - shift) if seq[j] == key and j + 1 < t + 1 - shift]
            if shift == 0:
                before = [j for j in range(t) if seq[j] == key]
            if not before:
                continue
            j = before[-1] if latest else before[0]
            follower = seq[j + 1] if shift else seq[j]
            out[b, t] = 1 if follower == seq[t] else 2
            if shift == 0:
                out[b, t] = 1
    return out


@checker
def check_continuation_kinds(continuation_kind: Callable) -> None:
    """Exercise 5.4: `continuation_kind(tokens) -> [batch, pos]` long tensor: 1 where token t
    repeats an earlier bigram (the most recent earlier occurrence of token t - 1 was followed by
    token t), 2 where it contradicts it, 0 elsewhere (BOS, the first token, no earlier
    occurrence)."""
    ex = "Exercise 5.4 (continuation_kind)"
    seed = draw_seed()
    cases = []
    for i, (batch, n, vocab) in enumerate(((3, 14, 5), (2, 20, 7))):
        g = generator(seed + i)
        tokens = torch.randint(1, vocab, (batch, n), generator=g)
        tokens[:, 0] = BOS
        repeats, conflicts = phase_change.continuation_kinds(tokens)
        expected = repeats.long() + 2 * conflicts.long()
        mistakes = [
            ("the earliest occurrence of the previous token was used; the most recent one "
             "decides (the last thing seen after it).", _kinds(tokens, latest=False)),
            ("earlier occurrences of token t itself were looked for; look for the token before "
             "it, t - 1, and compare what followed it then with token t now.",
             _kinds(tokens, shift=0)),
            ("1 and 2 are swapped: 1 marks a repeated bigram, 2 a contradicted one.",
             expected.where(expected == 0, 3 - expected)),
            ("the kinds sit one position early: mark the position of the token being judged, t, "
             "not of the token before it.", torch.nn.functional.pad(expected[:, 1:], (0, 1))),
            ("the kinds sit one position late: mark the position of the token being judged, t, "
             "not of the token after it.", torch.nn.functional.pad(expected[:, :-1], (1, 0))),
        ]  # fmt: skip
        cases.append(
            Case((tokens,), expected, mistakes, f"{batch} sequences over {vocab - 1} tokens")
        )
    check_cases(ex, continuation_kind, "continuation_kind", cases,
                withhold=[phase_change.continuation_kinds])  # fmt: skip
    passed(ex, "right on random sequences with many repeated tokens.")


@checker
def check_pattern_preserving_ablation(pattern_preserving_ablation: Callable) -> None:
    """Exercise 5.3: `pattern_preserving_ablation(model, tokens, heads) -> logits`: the chosen
    heads' outputs zeroed, every head's attention pattern held at its clean value."""
    ex = "Exercise 5.3 (pattern_preserving_ablation)"
    seed = draw_seed()
    cases = []
    # a second model of three layers: holding the patterns of layer 1 only (all a two-layer model
    # needs) is not enough there
    models_ = random_models(seed, n_layers=2, per_model=[{}, {"n_layers": 3}])
    for i, model in enumerate(models_):
        tokens = random_tokens(model, seed + 10 + i, batch=3)
        rng = generator(seed + 20 + i)
        first = int(torch.randint(1, model.cfg.n_heads, (1,), generator=rng))  # never head 0
        # the second head differs from the first, so that a hook zeroing the loop's last head
        # for every layer (late binding) is seen
        second = (first + 1 + int(torch.randint(model.cfg.n_heads - 1, (1,), generator=rng))) % (
            model.cfg.n_heads
        )
        for heads in ([(0, first)], [(0, first), (model.cfg.n_layers - 1, second)]):
            expected = evals.run_with_pattern_preserving_ablation(model, tokens, heads)
            mistakes = {
                "the patterns were not held: with a layer-0 head removed, the later heads looked "
                "elsewhere. Record every layer's pattern in a clean run and put them back with "
                "hooks on hook_pattern.": evals.run_with_ablation(model, tokens, heads),
                "the heads' outputs were replaced by their mean, not by zero.": evals.run_with_ablation(
                    model, tokens, heads, kind="mean"
                ),
                "the patterns were held but nothing was removed.": model(tokens),
            }  # fmt: skip
            if len(heads) > 1:
                mistakes["every hook zeroed the last head in the list: a function defined in a "
                         "loop sees the loop variable's final value. Bind it when the hook is "
                         "made, e.g. `def zero(result, hook, head=head): ...`."] = (
                    evals.run_with_pattern_preserving_ablation(
                        model, tokens, [(layer, heads[-1][1]) for layer, _ in heads]
                    )
                )  # fmt: skip
            where = f"ablation of {', '.join(f'L{a}H{b}' for a, b in heads)}"
            cases.append(Case((model, tokens, heads), expected, mistakes, where))
    check_cases(ex, pattern_preserving_ablation, "pattern_preserving_ablation", cases,
                withhold=[evals.run_with_pattern_preserving_ablation])  # fmt: skip
    passed(
        ex, "one and two heads removed, patterns held, in random models of two and three layers."
    )


def _shifted(k: Tensor, dim: int, first: str) -> Tensor:
    """The previous entry along `dim`; the first gets itself ("self"), zeros or the last
    entry ("roll"): the right answer and two mistakes."""
    if first == "roll":
        return torch.roll(k, 1, dims=dim)
    head = k.narrow(dim, 0, 1)
    head = head if first == "self" else torch.zeros_like(head)
    return torch.cat((head, k.narrow(dim, 0, k.shape[dim] - 1)), dim=dim)


@checker
def check_smear_keys(smear_keys: Callable) -> None:
    """Exercise 5.5: `smear_keys(k, alpha) -> k'` for keys `[batch, pos, head, d_head]` and one
    alpha per head: k'_j = sigmoid(alpha) k_j + (1 - sigmoid(alpha)) k_{j-1}, k'_0 = k_0."""
    ex = "Exercise 5.5 (smear_keys)"
    seed = draw_seed()
    cases = []
    for i, (batch, n, heads, d) in enumerate(((2, 7, 3, 4), (3, 5, 4, 6))):
        g = generator(seed + i)
        k = torch.randn(batch, n, heads, d, generator=g)
        alpha = 3 * torch.rand(heads, generator=g) - 1.5
        expected = models.smear_keys(k, alpha)
        keep = torch.sigmoid(alpha)[:, None]
        previous = _shifted(k, 1, "self")
        nxt = torch.cat((k[:, 1:], k[:, -1:]), dim=1)
        mistakes = [
            ("sigmoid(alpha) weighs the previous key; it weighs the key's own position, and "
             "1 - sigmoid(alpha) the previous one.", torch.lerp(k, previous, keep)),
            ("alpha was used as the weight; the weight is sigmoid(alpha), between 0 and 1.",
             alpha[:, None] * k + (1 - alpha[:, None]) * previous),
            ("the first position was mixed with zeros; its key stays as it is (k'_0 = k_0).",
             torch.lerp(_shifted(k, 1, "zeros"), k, keep)),
            ("torch.roll wrapped the last key round to the first position; the first key "
             "stays as it is.", torch.lerp(_shifted(k, 1, "roll"), k, keep)),
            ("the next position's key was mixed in; a key takes the *previous* position's "
             "(dim 1 is the position).", torch.lerp(nxt, k, keep)),
            ("the keys were smeared along the head axis; smear along the positions (dim 1).",
             torch.lerp(_shifted(k, 2, "self"), k, keep)),
        ]  # fmt: skip
        where = f"keys of shape {tuple(k.shape)}"
        cases.append(Case((k, alpha), expected, mistakes, where))
    check_cases(ex, smear_keys, "smear_keys", cases, withhold=[models.smear_keys])
    passed(ex, "right for two shapes of keys and alphas of both signs.")


def _fall(slope: Tensor, best: str = "so far") -> Tensor:
    top = torch.cummax(slope, 0).values if best == "so far" else slope.max().expand_as(slope)
    return top - slope


@checker
def check_slope_fall(slope_fall: Callable) -> None:
    """Exercise 5.2: `slope_fall(steps, losses) -> [len - 1]` tensor: per interval between
    records, the best slope so far (nats per 100 steps) minus this interval's slope."""
    ex = "Exercise 5.2 (slope_fall)"
    seed = draw_seed()
    cases = []
    for i, n in enumerate((12, 17)):
        g = generator(seed + i)
        gaps = torch.randint(1, 4, (n - 1,), generator=g) * 10  # records not evenly spaced
        steps = torch.cat((torch.zeros(1, dtype=torch.long), gaps.cumsum(0))).double()
        t = steps / steps[-1]
        bend = 0.8 / (1 + torch.exp(-(t - 0.6) / 0.05))
        losses = (
            3 + torch.exp(-4 * t) - bend + 0.01 * torch.randn(n, generator=g, dtype=torch.float64)
        )
        expected = torch.from_numpy(phase_change.slope_fall(steps.numpy(), losses.numpy()))
        slope = torch.diff(losses) / torch.diff(steps) * 100
        mistakes = [
            ("the slope is per step; the exercise asks for nats per 100 steps.", expected / 100),
            ("the loss differences were not divided by the steps between records (they are not "
             "evenly spaced here).", _fall(torch.diff(losses))),
            ("the loss differences were multiplied by 100 but not divided by the steps between "
             "records (they are not evenly spaced here).", _fall(torch.diff(losses) * 100)),
            ("the sign is flipped: the best slope so far minus this one, positive where the loss "
             "bends down.", -expected),
            ("the running minimum was taken; the best slope is the highest (the closest to 0).",
             torch.cummin(slope, 0).values - slope),
            ("the best slope of the whole run was used; only the intervals up to this one count.",
             _fall(slope, "whole run")),
        ]  # fmt: skip
        where = f"{n} records at uneven steps"
        cases.append(Case((steps.clone(), losses.clone()), expected, mistakes, where))
    check_cases(ex, slope_fall, "slope_fall", cases,
                withhold=[phase_change.slope_fall])  # fmt: skip
    passed(ex, "right on two bent loss curves recorded at uneven steps.")


@checker
def check_sweep_predictions(predict: Callable, *, live: bool | None = None) -> None:
    """Exercise 5.6: `predict() -> {setting: outcome}` for every change of the chapter's sweep
    (`phase_change.sweep_changes()`): when induction forms compared with the base run, one of
    `phase_change.SWEEP_OUTCOMES`. Once the predictions are well formed, the sweep is made
    (`recordings.phase_change_sweep(live=live)`: trained here, or its recording) and its figure,
    the outcomes beside the predictions, shown, whether they are right or not. A stub runs
    nothing and shows nothing."""
    ex = "Exercise 5.6 (predict)"
    names = list(phase_change.sweep_changes())
    if isinstance(predict, Mapping):
        raise CheckFailed(
            ex, "pass your function itself, check_sweep_predictions(predict), not the dict it "
            "returns: the checker calls it."
        )  # fmt: skip
    try:
        prediction = call_learner(ex, predict)
    except (CheckFailed, NotImplementedError):  # a stub's becomes ExerciseNotDone
        raise
    except Exception as err:
        raise CheckFailed(
            ex, f"predict() raised {type(err).__name__}: {err}. It takes no arguments and returns "
            "a dict {setting: outcome}."
        ) from err  # fmt: skip
    if not isinstance(prediction, Mapping):
        got = type(prediction).__name__
        raise CheckFailed(ex, f"predict() must return a dict {{setting: outcome}}, got {got}.")
    missing = [name for name in names if name not in prediction]
    extra = [key for key in prediction if key not in names]
    if missing or extra:
        problems = [f"missing {missing}"] * bool(missing) + [f"unexpected {extra}"] * bool(extra)
        if "base" in extra:
            problems.append("the base run is what the others are compared with")
        raise CheckFailed(
            ex, f"predict() must return one entry per change of the sweep, {names}: "
            f"{'; '.join(problems)}."
        )  # fmt: skip
    outcomes = phase_change.SWEEP_OUTCOMES
    if bad := {k: v for k, v in prediction.items() if not (isinstance(v, str) and v in outcomes)}:
        raise CheckFailed(ex, f"each prediction must be one of {outcomes}; got {bad}.")
    runs = recordings.phase_change_sweep(live=live)
    display(_sweep_figure(runs, prediction))
    base = phase_change.formation_step(runs["base"])
    wrong = []
    for name, outcome in phase_change.sweep_outcomes(runs).items():
        if prediction[name] != outcome:
            step = phase_change.formation_step(runs[name])
            seen = (f"no induction by step {runs[name].steps[-1]}" if step is None
                    else f"induction at step {step}")  # fmt: skip
            wrong.append(f"{name!r}: you said {prediction[name]}, it was {outcome} ({seen}; "
                         f"base: step {base})")  # fmt: skip
    if wrong:
        missed = "\n  ".join(wrong)
        raise CheckFailed(ex, f"{len(wrong)} of {len(names)} predictions missed:\n  {missed}\n"
                          "Why? See the explanation below the figure.")  # fmt: skip
    passed(ex, f"all {len(names)} predictions right; the explanation below the figure says why.")


def _sweep_figure(runs: dict, prediction: Mapping[str, str]):
    """When induction formed in each run of the sweep, the learner's predictions beside them."""
    formed = {name: phase_change.formation_step(run) for name, run in runs.items()}
    trained = {name: run.steps[-1] for name, run in runs.items()}
    how = "recorded runs" if runs["base"].source == "recorded" else "runs trained here"
    title = f"The sweep's {len(runs)} {how}: when induction formed"
    return plotting.formation_steps(
        formed,
        trained,
        title=title,
        predictions=prediction,
        outcomes=phase_change.sweep_outcomes(runs),
    )
