"""Checkers of chapter 03: composition scores and their random baseline, virtual heads, frozen
patterns, term importance, path ablation, a model's wiring reverse-engineered, virtual weights
and the share of a read weight in a writer's subspace."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from helpers import circuits, evals, handmade
from helpers.checks._base import (
    Case,
    CheckFailed,
    call_learner,
    check_cases,
    checker,
    diagnose_float,
    draw_seed,
    expect_float,
    generator,
    matches,
    name_mistake,
    passed,
    random_models,
    random_tokens,
)
from helpers.circuits import two_layer
from helpers.models import AttnOnlyTransformer, next_token_loss


def two_layer_models(seed: int) -> list[AttnOnlyTransformer]:
    """Two random two-layer models of different sizes (and numbers of heads)."""
    return random_models(seed, n_layers=2)


_WHAT_EACH_READS = {
    "Q": "the later head's queries read the earlier head's output: ‖OV₀ · QK₁‖",
    "K": "its keys read it: ‖OV₀ · QK₁ᵀ‖",
    "V": "its values read it: ‖OV₀ · OV₁‖",
}


@checker
def check_composition_scores(composition_scores: Callable) -> None:
    """Exercise 3.1: `composition_scores(model, kind) -> [layer-0 head, layer-1 head]`, for
    kind "Q", "K" or "V"."""
    ex = "Exercise 3.1 (composition_scores)"
    cases = []
    for model in two_layer_models(draw_seed()):
        H = model.cfg.n_heads
        a0, a1 = model.blocks[0].attn, model.blocks[1].attn
        with torch.no_grad():
            OV0, OV1 = a0.W_V @ a0.W_O, a1.W_V @ a1.W_O
            QK1 = a1.W_Q @ a1.W_K.transpose(-1, -2)
            reads = {"Q": QK1, "K": QK1.transpose(-1, -2), "V": OV1}
            for kind in circuits.COMPOSITION_KINDS:
                expected = circuits.composition_scores(model, kind)
                unnormalised = (OV0[:, None] @ reads[kind][None]).flatten(-2).norm(dim=-1)
                mistakes = {
                    f"these are {other}-composition scores; for {kind}, {_WHAT_EACH_READS[kind]}.": (
                        circuits.composition_scores(model, other)
                    )
                    for other in circuits.COMPOSITION_KINDS
                    if other != kind
                }
                mistakes |= {
                    "the axes are swapped: rows are layer-0 (earlier) heads, columns layer-1 "
                    "heads.": expected.T,
                    "the score is not normalised: divide ‖product‖ by the product of the two "
                    "factors' Frobenius norms.": unnormalised,
                    "the product is in the paper's column order, ‖X₁ · OV₀‖: in our row "
                    "convention the earlier head's OV comes first, OV₀ @ X₁.": (
                        two_layer._frobenius_composition(reads[kind][None], OV0[:, None])
                    ),
                    "the earlier head's OV is transposed (W_O @ W_V has the wrong shape; "
                    "(W_V @ W_O)ᵀ reads the wrong side): in the row convention it writes x @ W_V @ "
                    "W_O.": two_layer._frobenius_composition(
                        OV0.transpose(-1, -2)[:, None], reads[kind][None]
                    ),
                }
                where = f"{kind}-composition, a model with {H} heads per layer"
                cases.append(Case((model, kind), expected, mistakes, where))
    check_cases(
        ex, composition_scores, "composition_scores", cases, atol=1e-5, block_forward=True,
        withhold=[circuits.composition_scores, two_layer._composition_from_weights,
                  two_layer._frobenius_composition],
    )  # fmt: skip
    passed(ex, "Q-, K- and V-composition for every pair of heads of two random test models.")


def _baseline_draws(
    d_model: int, d_head: int, n: int, seed: int, dtype: torch.dtype = torch.float32
) -> dict[str, Tensor]:
    """The six random matrices of Exercise 3.2, drawn in its order in `dtype` (the exercise's
    float32 by default), then float64 for the checker's arithmetic."""
    g = generator(seed)
    D, d = d_model, d_head
    shapes = {
        "W_Q1": (D, d),
        "W_K1": (D, d),
        "W_V1": (D, d),
        "W_O1": (d, D),
        "W_V0": (D, d),
        "W_O0": (d, D),
    }
    return {
        name: torch.randn(n, *shape, generator=g, dtype=dtype).double()
        for name, shape in shapes.items()
    }


def _mean_and_std(A: Tensor, B: Tensor) -> tuple[float, float]:
    scores = two_layer._frobenius_composition(A, B)
    return float(scores.mean()), float(scores.std())


