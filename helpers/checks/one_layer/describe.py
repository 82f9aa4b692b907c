"""Exercise 2.10: a head of a mystery model described from its weights alone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor

from helpers import circuits, handmade
from helpers.checks._base import CheckFailed, generator
from helpers.checks._judge import Case, expect_float, read_triple, same
from helpers.checks._judge import describe as describe_number
from helpers.checks._registry import Exercise, declare
from helpers.checks.one_layer._shared import size_tags
from helpers.data import BOS
from helpers.models import AttnOnlyTransformer

# ---- 2.10 describe a head from its weights ---------------------------------------------------------


def _resized(model: AttnOnlyTransformer, d_model: int, d_head: int, seed: int):
    """The same model with a wider residual stream and wider heads (zeros added, the stream then
    rotated so that no direction is visibly unused; W_Q scaled so that every score stays as it
    was): the mystery models otherwise share d_model, n_heads and d_head with the notebook's."""
    old = model.cfg
    big = AttnOnlyTransformer(replace(old, d_model=d_model, d_head=d_head))
    R = torch.linalg.qr(torch.randn(d_model, d_model, generator=generator(seed))).Q

    def pad(W: Tensor, rows: int, cols: int) -> Tensor:
        return torch.nn.functional.pad(W, (0, cols - W.shape[-1], 0, rows - W.shape[-2]))

    with torch.no_grad():
        big.embed.W_E.copy_(pad(model.W_E, old.d_vocab, d_model) @ R)
        big.pos_embed.W_pos.copy_(pad(model.W_pos, old.n_ctx, d_model) @ R)
        big.unembed.W_U.copy_(R.T @ pad(model.W_U, d_model, old.d_vocab))
        a, b = model.blocks[0].attn, big.blocks[0].attn
        scale = (d_head / old.d_head) ** 0.5  # the scores' 1/sqrt(d_head) grows: make up for it
        for head in range(old.n_heads):
            b.W_Q[head] = R.T @ pad(a.W_Q[head], d_model, d_head) * scale
            b.W_K[head] = R.T @ pad(a.W_K[head], d_model, d_head)
            b.W_V[head] = R.T @ pad(a.W_V[head], d_model, d_head)
            b.W_O[head] = pad(a.W_O[head], d_head, d_model) @ R
    return big.eval()


def _rules(model, head: int, threshold: float, *, centre_qk: bool = True, centre_ov: bool = True,
           skip_bos: bool = True,
           keep: Callable[[float, float, float], bool] = lambda q, o, t: q >= t and o >= t,
           ) -> frozenset[tuple[int, int, int]]:  # fmt: skip
    """The head's rules (`circuits.describe_head`), or a common mistake's reading of them."""
    qk = circuits.full_qk_circuit(model, 0, head, normalise=centre_qk).clone()  # [dest, source]
    ov = circuits.full_ov_circuit(model, 0, head)
    ov = ov - ov.mean(-1, keepdim=True) if centre_ov else ov.clone()
    if skip_bos:
        qk[BOS] = qk[:, BOS] = ov[:, BOS] = float("-inf")
    rules = set()
    for s in range(1, model.cfg.d_vocab):
        d, o = int(qk[:, s].argmax()), int(ov[s].argmax())
        if keep(float(qk[d, s]), float(ov[s, o]), threshold):
            rules.add((s, d, o))
    return frozenset(rules)


def _midway(model, head: int, planted: frozenset) -> float:
    """A threshold between two planted rules' margins (the smaller of QK[d, s] and OV'[s, o]),
    in the widest gap, so that planted rules lie on both sides of it."""
    qk = circuits.full_qk_circuit(model, 0, head)
    ov = circuits.full_ov_circuit(model, 0, head)
    ov = ov - ov.mean(-1, keepdim=True)
    margins = sorted(min(float(qk[d, s]), float(ov[s, o])) for s, d, o in planted)
    low, high = max(zip(margins, margins[1:], strict=False), key=lambda pair: pair[1] - pair[0])
    return round((low + high) / 2, 3)


