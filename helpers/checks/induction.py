"""Checkers of chapter 04: head scores and the hand-made induction head."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from helpers.checks._base import CheckFailed, _diagnose_float, _expect_float, _passed, checker
from helpers.models import AttnOnlyTransformer


def _patterns_on_repeats(length: int = 5, repeats: int = 3):
    from helpers.data import repeated_random_tokens

    tokens = repeated_random_tokens(8, length, repeats, 4, torch.Generator().manual_seed(9))
    n = tokens.shape[1]
    gen = torch.Generator().manual_seed(10)
    logits = torch.randn(4, n, n, generator=gen) * 2
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    return tokens, logits.masked_fill(~causal, float("-inf")).softmax(-1)


@checker
def check_previous_token_score(previous_token_score: Callable) -> None:
    """Exercise 4.1: `previous_token_score(pattern) -> float` for `[batch, query, key]` patterns."""
    ex = "Exercise 4.1 (previous_token_score)"
    _, pattern = _patterns_on_repeats()
    out = _expect_float(ex, "previous_token_score", previous_token_score(pattern))
    expected = float(pattern.diagonal(-1, -2, -1).mean())
    mistakes = [
        ("that is the attention on the current position (the main diagonal); the previous "
         "position is one below it: diagonal(offset=-1).", float(pattern.diagonal(0, -2, -1).mean())),
        ("that is the attention on the next position: diagonal(offset=+1) is above the diagonal, "
         "where a causal pattern is 0.", float(pattern.diagonal(1, -2, -1).mean())),
        ("the sum was taken instead of the mean.", float(pattern.diagonal(-1, -2, -1).sum())),
    ]  # fmt: skip
    _diagnose_float(ex, out, expected, mistakes, 1e-5, f"got {out:.4f}, expected {expected:.4f}.")
    _passed(ex, f"{out:.3f} on random patterns.")


@checker
def check_induction_score(induction_score: Callable) -> None:
    """Exercise 4.2: `induction_score(pattern, length) -> float`, for patterns on BOS + blocks of
    `length` repeated tokens."""
    ex = "Exercise 4.2 (induction_score)"
    for repeats in (2, 3):
        tokens, pattern = _patterns_on_repeats(length=5, repeats=repeats)
        out = _expect_float(ex, "induction_score", induction_score(pattern, 5))
        expected = _induction_reference(pattern, 5, shift=1)
        mistakes = [
            ("this is the duplicate-token score: attention to earlier copies of the *current* "
             "token. Induction attends to the token *after* an earlier copy (key + 1).",
             _induction_reference(pattern, 5, shift=0)),
            ("this looks one position too far: key + 2.", _induction_reference(pattern, 5, shift=2)),
        ]  # fmt: skip
        if repeats == 3:
            mistakes.append((
                "only the most recent earlier copy was counted; with several repeats, sum the "
                "attention over every earlier copy.",
                _induction_reference(pattern, 5, shift=1, latest_only=True),
            ))  # fmt: skip
        otherwise = f"{repeats} repeats: got {out:.4f}, expected {expected:.4f}."
        _diagnose_float(ex, out, expected, mistakes, 1e-5, otherwise)
    _passed(ex, "prefix-matching score right for 2 and 3 repeats.")


def _induction_reference(
    pattern: Tensor, length: int, shift: int, latest_only: bool = False
) -> float:
    from helpers.evals import earlier_occurrence_mask

    target = earlier_occurrence_mask(pattern.shape[-1], length, shift, latest_only)
    queries = target.any(-1)
    return float((pattern * target).sum(-1)[:, queries].mean())


@checker
def check_handmade_induction(
    set_previous_token_head: Callable, set_induction_head: Callable
) -> None:
    """Exercise 4.3: the learner's functions fill the heads of `handmade.blank_model()`; the
    model must then predict repeated random tokens: loss on repeats <= 0.25 x loss on fresh."""
    from helpers import evals, handmade
    from helpers.data import repeated_random_tokens

    ex = "Exercise 4.3 (a hand-made induction head)"
    layout = handmade.Layout()
    model = handmade.blank_model(layout)
    with torch.no_grad():
        set_previous_token_head(model, layout)
        set_induction_head(model, layout)
    length = (layout.n_ctx - 1) // 3
    tokens = repeated_random_tokens(
        layout.d_vocab - 1, length, 3, 50, torch.Generator().manual_seed(0)
    )
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise CheckFailed(ex, "some weights are NaN or infinite.")
    prev = float(evals.previous_token_scores(model, tokens)[0, 0])
    induction = float(evals.induction_scores(model, tokens, length)[1, 0])
    losses = evals.repeated_tokens_loss(model, tokens, length)
    if losses.ratio <= 0.25:
        _passed(
            ex,
            f"loss {losses.repeated:.3f} on repeats vs {losses.fresh:.3f} on fresh tokens "
            f"(ratio {losses.ratio:.3f}); previous-token score {prev:.2f}, induction score "
            f"{induction:.2f}.",
        )
        return
    lines = [f"loss on repeats {losses.repeated:.3f} vs {losses.fresh:.3f} on fresh tokens: "
             f"ratio {losses.ratio:.2f}, needs <= 0.25."]  # fmt: skip
    if prev < 0.8:
        lines.append(
            f"Layer 0 puts only {prev:.2f} of its attention on the previous position. Its "
            "queries and keys see positions only: make the score of query position i and key "
            "position j large exactly when j = i - 1 (W_Q maps position i to direction i, W_K "
            "maps position j to direction j + 1), and large enough to beat the softmax."
        )
    else:
        lines.append(f"Layer 0 is a good previous-token head ({prev:.2f}).")
    if induction < 0.6:
        lines.append(
            f"Layer 1 puts only {induction:.2f} of its attention where induction says. Its query "
            "must read the current token (token subspace) and its key the token before the key "
            "position (previous subspace), matching when they are equal."
        )
    else:
        lines.append(
            f"Layer 1 attends like an induction head ({induction:.2f}); check its OV: it must "
            "copy the attended position's token (token subspace) into the output subspace."
        )
    raise CheckFailed(ex, "\n".join(lines))


def reference_handmade_weights(model: AttnOnlyTransformer, layout) -> None:
    """A solution of Exercise 4.3, used to test its checker and to run the notebook's claim."""
    n, V, strength = layout.n_ctx, layout.d_vocab, 50.0
    position = torch.arange(layout.position.start, layout.position.stop)
    prev, ind = model.blocks[0].attn, model.blocks[1].attn
    prev.W_Q[0, position, torch.arange(n)] = strength
    prev.W_K[0, position[:-1], torch.arange(1, n)] = strength
    prev.W_V[0, layout.token, :V] = torch.eye(V)
    prev.W_O[0, :V, layout.previous] = torch.eye(V)
    ind.W_Q[0, layout.token, :V] = strength * torch.eye(V)
    ind.W_K[0, layout.previous, :V] = strength * torch.eye(V)
    ind.W_V[0, layout.token, :V] = torch.eye(V)
    ind.W_O[0, :V, layout.output] = torch.eye(V)
