"""Exercises of chapter 05, declared: the in-context-learning score, the loss's bend, the
pattern-preserving ablation, Dursleys and Mrs Potter, smeared keys and the sweep's predictions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from IPython.display import display
from torch import Tensor

from helpers import evals, models, phase_change, plotting, recordings
from helpers.checks._base import CheckFailed, generator, random_models, random_tokens
from helpers.checks._judge import Case, Deferred, same
from helpers.checks._judge import describe as describe_number
from helpers.checks._registry import Exercise, declare
from helpers.data import BOS

# ---- 5.1 the ICL score ---------------------------------------------------------------------------


def _icl_cases(seed: int) -> list[Case]:
    """Random per-token losses of three lengths; the positions at their defaults, one apart, and
    at the ends (early at 1, where "entry p" and "entry p - 1" differ most), in float32 and
    float64."""
    cases = []
    for i, (batch, n, dtype) in enumerate(((6, 21, torch.float32), (4, 33, torch.float32),
                                           (5, 12, torch.float64))):  # fmt: skip
        losses = (torch.rand(batch, n - 1, generator=generator(seed + i)) * 4).to(dtype)
        early, late = phase_change.icl_positions(n)
        if i == 1:
            late -= 1  # not always the default positions
        if i == 2:
            early, late = 1, n - 1  # the first and the last position a loss exists for
        score = phase_change.icl_score_from_losses(losses, early, late)
        if (i == 0 and score > 0) or (i == 1 and score < 0):  # scores of both signs, whatever
            losses[:, [early - 1, late - 1]] = losses[:, [late - 1, early - 1]]  # the draw
        expected = phase_change.icl_score_from_losses(losses, early, late)
        mean = losses.mean(0).tolist()  # entry p: the mean loss of predicting token p + 1
        mistakes = [
            ("the sign is flipped: the score is late minus early, negative when later tokens are "
             "easier.", -expected),
            ("one position off: entry i of the losses predicts token i + 1, so the token at "
             "position p is entry p - 1.", mean[late] - mean[early] if late < n - 1 else None),
            ("one position off the other way: the token at position p is entry p - 1.",
             mean[late - 2] - mean[early - 2]),
            ("a ratio was taken; the score is a difference of losses, in nats.",
             mean[late - 1] / mean[early - 1]),
            ("the losses were averaged over every position from `late` on, not at `late`.",
             float(losses[:, late - 1 :].mean()) - mean[early - 1]),
        ]  # fmt: skip
        tags = {"float64"} if dtype == torch.float64 else set()
        tags |= {"early at position 1", "late at the last position"} if i == 2 else set()
        where = f"{batch} sequences of {n} tokens ({dtype}), early={early}, late={late}"
        cases.append(Case((losses, early, late), expected,
                          [(d, v) for d, v in mistakes if v is not None], where, tags=tags,
                          describe=icl_describer(expected)))  # fmt: skip
    return cases


def icl_describer(expected: float):
    """What to say of a wrong score; one of the right size and the other sign (an absolute value,
    where the cases' scores have both signs, so that no single mistake explains it) is said."""

    def describe(answer: float) -> str:
        message = describe_number(answer, expected)
        if same(answer, -expected):
            message += (" The right size, the other sign: the score keeps its sign (late minus "
                        "early; negative when later tokens are easier). Was an absolute value "
                        "taken?")  # fmt: skip
        return message

    return describe


declare(Exercise(
    number="5.1", title="the ICL score", functions=("icl_score",), cases=_icl_cases,
    reference=phase_change.icl_score_from_losses,
    withhold=(phase_change.icl_score_from_losses, phase_change.icl_score),
    covers=frozenset({"float64", "early at position 1", "late at the last position"}),
    passed="right on random losses of three lengths, at the default positions and at the ends.",
))  # fmt: skip


# ---- 5.2 where the loss bends ---------------------------------------------------------------------


def _fall(slope: Tensor, best: str = "so far") -> Tensor:
    top = torch.cummax(slope, 0).values if best == "so far" else slope.max().expand_as(slope)
    return top - slope


def _slope_fall_cases(seed: int) -> list[Case]:
    """Loss curves recorded at uneven steps: two that bend down (the slope falls below its best),
    one convex (it never does: all zeros), in float64 and float32."""
    cases = []
    for i, (n, bend_size, dtype) in enumerate(((12, 0.8, torch.float64), (17, 0.8, torch.float32),
                                                (9, 0.0, torch.float64))):  # fmt: skip
        g = generator(seed + i)
        gaps = torch.randint(1, 4, (n - 1,), generator=g) * 10  # records not evenly spaced
        steps = torch.cat((torch.zeros(1, dtype=torch.long), gaps.cumsum(0))).double()
        t = steps / steps[-1]
        bend = bend_size / (1 + torch.exp(-(t - 0.6) / 0.05))
        noise = 0.01 * torch.randn(n, generator=g, dtype=torch.float64) if bend_size else 0.0
        losses = 3 + torch.exp(-4 * t) - bend + noise
        steps, losses = steps.to(dtype), losses.to(dtype)
        expected = torch.from_numpy(
            phase_change.slope_fall(steps.double().numpy(), losses.double().numpy())
        )
        slope = torch.diff(losses.double()) / torch.diff(steps.double()) * 100
        mistakes = [
            ("the slope is per step; the exercise asks for nats per 100 steps.", expected / 100),
            ("the loss differences were not divided by the steps between records (they are not "
             "evenly spaced here).", _fall(torch.diff(losses.double()))),
            ("the loss differences were multiplied by 100 but not divided by the steps between "
             "records (they are not evenly spaced here).", _fall(torch.diff(losses.double()) * 100)),
            ("the sign is flipped: the best slope so far minus this one, positive where the loss "
             "bends down.", -expected),
            ("the running minimum was taken; the best slope is the highest (the closest to 0).",
             torch.cummin(slope, 0).values - slope),
            ("the best slope of the whole run was used; only the intervals up to this one count.",
             _fall(slope, "whole run")),
            ("the best slope was taken over the earlier intervals only; it is the best of the "
             "intervals up to *and including* this one (so never below this one's: the result is "
             "never negative).",
             torch.cat((torch.zeros(1, dtype=slope.dtype),
                        torch.cummax(slope, 0).values[:-1] - slope[1:]))),
            ("the loss differences were divided by the step of each record, not by the steps "
             "between records (torch.diff(steps)).",
             _fall(torch.diff(losses.double()) / steps.double()[1:] * 100)),
        ]  # fmt: skip
        kind = "a bend" if bend_size else "a convex curve"
        where = f"{kind}, {n} records at uneven steps ({dtype})"
        tags = {kind, "float32" if dtype == torch.float32 else "float64"}
        cases.append(Case((steps.clone(), losses.clone()), expected, mistakes, where, tags=tags))
    return cases


declare(Exercise(
    number="5.2", title="where the loss bends", functions=("slope_fall",),
    cases=_slope_fall_cases, reference=phase_change.slope_fall,
    withhold=(phase_change.slope_fall,),
    covers=frozenset({"a bend", "a convex curve", "float32", "float64"}),
    passed="right on loss curves that bend down and one that never does, recorded at uneven "
    "steps.",
))  # fmt: skip


# ---- 5.3 pattern-preserving ablation -----------------------------------------------------------


def _ablation_cases(seed: int) -> list[Case]:
    """A two- and a three-layer model (holding the patterns of layer 1 only, all a two-layer model
    needs, is not enough there): one head of layer 0; a head of layer 0 and a different one of
    the last layer (so that a hook zeroing the loop's last head everywhere is seen); two heads of
    one layer (so that one head per layer, a dict of the list, is not enough)."""
    cases = []
    models_ = random_models(seed, n_layers=2, per_model=[{}, {"n_layers": 3}])
    for i, model in enumerate(models_):
        tokens = random_tokens(model, seed + 10 + i, batch=3)
        rng = generator(seed + 20 + i)
        H, last = model.cfg.n_heads, model.cfg.n_layers - 1
        first = int(torch.randint(1, H, (1,), generator=rng))  # never head 0
        second = (first + 1 + int(torch.randint(H - 1, (1,), generator=rng))) % H  # not first
        for heads, tag in (([(0, first)], "one head"),
                           ([(0, first), (last, second)], "heads in two layers"),
                           ([(last, first), (last, second)], "two heads of one layer")):  # fmt: skip
            expected = evals.run_with_pattern_preserving_ablation(model, tokens, heads)
            mistakes = {
                "the patterns were not held: with a layer-0 head removed, the later heads looked "
                "elsewhere. Record every layer's pattern in a clean run and put them back with "
                "hooks on hook_pattern.": evals.run_with_ablation(model, tokens, heads),
                "the heads' outputs were replaced by their mean, not by zero.":
                    evals.run_with_ablation(model, tokens, heads, kind="mean"),
                "the patterns were held but nothing was removed.": model(tokens),
                "these are log-probabilities (log_softmax): return the logits as "
                "run_with_hooks gives them.": expected.log_softmax(-1),
            }  # fmt: skip
            if len(heads) > 1 and heads[0][0] != heads[1][0]:
                mistakes["every hook zeroed the last head in the list: a function defined in a "
                         "loop sees the loop variable's final value. Bind it when the hook is "
                         "made, e.g. `def zero(result, hook, head=head): ...`."] = (
                    evals.run_with_pattern_preserving_ablation(
                        model, tokens, [(layer, heads[-1][1]) for layer, _ in heads]
                    )
                )  # fmt: skip
            mistakes[
                "every layer's pattern was held at the last layer's: a hook defined in a "
                "loop sees the loop variable's final value (the last pattern). Bind it when "
                "the hook is made: `lambda x, hook, p=pattern: p`."
            ] = _late_bound_patterns(model, tokens, heads)
            if tag == "two heads of one layer":
                mistakes["only one head of the layer was removed: the list may hold several heads "
                         "of one layer (a dict {layer: head} keeps only the last)."] = (
                    evals.run_with_pattern_preserving_ablation(model, tokens, heads[-1:])
                )  # fmt: skip
            where = (f"ablation of {', '.join(f'L{a}H{b}' for a, b in heads)} in a "
                     f"{model.cfg.n_layers}-layer model")  # fmt: skip
            tags = {tag, f"{model.cfg.n_layers} layers"}
            cases.append(Case((model, tokens, heads), expected, mistakes, where, tags=tags))
    return cases


@torch.no_grad()
def _late_bound_patterns(model, tokens: Tensor, heads: list[tuple[int, int]]) -> Tensor:
    """The logits of a pattern-preserving ablation whose pattern hooks, made in a loop without
    binding the loop variable, all return the last layer's recorded pattern."""
    _, cache = model.run_with_cache(tokens)
    last = cache[f"blocks.{model.cfg.n_layers - 1}.attn.hook_pattern"]
    hooks = [(f"blocks.{layer}.attn.hook_pattern", lambda x, hook: last)
             for layer in range(model.cfg.n_layers)]  # fmt: skip
    for layer, head in heads:

        def zero(result, hook, head=head):
            result = result.clone()
            result[:, :, head] = 0.0
            return result

        hooks.append((f"blocks.{layer}.attn.hook_result", zero))
    return model.run_with_hooks(tokens, hooks)


declare(Exercise(
    number="5.3", title="pattern-preserving ablation", functions=("pattern_preserving_ablation",),
    cases=_ablation_cases, reference=evals.run_with_pattern_preserving_ablation,
    withhold=(evals.run_with_pattern_preserving_ablation,),
    covers=frozenset({"one head", "heads in two layers", "two heads of one layer", "3 layers"}),
    passed="one head, heads of two layers and two heads of one layer removed, patterns held, in "
    "random models of two and three layers.",
))  # fmt: skip


# ---- 5.4 Dursleys and Mrs Potters ---------------------------------------------------------------


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
            if shift == 0:
                before = [j for j in range(t) if seq[j] == key]
            else:
                before = [j for j in range(t - 1) if seq[j] == key]
            if not before:
                continue
            j = before[-1] if latest else before[0]
            follower = seq[j + 1] if shift else seq[j]
            out[b, t] = 1 if follower == seq[t] else 2
            if shift == 0:
                out[b, t] = 1
    return out


def _self_occurrence(tokens: Tensor) -> Tensor:
    """The kinds when position t - 1 counts as its own earlier occurrence (a mistake): it is then
    always the latest, and followed by token t itself, so 1 wherever the previous token is not
    BOS."""
    return torch.nn.functional.pad((tokens[:, :-1] != BOS).long(), (1, 0))


def _kinds_cases(seed: int) -> list[Case]:
    """Random sequences over a few tokens (so that bigrams repeat and conflict often), and one with
    BOS again in the middle (two sequences packed together), where BOS must not count as an
    occurrence."""
    cases = []
    for i, (batch, n, vocab, packed) in enumerate(((3, 14, 5, False), (2, 20, 7, False),
                                                    (2, 16, 4, True))):  # fmt: skip
        g = generator(seed + i)
        tokens = torch.randint(1, vocab, (batch, n), generator=g)
        tokens[:, 0] = BOS
        if packed:
            tokens[:, n // 2] = BOS
            tokens[:, n - 3] = BOS  # BOS twice after the start: "BOS, x" can repeat
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
            ("BOS (token 0) was counted as an occurrence: it marks where a sequence starts, not a "
             "token of it, and never counts.", _kinds(tokens, skip_bos=False)),
            ("position t - 1 was counted as an earlier occurrence of itself (j < t instead of "
             "j < t - 1), so every token looks like a repeat: the earlier occurrences are "
             "j < t - 1.", _self_occurrence(tokens)),
        ]  # fmt: skip
        tags = {"repeats", "conflicts", "no earlier occurrence"}
        tags |= {"BOS in the middle of a sequence"} if packed else set()
        where = f"{batch} sequences over {vocab - 1} tokens" + (", BOS inside" if packed else "")
        cases.append(Case((tokens,), expected, mistakes, where, tags=tags))
    return cases


declare(Exercise(
    number="5.4", title="Dursleys and Mrs Potters", functions=("continuation_kind",),
    checker="check_continuation_kinds", cases=_kinds_cases,
    reference=phase_change.continuation_kinds, withhold=(phase_change.continuation_kinds,),
    covers=frozenset({"repeats", "conflicts", "no earlier occurrence",
                      "BOS in the middle of a sequence"}),
    passed="right on random sequences with many repeated tokens, BOS inside one of them.",
))  # fmt: skip


# ---- 5.5 smear the keys ------------------------------------------------------------------------


def _shifted(k: Tensor, dim: int, first: str) -> Tensor:
    """The previous entry along `dim`; the first gets itself ("self"), zeros or the last
    entry ("roll"): the right answer and two mistakes."""
    if first == "roll":
        return torch.roll(k, 1, dims=dim)
    head = k.narrow(dim, 0, 1)
    head = head if first == "self" else torch.zeros_like(head)
    return torch.cat((head, k.narrow(dim, 0, k.shape[dim] - 1)), dim=dim)


def _smeared_in_place(k: Tensor, keep: Tensor) -> Tensor:
    """A loop over positions that smears k in place, each position reading the previous one as
    already smeared (a mistake)."""
    out = k.clone()
    for j in range(1, k.shape[1]):
        out[:, j] = keep * out[:, j] + (1 - keep) * out[:, j - 1]
    return out


def _smear_cases(seed: int) -> list[Case]:
    """Keys of three shapes, one in float64 and one whose positions, heads and head size are all
    one size (so that no axis can be found by its size), alphas of both signs."""
    cases = []
    for i, (shape, dtype) in enumerate((((2, 7, 3, 4), torch.float32),
                                        ((3, 5, 4, 6), torch.float64),
                                        ((2, 4, 4, 4), torch.float32))):  # fmt: skip
        g = generator(seed + i)
        k = torch.randn(*shape, generator=g, dtype=dtype)
        alpha = (3 * torch.rand(shape[2], generator=g) - 1.5).to(dtype)
        alpha[0] = -abs(alpha[0]) - 0.5  # both signs, whatever the draw
        alpha[-1] = abs(alpha[-1]) + 0.5
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
            ("each key was mixed with the previous key *already smeared* (a loop over positions "
             "that writes into k, then reads what it wrote): mix with the original keys (clone "
             "first, or compute all positions at once).", _smeared_in_place(k, keep)),
        ]  # fmt: skip
        tags = {"alphas of both signs"}
        tags |= {"float64"} if dtype == torch.float64 else set()
        tags |= (
            {"positions, heads and head size of one size"} if len(set(shape[1:])) == 1 else set()
        )
        cases.append(Case((k, alpha), expected, mistakes, f"keys of shape {shape} ({dtype})",
                          tags=tags))  # fmt: skip
    return cases


