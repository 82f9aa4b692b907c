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

from helpers import circuits
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


# ---- chapter 02 ---------------------------------------------------------------------------------


def _one_layer_model(seed: int = 11) -> AttnOnlyTransformer:
    return _tiny_model(seed=seed, d_model=16, n_heads=2, d_head=4, d_vocab=10, n_ctx=6)


def check_full_ov_circuit(full_ov_circuit: Callable) -> None:
    """Exercise 2.1: `full_ov_circuit(model, head) -> [d_vocab (source), d_vocab (output)]`."""
    ex = "Exercise 2.1 (full_ov_circuit)"
    model = _one_layer_model()
    for head in range(model.cfg.n_heads):
        out = _expect_tensor(ex, "full_ov_circuit", full_ov_circuit(model, head), (10, 10), True)
        W_V, W_O = model.W_V[0, head], model.W_O[0, head]
        with torch.no_grad():
            expected = circuits.full_ov_circuit(model, 0, head)
            mistakes = {
                "the circuit is transposed: in the row convention row = source token and column "
                "= output logit, i.e. W_E @ W_V @ W_O @ W_U (the paper writes the transpose).": (
                    expected.T
                ),
                "W_O is applied before W_V: a head first reads values (W_V, d_model → d_head), "
                "then writes them out (W_O, d_head → d_model).": model.W_E
                @ W_O.T
                @ W_V.T
                @ model.W_U,
                "W_E is missing at the start or W_U at the end: the circuit must go from tokens "
                "to logits (W_E @ W_V @ W_O @ W_U).": torch.zeros(10, 10),
            }
            if head == 1:
                mistakes["this is head 0's circuit: index the head with W_V[head], W_O[head]."] = (
                    circuits.full_ov_circuit(model, 0, 0)
                )
        _diagnose(ex, out.detach(), expected, mistakes, atol=1e-4)
    _passed(ex, "W_E @ W_V @ W_O @ W_U for both heads.")


def check_full_qk_circuit(full_qk_circuit: Callable) -> None:
    """Exercise 2.2: `full_qk_circuit(model, head) -> [d_vocab (query), d_vocab (key)]`, scaled by
    1/sqrt(d_head), each query's row centred."""
    ex = "Exercise 2.2 (full_qk_circuit)"
    model = _one_layer_model(seed=12)
    for head in range(model.cfg.n_heads):
        out = _expect_tensor(ex, "full_qk_circuit", full_qk_circuit(model, head), (10, 10), True)
        with torch.no_grad():
            raw = circuits.full_qk_circuit(model, 0, head, normalise=False)
            expected = circuits.row_centred(raw)
            mistakes = {
                "each query's row must have its mean subtracted: scores are only comparable "
                "within a query (softmax runs over keys).": raw,
                "the mean was subtracted over queries (columns) instead of over keys (rows).": raw
                - raw.mean(0, keepdim=True),
                "the matrix is transposed: rows are query (destination) tokens, columns key "
                "(source) tokens, W_E W_Q (W_E W_K)ᵀ.": expected.T,
                "the 1/sqrt(d_head) scale is missing.": expected * model.cfg.d_head**0.5,
            }
        _diagnose(ex, out.detach(), expected, mistakes, atol=1e-4)
    _passed(ex, "scaled, row-centred W_E W_Q W_Kᵀ W_Eᵀ for both heads.")


