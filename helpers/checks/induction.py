"""Exercises of chapter 04, declared: head scores on repeated random tokens, ablations through
hooks, the K-composition and OV circuits of induction heads, the hand-made induction head, and an
induction circuit found in a mystery model."""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from helpers import circuits, evals, handmade
from helpers.checks._base import CheckFailed, generator, random_models, random_tokens
from helpers.checks._judge import Case, Deferred, Requirement, read_answer, same
from helpers.checks._registry import Exercise, declare
from helpers.data import repeated_random_tokens
from helpers.models import AttnOnlyTransformer

# ---- 4.1 - 4.3 scores of one head's pattern ----------------------------------------------------


def _random_patterns(seed: int, n: int, batch: int, dtype=torch.float32, boost=None) -> Tensor:
    """`[batch, n, n]` random causal attention patterns; `boost` (a `[n, n]` mask) raises the
    logits there, for the sharp pattern of a head that does what a score measures."""
    logits = torch.randn(batch, n, n, generator=generator(seed), dtype=torch.float64) * 2
    if boost is not None:
        logits = logits + 6 * boost
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    return logits.masked_fill(~causal, float("-inf")).softmax(-1).to(dtype)


def _previous_token_cases(seed: int) -> list[Case]:
    """Random patterns of four shapes: a batch of one, two positions only (one entry (1, 0) per
    sequence), float64, and the sharp pattern of a previous-token head (a score near 1)."""
    cases = []
    for i, (batch, n, dtype, head) in enumerate(((4, 11, torch.float32, False),
                                                 (1, 7, torch.float64, True),
                                                 (3, 16, torch.float32, False),
                                                 (5, 2, torch.float32, False))):  # fmt: skip
        previous = torch.ones(n, n).tril(-1).triu(-1)  # the entries (i, i - 1)
        pattern = _random_patterns(seed + i, n, batch, dtype, previous if head else None)
        p = pattern.double()
        entries = p.diagonal(-1, -2, -1)  # [batch, n - 1]
        expected = float(entries.mean())
        mistakes = [
            ("that is the attention on the current position (the main diagonal); the previous "
             "position is one below it: diagonal(offset=-1).", float(p.diagonal(0, -2, -1).mean())),
            ("that is the attention on the next position: diagonal(offset=+1) is above the "
             "diagonal, where a causal pattern is 0.", float(p.diagonal(1, -2, -1).mean())),
            ("the sum was taken instead of the mean.", float(entries.sum())),
            ("the mean was taken over the whole pattern rather than over the entries (i, i - 1).",
             float(p.mean())),
            ("position 0 was averaged in: it has no previous position (an index i - 1 = -1 wraps "
             "round to the last key, where a causal pattern is 0). Average over positions "
             "1 .. n - 1.",
             float(entries.sum() / (batch * n))),
            ("only the first sequence of the batch was scored: the pattern is [batch, query_pos, "
             "key_pos]; average over the batch too.", float(entries[0].mean())),
        ]  # fmt: skip
        tags = {"float64"} if dtype == torch.float64 else set()
        tags |= {"one sequence"} if batch == 1 else set()
        tags |= {"two positions"} if n == 2 else set()
        tags |= {"a previous-token head's pattern"} if expected > 0.5 else set()
        where = f"{batch} pattern(s) over {n} positions ({dtype})"
        cases.append(Case((pattern,), expected, mistakes, where, tags=tags))
    return cases


declare(Exercise(
    number="4.1", title="previous-token score", functions=("previous_token_score",),
    cases=_previous_token_cases,
    covers=frozenset({"float64", "one sequence", "two positions",
                      "a previous-token head's pattern"}),
    passed="right on random patterns of four shapes (one sequence, two positions, float64) and "
    "on a previous-token head's.",
))  # fmt: skip