declare(Exercise(
    number="5.5", title="smear the keys", functions=("smear_keys",), cases=_smear_cases,
    reference=models.smear_keys, withhold=(models.smear_keys,),
    covers=frozenset({"alphas of both signs", "float64",
                      "positions, heads and head size of one size"}),
    passed="right for three shapes of keys (one in float64) and alphas of both signs.",
))  # fmt: skip


# ---- 5.6 predict, then test -----------------------------------------------------------------------


def _read_predictions(prediction: object, case: Case) -> dict:
    """The learner's predictions, or a CheckFailed on their form: before any run trains."""
    ex = _PREDICT.name
    names = list(phase_change.sweep_changes())
    if not isinstance(prediction, Mapping):
        got = type(prediction).__name__
        raise CheckFailed(ex, f"predict() must return a dict {{setting: outcome}}, got {got}.")
    missing = [name for name in names if name not in prediction]
    extra = [key for key in prediction if key not in names]
    if missing or extra:
        problems = [f"missing {missing}"] * bool(missing) + [f"unexpected {extra}"] * bool(extra)
        if "base" in extra:
            problems.append("the base run is what the others are compared with")
        raise CheckFailed(ex, f"predict() must return one entry per change of the sweep, "
                          f"{names}: {'; '.join(problems)}.")  # fmt: skip
    outcomes = phase_change.SWEEP_OUTCOMES
    if bad := {k: v for k, v in prediction.items() if not (isinstance(v, str) and v in outcomes)}:
        raise CheckFailed(ex, f"each prediction must be one of {outcomes}; got {bad}.")
    return dict(prediction)


