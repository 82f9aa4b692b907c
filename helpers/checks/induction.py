"""Checkers of chapter 04: head scores, ablations through hooks, the K-composition and OV circuits of
induction heads, the hand-made induction head, and an induction circuit found in a mystery model."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
from torch import Tensor

from helpers import circuits, evals, handmade
from helpers.checks._base import (
    Case,
    CheckFailed,
    _close,
    call_learner,
    check_cases,
    checker,
    draw_seed,
    expect_float,
    generator,
    name_mistake,
    passed,
    random_models,
    random_tokens,
)
from helpers.data import repeated_random_tokens

# What the hand-made model is measured with, bound when this module is imported: an answer that
# replaces helpers.evals' functions changes nothing here.
_induction_scores = evals.induction_scores
_repeated_tokens_loss = evals.repeated_tokens_loss
_run_with_cache = type(handmade.blank_model()).run_with_cache


def _random_patterns(seed: int, n: int, batch: int = 4) -> Tensor:
    """`[batch, n, n]` random causal attention patterns."""
    logits = torch.randn(batch, n, n, generator=generator(seed)) * 2
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    return logits.masked_fill(~causal, float("-inf")).softmax(-1)


@checker
def check_previous_token_score(previous_token_score: Callable) -> None:
    """Exercise 4.1: `previous_token_score(pattern) -> float` for `[batch, query, key]` patterns."""
    ex = "Exercise 4.1 (previous_token_score)"
    seed = draw_seed()
    cases = []
    for i, (batch, n) in enumerate(((4, 11), (3, 16))):
        pattern = _random_patterns(seed + i, n, batch)
        expected = float(pattern.diagonal(-1, -2, -1).mean())
        mistakes = [
            ("that is the attention on the current position (the main diagonal); the previous "
             "position is one below it: diagonal(offset=-1).", float(pattern.diagonal(0, -2, -1).mean())),
            ("that is the attention on the next position: diagonal(offset=+1) is above the "
             "diagonal, where a causal pattern is 0.", float(pattern.diagonal(1, -2, -1).mean())),
            ("the sum was taken instead of the mean.", float(pattern.diagonal(-1, -2, -1).sum())),
            ("the mean was taken over the whole pattern rather than over the entries (i, i - 1).",
             float(pattern.mean())),
        ]  # fmt: skip
        cases.append(Case((pattern,), expected, mistakes, f"{batch} patterns over {n} positions"))
    check_cases(ex, previous_token_score, "previous_token_score", cases)
    passed(ex, "right on random patterns of two sizes.")


def _induction_reference(pattern: Tensor, length: int, shift: int, how: str = "sum") -> float:
    """Attention from each query in a repeated block to the earlier occurrences of its token,
    shifted by `shift`: summed over occurrences ("sum"), averaged ("mean"), or the latest only."""
    target = evals.earlier_occurrence_mask(pattern.shape[-1], length, shift, how == "latest")
    queries = target.any(-1)
    per_query = (pattern * target).sum(-1)[:, queries]
    if how == "mean":
        per_query = per_query / target.sum(-1)[queries]
    return float(per_query.mean())


def _without_bos_reference(pattern: Tensor, length: int, shift: int) -> float:
    """The score with its positions counted as if the sequence had no BOS in front (blocks
    starting at position 0): every earlier occurrence and query one position off."""
    n = pattern.shape[-1]
    pos = torch.arange(n)
    delta = pos[:, None] - pos[None, :] + shift
    r = delta // length
    target = (delta % length == 0) & (r >= 1) & (pos[None, :] < pos[:, None])
    target &= pos[:, None] - r * length >= 0
    queries = target.any(-1)
    return float((pattern * target).sum(-1)[:, queries].mean())


_BOS_OFFSET = (
    "the positions are one off: the sequence starts with BOS, so block b (from 0) covers "
    "positions 1 + b·length .. (b + 1)·length, and a query's earlier copies lie a multiple of "
    "length before it, never at BOS."
)


@checker
def check_induction_score(induction_score: Callable) -> None:
    """Exercise 4.3: `induction_score(pattern, length) -> float`, for patterns on BOS + blocks of
    `length` repeated tokens."""
    ex = "Exercise 4.3 (induction_score)"
    seed = draw_seed()
    averaged = False
    cases = []
    for i, (length, repeats) in enumerate(((5, 3), (4, 4), (6, 2))):
        pattern = _random_patterns(seed + i, 1 + length * repeats)
        expected = _induction_reference(pattern, length, shift=1)
        olsson = _induction_reference(pattern, length, shift=1, how="mean")
        mistakes = [
            ("this is the duplicate-token score: attention to earlier copies of the *current* "
             "token. Induction attends to the token *after* an earlier copy (key + 1).",
             _induction_reference(pattern, length, shift=0)),
            ("this looks one position too far: key + 2.", _induction_reference(pattern, length, 2)),
            ("only the most recent earlier copy was counted; with several repeats, sum the "
             "attention over every earlier copy.", _induction_reference(pattern, length, 1, "latest")),
            (_BOS_OFFSET, _without_bos_reference(pattern, length, 1)),
        ]  # fmt: skip
        cases.append((pattern, length, repeats, expected, olsson, mistakes))
    wrong = []
    for pattern, length, repeats, expected, olsson, mistakes in cases:
        out = call_learner(
            ex,
            induction_score,
            pattern,
            length,
            withhold=[evals.earlier_occurrence_mask, evals.induction_scores],
        )
        out = expect_float(ex, "induction_score", out)
        if (
            repeats > 2
            and math.isclose(out, olsson, rel_tol=1e-4)
            and not math.isclose(olsson, expected, rel_tol=1e-4)
        ):
            averaged = True  # Olsson et al.'s definition: accepted
            continue
        if not _close(out, expected):
            wrong.append((f"length {length}, {repeats} repeats", out, expected, mistakes))
    name_mistake(ex, wrong, _close)
    if wrong:
        where, out, expected, _ = wrong[0]
        raise CheckFailed(ex, f"{where}: got {out:.4f}, expected {expected:.4f}.")
    if averaged:
        passed(
            ex,
            "right for three lengths and numbers of repeats. You averaged the attention over the "
            "earlier occurrences, as Olsson et al. do; the course sums it (a perfect induction "
            "head that splits its attention over several earlier copies then still scores 1). "
            "Both agree when a token has occurred once before.",
        )
    else:
        passed(ex, "prefix-matching score right for three lengths and numbers of repeats.")


def _snapshot(model) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _handmade_measures(model, tokens: Tensor, length: int) -> tuple[float, float]:
    """(the induction score of layer 1, the loss ratio on repeats) of a hand-made model on
    repeated random tokens."""
    induction = float(_induction_scores(model, tokens, length)[1, 0])
    return induction, _repeated_tokens_loss(model, tokens, length).ratio


def _weakest_previous_token(model, tokens: Tensor) -> float:
    """The weakest attention of layer 0 to the previous position, at any position of `tokens`
    (averaged over the batch)."""
    _, cache = _run_with_cache(model, tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    previous = cache["blocks.0.attn.hook_pattern"][:, 0].diagonal(-1, -2, -1).mean(0)  # [pos - 1]
    return float(previous.min())


@checker
def check_handmade_induction(
    set_previous_token_head: Callable, set_induction_head: Callable
) -> None:
    """Exercise 4.7: the learner's functions fill the heads of `handmade.blank_model(layout)`;
    the model must then be a previous-token head followed by an induction head, on a layout and
    repeat lengths drawn at check time: at every position layer 0 attends to the previous one
    (>= 0.8), layer 1 scores >= 0.8 on prefix matching, and the loss on repeats is <= 0.1 x the
    loss on fresh tokens (the course's solution: about 1.0, 1.0 and 0.001)."""
    ex = "Exercise 4.7 (a hand-made induction head)"
    seed = draw_seed()
    rng = generator(seed)
    d_vocab = int(torch.randint(9, 15, (), generator=rng))
    n_ctx = int(torch.randint(22, 31, (), generator=rng))
    layout = handmade.Layout(d_vocab=d_vocab, n_ctx=n_ctx)
    # Several repeat lengths: a head that attends at a fixed offset cannot pass them all.
    longest = d_vocab - 1  # no token twice within a block
    lengths = sorted({3, min(longest, (n_ctx - 1) // 3), min(longest, (n_ctx - 1) // 2)})
    probes = {
        length: repeated_random_tokens(
            d_vocab - 1, length, (n_ctx - 1) // length, 40, generator(seed + length)
        )
        for length in lengths
    }
    # every position of the layout, for the previous-token head: random tokens of full length
    everywhere = torch.randint(1, d_vocab, (40, n_ctx), generator=generator(seed + 1))
    everywhere[:, 0] = 0
    reference = handmade.reference_model(layout)
    reference_ratio = max(_handmade_measures(reference, t, n)[1] for n, t in probes.items())
    model = handmade.blank_model(layout)
    before = start = _snapshot(model)
    with torch.no_grad():  # the learner's functions edit the model in place, as the exercise asks
        for layer, fn in enumerate((set_previous_token_head, set_induction_head)):
            call_learner(
                ex, fn, model, layout, withhold=[handmade.set_reference_weights], clone=False
            )
            now = _snapshot(model)
            elsewhere = [n for n, p in now.items() if n.startswith("blocks.")
                         and not n.startswith(f"blocks.{layer}.") and not torch.equal(p, before[n])]  # fmt: skip
            if elsewhere:
                raise CheckFailed(
                    ex, f"{('set_previous_token_head', 'set_induction_head')[layer]} sets layer "
                    f"{layer}'s head; it changed {elsewhere} too. "
                    "Each function sets its own layer.",
                )  # fmt: skip
            before = now
    before = start
    changed = [n for n, p in _snapshot(model).items() if not torch.equal(p, before[n])]
    not_heads = [n for n in changed if not n.startswith("blocks.")]
    if not_heads:
        raise CheckFailed(
            ex, f"only the heads' weights are yours to set; your functions changed {not_heads}."
        )
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise CheckFailed(ex, "some weights are NaN or infinite.")
    prev = _weakest_previous_token(model, everywhere)
    results = {
        length: _handmade_measures(model, tokens, length) for length, tokens in probes.items()
    }
    failing = [(n, r) for n, r in results.items() if prev < 0.8 or r[0] < 0.8 or r[1] > 0.1]
    if not failing:
        worst = max(r[1] for r in results.values())
        passed(
            ex,
            f"on a {d_vocab}-token, {n_ctx}-position layout and repeat lengths {lengths}: loss on "
            f"repeats at most {worst:.3f} × the loss on fresh tokens (the course's solution: "
            f"{reference_ratio:.3f}); weakest previous-token attention {prev:.2f} (over all "
            f"{n_ctx} positions), induction score {min(r[0] for r in results.values()):.2f}.",
        )
        return
    length, (induction, ratio) = failing[0]
    lines = [f"on a {d_vocab}-token, {n_ctx}-position layout with blocks of {length} repeated "
             f"tokens: loss ratio {ratio:.2f} (needs <= 0.1; the course's solution "
             f"{reference_ratio:.3f})."]  # fmt: skip
    if prev < 0.8:
        lines.append(
            f"Layer 0 puts as little as {prev:.2f} of its attention on the previous position at "
            f"some position (needs >= 0.8 at every one of the {n_ctx}). Its queries and keys see positions only: "
            "make the score of query position i and key position j large exactly when j = i - 1 "
            "(W_Q maps position i to direction i, W_K maps position j to direction j + 1), for "
            "every position of the layout, and large enough to beat the softmax."
        )
    else:
        lines.append(f"Layer 0 is a good previous-token head (at least {prev:.2f} everywhere).")
    if induction < 0.8:
        lines.append(
            f"Layer 1 puts only {induction:.2f} of its attention where induction says (needs "
            ">= 0.8). Its query must read the current token (token subspace) and its key the "
            "token before the key position (previous subspace), matching when they are equal. "
            "(Attending at a fixed offset fails: the checker varies the repeat length.)"
        )
    else:
        lines.append(
            f"Layer 1 attends like an induction head ({induction:.2f}); check its OV: it must "
            "copy the attended position's token (token subspace) into the output subspace."
        )
    raise CheckFailed(ex, "\n".join(lines))


@checker
def check_duplicate_token_score(duplicate_token_score: Callable) -> None:
    """Exercise 4.2: `duplicate_token_score(pattern, length) -> float`: on BOS + blocks of `length`
    repeated tokens, the attention each query in a repeated block pays to the earlier occurrences
    of its own token (summed over them), averaged over queries and batch."""
    ex = "Exercise 4.2 (duplicate_token_score)"
    seed = draw_seed()
    cases = []
    for i, (length, repeats) in enumerate(((5, 3), (4, 4), (6, 2))):
        pattern = _random_patterns(seed + i, 1 + length * repeats)
        expected = _induction_reference(pattern, length, shift=0)
        mistakes = [
            ("this is the induction score: the token *after* each earlier copy (key + 1). A "
             "duplicate-token head attends to the earlier copies themselves.",
             _induction_reference(pattern, length, shift=1)),
            ("only the most recent earlier copy was counted; sum over every earlier copy.",
             _induction_reference(pattern, length, 0, "latest")),
            ("this looks one position too early (key - 1).", _induction_reference(pattern, length, -1)),
            (_BOS_OFFSET, _without_bos_reference(pattern, length, 0)),
        ]  # fmt: skip
        cases.append(
            Case((pattern, length), expected, mistakes, f"length {length}, {repeats} repeats")
        )
    check_cases(
        ex, duplicate_token_score, "duplicate_token_score", cases,
        withhold=[evals.earlier_occurrence_mask, evals.duplicate_token_scores],
    )  # fmt: skip
    passed(ex, "right for three lengths and numbers of repeats.")


@checker
def check_ablate_heads(ablate_heads: Callable) -> None:
    """Exercise 4.4: `ablate_heads(model, tokens, heads, kind) -> logits` with the output of each
    (layer, head) in `heads` replaced, through a hook on `hook_result`, by zero (kind "zero") or by
    its mean over the batch and positions of `tokens` (kind "mean")."""
    ex = "Exercise 4.4 (ablate_heads)"
    seed = draw_seed()
    cases = []
    for i, model in enumerate(random_models(seed, n_layers=2)):
        tokens = random_tokens(model, seed + 10 + i, batch=3)
        rng = generator(seed + 20 + i)
        h = [int(t) for t in torch.randint(model.cfg.n_heads, (2,), generator=rng)]
        if i == 0 and h == [0, 0]:
            h[0] = 1  # some head other than 0: "always head 0" cannot pass by luck
        for heads in ([(0, h[0])], [(1, h[1])], [(0, h[0]), (1, h[1])]):
            _, cache = model.run_with_cache(tokens)
            for kind in ("zero", "mean"):
                expected = evals.run_with_ablation(model, tokens, heads, kind=kind)
                mistakes = {
                    f"kind {kind!r}: that is the other kind of ablation.": evals.run_with_ablation(
                        model, tokens, heads, kind="mean" if kind == "zero" else "zero"
                    ),
                    "every head of the layer was ablated, not only the chosen ones.": (
                        evals.run_with_ablation(
                            model,
                            tokens,
                            [
                                (layer, j)
                                for layer in {l_ for l_, _ in heads}
                                for j in range(model.cfg.n_heads)
                            ],
                            kind=kind,
                        )  # fmt: skip
                    ),
                }
                if len({h for _, h in heads}) > 1:
                    mistakes["every hook ablated the last head in the list: a function defined in "
                             "a loop sees the loop variable's final value. Bind it when the hook "
                             "is made, e.g. `def hook(x, hook, head=head): ...`."] = _ablated(
                        model, tokens, [(layer, heads[-1][1]) for layer, _ in heads], kind, cache
                    )  # fmt: skip
                if kind == "mean" and len({layer for layer, _ in heads}) > 1:
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
                             "too."] = _mean_over(model, tokens, heads, cache, dims=(1,))  # fmt: skip
                where = f"{kind} ablation of {', '.join(f'L{a}H{b}' for a, b in heads)}"
                cases.append(Case((model, tokens, heads, kind), expected, mistakes, where))
    check_cases(ex, ablate_heads, "ablate_heads", cases, withhold=[evals.run_with_ablation])
    passed(ex, "zero and mean ablation of one and two heads, for two random models.")


def _ablated(model, tokens, heads, kind, cache) -> Tensor:
    """Ablation of `heads`, with means from `cache` (a clean run), or, with `cache` None, from
    the very run being ablated (a common mistake)."""
    hooks = []
    for layer in sorted({layer for layer, _ in heads}):
        chosen = [h for l_, h in heads if l_ == layer]
        name = f"blocks.{layer}.attn.hook_result"

        def ablate(result, hook, chosen=chosen, name=name):
            result = result.clone()
            if kind == "zero":
                result[:, :, chosen] = 0.0
            else:
                source = result if cache is None else cache[name]
                result[:, :, chosen] = source.mean((0, 1))[chosen]
            return result

        hooks.append((name, ablate))
    with torch.no_grad():
        return model.run_with_hooks(tokens, hooks)


def _mean_over(model, tokens, heads, cache, dims) -> Tensor:
    """Mean ablation with the mean over `dims` of `[batch, pos]` only (a common mistake)."""
    hooks = []
    for layer in sorted({layer for layer, _ in heads}):
        chosen = [h for l_, h in heads if l_ == layer]
        mean = cache[f"blocks.{layer}.attn.hook_result"].mean(dim=dims, keepdim=True)

        def ablate(result, hook, chosen=chosen, mean=mean):
            result = result.clone()
            result[:, :, chosen] = mean.expand_as(result)[:, :, chosen]
            return result

        hooks.append((f"blocks.{layer}.attn.hook_result", ablate))
    with torch.no_grad():
        return model.run_with_hooks(tokens, hooks)


@checker
def check_k_composition_circuit(k_composition_circuit: Callable) -> None:
    """Exercise 4.5: `k_composition_circuit(model, prev_head, induction_head) -> [d_vocab (query
    token), d_vocab (key's previous token)]`, for the layer-0 head `prev_head` and the layer-1
    head `induction_head`: (W_E W_Q¹)(W_E W_V⁰ W_O⁰ W_K¹)ᵀ / sqrt(d_head)."""
    ex = "Exercise 4.5 (k_composition_circuit)"
    cases = []
    for model in random_models(draw_seed(), n_layers=2):
        a1 = model.blocks[1].attn
        H, d = model.cfg.n_heads, model.cfg.d_head
        for p in range(H):
            for h in range(H):
                with torch.no_grad():
                    expected = circuits.k_composition_circuit(model, (0, p), (1, h))
                    queries = model.W_E @ a1.W_Q[h]
                    mistakes = {
                        "the matrix is transposed: rows are query tokens, columns the previous "
                        "token of the key position.": expected.T,
                        "the previous-token head is missing: that is the layer-1 head's plain "
                        "token-token QK circuit (keys read W_E @ W_V⁰ @ W_O⁰ first).": (
                            queries @ (model.W_E @ a1.W_K[h]).T / d**0.5
                        ),
                        "the previous-token head went into the queries (that is Q-composition); "
                        "K-composition is in the keys.": circuits.q_composition_circuit(
                            model, (0, p), (1, h)
                        ),
                        "the 1/sqrt(d_head) scale is missing.": expected * d**0.5,
                        "each row was centred: this exercise asks for the raw term; centring "
                        "(each query's scores minus their mean) comes when you compare keys "
                        "within a query.": expected - expected.mean(-1, keepdim=True),
                    }
                cases.append(Case((model, p, h), expected, mistakes, f"L0H{p} → L1H{h}"))
    check_cases(
        ex, k_composition_circuit, "k_composition_circuit", cases, block_forward=True,
        withhold=[circuits.k_composition_circuit, circuits.q_composition_circuit],
    )  # fmt: skip
    passed(ex, "the K-composition term of the QK circuit for every pair of heads of two models.")


@checker
def check_combined_ov_circuit(combined_ov_circuit: Callable) -> None:
    """Exercise 4.6: `combined_ov_circuit(model, heads) -> [d_vocab (source), d_vocab (output)]`,
    the sum of the full OV circuits of the (layer, head) pairs in `heads`: what they write
    together when all attend to the same token."""
    ex = "Exercise 4.6 (combined_ov_circuit)"
    seed = draw_seed()
    cases = []
    for i, model in enumerate(random_models(seed, n_layers=2)):
        rng = generator(seed + i)
        H = model.cfg.n_heads
        picks = torch.randperm(H, generator=rng)[:2].tolist()
        for heads in (
            [(1, picks[0])],
            [(1, picks[0]), (1, picks[1])],
            [(0, picks[1]), (1, picks[0])],
        ):
            with torch.no_grad():
                circuits_ = [circuits.full_ov_circuit(model, layer, h) for layer, h in heads]
                expected = torch.stack(circuits_).sum(0)
                mistakes = {
                    "the circuits were averaged: heads that attend to the same token add their "
                    "outputs.": expected / len(heads),
                    "the circuit is transposed: rows are source tokens, columns outputs.": expected.T,
                    "only the first head was used.": circuits_[0],
                }
                if len(heads) == 2:
                    same_layer = heads[0][0] == heads[1][0]
                    why = ("heads in one layer act side by side" if same_layer else
                           "that is the virtual head through both layers, a different path; "
                           "this exercise asks what the two heads write when both attend to "
                           "the same token")  # fmt: skip
                    mistakes[f"the two OV matrices were multiplied: {why}: add them."] = (
                        model.W_E @ _ov(model, *heads[0]) @ _ov(model, *heads[1]) @ model.W_U
                    )  # fmt: skip
            where = f"heads {', '.join(f'L{a}H{b}' for a, b in heads)}"
            cases.append(Case((model, heads), expected, mistakes, where))
    check_cases(
        ex, combined_ov_circuit, "combined_ov_circuit", cases, block_forward=True,
        withhold=[circuits.virtual_head_ov_circuit],
    )  # fmt: skip
    passed(ex, "the summed OV circuit of one and two heads, for two random models.")


def _ov(model, layer: int, head: int) -> Tensor:
    attn = model.blocks[layer].attn
    return attn.W_V[head] @ attn.W_O[head]


@checker
def check_find_induction_circuit(find_induction_circuit: Callable) -> None:
    """Exercise 4.8: `find_induction_circuit(model) -> (previous_token_head, induction_heads)` for
    a two-layer model: the layer-0 head with the highest previous-token score, and the sorted
    list of layer-1 heads with an induction score of at least `evals.INDUCTION_HEAD_THRESHOLD`,
    both as (layer, head), on
    mystery models drawn at check time (the circuit hidden at random heads, the residual stream
    rotated)."""
    ex = "Exercise 4.8 (find_induction_circuit)"
    seed = draw_seed()
    # the third: every layer-1 head an induction head (so "the heads above the layer's mean" fails)
    mysteries = [handmade.mystery_induction(seed + i, every_head=i == 2) for i in range(3)]
    for i, mystery in enumerate(mysteries):
        out = call_learner(
            ex,
            find_induction_circuit,
            mystery.model,
            withhold=[evals.find_induction_circuit, handmade.mystery_induction],
        )
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
        where = f"mystery model {i + 1} ({mystery.model.cfg.n_heads} heads per layer)"
        if prev != mystery.previous_token_head:
            raise CheckFailed(ex, f"{where}: previous-token head {prev}, but the planted one is elsewhere: "
                              "score every layer-0 head on repeated random tokens (Exercise 4.1).")  # fmt: skip
        if induction != sorted(mystery.induction_heads):
            raise CheckFailed(
                ex, f"{where}: induction heads {induction}, expected {len(mystery.induction_heads)} "
                "head(s) in layer 1. Score every layer-1 head with the prefix-matching score on "
                "repeated random tokens (Exercise 4.3) and keep those scoring >= "
                f"evals.INDUCTION_HEAD_THRESHOLD ({evals.INDUCTION_HEAD_THRESHOLD}).",
            )  # fmt: skip
    passed(ex, "the hidden circuit of three mystery models, whatever the rotation and placement.")