@checker
def check_composition_baseline(composition_baseline: Callable) -> None:
    """Exercise 3.2: `composition_baseline(d_model, d_head, n_samples, seed) -> (mean, std)` of
    the K-composition score of `n_samples` random pairs of heads, drawn from a generator seeded
    with `seed` in the order the exercise gives (the later head's W_Q, W_K, W_V, W_O, then the
    earlier head's W_V, W_O), so that the answer is exact."""
    ex = "Exercise 3.2 (composition_baseline)"
    seed = draw_seed()
    cases = []
    for i, (D, d, n) in enumerate(((32, 4, 400), (48, 12, 300), (20, 5, 500))):
        w = _baseline_draws(D, d, n, seed + i)
        OV0, QK1_T = w["W_V0"] @ w["W_O0"], w["W_K1"] @ w["W_Q1"].transpose(-1, -2)
        mean, std = circuits.random_composition_baseline(D, d, n, seed + i, kind="K")
        mistakes = [
            ("that is the Q-composition of the random heads; use K (the later head's keys read "
             "the earlier head: OV₀ · QK₁ᵀ).", _mean_and_std(OV0, QK1_T.transpose(-1, -2))[0]),
            ("W_V and W_K were left out (W_O₀ times W_Q₁): a head's matrices are products of two "
             "factors, W_V @ W_O and W_K @ W_Qᵀ.",
             _mean_and_std(w["W_O0"], w["W_Q1"])[0]),
            ("the products were not normalised: divide each ‖OV₀ QK₁ᵀ‖ by ‖OV₀‖ · ‖QK₁ᵀ‖.",
             float((OV0 @ QK1_T).flatten(-2).norm(dim=-1).mean())),
        ]  # fmt: skip
        w64 = _baseline_draws(D, d, n, seed + i, torch.float64)
        mistakes.append((
            "the matrices were drawn in float64: the same seed gives other numbers in another "
            "dtype. Draw in the default float32 (convert afterwards if you like).",
            _mean_and_std(w64["W_V0"] @ w64["W_O0"],
                          w64["W_K1"] @ w64["W_Q1"].transpose(-1, -2))[0],
        ))  # fmt: skip
        cases.append(
            Case(
                (D, d, n, seed + i), (mean, std), mistakes, f"d_model {D}, d_head {d}, {n} samples"
            )
        )
    answers = []
    for case in cases:
        out = call_learner(
            ex, composition_baseline, *case.args,
            withhold=[circuits.random_composition_baseline, circuits.composition_baseline,
                      two_layer._composition_from_weights, two_layer._frobenius_composition],
        )  # fmt: skip
        answers.append(_mean_std(ex, out))
    wrong = [(case.where, got[0], case.expected[0], case.mistakes)
             for got, case in zip(answers, cases, strict=True)
             if not math.isclose(got[0], case.expected[0], rel_tol=2e-4, abs_tol=1e-6)]  # fmt: skip
    name_mistake(ex, wrong, _close_floats)
    for got, case in zip(answers, cases, strict=True):
        (mean, std), where = case.expected, case.where
        otherwise = (
            f"{where}: mean {got[0]:.5f} ± std {got[1]:.5f}, expected {mean:.5f} ± {std:.5f}. Draw "
            "with torch.randn(n_samples, ...) in the default dtype (float32) from "
            "torch.Generator().manual_seed(seed), in the order the exercise gives, all six "
            "matrices."
        )
        diagnose_float(ex, got[0], mean, [], otherwise)
        diagnose_float(
            ex,
            got[1],
            std,
            [],
            otherwise + " (the mean is right: is the std unbiased, torch's default?)",
        )
    passed(ex, "the random baseline's mean and spread for three shapes, seeded.")


def _close_floats(a: float, b: float, widen: float = 1.0) -> bool:
    """Seeded draws make the answer exact up to float32 arithmetic (~1e-6 relatively): tight
    enough to tell the float64 draws (~1e-3 off) from the right ones."""
    return math.isclose(a, b, rel_tol=widen * 2e-5, abs_tol=widen * 1e-7)


def _mean_std(ex: str, out: object) -> tuple[float, float]:
    if isinstance(out, (Tensor, np.ndarray)) and out.ndim == 1:
        out = list(out)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise CheckFailed(ex, "composition_baseline must return a pair (mean, std).")
    return expect_float(ex, "the mean", out[0]), expect_float(ex, "the std", out[1])