def _sweep_cases(seed: int, live: bool | None = None) -> list[Case]:
    """One case: no input, and the sweep's outcomes as the right answer, trained (or loaded) only
    once the predictions are in and well formed (a stub sets nothing off)."""
    runs: dict = {}

    def outcomes() -> dict:
        runs.update(recordings.phase_change_sweep(live=live))
        return phase_change.sweep_outcomes(runs)

    def explain(prediction: dict) -> str:
        base = phase_change.formation_step(runs["base"])
        wrong = []
        for name, outcome in phase_change.sweep_outcomes(runs).items():
            if prediction[name] != outcome:
                step = phase_change.formation_step(runs[name])
                seen = (f"no induction by step {runs[name].steps[-1]}" if step is None
                        else f"induction at step {step}")  # fmt: skip
                wrong.append(f"{name!r}: you said {prediction[name]}, it was {outcome} ({seen}; "
                             f"base: step {base})")  # fmt: skip
        missed = "\n  ".join(wrong)
        return (f"{len(wrong)} of {len(prediction)} predictions missed:\n  {missed}\nWhy? See the "
                "explanation below the figure.")  # fmt: skip

    return [Case((), Deferred(outcomes), describe=explain, context=runs)]


def _reveal(answers: list, cases: Sequence[Case]) -> None:
    """The sweep's figure, the learner's predictions beside the outcomes: shown once the
    predictions are in, right or wrong."""
    runs, prediction = cases[0].context, answers[0]
    formed = {name: phase_change.formation_step(run) for name, run in runs.items()}
    trained = {name: run.steps[-1] for name, run in runs.items()}
    how = "recorded runs" if runs["base"].source == "recorded" else "runs trained here"
    display(plotting.formation_steps(
        formed, trained, title=f"The sweep's {len(runs)} {how}: when induction formed",
        predictions=prediction, outcomes=phase_change.sweep_outcomes(runs),
    ))  # fmt: skip


