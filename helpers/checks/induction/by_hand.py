"""Exercise 4.7: an induction head set by hand."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from helpers import evals, handmade
from helpers.checks._base import CheckFailed, generator
from helpers.checks._judge import Case, Requirement
from helpers.checks._registry import Exercise, declare
from helpers.data import repeated_random_tokens
from helpers.models import AttnOnlyTransformer

# ---- 4.7 a hand-made induction head ------------------------------------------------------------

# What the hand-made model must do (the chapter's prose quotes these): at every position, layer 0
# puts at least PREVIOUS_NEEDED of its attention on the previous one; layer 1 scores at least
# INDUCTION_NEEDED on prefix matching; the loss on repeated tokens is at most LOSS_RATIO_NEEDED
# times the loss on fresh ones. The course's solution reaches about 1.0, 1.0 and 0.001; a head
# that only roughly does its job (scores too weak for the softmax to pick one position) fails.
PREVIOUS_NEEDED = 0.8
INDUCTION_NEEDED = 0.8
LOSS_RATIO_NEEDED = 0.1

# What the hand-made model is measured with, bound when this module is imported: an answer that
# replaces helpers.evals' functions changes nothing here.
_induction_scores = evals.induction_scores
_repeated_tokens_loss = evals.repeated_tokens_loss
_run_with_cache = AttnOnlyTransformer.run_with_cache
_SETTERS = ("set_previous_token_head", "set_induction_head")


@dataclass(frozen=True)
class _Measured:
    """A hand-made model's behaviour: the weakest attention of layer 0 to the previous position
    (over every position), and per repeat length layer 1's induction score and the loss ratio."""

    previous: float
    induction: dict[int, float]
    ratio: dict[int, float]


def _snapshot(model) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _changed(before: dict[str, Tensor], model) -> list[str]:
    return [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]


@torch.no_grad()
def _measure(model, context: dict) -> _Measured:
    _, cache = _run_with_cache(model, context["everywhere"],
                               names_filter=lambda n: n.endswith("hook_pattern"))  # fmt: skip
    previous = cache["blocks.0.attn.hook_pattern"][:, 0].diagonal(-1, -2, -1).mean(0)  # [pos - 1]
    induction, ratio = {}, {}
    for length, tokens in context["probes"].items():
        induction[length] = float(_induction_scores(model, tokens, length)[1, 0])
        ratio[length] = _repeated_tokens_loss(model, tokens, length).ratio
    return _Measured(float(previous.min()), induction, ratio)


def _layouts(seed: int) -> list[tuple[handmade.Layout, str]]:
    """Two layouts drawn from `seed`: more positions than tokens (d_head = n_ctx) and more tokens
    than positions (d_head = d_vocab), so that no size can be assumed to be d_head."""
    rng = generator(seed)

    def pick(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (), generator=rng))

    long = handmade.Layout(d_vocab=pick(9, 14), n_ctx=pick(22, 30))
    n_ctx = pick(21, 24)
    wide = handmade.Layout(d_vocab=pick(n_ctx + 2, n_ctx + 6), n_ctx=n_ctx)
    return [(long, "more positions than tokens"), (wide, "more tokens than positions")]