@checker
def check_virtual_head_ov(virtual_head_ov: Callable) -> None:
    """Exercise 3.3: `virtual_head_ov(model, head0, head1) -> [d_vocab (source), d_vocab (output)]`."""
    ex = "Exercise 3.3 (virtual_head_ov)"
    cases = []
    for model in two_layer_models(draw_seed()):
        H = model.cfg.n_heads
        a0, a1 = model.blocks[0].attn, model.blocks[1].attn
        for h0 in range(H):
            for h1 in range(H):
                with torch.no_grad():
                    expected = circuits.virtual_head_ov_circuit(model, (0, h0), (1, h1))
                    OV0, OV1 = a0.W_V[h0] @ a0.W_O[h0], a1.W_V[h1] @ a1.W_O[h1]
                    mistakes = {
                        "the heads are in the wrong order: the layer-0 head acts first, so its "
                        "OV comes first in the row convention (W_E OV₀ OV₁ W_U).": (
                            model.W_E @ OV1 @ OV0 @ model.W_U
                        ),
                        "the circuit is transposed: rows are source tokens, columns output "
                        "logits.": expected.T,
                        "the layer-1 head is missing: that is the layer-0 head's own OV "
                        "circuit.": circuits.full_ov_circuit(model, 0, h0),
                        "the layer-0 head is missing: that is the layer-1 head's own OV "
                        "circuit.": circuits.full_ov_circuit(model, 1, h1),
                    }
                cases.append(Case((model, h0, h1), expected, mistakes, f"heads L0H{h0}, L1H{h1}"))
    check_cases(
        ex, virtual_head_ov, "virtual_head_ov", cases, block_forward=True,
        withhold=[circuits.virtual_head_ov_circuit, circuits.full_ov_circuit],
    )  # fmt: skip
    passed(ex, "W_E OV₀ OV₁ W_U for every pair of heads of two random test models.")


def _patterns(model: AttnOnlyTransformer, tokens: Tensor) -> dict[int, Tensor]:
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    return {
        layer: cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(model.cfg.n_layers)
    }


def _with_hooks(model: AttnOnlyTransformer, tokens: Tensor, hooks) -> Tensor:
    with torch.no_grad():
        return model.run_with_hooks(tokens, hooks)


@checker
def check_run_with_frozen_patterns(run_with_frozen_patterns: Callable) -> None:
    """Exercise 3.4: `run_with_frozen_patterns(model, tokens, patterns) -> logits`, with the
    attention pattern of every layer in `patterns` (a dict layer -> `[batch, head, query, key]`)
    replaced by the given one through a hook."""
    ex = "Exercise 3.4 (run_with_frozen_patterns)"
    seed = draw_seed()
    cases = []
    for i, model in enumerate(two_layer_models(seed)):
        tokens = random_tokens(model, seed + 10 + i, batch=2)
        recorded = _patterns(model, random_tokens(model, seed + 20 + i, batch=2))  # another input
        for layers in ([0, 1], [1], [0]):
            patterns = {layer: recorded[layer] for layer in layers}

            def frozen(hook_name: str, chosen, patterns=patterns) -> list:
                return [(f"blocks.{layer}.attn.{hook_name}", lambda x, hook, p=patterns[layer]: p)
                        for layer in chosen]  # fmt: skip

            expected = evals.run_with_frozen_patterns(model, tokens, patterns)
            mistakes = {
                "the logits are the model's own: the patterns were not used (a hook must return "
                "the replacement, on blocks.{layer}.attn.hook_pattern).": _with_hooks(
                    model, tokens, []
                ),
                "the patterns went into hook_attn_scores, where the softmax runs on them again: "
                "replace hook_pattern, which is after the softmax.": _with_hooks(
                    model, tokens, frozen("hook_attn_scores", layers)
                ),
            }
            if len(layers) == 2:
                mistakes["only layer 0 was frozen: freeze every layer in `patterns`."] = (
                    evals.run_with_frozen_patterns(model, tokens, {0: patterns[0]})
                )
                last = patterns[layers[-1]]
                mistakes[
                    "every layer got the last layer's pattern: a lambda defined in a loop sees the "
                    "loop variable's final value. Bind it when the hook is made, e.g. "
                    "`lambda x, hook, p=pattern: p`."
                ] = _with_hooks(
                    model, tokens,
                    [(f"blocks.{layer}.attn.hook_pattern", lambda x, hook, p=last: p)
                     for layer in layers],
                )  # fmt: skip
            cases.append(
                Case((model, tokens, patterns), expected.detach(), mistakes, f"layers {layers}")
            )
    check_cases(
        ex, run_with_frozen_patterns, "run_with_frozen_patterns", cases,
        withhold=[evals.run_with_frozen_patterns, evals.term_importance],
    )  # fmt: skip
    passed(ex, "the logits with any set of frozen layers, for two random two-layer models.")


