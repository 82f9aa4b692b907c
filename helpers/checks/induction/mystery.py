"""Exercise 4.8: the induction circuit of a mystery model."""

from __future__ import annotations

import math
import operator

import torch
from torch import Tensor

from helpers import evals, handmade
from helpers.checks._base import CheckFailed, generator
from helpers.checks._judge import Case
from helpers.checks._registry import Exercise, declare
from helpers.data import repeated_random_tokens

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
                "over them it comes out lower with three blocks or more; so does every score on "
                "blocks that hold a token twice).",
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
        extra = sorted(set(map(tuple, induction)) - set(expected[1]))
        missing = sorted(set(expected[1]) - set(map(tuple, induction)))
        note = ""
        if extra:
            note += (
                " Heads that attend by content can pass the threshold by chance on very short "
                "blocks: with blocks of 2, the token after an earlier copy is the other token of "
                "the block, about half of the positions, so a head that attends anywhere but BOS "
                "scores near 0.5. Use blocks as long as fit: min(d_vocab - 1, (n_ctx - 1) // 2)."
            )
        if missing:
            note += (
                " If a block holds a token twice, an induction head splits its attention "
                "between the positions after each occurrence and scores lower: draw each block "
                "without repeats (repeated_random_tokens does)."
            )
        return (
            f"induction heads {induction}, expected {len(expected[1])} head(s) in layer 1. Score "
            "every layer-1 head with the prefix-matching score on repeated random tokens "
            f"(Exercise 4.3) and keep those scoring >= evals.INDUCTION_HEAD_THRESHOLD ({T}). (The "
            f"course's scores, on its own repeated random tokens: {course}.){note}"
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
