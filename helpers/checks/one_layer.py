"""Checkers of chapter 02: OV and QK circuits, copying score, skip-trigrams, the bug."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from helpers import circuits
from helpers.checks._base import (
    CheckFailed,
    _diagnose,
    _diagnose_float,
    _expect_float,
    _expect_tensor,
    _passed,
    _tiny_model,
    checker,
)
from helpers.models import AttnOnlyTransformer


def _one_layer_model(seed: int = 11) -> AttnOnlyTransformer:
    return _tiny_model(seed=seed, d_model=16, n_heads=2, d_head=4, d_vocab=10, n_ctx=6)


@checker
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


@checker
def check_full_qk_circuit(full_qk_circuit: Callable) -> None:
    """Exercise 2.4: `full_qk_circuit(model, head) -> [d_vocab (query), d_vocab (key)]`, scaled by
    1/sqrt(d_head), each query's row centred."""
    ex = "Exercise 2.4 (full_qk_circuit)"
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


@checker
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
        out = _expect_float(ex, "copying_score", copying_score(model, head))
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
        otherwise = (
            f"head {head}: got {out:.4f}, expected {expected:.4f}. Use the eigenvalues of "
            "W_O @ W_U @ W_E @ W_V (d_head × d_head), which are the non-zero eigenvalues of "
            "the full OV circuit."
        )
        _diagnose_float(ex, out, expected, mistakes, 1e-4, otherwise)
    _passed(ex, "Σλ/Σ|λ| right for a random head and a copying head.")


@checker
def check_skip_trigrams(skip_trigrams: Callable) -> None:
    """Exercise 2.5: `skip_trigrams(model, head, source, k) -> (destinations, outputs)`."""
    ex = "Exercise 2.5 (skip_trigrams)"
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


@checker
def check_crossed_effect(crossed_effect: Callable) -> None:
    """Exercise 2.6: `crossed_effect(model, language, n_contexts, seed) -> float` (nats)."""
    from helpers import recipes  # here, not at import: loading a checkpoint is only needed here
    from helpers.data import SkipTrigramLanguage
    from helpers.evals import continuation_effect

    ex = "Exercise 2.6 (crossed_effect)"
    ckpt = recipes.load("skip_trigrams_1l")
    language = SkipTrigramLanguage.from_dict(ckpt.task)
    out = _expect_float(ex, "crossed_effect", crossed_effect(ckpt.model, language, 200, 0),
                        "a float (nats)")  # fmt: skip
    ref = continuation_effect(ckpt.model, language, "in", "bay", n_contexts=200, seed=0)
    # Learners draw their own random contexts, so only the statistic must agree, not the draws.
    tolerance = 0.35
    right = continuation_effect(ckpt.model, language, "in", "mind", n_contexts=200, seed=0)
    mistakes = [
        ("the sign is flipped: with keep minus without keep.", -ref.mean_change),
        ("that is a change in probability; take the change in log-probability (nats).",
         ref.mean_p_with - ref.mean_p_without),
        ("that is the effect on 'mind', the right continuation; the crossed one is 'bay' after "
         "'in'.", right.mean_change),
    ]  # fmt: skip
    otherwise = (
        f"got {out:+.3f} nats, the reference measures {ref.mean_change:+.3f} ± {tolerance}. Check "
        "that both versions end in 'in' and that you read the last position's log-probability "
        "of 'bay'."
    )
    _diagnose_float(ex, out, ref.mean_change, mistakes, tolerance, otherwise)
    _passed(ex, f"{out:+.2f} nats (reference {ref.mean_change:+.2f}).")


@checker
def check_path_expansion(path_expansion_logits: Callable) -> None:
    """Exercise 2.2: `path_expansion_logits(model, tokens, pattern) -> [batch, pos, d_vocab]`,
    the logits rebuilt from the direct path and each head's full OV circuit, with the heads'
    attention patterns `[batch, head, query_pos, key_pos]` given."""
    ex = "Exercise 2.2 (path_expansion_logits)"
    model = _one_layer_model(seed=15)
    tokens = torch.randint(0, 10, (3, 6), generator=torch.Generator().manual_seed(5))
    logits, cache = model.run_with_cache(tokens)
    pattern = cache["blocks.0.attn.hook_pattern"]
    out = path_expansion_logits(model, tokens, pattern)
    out = _expect_tensor(ex, "path_expansion_logits", out, (3, 6, 10), True)
    direct, heads = circuits.one_layer_path_expansion(model, tokens)
    with torch.no_grad():
        ov = torch.stack([circuits.full_ov_circuit(model, 0, h)[tokens] for h in range(2)])
        mistakes = {
            "these are the direct path's logits alone; add one term per head.": direct,
            "the heads' terms are missing the direct path W_E W_U.": heads.sum(0),
            "the pattern is transposed: a query mixes the OV rows of the keys it attends to, "
            "pattern[b, h] @ OV_rows (rows = query positions).": direct
            + torch.einsum("hbkq,hbkv->bqv", pattern.transpose(0, 1), ov),
            "every head's OV rows were used at full weight: each must be weighted by its attention "
            "pattern.": direct + ov.sum(0),
        }
    _diagnose(ex, out.detach(), logits.detach(), mistakes, atol=1e-4)
    _passed(ex, "direct path + Σ_h A^h · OV^h rows = the model's logits.")