@checker
def check_term_importance(term_importance: Callable) -> None:
    """Exercise 3.5: `term_importance(model, tokens) -> (order_0, order_1, order_2)`, the loss
    of the path expansion truncated at each order, with the attention patterns frozen to those of
    the full model on `tokens` (shortformer models without biases)."""
    ex = "Exercise 3.5 (term_importance)"
    seed = draw_seed()
    cases = []
    for i, model in enumerate(two_layer_models(seed)):
        tokens = random_tokens(model, seed + 10 + i, batch=4)
        ref = evals.term_importance(model, tokens)
        expected = torch.tensor([ref.order_0, ref.order_1, ref.order_2], dtype=torch.float64)
        with torch.no_grad():
            x0 = model.W_E[tokens]
            pos = model.W_pos[: tokens.shape[1]]
            # order 1 with layer 1's pattern recomputed from the embeddings instead of frozen
            recomputed = model.blocks[1].attn(x0 + pos, x0)
            l0 = model.blocks[0].attn(
                x0 + pos, x0
            )  # layer 0 reads x0: its patterns are the real ones
            unfrozen = float(next_token_loss((x0 + l0 + recomputed) @ model.W_U, tokens))
        mistakes = {
            "order 1 lets layer 1 read layer 0's output (that is order 2): at order 1 every head "
            "reads the embeddings alone.": torch.tensor([ref.order_0, ref.order_2, ref.order_2]),
            "at order 1, layer 1's attention pattern was recomputed from the embeddings: freeze it "
            "to the full model's pattern (only V-composition is being removed).": torch.tensor(
                [ref.order_0, unfrozen, ref.order_2]
            ),
            "the orders are in the wrong order: return (order 0, order 1, order 2), the losses "
            "with more and more terms.": torch.tensor([ref.order_2, ref.order_1, ref.order_0]),
        }
        cases.append((model, tokens, expected, {d: m.double() for d, m in mistakes.items()}))
    for model, tokens, expected, mistakes in cases:
        out = call_learner(ex, term_importance, model, tokens, withhold=[evals.term_importance])
        if isinstance(out, (Tensor, np.ndarray)) and out.ndim == 1:
            out = list(out)
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise CheckFailed(
                ex, "term_importance must return three losses (order_0, order_1, order_2)."
            )
        got = torch.tensor(
            [expect_float(ex, f"order_{k}", v) for k, v in enumerate(out)], dtype=torch.float64
        )
        if matches(got, expected, 1e-4):
            continue
        name_mistake(
            ex, [("", got, expected, list(mistakes.items()))],
            lambda a, b, widen=1.0: matches(a, b, widen * 1e-4),
        )  # fmt: skip
        wrong = [f"order {k}: got {g:.4f}, expected {e:.4f}"
                 for k, (g, e) in enumerate(zip(got.tolist(), expected.tolist(), strict=True))
                 if not math.isclose(g, e, rel_tol=1e-4, abs_tol=1e-4)]  # fmt: skip
        raise CheckFailed(
            ex, "; ".join(wrong) + ". Order 0 is the direct path alone (W_E then W_U); order 1 "
            "adds every head reading the embeddings; order 2 adds layer 1 reading layer 0's "
            "output; patterns frozen throughout. In these shortformer models the positional "
            "embedding enters only queries and keys, never the residual stream or the values.",
        )  # fmt: skip
    passed(ex, "the losses of the path expansion at orders 0, 1 and 2, for two random models.")