def check_copying_score(copying_score: Callable) -> None:
    """Exercise 2.3: `copying_score(model, head) -> float`, Σλ/Σ|λ| of the full OV circuit."""
    ex = "Exercise 2.3 (copying_score)"
    model = _one_layer_model(seed=13)
    with torch.no_grad():  # make head 1 a copier, so that the answer is not near 0 for both:
        # with W_U = W_Eᵀ its OV circuit W_E P W_Eᵀ (P a projection) has eigenvalues >= 0
        attn = model.blocks[0].attn
        model.unembed.W_U.copy_(model.W_E.T)
        attn.W_V[1] = torch.eye(16)[:, :4]
        attn.W_O[1] = torch.eye(16)[:4]
    for head in range(model.cfg.n_heads):
        out = copying_score(model, head)
        if isinstance(out, Tensor):
            if out.numel() != 1:
                raise CheckFailed(
                    ex, f"copying_score must return one number, got shape {tuple(out.shape)}."
                )
            out = out.item()
        if not isinstance(out, (int, float)) or isinstance(out, bool):
            raise CheckFailed(ex, f"copying_score must return a float, got {type(out).__name__}.")
        eig = circuits.ov_eigenvalues(model, 0, head)
        expected = circuits.copying_score(model, 0, head)
        ratio_of_same_sums = (
            "a score of exactly ±1 for a head that is not a pure copier means numerator and "
            "denominator are the same sum. The numerator is Σλ (its real part), the denominator "
            "Σ|λ|, the sum of each eigenvalue's absolute value, not |Σλ|."
        )
        mistakes = [
            (ratio_of_same_sums, 1.0),
            (ratio_of_same_sums, -1.0),
            ("only the real parts were summed in the denominator: use the absolute value "
             "(modulus) of each complex eigenvalue.", float(eig.sum().real / eig.real.abs().sum())),
        ]  # fmt: skip
        if abs(out - expected) > 1e-4:
            for description, wrong in mistakes:
                if abs(out - wrong) <= 1e-4:
                    raise CheckFailed(ex, f"Your answer matches a common mistake: {description}")
            raise CheckFailed(
                ex,
                f"head {head}: got {out:.4f}, expected {expected:.4f}. Use the eigenvalues of "
                "W_O @ W_U @ W_E @ W_V (d_head × d_head), which are the non-zero eigenvalues of "
                "the full OV circuit.",
            )
    _passed(ex, "Σλ/Σ|λ| right for a random head and a copying head.")


def check_skip_trigrams(skip_trigrams: Callable) -> None:
    """Exercise 2.4: `skip_trigrams(model, head, source, k) -> (destinations, outputs)`."""
    ex = "Exercise 2.4 (skip_trigrams)"
    model = _one_layer_model(seed=14)
    for head in range(model.cfg.n_heads):
        for source in (2, 7):
            out = skip_trigrams(model, head, source, 3)
            if not isinstance(out, tuple) or len(out) != 2:
                raise CheckFailed(ex, "skip_trigrams must return a pair (destinations, outputs).")
            dests, outs = (
                [int(t) for t in (x.tolist() if isinstance(x, Tensor) else x)] for x in out
            )
            exp_dests, exp_outs = circuits.skip_trigrams(model, 0, head, source, 3)
            qk = circuits.full_qk_circuit(model, 0, head)
            ov = circuits.full_ov_circuit(model, 0, head)
            if set(dests) != set(exp_dests):
                if set(dests) == set(qk[source].topk(3).indices.tolist()):
                    raise CheckFailed(
                        ex,
                        "the destinations were read from the source's row of the QK circuit: "
                        "that is where the source token, as a query, looks. A source is a key: "
                        "read its column, QK[:, source].",
                    )
                raise CheckFailed(
                    ex, f"head {head}, source {source}: destinations {dests}, expected {exp_dests}."
                )
            if set(outs) != set(exp_outs):
                if set(outs) == set(ov[:, source].topk(3).indices.tolist()):
                    raise CheckFailed(
                        ex,
                        "the outputs were read from the source's column of the OV circuit; its "
                        "row, OV[source], is what attending to the source writes to the logits.",
                    )
                if set(outs) == set(ov[source].topk(3, largest=False).indices.tolist()):
                    raise CheckFailed(
                        ex, "these are the outputs pushed down most: take the largest."
                    )
                raise CheckFailed(
                    ex, f"head {head}, source {source}: outputs {outs}, expected {exp_outs}."
                )
    _passed(ex, "top destinations (QK column) and top outputs (OV row) for every source tried.")


