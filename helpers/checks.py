"""Exercise checkers: one `check_…` per exercise.

A checker runs the learner's function on fresh inputs, compares with the course's reference (the
model in `helpers.models`, or the planted truth), and either prints a one-line confirmation or
raises `CheckFailed` with a diagnosis: what is wrong, on which axis, and which common mistake the
answer matches. A stub that still raises NotImplementedError is let through unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from helpers.attribution import direct_path_logits
from helpers.circuits import direct_path
from helpers.data import BigramLanguage, next_token_counts
from helpers.models import AttnOnlyTransformer, HookedTransformerConfig


class CheckFailed(AssertionError):
    """An exercise answer that is wrong. Shown in a notebook as the diagnosis alone."""

    def __init__(self, exercise: str, diagnosis: str):
        super().__init__(f"{exercise}: {diagnosis}")
        self.exercise, self.diagnosis = exercise, diagnosis

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback: the learner needs the diagnosis, not our stack.
        return [f"✘ {self.exercise} is not right yet.", *self.diagnosis.splitlines()]


def _passed(exercise: str, detail: str) -> None:
    print(f"✔ {exercise} passed: {detail}")


def _expect_tensor(exercise: str, name: str, out: object, shape: tuple, floating: bool) -> Tensor:
    if not isinstance(out, Tensor):
        raise CheckFailed(exercise, f"{name} must return a torch.Tensor, got {type(out).__name__}.")
    if tuple(out.shape) != tuple(shape):
        raise CheckFailed(
            exercise,
            f"{name} returned shape {tuple(out.shape)}; expected {tuple(shape)}.",
        )
    if floating and not out.dtype.is_floating_point:
        raise CheckFailed(exercise, f"{name} returned dtype {out.dtype}; expected a float tensor.")
    if not floating and (out.dtype.is_floating_point or out.dtype.is_complex):
        raise CheckFailed(exercise, f"{name} returned dtype {out.dtype}; expected integer counts.")
    if floating and torch.isnan(out).any():
        raise CheckFailed(exercise, f"{name} returned NaN values.")
    return out


def _matches(a: Tensor, b: Tensor, atol: float = 1e-5) -> bool:
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-4)


def _diagnose(
    exercise: str, out: Tensor, expected: Tensor, mistakes: dict[str, Tensor], atol: float = 1e-5
) -> None:
    """Pass if `out` matches `expected`; otherwise name the first mistake it matches, if any."""
    if _matches(out, expected, atol):
        return
    for description, wrong in mistakes.items():
        if _matches(out, wrong, atol):
            raise CheckFailed(exercise, f"Your answer matches a common mistake: {description}")
    err = (out.double() - expected.double()).abs().max().item()
    raise CheckFailed(
        exercise,
        f"Your answer differs from the reference by up to {err:.3g}, and matches none of the "
        "common mistakes this checker knows. Re-read the hint.",
    )


def _tiny_model(seed: int = 0, **overrides) -> AttnOnlyTransformer:
    cfg = HookedTransformerConfig(
        **{
            "n_layers": 1,
            "d_model": 12,
            "n_heads": 3,
            "d_head": 4,
            "n_ctx": 7,
            "d_vocab": 11,
            "initializer_range": 0.6,
            "seed": seed,
            **overrides,
        }
    )
    return AttnOnlyTransformer(cfg)


# ---- chapter 00 ---------------------------------------------------------------------------------


def _pattern_variants(scores: Tensor, scale: float) -> dict[str, Tensor]:
    n = scores.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    masked = scores.masked_fill(~causal, float("-inf"))
    return {
        "no causal mask: every query also attends to later positions (mask scores above the "
        "diagonal with -inf before the softmax).": (scores / scale).softmax(-1),
        "the softmax runs over query positions (dim=-2); each query's weights over key "
        "positions should sum to 1 (dim=-1).": (masked / scale).softmax(-2),
        "the 1/sqrt(d_head) scale is missing.": masked.softmax(-1),
        "the scores are divided by d_head instead of sqrt(d_head).": (masked / scale**2).softmax(
            -1
        ),
        "queries and keys are swapped (scores are k·q with the mask on the wrong side): the "
        "pattern is [batch, query_pos, key_pos], scores[q, k] = q_q · k_k.": (
            scores.transpose(-1, -2) / scale
        )
        .masked_fill(~causal, float("-inf"))
        .softmax(-1),
        "the mask is applied after the softmax (zeroing weights), so rows no longer sum to 1.": (
            (scores / scale).softmax(-1) * causal
        ),
    }


def check_attention_pattern(attention_pattern: Callable) -> None:
    """Exercise 0.1: `attention_pattern(x, W_Q, W_K) -> [batch, query_pos, key_pos]`."""
    ex = "Exercise 0.1 (attention_pattern)"
    model = _tiny_model(seed=1)
    tokens = torch.randint(
        0, model.cfg.d_vocab, (2, model.cfg.n_ctx), generator=torch.Generator().manual_seed(0)
    )
    _, cache = model.run_with_cache(tokens)
    x = cache["hook_embed"] + cache["hook_pos_embed"]  # the input of queries and keys
    for head in range(model.cfg.n_heads):
        W_Q, W_K = model.W_Q[0, head].detach(), model.W_K[0, head].detach()
        out = attention_pattern(x, W_Q, W_K)
        out = _expect_tensor(
            ex, "attention_pattern", out, (2, model.cfg.n_ctx, model.cfg.n_ctx), True
        )
        expected = cache["blocks.0.attn.hook_pattern"][:, head]
        scores = (x @ W_Q) @ (x @ W_K).transpose(-1, -2)
        _diagnose(
            ex, out.detach(), expected, _pattern_variants(scores, math.sqrt(model.cfg.d_head))
        )
    _passed(ex, f"matches the model's pattern for all {model.cfg.n_heads} heads.")


def check_head_output(head_output: Callable) -> None:
    """Exercise 0.2: `head_output(pattern, x, W_V, W_O) -> [batch, pos, d_model]`."""
    ex = "Exercise 0.2 (head_output)"
    model = _tiny_model(seed=2)
    tokens = torch.randint(
        0, model.cfg.d_vocab, (2, model.cfg.n_ctx), generator=torch.Generator().manual_seed(1)
    )
    _, cache = model.run_with_cache(tokens)
    x = cache["blocks.0.hook_resid_pre"]  # the input of values (no positions: shortformer)
    for head in range(model.cfg.n_heads):
        pattern = cache["blocks.0.attn.hook_pattern"][:, head]
        W_V, W_O = model.W_V[0, head].detach(), model.W_O[0, head].detach()
        out = head_output(pattern, x, W_V, W_O)
        out = _expect_tensor(ex, "head_output", out, tuple(x.shape), True)
        expected = cache["blocks.0.attn.hook_result"][:, :, head]
        OV = W_V @ W_O  # [d_model, d_model]
        mistakes = {
            "the pattern is transposed: output[q] = Σ_k pattern[q, k] v[k] (pattern @ v, with "
            "pattern as [query_pos, key_pos]).": pattern.transpose(-1, -2) @ x @ OV,
            "the OV matrix is transposed: in the row convention a head writes x @ W_V @ W_O "
            "(the paper's W_O W_V, transposed).": pattern @ x @ OV.T,
            "the pattern is not applied: each position only reads itself.": x @ OV,
        }
        _diagnose(ex, out.detach(), expected, mistakes, atol=1e-4)
    _passed(
        ex, f"matches the model's per-head output (hook_result) for all {model.cfg.n_heads} heads."
    )


def check_direct_path_logits(fn: Callable) -> None:
    """Exercise 0.3: `direct_path_logits(model, tokens) -> [batch, pos, d_vocab]`."""
    ex = "Exercise 0.3 (direct_path_logits)"
    for positions in ("shortformer", "standard"):
        model = _tiny_model(seed=3, n_layers=2, positional_embedding_type=positions)
        tokens = torch.randint(
            0, model.cfg.d_vocab, (3, 5), generator=torch.Generator().manual_seed(2)
        )
        out = _expect_tensor(
            ex, "direct_path_logits", fn(model, tokens), (3, 5, model.cfg.d_vocab), True
        )
        with torch.no_grad():
            embed_only = model.W_E[tokens] @ model.W_U
            with_pos = (model.W_E[tokens] + model.W_pos[:5]) @ model.W_U
            full = model(tokens)
        mistakes = {
            "these are the model's full logits; the direct path is the embedding alone, "
            "unembedded (no attention heads).": full,
        }
        if positions == "shortformer":
            mistakes[
                "in a shortformer model the positional embedding never enters the residual "
                "stream, so it is not part of the direct path."
            ] = with_pos
        else:
            mistakes[
                "with standard positions the residual stream starts as W_E[tokens] + "
                "W_pos[:pos]; the positional part is missing."
            ] = embed_only
        _diagnose(ex, out.detach(), direct_path_logits(model, tokens), mistakes)
    _passed(ex, "right for shortformer and standard positional embeddings.")


# ---- chapter 01 ---------------------------------------------------------------------------------


def check_count_bigrams(count_bigrams: Callable) -> None:
    """Exercise 1.1: `count_bigrams(tokens, d_vocab) -> [d_vocab, d_vocab]` integer counts."""
    ex = "Exercise 1.1 (count_bigrams)"
    lang = BigramLanguage(n_states=5, seed=7)
    tokens = lang.sample(6, 9, generator=torch.Generator().manual_seed(3))
    V = lang.d_vocab
    out = _expect_tensor(ex, "count_bigrams", count_bigrams(tokens, V), (V, V), False)
    expected = next_token_counts(tokens, V)
    flat = tokens.flatten()
    mistakes = {
        "rows and columns are swapped: counts[current, next], so row = the current token.": expected.T,
        "the tokens were flattened before pairing, so the last token of each sequence was "
        "paired with the BOS of the next sequence. Pair within each row: tokens[:, :-1] with "
        "tokens[:, 1:].": next_token_counts(flat[None], V),
        "only the first sequence was counted; count every sequence in the batch.": next_token_counts(
            tokens[:1], V
        ),
    }
    _diagnose(ex, out, expected, mistakes, atol=0)
    if int(out.sum()) != tokens.shape[0] * (tokens.shape[1] - 1):
        raise CheckFailed(ex, "the counts do not add up to the number of consecutive pairs.")
    _passed(ex, f"{int(expected.sum())} pairs counted correctly.")


def check_empirical_log_probs(empirical_log_probs: Callable) -> None:
    """Exercise 1.2: `empirical_log_probs(counts) -> [d_vocab, d_vocab]` log P(next | current)."""
    ex = "Exercise 1.2 (empirical_log_probs)"
    counts = torch.randint(1, 50, (6, 6), generator=torch.Generator().manual_seed(4))
    out = _expect_tensor(ex, "empirical_log_probs", empirical_log_probs(counts), (6, 6), True)
    c = counts.double()
    expected = (c / c.sum(-1, keepdim=True)).log()
    mistakes = {
        "each column sums to 1 instead of each row: normalise over the next token (dim=-1), "
        "since row = current token.": (c / c.sum(0, keepdim=True)).log(),
        "these are log P(current, next), the joint; divide each row by its own total to get "
        "P(next | current).": (c / c.sum()).log(),
        "these are probabilities, not log-probabilities.": c / c.sum(-1, keepdim=True),
        "these are the log counts, not normalised.": c.log(),
    }
    _diagnose(ex, out.detach(), expected, mistakes)
    _passed(ex, "each row is log P(next | current).")


def check_zero_layer_circuit(zero_layer_circuit: Callable) -> None:
    """Exercise 1.3: `zero_layer_circuit(model) -> [d_vocab (current), d_vocab (next)]`."""
    ex = "Exercise 1.3 (zero_layer_circuit)"
    model = _tiny_model(seed=5, n_layers=0, n_heads=0, d_model=8, d_vocab=9)
    out = _expect_tensor(ex, "zero_layer_circuit", zero_layer_circuit(model), (9, 9), True)
    expected = direct_path(model)
    mistakes = {
        "the matrix is transposed: in the row convention it is W_E @ W_U, with row = current "
        "token and column = next-token logit (the paper writes W_U W_E).": expected.T,
        "these are probabilities: the circuit is the logits, before any softmax.": expected.softmax(
            -1
        ),
        "these are log-probabilities: the circuit is the raw logits, before log_softmax.": expected.log_softmax(
            -1
        ),
    }
    _diagnose(ex, out.detach(), expected, mistakes)
    _passed(ex, "W_E @ W_U, row = current token.")