@checker
def check_path_ablation(path_ablation: Callable) -> None:
    """Exercise 3.6: `path_ablation(model, tokens, sender, receiver) -> logits`, with the output of
    the layer-0 head `sender` removed from one input of every layer-1 head: its queries ("q"),
    keys ("k") or values ("v") only."""
    ex = "Exercise 3.6 (path_ablation)"
    seed = draw_seed()
    cases = []
    taken: list[int] = []
    for i, model in enumerate(two_layer_models(seed)):
        tokens = random_tokens(model, seed + 10 + i, batch=2)
        # the two models' senders differ, so one of them is not head 0 (an answer that always
        # takes head 0, or the layer index for the head, cannot pass by luck)
        heads = [h for h in range(model.cfg.n_heads) if h not in taken]
        sender = (0, heads[int(torch.randint(len(heads), (), generator=generator(seed + i)))])
        taken.append(sender[1])
        for receiver in ("q", "k", "v"):
            expected = evals.run_with_path_ablation(model, tokens, sender, receiver, layer=1)
            mistakes = {
                "the head was removed from everything downstream (its output zeroed): remove it "
                "from one input of layer 1 only.": evals.run_with_ablation(model, tokens, [sender]),
            }
            for other in "qkv".replace(receiver, ""):
                mistakes[
                    f"the head was removed from the {other!r} input, not from {receiver!r}."
                ] = evals.run_with_path_ablation(model, tokens, sender, other, layer=1)
            where = f"sender L0H{sender[1]}, receiver {receiver!r}"
            cases.append(Case((model, tokens, sender, receiver), expected, mistakes, where))
    check_cases(
        ex, path_ablation, "path_ablation", cases,
        withhold=[evals.run_with_path_ablation, evals.run_with_ablation],
    )  # fmt: skip
    passed(ex, "one path removed at a time (queries, keys, values), for two random models.")


@checker
def check_composition_map(composition_map: Callable) -> None:
    """Exercise 3.7: `composition_map(model, threshold) -> {layer-1 head: (kind, layer-0 head) or
    None}`, on mystery models drawn at check time whose wiring was planted by hand."""
    ex = "Exercise 3.7 (composition_map)"
    seed = draw_seed()
    cases = []
    for i in range(2):
        mystery = handmade.mystery_composition(seed + i)
        model = mystery.model
        ratios = torch.stack([
            circuits.composition_scores(model, k) / circuits.composition_baseline(model, k)[0]
            for k in circuits.COMPOSITION_KINDS
        ])  # fmt: skip
        best = ratios.flatten(0, 1).max(0).values  # each layer-1 head's strongest reading
        planted = best[[h for h, w in mystery.wiring.items() if w is not None]]
        # a second threshold, drawn, that no head's best ratio lies near, above the weakest
        # planted reading (so the map must apply it) and below the strongest where they differ
        g = generator(seed + 10 + i)
        lo, hi = float(planted.min()) + 0.1, float(planted.max()) - 0.1
        threshold = round(float(planted.max()) + 0.2, 2)  # all None, where no gap is wide enough
        for _ in range(100):
            candidate = round(lo + (hi - lo) * float(torch.rand((), generator=g)), 2)
            if hi > lo and (best - candidate).abs().min() > 0.1:
                threshold = candidate
                break
        for applied in (2.0, threshold):
            cases.append((mystery, applied, circuits.composition_map(model, applied)))
    for mystery, threshold, truth in cases:
        out = call_learner(
            ex, composition_map, mystery.model, threshold,
            withhold=[circuits.composition_map, handmade.mystery_composition], block_forward=True,
        )  # fmt: skip
        got = _as_composition_map(ex, out, mystery.model.cfg.n_heads)
        if got != truth:
            wrong = {
                h: (got.get(h, "missing"), truth[h])
                for h in truth
                if got.get(h, "missing") != truth[h]
            }
            lines = [f"L1H{h}: you found {g}, expected {t}" for h, (g, t) in wrong.items()]
            raise CheckFailed(
                ex, f"a mystery model, threshold {threshold}: " + "; ".join(lines)
                + ". Compare each (kind, layer-0 head) by its score divided by the random "
                "baseline's mean; keep the largest if it reaches the threshold.",
            )  # fmt: skip
    passed(ex, "the planted wiring of two mystery models, at threshold 2 and a drawn one.")


_MAP_FORMAT = (
    "composition_map must return a dict with one entry per layer-1 head: head index -> None or "
    "(kind, layer-0 head), kind one of 'Q', 'K', 'V'; e.g. {0: ('K', 1), 1: None}"
)


def _as_composition_map(ex: str, out: object, n_heads: int) -> dict:
    """The learner's composition map with ints and kind strings, or a CheckFailed naming the
    expected format."""
    if not isinstance(out, dict):
        raise CheckFailed(ex, f"{_MAP_FORMAT}; got a {type(out).__name__}.")
    got = {}
    for h, v in out.items():
        try:
            head = operator.index(h)
            entry = None if v is None else (str(v[0]), operator.index(v[1]))
            if entry is not None and len(v) != 2:
                raise ValueError
        except (TypeError, ValueError, IndexError, KeyError):
            raise CheckFailed(ex, f"{_MAP_FORMAT}; got the entry {h!r}: {v!r}.") from None
        if not 0 <= head < n_heads or (entry is not None and not 0 <= entry[1] < n_heads):
            raise CheckFailed(ex, f"{_MAP_FORMAT}; head indices run 0..{n_heads - 1}, got the "
                              f"entry {h!r}: {v!r}.")  # fmt: skip
        if entry is not None and entry[0] not in ("Q", "K", "V"):
            raise CheckFailed(ex, f"{_MAP_FORMAT}; got the kind {entry[0]!r}.")
        got[head] = entry
    return got