def check_crossed_effect(crossed_effect: Callable) -> None:
    """Exercise 2.5: `crossed_effect(model, language, n_contexts, seed) -> float` (nats)."""
    from helpers import recipes  # here, not at import: loading a checkpoint is only needed here
    from helpers.data import SkipTrigramLanguage
    from helpers.evals import continuation_effect

    ex = "Exercise 2.5 (crossed_effect)"
    ckpt = recipes.load("skip_trigrams_1l")
    language = SkipTrigramLanguage.from_dict(ckpt.task)
    out = crossed_effect(ckpt.model, language, 200, 0)
    if isinstance(out, Tensor) and out.numel() == 1:
        out = out.item()
    if not isinstance(out, (int, float)) or isinstance(out, bool):
        raise CheckFailed(
            ex, f"crossed_effect must return a float (nats), got {type(out).__name__}."
        )
    ref = continuation_effect(ckpt.model, language, "in", "bay", n_contexts=200, seed=0)
    # Learners draw their own random contexts, so only the statistic must agree, not the draws.
    tolerance = 0.35
    if abs(out - ref.mean_change) <= tolerance:
        _passed(ex, f"{out:+.2f} nats (reference {ref.mean_change:+.2f}).")
        return
    right = continuation_effect(ckpt.model, language, "in", "mind", n_contexts=200, seed=0)
    mistakes = [
        (-ref.mean_change, "the sign is flipped: with keep minus without keep."),
        (
            ref.mean_p_with - ref.mean_p_without,
            "that is a change in probability; take the change in log-probability (nats).",
        ),  # fmt: skip
        (
            right.mean_change,
            "that is the effect on 'mind', the right continuation; the crossed "
            "one is 'bay' after 'in'.",
        ),  # fmt: skip
    ]
    for value, description in mistakes:
        if abs(out - value) <= tolerance:
            raise CheckFailed(ex, f"Your answer matches a common mistake: {description}")
    raise CheckFailed(
        ex,
        f"got {out:+.3f} nats, the reference measures {ref.mean_change:+.3f} ± {tolerance}. Check "
        "that both versions end in 'in' and that you read the last position's log-probability "
        "of 'bay'.",
    )


# ---- chapter 04 ---------------------------------------------------------------------------------


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


# ---- chapter 03 ---------------------------------------------------------------------------------


def _two_layer_model(seed: int = 21) -> AttnOnlyTransformer:
    return _tiny_model(seed=seed, n_layers=2, d_model=16, n_heads=3, d_head=4, d_vocab=9, n_ctx=6)


def check_k_composition_scores(k_composition_scores: Callable) -> None:
    """Exercise 3.1: `k_composition_scores(model) -> [layer-0 head, layer-1 head]`."""
    ex = "Exercise 3.1 (k_composition_scores)"
    model = _two_layer_model()
    out = _expect_tensor(ex, "k_composition_scores", k_composition_scores(model), (3, 3), True)
    expected = circuits.composition_scores(model, "K")
    a0, a1 = model.blocks[0].attn, model.blocks[1].attn
    OV, QK = a0.W_V @ a0.W_O, a1.W_Q @ a1.W_K.transpose(-1, -2)
    with torch.no_grad():
        unnormalised = (OV[:, None] @ QK.transpose(-1, -2)[None]).flatten(-2).norm(dim=-1)
        mistakes = {
            "these are Q-composition scores (OV of the earlier head times QK of the later head); "
            "keys read the earlier head through QKᵀ.": circuits.composition_scores(model, "Q"),
            "these are V-composition scores.": circuits.composition_scores(model, "V"),
            "the axes are swapped: rows are layer-0 (earlier) heads, columns layer-1 heads.": (
                expected.T
            ),
            "the score is not normalised: divide ‖product‖ by ‖OV‖ · ‖QK‖ (Frobenius norms).": (
                unnormalised
            ),
        }
    _diagnose(ex, out.detach(), expected, mistakes, atol=1e-5)
    _passed(ex, "‖OV₀ QK₁ᵀ‖ / (‖OV₀‖ ‖QK₁‖) for every pair of heads.")