# Where predict() could read the sweep's outcomes instead of predicting them: each is unavailable
# while predict() runs (the checker shows the outcomes once the predictions are in).
_OUTCOME_SOURCES = (
    (recordings, "phase_change_sweep"),
    (phase_change, "sweep_outcomes"),
    (phase_change, "formation_step"),
    (phase_change.sweeps, "sweep_outcomes"),
    (phase_change.sweeps, "formation_step"),
)


def _run_predict(exercise: Exercise, functions: Sequence, case: Case) -> object:
    """predict(), with the sweep and its outcomes out of its reach."""

    def unavailable(*args: object, **kwargs: object) -> None:
        raise CheckFailed(
            exercise.name,
            "predict() reads the sweep (or its outcomes) instead of predicting them: write "
            "down what you expect; the checker runs the sweep and shows what happened once your "
            "predictions are in.",
        )

    saved = [(module, name, getattr(module, name)) for module, name in _OUTCOME_SOURCES]
    try:
        for module, name, _ in saved:
            setattr(module, name, unavailable)
        return exercise.call(functions[0], case)
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


_PREDICT = declare(Exercise(
    number="5.6", title="predict, then test", functions=("predict",),
    checker="check_sweep_predictions", cases=_sweep_cases, read=_read_predictions,
    run=_run_predict,
    reveal=_reveal, options={"live": None},
    on_error={"TypeError": "predict() takes no arguments and returns a dict {setting: outcome}."},
    passed="all the predictions right; the explanation below the figure says why.",
))  # fmt: skip