# ---- 3.8 virtual weights --------------------------------------------------------------------------
_READ_WITH = {"q": "queries, W_Q", "k": "keys, W_K", "v": "values, W_V"}


def _virtual_weight_cases(seed: int) -> list[Case]:
    """Every pair of layers (writer earlier) of a random two- and three-layer model, each kind,
    with heads drawn at check time: writer and reader heads differ, so that no mix-up of the two
    can pass."""
    per_model = [{"n_layers": 2}, {"n_layers": 3}]
    g = generator(seed + 1)
    cases = []
    for model in random_models(seed, 2, per_model=per_model):
        L, H, d, D = (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head, model.cfg.d_model)
        W = {kind: getattr(model, f"W_{kind.upper()}").detach() for kind in ("q", "k", "v", "o")}
        hints = {
            (D, D): "[d_model, d_model] is the shape of W_V @ W_O (a head's OV circuit) or of "
            "W_kind^B @ W_O^A (the factors in the wrong order). The virtual weight goes from A's "
            "output (d_head) to B's input (d_head): W_O^A @ W_kind^B, [d_head, d_head].",
            (D, d): "[d_model, d_head] is the shape of a W_Q, W_K or W_V alone, or of the "
            "writer's whole OV circuit before the reader's weight (W_V^A @ W_O^A @ W_kind^B). The "
            "virtual weight starts at A's output z_A, after W_V^A: W_O^A @ W_kind^B, "
            "[d_head, d_head].",
            (d, D): "[d_head, d_model] is the shape of a W_O alone, or of W_O^A @ W_V^B @ W_O^B "
            "(through the reader's output too). The virtual weight stops at B's input: "
            "W_O^A @ W_kind^B, [d_head, d_head].",
        }
        for la in range(L):
            for lb in range(la + 1, L):
                for kind in circuits.READ_KINDS:
                    ha, hb = (int(h) for h in torch.randperm(H, generator=g)[:2])
                    expected = circuits.virtual_weight(model, (la, ha), (lb, hb), kind)
                    W_O_A, W_read = W["o"][la, ha], W[kind][lb, hb]
                    mistakes = [
                        ("the virtual weight is transposed (W_kind^Bᵀ @ W_O^Aᵀ): rows are the "
                         "writer's d_head, columns the reader's, W_O^A @ W_kind^B.",
                         (W_O_A @ W_read).T),
                        ("the reader's own W_O was used: the virtual weight starts with the "
                         "writer's W_O (what A writes), then the reader's W_Q, W_K or W_V (how B "
                         "reads it).", W["o"][lb, hb] @ W_read),
                        ("writer and reader are swapped: the writer (first argument) is the head "
                         "of the earlier layer, whose W_O writes; the reader's W_Q, W_K or W_V "
                         "reads.", W["o"][lb, hb] @ W[kind][la, ha]),
                        ("a head index is mixed up: the writer's W_O is at writer = (layer, "
                         "head), the reader's weight at reader = (layer, head).",
                         W_O_A @ W[kind][lb, ha]),
                        ("a head index is mixed up: the writer's W_O is at writer = (layer, "
                         "head), the reader's weight at reader = (layer, head).",
                         W["o"][la, hb] @ W_read),
                    ]  # fmt: skip
                    for other in circuits.READ_KINDS:
                        if other != kind:
                            mistakes.append((
                                f"kind {kind!r} is the reader's {_READ_WITH[kind]}; your answer "
                                f"used its W_{other.upper()}.", W_O_A @ W[other][lb, hb],
                            ))  # fmt: skip
                    where = f"writer L{la}H{ha}, reader L{lb}H{hb}, kind {kind!r}"
                    cases.append(
                        Case((model, (la, ha), (lb, hb), kind), expected, mistakes, where, hints)
                    )
    return cases