# a threshold below the weak side of the mystery models' half-rules (1.5) and above the copying
# heads' QK scores: each reading that combines the two scores differently keeps other rules here
LOW_THRESHOLD = 1.0


def _describe_cases(seed: int) -> list[Case]:
    """Every head of two mystery models (a previous-token head, a copying head, an anti-copying
    head and a head of planted rules, in a random order), the second resized to other d_model and
    d_head than the notebook's; at the default threshold 3 (below every planted rule), at one
    between two planted rules' margins (so that rules lie on both sides of it) and at a low one
    (below the half-rules' weak sides, where a product or a sum of the two scores reaches the
    threshold for rules that one score alone does not)."""
    cases = []
    for i in range(2):
        mystery = handmade.mystery_heads(seed + i)
        model = mystery.model if i == 0 else _resized(mystery.model, 80, 20, seed + 7)
        rules_head = mystery.kinds.index("skip-trigrams")
        thresholds = (3.0, _midway(model, rules_head, mystery.rules), LOW_THRESHOLD)
        for head in range(model.cfg.n_heads):
            pattern = circuits.positional_pattern(model, 0, head)
            for threshold in thresholds:
                truth = circuits.describe_head(model, 0, head, threshold)
                prev, copying, rules = truth.previous_token, truth.copying, truth.rules
                expected = (prev, copying, rules)

                def rules_read(**how) -> tuple[float, float, frozenset]:
                    return (prev, copying, _rules(model, head, threshold, **how))  # noqa: B023

                mistakes = [
                    ("previous_token read the main diagonal (offset 0), a position's attention "
                     "on itself: the previous position is the diagonal at offset -1.",
                     (float(pattern.diagonal(0).mean()), copying, rules)),
                    ("previous_token was divided by n_ctx: there are n_ctx - 1 query positions "
                     "with a previous position (1, 2, …); take the mean of the offset -1 "
                     "diagonal.",
                     (float(pattern.diagonal(-1).sum()) / model.cfg.n_ctx, copying, rules)),
                    ("the rules were read from the QK circuit before each row was centred: a "
                     "destination's scores compare only within its row.",
                     rules_read(centre_qk=False)),
                    ("the rules were read from the OV circuit before each row was centred: "
                     "softmax ignores a constant added to every logit.",
                     rules_read(centre_ov=False)),
                    ("BOS took part in the rules: leave it out of the destinations (QK row and "
                     "column) and the outputs (OV column).", rules_read(skip_bos=False)),
                    ("rules were kept on the QK score alone: keep a rule only if both QK[d, s] "
                     "and OV'[s, o] reach the threshold.",
                     rules_read(keep=lambda q, o, t: q >= t)),
                    ("rules were kept on the OV score alone: keep a rule only if both QK[d, s] "
                     "and OV'[s, o] reach the threshold.",
                     rules_read(keep=lambda q, o, t: o >= t)),
                    ("rules were kept on the product QK · OV' >= threshold²: each of the two "
                     "must reach the threshold.", rules_read(keep=lambda q, o, t: q * o >= t * t)),
                    ("rules were kept on the sum QK + OV' >= 2 · threshold: each of the two must "
                     "reach the threshold.", rules_read(keep=lambda q, o, t: q + o >= 2 * t)),
                    ("the rules were kept at the default threshold 3.0: use the `threshold` "
                     "argument.", (prev, copying, _rules(model, head, 3.0))),
                    ("the rules are (source, output, destination): return (source, destination, "
                     "output).", (prev, copying, frozenset((s, o, d) for s, d, o in rules))),
                ]  # fmt: skip
                tags = size_tags(model)
                tags |= {"a previous-token head"} if prev > 0.5 else set()
                tags |= {"a copying head"} if copying > 0.5 else set()
                tags |= {"an anti-copying head"} if copying < -0.5 else set()
                tags |= _threshold_tags(model, head, threshold)
                if model.cfg.d_model != mystery.model.cfg.d_model:
                    tags.add("d_model and d_head other than the notebook's")
                where = (f"head {head} ({mystery.kinds[head]}) of a mystery model with d_head "
                         f"{model.cfg.d_head}, threshold {threshold}")  # fmt: skip
                cases.append(Case((model, head, threshold), expected, mistakes, where,
                                  describe=_description_describer(expected), tags=tags))  # fmt: skip
    return cases