def _handmade_cases(seed: int) -> list[Case]:
    """A blank model per layout, with repeated random tokens of several block lengths (a head
    that attends at a fixed offset cannot pass them all) and random tokens of full length (a
    previous-token head must work at every position); the requirements quote what was measured
    where they are not met."""
    cases = []
    for i, (layout, tag) in enumerate(_layouts(seed)):
        V, n = layout.d_vocab, layout.n_ctx
        longest = V - 1  # no token twice within a block
        lengths = sorted({3, min(longest, (n - 1) // 3), min(longest, (n - 1) // 2)})
        probes = {
            length: repeated_random_tokens(
                V - 1, length, (n - 1) // length, 40, generator(seed + 100 * i + length)
            )
            for length in lengths
        }
        everywhere = torch.randint(1, V, (40, n), generator=generator(seed + 100 * i + 1))
        everywhere[:, 0] = 0
        context = {"layout": layout, "probes": probes, "everywhere": everywhere}
        context["reference"] = _measure(handmade.reference_model(layout), context)
        where = f"a layout of {V} tokens and {n} positions"
        cases.append(Case((handmade.blank_model(layout), layout), _requirements(context),
                          where=where, tags={tag}, context=context))  # fmt: skip
    return cases


@dataclass(frozen=True)
class _Built:
    """What the learner's functions left: the model, and what each of them changed."""

    model: AttnOnlyTransformer
    changed: tuple[list[str], list[str]]
    returned: tuple[object, object]


def _run_handmade(exercise: Exercise, functions: Sequence, case: Case) -> _Built:
    """The two functions, in turn, on the case's blank model (edited in place: the exercise's
    point), recording which weights each changed."""
    model, layout = case.args
    changed, returned = [], []
    for fn, name in zip(functions, _SETTERS, strict=True):
        before = _snapshot(model)
        with torch.no_grad():  # the weights are leaves that require grad
            returned.append(exercise.call(fn, case, name=f"{name}()", args=(model, layout)))
        changed.append(_changed(before, model))
    return _Built(model, tuple(changed), tuple(returned))


def _read_handmade(built: _Built, case: Case) -> _Measured:
    """The model's behaviour, or a CheckFailed on what the functions changed: each its own
    layer's head, nothing else, and nothing to NaN."""
    ex = _HANDMADE.name
    for layer, (name, changed) in enumerate(zip(_SETTERS, built.changed, strict=True)):
        elsewhere = [n for n in changed if n.startswith("blocks.")
                     and not n.startswith(f"blocks.{layer}.")]  # fmt: skip
        if elsewhere:
            raise CheckFailed(ex, f"{name} sets layer {layer}'s head; it changed {elsewhere} "
                              "too. Each function sets its own layer.")  # fmt: skip
    not_heads = [n for changed in built.changed for n in changed if not n.startswith("blocks.")]
    if not_heads:
        raise CheckFailed(
            ex, f"only the heads' weights are yours to set; your functions changed {not_heads}."
        )
    case.context["idle"] = {  # the functions that changed nothing: said with the behaviour
        layer: _idle_hint(name, layer, built.returned[layer])
        for layer, (name, changed) in enumerate(zip(_SETTERS, built.changed, strict=True))
        if not changed
    }
    if not all(torch.isfinite(p).all() for p in built.model.parameters()):
        raise CheckFailed(ex, "some weights are NaN or infinite.")
    return _measure(built.model, case.context)


def _idle_hint(name: str, layer: int, returned: object) -> str:
    """What to say of a function that changed no weight."""
    returned_one = " It returned something: edit the model it is given instead."
    return (f"({name} changed no weight of the model.{returned_one if returned is not None else ''}"
            f" Write into the head's own weights, e.g. model.blocks[{layer}].attn.W_Q[0, ...]: "
            "model.W_Q and the like are stacked copies, for reading.)")  # fmt: skip


def _diagnosis(context: dict, m: _Measured, length: int) -> str:
    """What the measurements say, at one repeat length."""
    ref, n = context["reference"], context["layout"].n_ctx
    lines = [
        f"with blocks of {length} repeated tokens, the loss ratio is {m.ratio[length]:.2f} "
        f"(needs <= {LOSS_RATIO_NEEDED}; the course's solution {ref.ratio[length]:.2g})."
    ]
    if m.previous < PREVIOUS_NEEDED:
        lines.append(
            f"Layer 0 puts as little as {m.previous:.2f} of its attention on the previous position "
            f"at some position (needs >= {PREVIOUS_NEEDED} at every one of the {n}). Its queries "
            "and keys see positions only: make the score of query position i and key position j "
            "large exactly when j = i - 1 (W_Q maps position i to direction i, W_K maps position "
            "j to direction j + 1), for every position of the layout, and large enough to beat "
            "the softmax."
        )
        lines += [context["idle"][0]] if 0 in context["idle"] else []
    else:
        lines.append(
            f"Layer 0 is a good previous-token head (at least {m.previous:.2f} everywhere)."
        )
    if m.induction[length] < INDUCTION_NEEDED:
        lines.append(
            f"Layer 1 puts only {m.induction[length]:.2f} of its attention where induction says "
            f"(needs >= {INDUCTION_NEEDED}). Its query must read the current token (token "
            "subspace) and its key the token before the key position (previous subspace), "
            "matching when they are equal. (Attending at a fixed offset fails: the checker varies "
            "the repeat length.)"
        )
        lines += [context["idle"][1]] if 1 in context["idle"] else []
    else:
        lines.append(
            f"Layer 1 attends like an induction head ({m.induction[length]:.2f}); check its OV: it "
            "must copy the attended position's token (token subspace) into the output subspace."
        )
    return "\n".join(lines)


def _requirements(context: dict) -> list[Requirement]:
    """The three requirements, each saying (where it is not met) what was measured, at the first
    repeat length where it is not (the weakest one, for layer 0's attention)."""

    def first(failing: list[int], m: _Measured) -> int:
        return failing[0] if failing else min(m.ratio)

    def worst(m: _Measured) -> str:
        return _diagnosis(context, m, max(m.ratio, key=m.ratio.get))

    def weak(m: _Measured) -> str:
        return _diagnosis(context, m, first([n for n, s in m.induction.items()
                                             if s < INDUCTION_NEEDED], m))  # fmt: skip

    def lossy(m: _Measured) -> str:
        return _diagnosis(context, m, first([n for n, r in m.ratio.items()
                                             if r > LOSS_RATIO_NEEDED], m))  # fmt: skip

    return [
        Requirement(lambda a: a.previous >= PREVIOUS_NEEDED, worst),
        Requirement(lambda a: min(a.induction.values()) >= INDUCTION_NEEDED, weak),
        Requirement(lambda a: max(a.ratio.values()) <= LOSS_RATIO_NEEDED, lossy),
    ]


def _show_handmade(answers: list, cases: Sequence[Case]) -> None:
    """What the learner's model does on each layout, beside the course's solution."""
    for m, case in zip(answers, cases, strict=True):
        ref = case.context["reference"]
        print(
            f"{case.where}: weakest previous-token attention {m.previous:.2f}, induction score "
            f">= {min(m.induction.values()):.2f}, loss on repeats <= {max(m.ratio.values()):.2g} "
            f"× fresh (the course's solution: {max(ref.ratio.values()):.2g}), for blocks of "
            f"{sorted(m.ratio)} tokens."
        )


_HANDMADE = declare(Exercise(
    number="4.7", title="a hand-made induction head",
    functions=("set_previous_token_head", "set_induction_head"),
    checker="check_handmade_induction", cases=_handmade_cases, clone=False,
    reference=handmade.set_reference_weights, withhold=(handmade.set_reference_weights,),
    run=_run_handmade, read=_read_handmade, reveal=_show_handmade,
    on_error={"RuntimeError": "Shapes must fit the layout: W_Q, W_K and W_V are [head, d_model, "
              "d_head], W_O [head, d_head, d_model], with d_model = layout.d_model and d_head = "
              "layout.d_head = max(d_vocab, n_ctx); the checker's layouts are not the notebook's.",
              "IndexError": "An index fell outside a weight: use layout.token, layout.previous, "
              "layout.output and layout.position (slices of d_model), and head directions below "
              "layout.d_head; the checker's layouts are not the notebook's."},
    covers=frozenset({"more positions than tokens", "more tokens than positions"}),
    passed="a previous-token head at every position and an induction head, on two layouts drawn "
    "at check time (more positions than tokens, more tokens than positions) and several repeat "
    "lengths.",
))  # fmt: skip