@checker
def check_virtual_weight(virtual_weight: Callable) -> None:
    """Exercise 3.8: `virtual_weight(model, writer, reader, kind) -> [d_head, d_head]`, the
    virtual weight W_O^A @ W_kind^B from head A = `writer` (layer, head) to the queries ("q"),
    keys ("k") or values ("v") of head B = `reader`, in a later layer."""
    ex = "Exercise 3.8 (virtual_weight)"
    cases = _virtual_weight_cases(draw_seed())
    check_cases(
        ex, virtual_weight, "virtual_weight", cases, atol=1e-5, block_forward=True,
        withhold=[circuits.virtual_weight, circuits.read_shares],
    )  # fmt: skip
    passed(
        ex,
        "W_O^A @ W_Q/K/V^B for writers one and two layers before their readers, every kind, in "
        "random two- and three-layer models.",
    )


# ---- 3.9 reading what was written -----------------------------------------------------------------
def _read_share_cases(seed: int) -> list[tuple[Tensor, Tensor, str]]:
    """(W_read, W_O, where): readers mostly inside, mostly outside and at random to a writer's
    subspace, of several shapes; one writer's W_O of rank d_head - 1 (its last row twice its
    first, exactly)."""
    g = generator(seed + 1)
    cases = []
    for model in random_models(seed, 2, n_layers=2):
        d, D = model.cfg.d_head, model.cfg.d_model
        ha, hb = (int(h) for h in torch.randperm(model.cfg.n_heads, generator=g)[:2])
        # a writer of another scale than the reader (the share does not depend on W_O's scale;
        # W_O and W_Q of the same initialisation would have about the same norm, hiding a
        # division by the wrong one)
        scale = 1.5 + 1.5 * float(torch.rand((), generator=g))
        W_O = model.blocks[0].attn.W_O[ha].detach() * scale
        P = circuits.projector(circuits.row_space(W_O))
        outside = torch.eye(D) - P
        for kind in ("Q", "K"):
            W_read = getattr(model.blocks[1].attn, f"W_{kind}")[hb].detach().clone()
            cases.append((W_read, W_O, f"W_{kind} of a random head, d_model {D}, d_head {d}"))
        W = torch.randn(D, d, generator=g)
        cases.append((P @ W + 0.3 * outside @ W, W_O, f"a W_read mostly inside, d_model {D}"))
        cases.append((outside @ W + 0.4 * P @ W, W_O, f"a W_read mostly outside, d_model {D}"))
        # a writer and a reader of other widths: the answer must not assume d_head
        k = d + 2
        cases.append(
            (torch.randn(D, k - 1, generator=g) * 2, torch.randn(k, D, generator=g) * 0.3,
             f"W_read [{D}, {k - 1}], W_O [{k}, {D}]")
        )  # fmt: skip
    W_read, W_O, _ = cases[0]
    W_O = W_O * 1.5
    W_O[-1] = 2 * W_O[0]
    d, D = W_O.shape
    cases.append(
        (
            W_read,
            W_O,
            f"a W_O [{d}, {D}] of rank {d - 1} < d_head (its last row is twice its first)",
        )
    )
    return cases


def _share_mistakes(W_read: Tensor, W_O: Tensor, share: float) -> list[tuple[str, float]]:
    W, W_O = W_read.double(), W_O.double()
    P = circuits.projector(circuits.row_space(W_O))
    norm2, o_norm2 = float(W.square().sum()), float(W_O.square().sum())
    inside2 = float((P @ W).square().sum())
    gram = float((W_O.T @ W_O @ W).square().sum())
    same_shape = W.shape == W_O.T.shape  # else the cosine cannot be computed, nor mistaken
    cosine = (
        float(torch.nn.functional.cosine_similarity(W.flatten(), W_O.T.flatten(), dim=0))
        if same_shape
        else math.nan
    )
    product2 = float((W_O @ W).square().sum()) / (o_norm2 * norm2)
    rows = W_O / W_O.norm(dim=1, keepdim=True)
    per_column = (P @ W).square().sum(0) / W.square().sum(0)  # each read direction's share
    cos_text = (
        "that is the cosine between the flattened matrices W_read and W_Oᵀ, which compares them "
        "entry by entry: the share asks how much of W_read lies in the subspace W_O writes "
        "into, whatever the directions within it, ‖P W_read‖² / ‖W_read‖²."
    )
    score_text = (
        "that is a composition-style score ‖W_O W_read‖ / (‖W_O‖ ‖W_read‖): it weighs "
        "directions by W_O's singular values. Project onto W_O's row space with an orthogonal "
        "projector P instead: ‖P W_read‖² / ‖W_read‖²."
    )
    divided = (
        "divided by W_O's norm: the share is of the reader's weight, ‖P W_read‖_F² / ‖W_read‖_F²."
    )
    cosines = [(cos_text, cosine), (cos_text, abs(cosine)), (cos_text, cosine**2)]
    return [*(cosines if same_shape else []),
        ("the norms are not squared (‖P W_read‖ / ‖W_read‖): the share of the squared Frobenius "
         "norm is ‖P W_read‖² / ‖W_read‖², which sums over the reader's directions.",
         math.sqrt(share)),
        ("W_O.T @ W_O was used as the projector: it is one only when W_O's rows are orthonormal, "
         "and they are not. Use the projector onto W_O's row space (an orthonormal basis of its "
         "rows, e.g. from the SVD).", gram / norm2),
        ("W_O's rows were normalised but not made orthogonal, so Wᵀ W is not a projector: use "
         "an orthonormal basis of W_O's rows, e.g. from the SVD.",
         float((rows.T @ rows @ W).square().sum()) / norm2),
        ("the columns' shares were averaged without weights: the share of the squared norm "
         "weighs each read direction by its squared norm, Σ‖P w_i‖² / Σ‖w_i‖² = "
         "‖P W_read‖_F² / ‖W_read‖_F².", float(per_column.mean())),
        ("that is 1 - share, the share outside the writer's subspace: ‖P W_read‖² counts what "
         "lies inside.", 1 - share),
        (divided, inside2 / o_norm2),
        (divided, math.sqrt(inside2 / o_norm2)),
        (score_text, product2),
        (score_text, math.sqrt(product2)),
    ]  # fmt: skip