def _threshold_tags(model, head: int, threshold: float) -> set[str]:
    """Which sides of the threshold the head's candidate rules (each source's best destination
    and output) fall on."""
    tags = set()
    loose = _rules(model, head, threshold, keep=lambda q, o, t: True)
    kept = _rules(model, head, threshold)
    qk_only = _rules(model, head, threshold, keep=lambda q, o, t: q >= t > o)
    ov_only = _rules(model, head, threshold, keep=lambda q, o, t: o >= t > q)
    if kept:
        tags.add("a rule kept")
    if loose - kept:
        tags.add("a rule below the threshold")
    if qk_only:
        tags.add("a rule whose QK alone reaches the threshold")
    if ov_only:
        tags.add("a rule whose OV' alone reaches the threshold")
    return tags


def _description_describer(expected: tuple) -> Callable[[object], str]:
    """What is wrong with a description that no common mistake explains: its first wrong part."""
    prev, copying, rules = expected

    def describe(answer) -> str:
        got_prev, got_copying, got_rules = answer
        if not same(got_prev, prev):
            return (f"previous_token: {describe_number(got_prev, prev)} Average the diagonal just "
                    "below the main one (offset -1) of the position-only pattern (Exercise 2.6), "
                    "over its query positions 1..")  # fmt: skip
        if not same(got_copying, copying):
            near = "Close: compute the eigenvalues in float64, of the d_head × d_head matrix."
            return f"copying (Exercise 2.4's score): {describe_number(got_copying, copying, near)}"
        missing, extra = sorted(rules - got_rules), sorted(got_rules - rules)
        return f"rules missing {missing}, rules that should not be there {extra}."

    return describe


def _read_description(out: object, case: Case) -> tuple[float, float, frozenset]:
    """The learner's (previous_token, copying, rules), as two floats and a set of triples of
    token ids, or a CheckFailed on their form."""
    ex = _DESCRIBE_HEAD.name
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise CheckFailed(ex, "describe_head must return (previous_token, copying, rules).")
    previous, copying = (expect_float(ex, name, value)
                         for name, value in zip(("previous_token", "copying"), out[:2],
                                                strict=True))  # fmt: skip
    rules = out[2]
    if not isinstance(rules, (set, frozenset, list, tuple)):
        raise CheckFailed(
            ex, f"rules must be a set of (source, destination, output), got {type(rules).__name__}."
        )
    d_vocab = case.args[0].cfg.d_vocab
    return previous, copying, frozenset(read_triple(ex, r, d_vocab, "rule") for r in rules)


_DESCRIBE_HEAD = declare(Exercise(
    number="2.10", title="describe a head from its weights", functions=("describe_head",),
    cases=_describe_cases, read=_read_description, reference=circuits.describe_head,
    withhold=(circuits.describe_head, handmade.mystery_heads), block_forward=True,
    covers=frozenset({"several heads of one layer", "a previous-token head", "a copying head",
                      "an anti-copying head", "a rule kept", "a rule below the threshold",
                      "a rule whose QK alone reaches the threshold",
                      "a rule whose OV' alone reaches the threshold",
                      "d_model and d_head other than the notebook's"}),
    passed="the previous-token attention, copying score and rules of every head of two mystery "
    "models (one resized), at thresholds below every planted rule and between two of them.",
))  # fmt: skip