def check_virtual_head_ov(virtual_head_ov: Callable) -> None:
    """Exercise 3.2: `virtual_head_ov(model, head0, head1) -> [d_vocab (source), d_vocab (output)]`."""
    ex = "Exercise 3.2 (virtual_head_ov)"
    model = _two_layer_model(seed=22)
    for h0, h1 in ((0, 2), (1, 0)):
        out = _expect_tensor(ex, "virtual_head_ov", virtual_head_ov(model, h0, h1), (9, 9), True)
        a0, a1 = model.blocks[0].attn, model.blocks[1].attn
        with torch.no_grad():
            expected = circuits.virtual_head_ov_circuit(model, (0, h0), (1, h1))
            mistakes = {
                "the heads are in the wrong order: the layer-0 head acts first, so its OV comes "
                "first in the row convention (W_E OV₀ OV₁ W_U).": model.W_E
                @ a1.W_V[h1]
                @ a1.W_O[h1]
                @ a0.W_V[h0]
                @ a0.W_O[h0]
                @ model.W_U,
                "the circuit is transposed: rows are source tokens, columns output logits.": (
                    expected.T
                ),
                "the layer-1 head is missing: that is the layer-0 head's own OV circuit.": (
                    circuits.full_ov_circuit(model, 0, h0)
                ),
            }
        _diagnose(ex, out.detach(), expected, mistakes, atol=1e-4)
    _passed(ex, "W_E OV₀ OV₁ W_U for the pairs tried.")


# ---- chapter 04: head scores --------------------------------------------------------------------


def _patterns_on_repeats(length: int = 5, repeats: int = 3):
    from helpers.data import repeated_random_tokens

    tokens = repeated_random_tokens(8, length, repeats, 4, torch.Generator().manual_seed(9))
    n = tokens.shape[1]
    gen = torch.Generator().manual_seed(10)
    logits = torch.randn(4, n, n, generator=gen) * 2
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    return tokens, logits.masked_fill(~causal, float("-inf")).softmax(-1)


def check_previous_token_score(previous_token_score: Callable) -> None:
    """Exercise 4.1: `previous_token_score(pattern) -> float` for `[batch, query, key]` patterns."""
    ex = "Exercise 4.1 (previous_token_score)"
    _, pattern = _patterns_on_repeats()
    out = previous_token_score(pattern)
    if isinstance(out, Tensor) and out.numel() == 1:
        out = out.item()
    if not isinstance(out, (int, float)) or isinstance(out, bool):
        raise CheckFailed(
            ex, f"previous_token_score must return a float, got {type(out).__name__}."
        )
    expected = float(pattern.diagonal(-1, -2, -1).mean())
    mistakes = [
        ("that is the attention on the current position (the main diagonal); the previous "
         "position is one below it: diagonal(offset=-1).", float(pattern.diagonal(0, -2, -1).mean())),
        ("that is the attention on the next position: diagonal(offset=+1) is above the diagonal, "
         "where a causal pattern is 0.", float(pattern.diagonal(1, -2, -1).mean())),
        ("the sum was taken instead of the mean.", float(pattern.diagonal(-1, -2, -1).sum())),
    ]  # fmt: skip
    if abs(out - expected) > 1e-5:
        for description, value in mistakes:
            if abs(out - value) <= 1e-5:
                raise CheckFailed(ex, f"Your answer matches a common mistake: {description}")
        raise CheckFailed(ex, f"got {out:.4f}, expected {expected:.4f}.")
    _passed(ex, f"{out:.3f} on random patterns.")


def check_induction_score(induction_score: Callable) -> None:
    """Exercise 4.2: `induction_score(pattern, length) -> float`, for patterns on BOS + blocks of
    `length` repeated tokens."""
    ex = "Exercise 4.2 (induction_score)"
    for repeats in (2, 3):
        tokens, pattern = _patterns_on_repeats(length=5, repeats=repeats)
        out = induction_score(pattern, 5)
        if isinstance(out, Tensor) and out.numel() == 1:
            out = out.item()
        if not isinstance(out, (int, float)) or isinstance(out, bool):
            raise CheckFailed(ex, f"induction_score must return a float, got {type(out).__name__}.")
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
        if abs(out - expected) > 1e-5:
            for description, value in mistakes:
                if abs(out - value) <= 1e-5:
                    raise CheckFailed(ex, f"Your answer matches a common mistake: {description}")
            raise CheckFailed(ex, f"{repeats} repeats: got {out:.4f}, expected {expected:.4f}.")
    _passed(ex, "prefix-matching score right for 2 and 3 repeats.")


def _induction_reference(
    pattern: Tensor, length: int, shift: int, latest_only: bool = False
) -> float:
    from helpers.evals import earlier_occurrence_mask

    target = earlier_occurrence_mask(pattern.shape[-1], length, shift, latest_only)
    queries = target.any(-1)
    return float((pattern * target).sum(-1)[:, queries].mean())


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