@checker
def check_read_share(read_share: Callable) -> None:
    """Exercise 3.9: `read_share(W_read, W_O) -> float`, the share ‖P W_read‖_F² / ‖W_read‖_F² of
    a reader's weight `W_read [d_model, d_head]` inside the row space of a writer's
    `W_O [d_head, d_model]` (P its orthogonal projector)."""
    ex = "Exercise 3.9 (read_share)"
    drawn = _read_share_cases(draw_seed())
    cases = []
    for W_read, W_O, where in drawn:
        share = circuits.read_share(W_read, circuits.row_space(W_O))
        cases.append(Case((W_read, W_O), share, _share_mistakes(W_read, W_O, share), where))
    answers = []
    for case in cases:
        out = call_learner(
            ex, read_share, *case.args, where=case.where, block_forward=True,
            withhold=[circuits.read_share, circuits.read_shares, circuits.row_space,
                      circuits.projector, circuits.write_subspace],
        )  # fmt: skip
        answers.append(expect_float(ex, "read_share", out, "a float (a share, in [0, 1])"))
    right = [_close_share(out, case.expected) for out, case in zip(answers, cases, strict=True)]
    if all(right):
        passed(
            ex,
            "the share of the squared norm inside a writer's subspace, for readers mostly inside, "
            "mostly outside and at random, several shapes, and a W_O of rank < d_head.",
        )
        return
    # one number can match a mistake by coincidence: a mistake that would have been wrong where
    # the answer is right does not explain it, so it is not considered at all
    ruled_out = {
        description
        for ok, case in zip(right, cases, strict=True)
        if ok
        for description in {d for d, _ in case.mistakes}
        if not any(_close_share(v, case.expected, 10) for d, v in case.mistakes if d == description)
    }
    wrong = [
        (case.where, out, case.expected, [(d, v) for d, v in case.mistakes if d not in ruled_out])
        for ok, out, case in zip(right, answers, cases, strict=True)
        if not ok
    ]
    where, out, expected, _ = wrong[0]
    if len(wrong) == 1 and where == cases[-1].where:  # only the rank-deficient writer
        raise CheckFailed(
            ex,
            f"right for every W_O of full rank, but not for {where}: got {out:.4f}, expected "
            f"{expected:.4f}. W_O writes into rank(W_O) dimensions, here fewer than d_head: "
            "project onto its row space, counting only the singular values that are not rounding "
            "noise (torch.linalg.matrix_rank's tolerance), or with torch.linalg.pinv(W_O) @ W_O.",
        )
    name_mistake(ex, wrong, _close_share)
    otherwise = "" if 0 <= out <= 1 else " A share lies in [0, 1]."
    raise CheckFailed(
        ex,
        f"{where}: got {out:.4f}, expected {expected:.4f}.{otherwise} The share is "
        "‖P W_read‖_F² / ‖W_read‖_F², P the orthogonal projector onto W_O's row space.",
    )


def _close_share(a: float, b: float, widen: float = 1.0) -> bool:
    return math.isclose(float(a), float(b), rel_tol=widen * 2e-4, abs_tol=widen * 1e-6)