def _block_score(
    pattern: Tensor,
    length: int,
    shift: int,
    *,
    earliest: int = 1,
    latest: bool = False,
    average: bool = False,
    first: int | None = None,
) -> float:
    """The score as a learner's loop computes it, right or wrong: for each query q from `first`
    (default: the first position of the second block), the attention summed over the keys
    q - r·length + shift for r = 1 .. (q - earliest) // length, the copies at `earliest` or later
    (`latest`: r = 1 only; `average`: the mean over them, Olsson et al.'s evaluator), then the
    mean over queries and batch. Right: earliest=1, after BOS."""
    n, p = pattern.shape[-1], pattern.double()
    per_query = []
    for q in range(1 + length if first is None else first, n):
        rs = list(range(1, (q - earliest) // length + 1))
        rs = rs[:1] if latest else rs
        total = p[:, q, [q - r * length + shift for r in rs]].sum(-1)  # [batch]
        per_query.append(total / len(rs) if average and rs else total)
    return float(torch.stack(per_query).mean())


def _course_score(pattern: Tensor, length: int, shift: int) -> float:
    """The course's score (`evals.earlier_occurrence_mask`): the right answer."""
    target = evals.earlier_occurrence_mask(pattern.shape[-1], length, shift)
    queries = target.any(-1)
    return float((pattern.double() * target).sum(-1)[:, queries].mean())


_BOS_OFFSET = (
    "the positions are one off: the sequence starts with BOS, so block b (from 0) covers "
    "positions 1 + b·length .. (b + 1)·length, and a query's earlier copies lie a multiple of "
    "length before it, never at BOS."
)
_ONE_COPY_TOO_MANY = (
    "r ran to q // length, one copy too far at the end of each block: the earliest copy, "
    "q - r·length, must be a token of the sequence (position 1 or later), not BOS: r runs to "
    "(q - 1) // length."
)
_FIRST_BLOCK = (
    "the queries of the first block (or BOS) were averaged in: they have no earlier copy to "
    "attend to. Average over the queries of the later blocks only, q = 1 + length .. n - 1."
)

# (length, blocks, batch, dtype, a sharp pattern): one earlier copy (two blocks) and several,
# float64, a batch of one, blocks of 2, and the sharp pattern of a head that does what is scored
_BLOCKS = ((5, 2, 4, torch.float32, False), (4, 4, 3, torch.float32, False),
           (3, 3, 2, torch.float64, False), (6, 3, 2, torch.float32, True),
           (2, 6, 1, torch.float32, False))  # fmt: skip


def _block_tags(length: int, blocks: int, pattern: Tensor, score: float) -> set[str]:
    tags = {"two blocks (one earlier copy)" if blocks == 2 else "three blocks or more"}
    tags |= {"float64"} if pattern.dtype == torch.float64 else set()
    tags |= {"one sequence"} if pattern.shape[0] == 1 else set()
    tags |= {"blocks of 2"} if length == 2 else set()
    tags |= {"a head's sharp pattern"} if score > 0.5 else set()
    return tags


def _duplicate_cases(seed: int) -> list[Case]:
    cases = []
    for i, (length, blocks, batch, dtype, sharp) in enumerate(_BLOCKS):
        n = 1 + length * blocks
        boost = evals.earlier_occurrence_mask(n, length, 0).float() if sharp else None
        pattern = _random_patterns(seed + i, n, batch, dtype, boost)
        expected = _course_score(pattern, length, 0)
        score = functools.partial(_block_score, pattern, length, shift=0)
        mistakes = [
            ("this is the induction score: the token *after* each earlier copy (key + 1). A "
             "duplicate-token head attends to the earlier copies themselves.", score(shift=1)),
            ("only the most recent earlier copy was counted; sum over every earlier copy.",
             score(latest=True)),
            ("the attention was averaged over the earlier copies; sum it over them (a head "
             "that splits its attention between two copies of its token still attends to it).",
             score(average=True)),
            ("this looks one position too early (key - 1): the token before each earlier copy.",
             score(shift=-1)),
            (_BOS_OFFSET, score(earliest=0, first=length)),
            (_ONE_COPY_TOO_MANY, score(earliest=0)),
            (_FIRST_BLOCK, score(first=1)),
            (_FIRST_BLOCK, score(first=0)),
        ]  # fmt: skip
        where = f"blocks of {length}, {blocks} blocks, {batch} pattern(s) ({dtype})"
        tags = _block_tags(length, blocks, pattern, expected)
        cases.append(Case((pattern, length), expected, mistakes, where, tags=tags))
    return cases


_SCORE_ERRORS = {
    "IndexError": "An index fell outside the pattern: the queries run over 1 + length .. n - 1, "
    "and a query q's earlier copies are q - r·length for r = 1 .. (q - 1) // length.",
}

declare(Exercise(
    number="4.2", title="duplicate-token score", functions=("duplicate_token_score",),
    cases=_duplicate_cases, reference=evals.duplicate_token_scores,
    withhold=(evals.earlier_occurrence_mask, evals.duplicate_token_scores),
    on_error=_SCORE_ERRORS,
    covers=frozenset({"two blocks (one earlier copy)", "three blocks or more", "float64",
                      "one sequence", "blocks of 2", "a head's sharp pattern"}),
    passed="right for five block lengths and numbers of blocks (one earlier copy and several, "
    "float64, one sequence) and for a duplicate-token head's pattern.",
))  # fmt: skip


def _induction_cases(seed: int) -> list[Case]:
    cases = []
    for i, (length, blocks, batch, dtype, sharp) in enumerate(_BLOCKS):
        n = 1 + length * blocks
        boost = evals.earlier_occurrence_mask(n, length, 1).float() if sharp else None
        pattern = _random_patterns(seed + i, n, batch, dtype, boost)
        expected = _course_score(pattern, length, 1)
        score = functools.partial(_block_score, pattern, length, shift=1)
        mistakes = [
            ("this is the duplicate-token score: attention to earlier copies of the *current* "
             "token. Induction attends to the token *after* an earlier copy (key + 1).",
             score(shift=0)),
            ("these are the keys q - r·length - 1, one position *before* each earlier copy (the "
             "token that preceded it): the diagonal was shifted the wrong way. Induction looks "
             "one position *after* it, q - r·length + 1.", score(shift=-1)),
            ("this looks one position too far: key + 2.", score(shift=2)),
            ("only the most recent earlier copy was counted; with several repeats, sum the "
             "attention over every earlier copy.", score(latest=True)),
            (_BOS_OFFSET, score(earliest=0, first=length)),
            (_ONE_COPY_TOO_MANY, score(earliest=0)),
            (_FIRST_BLOCK, score(first=1)),
            (_FIRST_BLOCK, score(first=0)),
        ]  # fmt: skip
        where = f"blocks of {length}, {blocks} blocks, {batch} pattern(s) ({dtype})"
        tags = _block_tags(length, blocks, pattern, expected)
        # Olsson et al. average over the earlier copies instead: accepted (`_read_olsson`)
        context = {"averaged": score(average=True), "olsson": False}
        cases.append(Case((pattern, length), expected, mistakes, where, tags=tags,
                          context=context))  # fmt: skip
    return cases


def _read_olsson(out: object, case: Case) -> object:
    """The learner's score; Olsson et al.'s (averaged over the earlier copies) is right too, where
    it differs from the course's sum (three blocks or more): it is read as the right answer, and
    noted (`_note_olsson`)."""
    answer = read_answer(_INDUCTION.name, "induction_score", out, case)
    averaged = case.context["averaged"]
    if not same(averaged, case.expected, widen=10) and same(answer, averaged):
        case.context["olsson"] = True
        return case.expected
    return answer


def _note_olsson(answers: list, cases: Sequence[Case]) -> None:
    if any(case.context["olsson"] for case in cases):
        print(
            "You averaged the attention over the earlier occurrences, as Olsson et al. do; the "
            "course sums it (a perfect induction head that splits its attention over several "
            "earlier copies then still scores 1). Both agree when a token has occurred once "
            "before, and the checker accepts either."
        )


_INDUCTION = declare(Exercise(
    number="4.3", title="induction score", functions=("induction_score",),
    cases=_induction_cases, reference=evals.induction_scores,
    withhold=(evals.earlier_occurrence_mask, evals.induction_scores),
    read=_read_olsson, reveal=_note_olsson, on_error=_SCORE_ERRORS,
    covers=frozenset({"two blocks (one earlier copy)", "three blocks or more", "float64",
                      "one sequence", "blocks of 2", "a head's sharp pattern"}),
    passed="prefix-matching score right for five block lengths and numbers of blocks (one "
    "earlier copy and several, float64, one sequence) and for an induction head's pattern.",
))  # fmt: skip


# ---- 4.4 ablations through hooks --------------------------------------------------------------


@torch.no_grad()
def _ablated(model, tokens, heads, kind, cache) -> Tensor:
    """Ablation of `heads`, with means from `cache` (a clean run), or, with `cache` None, from
    the very run being ablated (a common mistake)."""
    hooks = []
    for layer in sorted({layer for layer, _ in heads}):
        chosen = [h for l_, h in heads if l_ == layer]
        name = f"blocks.{layer}.attn.hook_result"

        def ablate(result, hook, chosen=chosen, name=name):
            result = result.clone()  # [batch, pos, head, d_model]
            if kind == "zero":
                result[:, :, chosen] = 0.0
            else:
                source = result if cache is None else cache[name]
                result[:, :, chosen] = source.mean((0, 1))[chosen]
            return result

        hooks.append((name, ablate))
    return model.run_with_hooks(tokens, hooks)


@torch.no_grad()
def _mean_over(model, tokens, heads, cache, dims) -> Tensor:
    """Mean ablation with the mean over `dims` of `[batch, pos, head, d_model]` (a mistake)."""
    hooks = []
    for layer in sorted({layer for layer, _ in heads}):
        chosen = [h for l_, h in heads if l_ == layer]
        mean = cache[f"blocks.{layer}.attn.hook_result"].mean(dim=dims, keepdim=True)

        def ablate(result, hook, chosen=chosen, mean=mean):
            result = result.clone()
            result[:, :, chosen] = mean.expand_as(result)[:, :, chosen]
            return result

        hooks.append((f"blocks.{layer}.attn.hook_result", ablate))
    return model.run_with_hooks(tokens, hooks)


def _ablation_cases(seed: int) -> list[Case]:
    """A two- and a three-layer model (so that no layer can be assumed), each with one head of
    layer 0, one of the last layer, one of each (different heads: a late-bound loop variable
    shows) and two heads of one layer (a dict of the list keeps one), zeroed and mean-ablated."""
    cases = []
    for i, model in enumerate(random_models(seed, n_layers=2, per_model=[{}, {"n_layers": 3}])):
        tokens = random_tokens(model, seed + 10 + i, batch=3 + i)
        rng = generator(seed + 20 + i)
        H, last = model.cfg.n_heads, model.cfg.n_layers - 1
        first = int(torch.randint(1, H, (), generator=rng))  # never head 0 alone
        second = (first + 1 + int(torch.randint(H - 1, (), generator=rng))) % H  # not `first`
        _, cache = model.run_with_cache(tokens)
        with torch.no_grad():
            clean = model(tokens)
        for heads in ([(0, first)], [(last, second)], [(0, first), (last, second)],
                      [(last, first), (last, second)]):  # fmt: skip
            layers = {layer for layer, _ in heads}
            for kind in ("zero", "mean"):
                other = "mean" if kind == "zero" else "zero"
                whole = [(layer, h) for layer in layers for h in range(H)]
                mistakes = {
                    f"kind {kind!r}: that is the other kind of ablation.":
                        evals.run_with_ablation(model, tokens, heads, kind=other),
                    "every head of the layer was ablated, not only the chosen ones.":
                        evals.run_with_ablation(model, tokens, whole, kind=kind),
                    "nothing was ablated: these are the clean logits. Does each hook return the "
                    "edited tensor, and are the hooks passed to run_with_hooks?": clean,
                }  # fmt: skip
                if len({h for _, h in heads}) > 1:
                    mistakes["every hook ablated the last head in the list: a function defined in "
                             "a loop sees the loop variable's final value. Bind it when the hook "
                             "is made, e.g. `def hook(x, hook, head=head): ...`."] = _ablated(
                        model, tokens, [(layer, heads[-1][1]) for layer, _ in heads], kind, cache
                    )  # fmt: skip
                if len(layers) < len(heads):
                    mistakes["only one head of the layer was ablated: the list may hold several "
                             "heads of one layer (a dict {layer: head} keeps only the last)."] = (
                        evals.run_with_ablation(model, tokens, list(dict(heads).items()), kind)
                    )  # fmt: skip
                if kind == "mean" and len(layers) > 1:
                    mistakes["the mean was taken inside the hook, from the run being ablated: a "
                             "later layer's mean then already feels the earlier ablation. Take "
                             "the means from a clean run_with_cache first."] = _ablated(
                        model, tokens, heads, kind, None
                    )  # fmt: skip
                if kind == "mean":
                    mistakes["the mean was taken over the batch only: average each head's output "
                             "over the batch *and* the positions."] = _mean_over(
                        model, tokens, heads, cache, dims=(0,))  # fmt: skip
                    mistakes["the mean was taken over the positions only: average over the batch "
                             "too."] = _mean_over(
                        model, tokens, heads, cache, dims=(1,))  # fmt: skip
                    mistakes["the mean was taken over every entry, one number per head: keep one "
                             "vector [d_model] per head, averaged over the batch and positions "
                             "only (mean(dim=(0, 1)))."] = _mean_over(
                        model, tokens, heads, cache, dims=(0, 1, 3))  # fmt: skip
                expected = evals.run_with_ablation(model, tokens, heads, kind=kind)
                where = (f"{kind} ablation of {', '.join(f'L{a}H{b}' for a, b in heads)} in a "
                         f"{model.cfg.n_layers}-layer model")  # fmt: skip
                tags = {kind, f"{model.cfg.n_layers} layers"}
                tags |= {"one head"} if len(heads) == 1 else set()
                tags |= {"heads in two layers"} if len(layers) > 1 else set()
                tags |= {"two heads of one layer"} if len(layers) < len(heads) else set()
                cases.append(Case((model, tokens, heads, kind), expected, mistakes, where,
                                  tags=tags))  # fmt: skip
    return cases


declare(Exercise(
    number="4.4", title="zero and mean ablation through hooks", functions=("ablate_heads",),
    cases=_ablation_cases, reference=evals.run_with_ablation,
    withhold=(evals.run_with_ablation,),
    on_error={"KeyError": "The cache is keyed by TransformerLens hook names, e.g. "
              "'blocks.0.attn.hook_result' ([batch, pos, head_index, d_model])."},
    covers=frozenset({"zero", "mean", "one head", "heads in two layers", "two heads of one layer",
                      "3 layers"}),
    passed="zero and mean ablation of one head, heads of two layers and two heads of one layer, "
    "in random models of two and three layers.",
))  # fmt: skip


# ---- 4.5 the K-composition circuit, 4.6 OV circuits combined ------------------------------------


def _k_composition_cases(seed: int) -> list[Case]:
    """Every pair (layer-0 head, layer-1 head) of two random models: the same index in both
    layers and different ones (so that swapped heads show)."""
    cases = []
    for model in random_models(seed, n_layers=2):
        a1 = model.blocks[1].attn
        H, d = model.cfg.n_heads, model.cfg.d_head
        for p in range(H):
            for h in range(H):
                with torch.no_grad():
                    expected = circuits.k_composition_circuit(model, (0, p), (1, h))
                    queries = model.W_E @ a1.W_Q[h]
                    direct = queries @ (model.W_E @ a1.W_K[h]).T / d**0.5
                    mistakes = {
                        "the matrix is transposed: rows are query tokens, columns the previous "
                        "token of the key position.": expected.T,
                        "the previous-token head is missing: that is the layer-1 head's plain "
                        "token-token QK circuit (keys read W_E @ W_V⁰ @ W_O⁰ first).": direct,
                        "the key's own token (the direct path, W_E @ W_K¹) was added: the "
                        "K-composition term is only the part that the previous-token head "
                        "moved.": expected + direct,
                        "the previous-token head went into the queries (that is Q-composition); "
                        "K-composition is in the keys.": circuits.q_composition_circuit(
                            model, (0, p), (1, h)
                        ),
                        "the two heads were swapped: prev_head is the layer-0 head, "
                        "induction_head the layer-1 head.": circuits.k_composition_circuit(
                            model, (0, h), (1, p)
                        ),
                        "the 1/sqrt(d_head) scale is missing.": expected * d**0.5,
                        "the scale is 1/sqrt(d_model); attention scores are divided by "
                        "sqrt(d_head).": expected * d**0.5 / model.cfg.d_model**0.5,
                        "each row was centred: this exercise asks for the raw term; centring "
                        "(each query's scores minus their mean) comes when you compare keys "
                        "within a query.": expected - expected.mean(-1, keepdim=True),
                    }
                tags = {"the same head index in both layers" if p == h else "different heads"}
                cases.append(Case((model, p, h), expected, mistakes, f"L0H{p} → L1H{h}",
                                  tags=tags))  # fmt: skip
    return cases


declare(Exercise(
    number="4.5", title="the K-composition circuit", functions=("k_composition_circuit",),
    cases=_k_composition_cases, reference=circuits.k_composition_circuit, block_forward=True,
    withhold=(circuits.k_composition_circuit, circuits.q_composition_circuit),
    covers=frozenset({"the same head index in both layers", "different heads"}),
    passed="the K-composition term of the QK circuit for every pair of heads of two models.",
))  # fmt: skip


def _ov(model, layer: int, head: int) -> Tensor:
    attn = model.blocks[layer].attn
    return attn.W_V[head] @ attn.W_O[head]


def _combined_ov_cases(seed: int) -> list[Case]:
    """Two random models; one head, two heads of one layer, heads of two layers and three heads
    (so that an answer for one or two heads only shows)."""
    cases = []
    for i, model in enumerate(random_models(seed, n_layers=2)):
        picks = torch.randperm(model.cfg.n_heads, generator=generator(seed + i))[:2].tolist()
        a, b = picks
        for heads in ([(1, a)], [(1, a), (1, b)], [(0, b), (1, a)], [(0, a), (1, b), (1, a)]):
            layers = {layer for layer, _ in heads}
            with torch.no_grad():
                each = [circuits.full_ov_circuit(model, layer, h) for layer, h in heads]
                expected = torch.stack(each).sum(0)
                mistakes = {
                    "the circuits were averaged: heads that attend to the same token add their "
                    "outputs.": expected / len(heads),
                    "the circuit is transposed: rows are source tokens, columns outputs.": (
                        expected.T
                    ),
                    "only the first head was used.": each[0],
                    "the direct path W_E @ W_U was added: the OV circuits are what the heads "
                    "write, nothing else.": expected + model.W_E @ model.W_U,
                }
                if len(heads) > 1:
                    why = ("heads in one layer act side by side" if len(layers) == 1 else
                           "that is a virtual head through the layers, a different path; "
                           "this exercise asks what the heads write when all attend to the same "
                           "token")  # fmt: skip
                    product = model.W_E
                    for layer, h in heads:
                        product = product @ _ov(model, layer, h)
                    mistakes[f"the OV matrices were multiplied: {why}: add them."] = (
                        product @ model.W_U
                    )  # fmt: skip
                if len(heads) > 2:
                    mistakes[
                        "only the first two heads were added: `heads` may hold any number "
                        "of (layer, head) pairs."
                    ] = each[0] + each[1]
            tags = {f"{len(heads)} head(s)"}
            tags |= {"two heads of one layer"} if len(layers) < len(heads) else set()
            tags |= {"heads of two layers"} if len(layers) > 1 else set()
            where = f"heads {', '.join(f'L{x}H{y}' for x, y in heads)}"
            cases.append(Case((model, heads), expected, mistakes, where, tags=tags))
    return cases


declare(Exercise(
    number="4.6", title="heads that copy together", functions=("combined_ov_circuit",),
    cases=_combined_ov_cases, block_forward=True,
    withhold=(circuits.full_ov_circuit, circuits.virtual_head_ov_circuit),
    covers=frozenset({"1 head(s)", "3 head(s)", "two heads of one layer", "heads of two layers"}),
    passed="the summed OV circuit of one, two and three heads, in one layer and across two, for "
    "two random models.",
))  # fmt: skip


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
    previous-token head must work at every position); the requirements, which quote what was
    measured, are made once the learner's model is measured."""
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
        case = Case((handmade.blank_model(layout), layout), None, where=where, tags={tag},
                    context=context)  # fmt: skip
        case.expected = Deferred(lambda case=case: _handmade_requirements(case))
        cases.append(case)
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
    measured = _measure(built.model, case.context)
    case.context["measured"] = measured
    return measured


def _idle_hint(name: str, layer: int, returned: object) -> str:
    """What to say of a function that changed no weight."""
    returned_one = " It returned something: edit the model it is given instead."
    return (f"({name} changed no weight of the model.{returned_one if returned is not None else ''}"
            f" Write into the head's own weights, e.g. model.blocks[{layer}].attn.W_Q[0, ...]: "
            "model.W_Q and the like are stacked copies, for reading.)")  # fmt: skip


def _handmade_diagnosis(case: Case, length: int) -> str:
    """What the measurements say, at one repeat length."""
    m, ref = case.context["measured"], case.context["reference"]
    n = case.context["layout"].n_ctx
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
        lines += [case.context["idle"][0]] if 0 in case.context["idle"] else []
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
        lines += [case.context["idle"][1]] if 1 in case.context["idle"] else []
    else:
        lines.append(
            f"Layer 1 attends like an induction head ({m.induction[length]:.2f}); check its OV: it "
            "must copy the attended position's token (token subspace) into the output subspace."
        )
    return "\n".join(lines)


def _handmade_requirements(case: Case) -> list[Requirement]:
    """The three requirements, each saying (where it is not met) what was measured, at the first
    repeat length where it is not."""
    m = case.context["measured"]

    def first(failing: list[int]) -> int:
        return failing[0] if failing else min(m.ratio)

    worst = max(m.ratio, key=m.ratio.get)
    weak = first([n for n, s in m.induction.items() if s < INDUCTION_NEEDED])
    lossy = first([n for n, r in m.ratio.items() if r > LOSS_RATIO_NEEDED])
    return [
        Requirement(lambda a: a.previous >= PREVIOUS_NEEDED, _handmade_diagnosis(case, worst)),
        Requirement(
            lambda a: min(a.induction.values()) >= INDUCTION_NEEDED, _handmade_diagnosis(case, weak)
        ),
        Requirement(
            lambda a: max(a.ratio.values()) <= LOSS_RATIO_NEEDED, _handmade_diagnosis(case, lossy)
        ),
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


# ---- 4.8 the circuit in a mystery model ---------------------------------------------------------

# Mystery model 2's near-threshold heads split their attention, in a fixed ratio r, between the
# positions after the m earlier copies of the query's token (where induction looks) and the copies
# themselves with the query's own position (m + 1 of them). A query in block m (counting from 0,
# so with m earlier copies) scores m / (m + (m + 1) r) whatever the tokens and the batch: the
# score depends only on how many blocks the repeated random tokens have, and rises with them.
# The head above the threshold scores T + NEAR with two blocks, and more with more; the one below
# scores T - NEAR with the most blocks that fit (blocks of 2), and about 0.35 with two. So a
# threshold other than evals.INDUCTION_HEAD_THRESHOLD puts one of them on the wrong side, and
# neither is on the threshold for any repeated random tokens. A layer-0 head puts PARTLY_PREVIOUS
# of its attention on the previous position and the rest on its own (so that "the first head
# above a threshold" is not the previous-token head).
NEAR = 0.05
PARTLY_PREVIOUS = 0.62


def _split_score(blocks: int, ratio: float) -> float:
    """The induction score of a head splitting its attention as above, on `blocks` blocks."""
    return sum(m / (m + (m + 1) * ratio) for m in range(1, blocks)) / (blocks - 1)


def _near_threshold_ratios(T: float, most_blocks: int) -> tuple[float, float]:
    """r for the head just above the threshold (T + NEAR with two blocks, its lowest) and just
    below (T - NEAR with `most_blocks`, its highest), found by bisection."""
    low, high = 0.0, 100.0
    for _ in range(60):  # the score falls as r grows
        middle = (low + high) / 2
        low, high = (
            (middle, high) if _split_score(most_blocks, middle) > T - NEAR else (low, middle)
        )
    return (1 / (T + NEAR) - 1) / 2, high


@torch.no_grad()
def _split_attention(model, layer: int, head: int, source: int, log_ratio: float) -> None:
    """Make `head`'s queries and keys those of the planted head `source` (of `layer`), but with
    keys that also match the query's own direction: the planted queries read direction t from
    the current token t (layer 1) or position t (layer 0), the planted keys from the previous
    token or position; adding the queries to the keys, scaled, gives a key whose own token (or
    position) is the query's a score `log_ratio` above a key whose previous one is. In head
    space: the rotation of the stream does not matter."""
    attn = model.blocks[layer].attn
    strength = handmade.STRENGTH**2 / model.cfg.d_head**0.5  # a planted match, after the scale
    W_Q = attn.W_Q[source].clone()  # [d_model, d_head]
    attn.W_K[head] = attn.W_K[source] + (1 + log_ratio / strength) * W_Q
    attn.W_Q[head] = W_Q


def _notebook_probe(model) -> tuple[Tensor, int]:
    """Repeated random tokens sized for the model, as the notebook's solution makes them."""
    V, n = model.cfg.d_vocab, model.cfg.n_ctx
    length = min(V - 1, (n - 1) // 2)
    tokens = repeated_random_tokens(V - 1, length, (n - 1) // length, 50, generator(0))
    return tokens, length


def _mystery_cases(seed: int) -> list[Case]:
    """Three mystery models drawn at check time (the circuit at random heads, the stream rotated):
    one as `handmade.mystery_induction` makes it; one with a layer-1 head just above the threshold
    and one below it (see NEAR) and a layer-0 head that partly attends to the previous position;
    one whose every layer-1 head is an induction head (so that "the heads above the layer's mean"
    fails)."""
    T = evals.INDUCTION_HEAD_THRESHOLD
    cases = []
    for i in range(3):
        mystery = handmade.mystery_induction(seed + i, every_head=i == 2)
        for retry in range(1, 20):  # model 2: its previous-token head not head 0, if it can be
            if i != 1 or mystery.previous_token_head[1] != 0:
                break
            mystery = handmade.mystery_induction(seed + i + 1000 * retry)
        model, H = mystery.model, mystery.model.cfg.n_heads
        (_, p), planted = mystery.previous_token_head, [h for _, h in mystery.induction_heads]
        induction_heads, built = list(planted), {}
        if i == 1:  # heads on both sides of the threshold
            others = [h for h in range(H) if h not in planted]  # 1-2 of 3-4 heads are planted
            above, below = (others[1], others[0]) if len(others) > 1 else (planted[-1], others[0])
            ratios = _near_threshold_ratios(T, (model.cfg.n_ctx - 1) // 2)
            for head, ratio in zip((above, below), ratios, strict=True):
                _split_attention(model, 1, head, planted[0], math.log(ratio))
            induction_heads = sorted({*planted, above})
            partly = min(h for h in range(H) if h != p)  # before p (never head 0)
            own = math.log((1 - PARTLY_PREVIOUS) / PARTLY_PREVIOUS)
            _split_attention(model, 0, partly, p, own)
            built = {"above": above, "below": below, "partly previous": partly}
        expected = ((0, p), [(1, h) for h in induction_heads])
        tokens, length = _notebook_probe(model)
        previous = evals.previous_token_scores(model, tokens)[0].tolist()
        scores = evals.induction_scores(model, tokens, length)[1].tolist()
        mistakes = [("every layer-1 head was returned among the induction heads: keep only those "
                     f"scoring at least evals.INDUCTION_HEAD_THRESHOLD ({T}).",
                     ((0, p), [(1, h) for h in range(H)]))]  # fmt: skip
        if i == 1:
            on = f"on {tokens.shape[-1] // length} blocks of {length} repeated random tokens"
            mistakes.append((
                f"L1H{above}, whose induction score is {scores[above]:.2f} ({on}; more with more "
                f"blocks), just above evals.INDUCTION_HEAD_THRESHOLD ({T}), was left out of the "
                "induction heads: keep every head scoring at least the threshold, on the course's "
                "score (summed over the earlier copies, as evals.induction_scores does; averaged "
                "over them it comes out lower with three blocks or more).",
                ((0, p), [(1, h) for h in induction_heads if h != above])))  # fmt: skip
            mistakes.append((
                f"L1H{below}, whose induction score is {scores[below]:.2f} ({on}; under {T} "
                "with any number of blocks), below evals.INDUCTION_HEAD_THRESHOLD "
                f"({T}), was kept among the induction heads: is your threshold lower than the "
                "course's?", ((0, p), sorted([*expected[1], (1, below)]))))  # fmt: skip
        passing = [h for h in range(H) if previous[h] >= T]
        if passing[0] != p:
            mistakes.append((
                f"the previous-token head is the layer-0 head with the *highest* previous-token "
                f"score (argmax), not the first that passes a threshold: L0H{passing[0]} attends "
                f"to the previous position too, less ({previous[passing[0]]:.2f} against "
                f"{previous[p]:.2f}).", ((0, passing[0]), expected[1])))  # fmt: skip
        tags = {"every layer-1 head an induction head"} if i == 2 else set()
        kept = [scores[h] for _, h in expected[1]]
        left = [scores[h] for h in range(H) if (1, h) not in expected[1]]
        tags |= {"a layer-1 head just above the threshold"} if min(kept) < T + 2 * NEAR else set()
        tags |= {"a layer-1 head partly an induction head, below the threshold"} if left and max(
            left) > T - 0.2 else set()  # fmt: skip
        tags |= {"a layer-0 head partly on the previous position"} if passing[0] != p else set()
        where = f"mystery model {i + 1} ({H} heads per layer)"
        cases.append(Case((model,), expected, mistakes, where, tags=tags, context=built,
                          describe=_mystery_describer(expected, scores)))  # fmt: skip
    return cases


def _mystery_describer(expected: tuple, scores: list[float]):
    T = evals.INDUCTION_HEAD_THRESHOLD

    def describe(answer: tuple) -> str:
        prev, induction = answer
        if prev != expected[0]:
            return (
                f"previous-token head {prev}, but the planted one is elsewhere: score every "
                "layer-0 head on repeated random tokens (Exercise 4.1) and take the highest."
            )
        course = ", ".join(f"L1H{h} {s:.2f}" for h, s in enumerate(scores))
        return (
            f"induction heads {induction}, expected {len(expected[1])} head(s) in layer 1. Score "
            "every layer-1 head with the prefix-matching score on repeated random tokens "
            f"(Exercise 4.3) and keep those scoring >= evals.INDUCTION_HEAD_THRESHOLD ({T}). (The "
            f"course's scores, on its own repeated random tokens: {course}.)"
        )

    return describe


def _read_circuit(out: object, case: Case) -> tuple:
    """(previous-token head, sorted induction heads) as pairs of ints, or a CheckFailed on its
    form; the order of the induction heads is not judged."""
    ex = _FIND.name
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise CheckFailed(
            ex, "find_induction_circuit must return (previous_token_head, induction_heads)."
        )
    prev, induction = out
    try:
        prev = tuple(operator.index(x) for x in prev)
        induction = sorted(tuple(operator.index(x) for x in h) for h in induction)
    except (TypeError, ValueError):
        raise CheckFailed(ex, "heads must be (layer, head) pairs of ints.") from None
    return prev, induction


_FIND = declare(Exercise(
    number="4.8", title="find the induction circuit", functions=("find_induction_circuit",),
    cases=_mystery_cases, read=_read_circuit,
    reference=evals.find_induction_circuit,
    withhold=(evals.find_induction_circuit, handmade.mystery_induction),
    on_error={"ValueError": "Size your repeated random tokens for the model: a block of at most "
              "d_vocab - 1 tokens (no token twice within a block), and 1 + length · repeats <= "
              "n_ctx; the checker's models are not the notebook's."},
    covers=frozenset({"every layer-1 head an induction head",
                      "a layer-1 head just above the threshold",
                      "a layer-1 head partly an induction head, below the threshold",
                      "a layer-0 head partly on the previous position"}),
    passed="the hidden circuit of three mystery models, whatever the rotation and placement, "
    "with heads just above and just below evals.INDUCTION_HEAD_THRESHOLD.",
))  # fmt: skip
