"""Exercises of chapter 03, declared: composition scores and their random baseline, virtual
heads, frozen patterns, term importance, path ablation, a model's wiring reverse-engineered,
virtual weights and the share of a read weight in a writer's subspace."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
from torch import Tensor

from helpers import circuits, evals, handmade
from helpers.checks._base import CheckFailed, generator, random_models, random_tokens
from helpers.checks._judge import Case, expect_float, same
from helpers.checks._judge import describe as describe_wrong
from helpers.checks._registry import Exercise, declare
from helpers.circuits import two_layer
from helpers.models import AttnOnlyTransformer, next_token_loss

KINDS = circuits.COMPOSITION_KINDS  # "Q", "K", "V"


@torch.no_grad()
def _scale_weights(model: AttnOnlyTransformer, factor: float) -> None:
    for p in model.parameters():
        p.mul_(factor)


@torch.no_grad()
def _randomise_biases(model: AttnOnlyTransformer, seed: int) -> None:
    """Biases start at zero, where an answer that forgets them is still right: draw them."""
    g = generator(seed)
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1].startswith("b_"):
            p.copy_(0.5 * torch.randn(p.shape, generator=g))


def _model_tags(model: AttnOnlyTransformer) -> set[str]:
    tags = {"biases"} if model.cfg.use_bias else set()
    return tags | ({f"{model.cfg.n_layers} layers"} if model.cfg.n_layers > 2 else set())


def _noting(expected: object, note: str) -> Callable[[object], str]:
    """The judge's description of a wrong answer, and what this case's input adds to it."""
    return lambda answer: describe_wrong(answer, expected) + note


_BIASES = (
    " This model has biases (b_Q, b_K, b_V, b_O, b_U): a forward pass rebuilt by hand must add "
    "them; hooks on the model's own run keep them."
)


def _model_words(model: AttnOnlyTransformer) -> str:
    biases = ", with biases" if model.cfg.use_bias else ""
    return f"a {model.cfg.n_layers}-layer model of {model.cfg.n_heads} heads a layer{biases}"


# ---- 3.1 composition scores ------------------------------------------------------------------------
_WHAT_EACH_READS = {
    "Q": "the later head's queries read the earlier head's output: ‖OV₀ · QK₁‖",
    "K": "its keys read it: ‖OV₀ · QK₁ᵀ‖",
    "V": "its values read it: ‖OV₀ · OV₁‖",
}


def _composition_cases(seed: int) -> list[Case]:
    """Every kind, in a two-layer model whose weights are all a thousand times smaller than usual
    (the score does not depend on scale: an epsilon added to the norms shows there) and in a
    three-layer model (the later layer is layer 1, not the last)."""
    small, deep = random_models(seed, 2, n_layers=2, per_model=[{}, {"n_layers": 3}])
    _scale_weights(small, 1e-3)
    cases = []
    for model in (small, deep):
        a0, a1 = model.blocks[0].attn, model.blocks[1].attn
        with torch.no_grad():
            OV0, OV1 = a0.W_V @ a0.W_O, a1.W_V @ a1.W_O  # [head, d_model, d_model]
            QK1 = a1.W_Q @ a1.W_K.transpose(-1, -2)
            reads = {"Q": QK1, "K": QK1.transpose(-1, -2), "V": OV1}
            factors = {"Q": (a1.W_Q, a1.W_K), "K": (a1.W_K, a1.W_Q), "V": (a1.W_V, a1.W_O)}
            norm = lambda W: W.flatten(-2).norm(dim=-1)  # noqa: E731
            spectral = lambda W: torch.linalg.matrix_norm(W, ord=2)  # noqa: E731
            for kind in KINDS:
                expected = circuits.composition_scores(model, kind)
                product = OV0[:, None] @ reads[kind][None]  # [head0, head1, d_model, d_model]
                A, B = factors[kind]
                mistakes = {
                    f"these are {other}-composition scores; for {kind}, {_WHAT_EACH_READS[kind]}.":
                        circuits.composition_scores(model, other)
                    for other in KINDS if other != kind
                }  # fmt: skip
                mistakes |= {
                    "the axes are swapped: rows are layer-0 (earlier) heads, columns layer-1 "
                    "heads.": expected.T,
                    "the score is not normalised: divide ‖product‖ by the product of the two "
                    "factors' Frobenius norms.": norm(product),
                    "the product is in the paper's column order, ‖X₁ · OV₀‖: in our row "
                    "convention the earlier head's OV comes first, OV₀ @ X₁.": (
                        two_layer._frobenius_composition(reads[kind][None], OV0[:, None])
                    ),
                    "the earlier head's OV is transposed (W_O @ W_V has the wrong shape; "
                    "(W_V @ W_O)ᵀ reads the wrong side): in the row convention it writes x @ W_V @ "
                    "W_O.": two_layer._frobenius_composition(
                        OV0.transpose(-1, -2)[:, None], reads[kind][None]
                    ),
                    "the score was divided by the norms of the four weights (‖W_V‖ ‖W_O‖ ‖W_Q‖ "
                    "‖W_K‖), not of the two products: normalise by ‖OV₀‖ ‖X₁‖, the factors of "
                    "the product.": norm(product) / (
                        (norm(a0.W_V) * norm(a0.W_O))[:, None] * (norm(A) * norm(B))[None]
                    ),
                    "the spectral norm (ord=2) was taken: the score uses the Frobenius norm, "
                    "‖M‖_F = M.flatten().norm().": spectral(product) / (
                        spectral(OV0)[:, None] * spectral(reads[kind])[None]
                    ),
                }  # fmt: skip
                if model.cfg.n_layers > 2:
                    mistakes["the later layer is the last one: it is layer 1 (the scores are "
                             "between layer 0 and layer 1, whatever the model's depth)."] = (
                        circuits.composition_scores(model, kind, 0, model.cfg.n_layers - 1)
                    )  # fmt: skip
                tags = {f"{kind}-composition", *_model_tags(model)}
                where, note = f"{kind}-composition, {_model_words(model)}", ""
                if not 1e-2 < float(a0.W_O.abs().mean()) < 1e2:
                    tags.add("weights far from scale 1")
                    where += ", weights 1000 times smaller than usual"
                    note = (" The score does not depend on the weights' scale: is something "
                            "added to a norm (an epsilon), or compared with a fixed number?")  # fmt: skip
                cases.append(Case((model, kind), expected, mistakes, where, tags=tags,
                                  describe=_noting(expected, note)))  # fmt: skip
    return cases


declare(Exercise(
    number="3.1", title="composition scores", functions=("composition_scores",),
    cases=_composition_cases, reference=circuits.composition_scores, block_forward=True,
    withhold=(circuits.composition_scores, two_layer._composition_from_weights,
              two_layer._frobenius_composition),
    covers=frozenset({"Q-composition", "K-composition", "V-composition", "3 layers",
                      "weights far from scale 1"}),
    passed="Q-, K- and V-composition for every pair of heads of a two-layer model with tiny "
    "weights and of a three-layer model.",
))  # fmt: skip


# ---- 3.2 the random baseline -----------------------------------------------------------------------
_DRAWN = ("W_Q1", "W_K1", "W_V1", "W_O1", "W_V0", "W_O0")  # the exercise's order


def _draws(
    D: int, d: int, n: int, seed: int, *, dtype: torch.dtype = torch.float32,
    order: tuple[str, ...] = _DRAWN, one_sample_at_a_time: bool = False,
) -> dict[str, Tensor]:  # fmt: skip
    """The random matrices of Exercise 3.2 drawn as the exercise says (or as a mistake does: in
    another dtype, another order, fewer of them, or sample by sample), in float64 for the
    arithmetic. Each `[n, ...]`."""
    g = generator(seed)
    shapes = {"W_Q1": (D, d), "W_K1": (D, d), "W_V1": (D, d), "W_O1": (d, D),
              "W_V0": (D, d), "W_O0": (d, D)}  # fmt: skip
    if one_sample_at_a_time:
        samples = [{name: torch.randn(shapes[name], generator=g, dtype=dtype) for name in order}
                   for _ in range(n)]  # fmt: skip
        return {name: torch.stack([s[name] for s in samples]).double() for name in order}
    return {name: torch.randn(n, *shapes[name], generator=g, dtype=dtype).double()
            for name in order}  # fmt: skip


def _mean_std(scores: Tensor, unbiased: bool = True) -> tuple[float, float]:
    return float(scores.mean()), float(scores.std(correction=1 if unbiased else 0))


def _baseline_of(w: dict[str, Tensor], kind: str = "K", normalised: bool = True):
    OV0 = w["W_V0"] @ w["W_O0"]  # [n, d_model, d_model]
    QK1 = w["W_Q1"] @ w["W_K1"].transpose(-1, -2)
    X1 = w["W_V1"] @ w["W_O1"] if kind == "V" else QK1 if kind == "Q" else QK1.transpose(-1, -2)
    if normalised:
        return two_layer._frobenius_composition(OV0, X1)
    return (OV0 @ X1).flatten(-2).norm(dim=-1)


def _describe_baseline(mean: float, std: float) -> Callable[[object], str]:
    def describe(answer: tuple[float, float]) -> str:
        text = f"mean {answer[0]:.5f} ± std {answer[1]:.5f}, expected {mean:.5f} ± {std:.5f}."
        if same(answer[0], mean):
            return text + " The mean is right: is the std the unbiased one (torch's default)?"
        return text + (" Draw with torch.randn(n_samples, ...) in the default dtype (float32) "
                       "from torch.Generator().manual_seed(seed), in the order the exercise "
                       "gives, all six matrices.")  # fmt: skip

    return describe


def _baseline_cases(seed: int) -> list[Case]:
    """Three shapes (d_head well below d_model, d_head equal to it, d_head 1), three sample
    counts, seeds drawn."""
    cases = []
    for i, (D, d, n) in enumerate(((32, 4, 200), (20, 20, 150), (24, 1, 300))):
        s = seed + i
        w = _draws(D, d, n, s)
        expected = circuits.random_composition_baseline(D, d, n, s, kind="K")
        order = "in the order the exercise gives: the later head's W_Q, W_K, W_V, W_O, then the "
        mistakes = [
            ("that is the Q-composition of the random heads; use K (the later head's keys read "
             "the earlier head: OV₀ · QK₁ᵀ).", _mean_std(_baseline_of(w, "Q"))),
            ("that is the V-composition of the random heads; use K (the later head's keys read "
             "the earlier head: OV₀ · QK₁ᵀ).", _mean_std(_baseline_of(w, "V"))),
            ("W_V and W_K were left out (W_O₀ times W_Q₁): a head's matrices are products of two "
             "factors, W_V @ W_O and W_K @ W_Qᵀ.",
             _mean_std(two_layer._frobenius_composition(w["W_O0"], w["W_Q1"]))),
            ("the products were not normalised: divide each ‖OV₀ QK₁ᵀ‖ by ‖OV₀‖ · ‖QK₁ᵀ‖.",
             _mean_std(_baseline_of(w, normalised=False))),
            ("the matrices were drawn in float64: the same seed gives other numbers in another "
             "dtype. Draw in the default float32 (convert afterwards if you like).",
             _mean_std(_baseline_of(_draws(D, d, n, s, dtype=torch.float64)))),
            ("the earlier head was drawn first: the same seed gives each matrix other numbers "
             "in another order. Draw " + order + "earlier head's W_V, W_O.",
             _mean_std(_baseline_of(_draws(D, d, n, s, order=_DRAWN[4:] + _DRAWN[:4])))),
            ("only the four matrices the score uses were drawn: draw all six " + order
             + "earlier head's W_V, W_O (W_V and W_O of the later head too, unused as they are), "
             "so that the generator gives each the exercise's numbers.",
             _mean_std(_baseline_of(_draws(D, d, n, s, order=("W_Q1", "W_K1", "W_V0", "W_O0"))))),
            ("the matrices were drawn one sample at a time: draw each for every sample at once, "
             "torch.randn(n_samples, ...), " + order + "earlier head's W_V, W_O.",
             _mean_std(_baseline_of(_draws(D, d, n, s, one_sample_at_a_time=True)))),
            ("the standard deviation is the biased one (dividing by n_samples, numpy's default): "
             "torch's .std() divides by n_samples - 1.",
             _mean_std(_baseline_of(w), unbiased=False)),
        ]  # fmt: skip
        tags = {"d_head = d_model" if d == D else "d_head = 1" if d == 1 else "d_head < d_model"}
        cases.append(Case((D, d, n, s), expected, mistakes, f"d_model {D}, d_head {d}, {n} samples",
                          describe=_describe_baseline(*expected), tags=tags))  # fmt: skip
    return cases


declare(Exercise(
    number="3.2", title="the random baseline", functions=("composition_baseline",),
    cases=_baseline_cases, reference=circuits.random_composition_baseline,
    withhold=(circuits.random_composition_baseline, circuits.composition_baseline,
              two_layer._composition_from_weights, two_layer._frobenius_composition),
    covers=frozenset({"d_head < d_model", "d_head = d_model", "d_head = 1"}),
    passed="the random baseline's mean and spread for three shapes, seeded.",
))  # fmt: skip


# ---- 3.3 a virtual head's OV circuit ---------------------------------------------------------------
def _virtual_head_cases(seed: int) -> list[Case]:
    """Every pair of heads of a two-layer and of a three-layer model (whose layer 1 is not its
    last), the same head index in both layers and different ones."""
    cases = []
    for model in random_models(seed, 2, n_layers=2, per_model=[{}, {"n_layers": 3}]):
        H, L, D, V = model.cfg.n_heads, model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab
        a0, a1, last = model.blocks[0].attn, model.blocks[1].attn, model.blocks[-1].attn
        hints = {
            (D, D): "[d_model, d_model] is the shape of OV₀ OV₁ alone: the full OV circuit reads "
            "tokens through W_E and writes logits through W_U, W_E OV₀ OV₁ W_U.",
            (V, D): "[d_vocab, d_model]: W_U is missing at the end (W_E OV₀ OV₁ W_U).",
            (D, V): "[d_model, d_vocab]: W_E is missing at the start (W_E OV₀ OV₁ W_U).",
        }
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
                    if L > 2:
                        mistakes["the second head was taken from the last layer: it is in "
                                 "layer 1, whatever the model's depth."] = (
                            model.W_E @ OV0 @ last.W_V[h1] @ last.W_O[h1] @ model.W_U
                        )  # fmt: skip
                tags = {"the same head index in both layers" if h0 == h1 else
                        "different head indices", *_model_tags(model)}  # fmt: skip
                cases.append(Case((model, h0, h1), expected, mistakes,
                                  f"heads L0H{h0}, L1H{h1} of {_model_words(model)}",
                                  shape_hints=hints, tags=tags))  # fmt: skip
    return cases


declare(Exercise(
    number="3.3", title="a virtual head's OV circuit", functions=("virtual_head_ov",),
    cases=_virtual_head_cases, reference=circuits.virtual_head_ov_circuit, block_forward=True,
    withhold=(circuits.virtual_head_ov_circuit, circuits.full_ov_circuit),
    covers=frozenset({"the same head index in both layers", "different head indices",
                      "3 layers"}),
    passed="W_E OV₀ OV₁ W_U for every pair of heads of a two- and a three-layer random model.",
))  # fmt: skip


# ---- 3.4 freezing attention patterns with hooks -------------------------------------------------------
def _patterns(model: AttnOnlyTransformer, tokens: Tensor) -> dict[int, Tensor]:
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    return {layer: cache[f"blocks.{layer}.attn.hook_pattern"]
            for layer in range(model.cfg.n_layers)}  # fmt: skip


@torch.no_grad()
def _with_hooks(model: AttnOnlyTransformer, tokens: Tensor, hooks) -> Tensor:
    return model.run_with_hooks(tokens, hooks)


def _frozen(hook_name: str, chosen: dict[int, Tensor]) -> list:
    """Hooks returning `chosen[layer]` at `blocks.{layer}.attn.{hook_name}`."""
    return [(f"blocks.{layer}.attn.{hook_name}", lambda x, hook, p=p: p)
            for layer, p in chosen.items()]  # fmt: skip


def _frozen_cases(seed: int) -> list[Case]:
    """A two-layer model (both layers, either alone), one with biases (the layers listed last
    first) and a three-layer one (layers 0 and 2, all three from the last), on tokens of n_ctx
    and fewer, with patterns recorded on other tokens."""
    models = random_models(seed, 3, n_layers=2,
                           per_model=[{}, {"use_bias": True}, {"n_layers": 3}])  # fmt: skip
    _randomise_biases(models[1], seed + 5)
    plan = (([0, 1], [1], [0]), ([1, 0],), ([0, 2], [2, 1, 0]))
    cases = []
    for i, (model, layer_lists) in enumerate(zip(models, plan, strict=True)):
        n = model.cfg.n_ctx - (0, 2, 1)[i]  # a prompt shorter than n_ctx in two of them
        tokens = random_tokens(model, seed + 10 + i, batch=2)[:, :n]
        recorded = _patterns(model, random_tokens(model, seed + 20 + i, batch=2)[:, :n])
        for layers in layer_lists:
            patterns = {layer: recorded[layer] for layer in layers}
            expected = evals.run_with_frozen_patterns(model, tokens, patterns)
            mistakes = {
                "the logits are the model's own: the patterns were not used (a hook must return "
                "the replacement, on blocks.{layer}.attn.hook_pattern).": _with_hooks(
                    model, tokens, []
                ),
                "the patterns went into hook_attn_scores, where the softmax runs on them again: "
                "replace hook_pattern, which is after the softmax.": _with_hooks(
                    model, tokens, _frozen("hook_attn_scores", patterns)
                ),
            }
            if 0 in layers and len(layers) > 1:
                mistakes["only layer 0 was frozen: freeze every layer in `patterns`."] = (
                    evals.run_with_frozen_patterns(model, tokens, {0: patterns[0]})
                )
            if len(layers) > 1:
                last = patterns[layers[-1]]  # the loop variable's final value
                mistakes[
                    "every layer got the last layer's pattern: a lambda defined in a loop sees the "
                    "loop variable's final value. Bind it when the hook is made, e.g. "
                    "`lambda x, hook, p=pattern: p`."
                ] = _with_hooks(model, tokens, _frozen("hook_pattern", dict.fromkeys(layers, last)))
            if layers != list(range(len(layers))):
                mistakes[
                    "the patterns went to layers 0, 1, … in turn (enumerate, or "
                    "range(len(patterns))): the dict's keys are the layers, in any order and "
                    "not necessarily all of them; hook blocks.{layer} for each key."
                ] = _with_hooks(
                    model, tokens, _frozen("hook_pattern", dict(enumerate(patterns.values())))
                )
            tags = _model_tags(model)
            tags.add("every layer frozen" if len(layers) == model.cfg.n_layers
                     else "a layer left unfrozen")  # fmt: skip
            if layers != sorted(layers):
                tags.add("layers listed out of order")
            if sorted(layers) != list(range(len(layers))):
                tags.add("layers other than 0, 1, …")
            if n < model.cfg.n_ctx:
                tags.add("tokens shorter than n_ctx")
            where = f"layers {layers} frozen in {_model_words(model)}, {n} tokens"
            note = _BIASES if model.cfg.use_bias else ""
            cases.append(Case((model, tokens, patterns), expected, mistakes, where, tags=tags,
                              describe=_noting(expected, note)))  # fmt: skip
    return cases


declare(Exercise(
    number="3.4", title="freezing attention patterns with hooks",
    functions=("run_with_frozen_patterns",), cases=_frozen_cases,
    reference=evals.run_with_frozen_patterns,
    withhold=(evals.run_with_frozen_patterns, evals.term_importance),
    covers=frozenset({"every layer frozen", "a layer left unfrozen", "layers listed out of order",
                      "layers other than 0, 1, …", "biases", "3 layers",
                      "tokens shorter than n_ctx"}),
    passed="the logits with any set of frozen layers, in any order, for random two- and "
    "three-layer models, with and without biases.",
))  # fmt: skip


# ---- 3.5 term importance ---------------------------------------------------------------------------
_ORDERS = (
    "Order 0 is the direct path alone (W_E then W_U); order 1 adds every head reading the "
    "embeddings; order 2 adds layer 1 reading layer 0's output; patterns frozen throughout. In "
    "these shortformer models the positional embedding enters only queries and keys, never the "
    "residual stream or the values."
)


@torch.no_grad()
def _orders_with_positions(model: AttnOnlyTransformer, tokens: Tensor, cache) -> tuple:
    """The three losses with W_pos added into the residual stream (a mistake), patterns frozen."""
    x0 = model.W_E[tokens] + model.W_pos[: tokens.shape[1]]

    def heads(layer: int, x: Tensor) -> Tensor:
        attn, pattern = model.blocks[layer].attn, cache[f"blocks.{layer}.attn.hook_pattern"]
        return torch.einsum("bhqk,bkm,hmd,hdn->bqn", pattern, x, attn.W_V, attn.W_O)

    def loss(resid: Tensor) -> float:
        return float(next_token_loss(resid @ model.W_U, tokens))

    l0 = heads(0, x0)
    return loss(x0), loss(x0 + l0 + heads(1, x0)), loss(x0 + l0 + heads(1, x0 + l0))


def _read_losses(out: object, case: Case) -> tuple[float, float, float]:
    """Three losses, or a CheckFailed on the answer's form."""
    ex = _TERMS.name
    if hasattr(out, "ndim") and out.ndim == 1:  # a tensor or an array of three
        out = list(out)
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise CheckFailed(ex, "term_importance must return three losses (order_0, order_1, "
                          "order_2).")  # fmt: skip
    return tuple(expect_float(ex, f"order_{k}", v) for k, v in enumerate(out))


def _describe_losses(answer: tuple, expected: tuple) -> str:
    wrong = [f"order {k}: got {g:.4f}, expected {e:.4f}"
             for k, (g, e) in enumerate(zip(answer, expected, strict=True)) if not same(g, e)]  # fmt: skip
    return "; ".join(wrong) + ". " + _ORDERS


def _term_cases(seed: int) -> list[Case]:
    """Two random shortformer models without biases, on prompts of n_ctx tokens and fewer."""
    cases = []
    for i, model in enumerate(random_models(seed, 2, n_layers=2)):
        n = model.cfg.n_ctx - 2 * i
        tokens = random_tokens(model, seed + 10 + i, batch=4 - i)[:, :n]
        ref = evals.term_importance(model, tokens)
        expected = (ref.order_0, ref.order_1, ref.order_2)
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens)
            x0, pos = model.W_E[tokens], model.W_pos[:n]
            # order 1 with layer 1's pattern recomputed from the embeddings instead of frozen
            recomputed = model.blocks[1].attn(x0 + pos, x0)
            l0 = model.blocks[0].attn(x0 + pos, x0)  # layer 0 reads x0: its patterns are real
            unfrozen = float(next_token_loss((x0 + l0 + recomputed) @ model.W_U, tokens))
        mistakes = {
            "order 1 lets layer 1 read layer 0's output (that is order 2): at order 1 every head "
            "reads the embeddings alone.": (ref.order_0, ref.order_2, ref.order_2),
            "at order 1, layer 1's attention pattern was recomputed from the embeddings: freeze it "
            "to the full model's pattern (only V-composition is being removed).": (
                ref.order_0,
                unfrozen,
                ref.order_2,
            ),
            "the orders are in the wrong order: return (order 0, order 1, order 2), the losses "
            "with more and more terms.": (ref.order_2, ref.order_1, ref.order_0),
            "order 1 left out layer 1's heads: at order 1 every head of both layers reads the "
            "embeddings.": (ref.order_0, ref.layer_0_only, ref.order_2),
            "order 1 left out layer 0's heads: at order 1 every head of both layers reads the "
            "embeddings.": (ref.order_0, ref.layer_1_only, ref.order_2),
            "the positional embedding was added to x0: in these shortformer models positions "
            "enter only the queries and keys (through the recorded patterns), never the residual "
            "stream or the values; x0 = W_E[tokens].": _orders_with_positions(model, tokens, cache),
        }
        tags = {"tokens shorter than n_ctx"} if n < model.cfg.n_ctx else {"n_ctx tokens"}
        where = f"{tokens.shape[0]} prompts of {n} tokens, {_model_words(model)}"
        cases.append(Case((model, tokens), expected, mistakes, where, tags=tags,
                          describe=lambda answer, e=expected: _describe_losses(answer, e)))  # fmt: skip
    return cases


_TERMS = declare(Exercise(
    number="3.5", title="term importance", functions=("term_importance",), cases=_term_cases,
    reference=evals.term_importance, withhold=(evals.term_importance,), read=_read_losses,
    covers=frozenset({"tokens shorter than n_ctx", "n_ctx tokens"}),
    passed="the losses of the path expansion at orders 0, 1 and 2, for two random models.",
))  # fmt: skip


# ---- 3.6 path ablation -----------------------------------------------------------------------------
@torch.no_grad()
def _subtracting(model, tokens, sent: Tensor, receiver: str, layers, late_bound: bool = False):
    """Logits with `sent` `[batch, pos, d_model]` (a head's output, or a whole layer's) taken out
    of the `receiver` input of every head in `layers`. `late_bound`: the mistake of one hook per
    head made in a loop without binding the head, so that every hook takes it out of the last
    head (n_heads times) and none out of the others."""
    H, hooks = model.cfg.n_heads, []
    for layer in layers:
        W = getattr(model.blocks[layer].attn, f"W_{receiver.upper()}")  # [head, d_model, d_head]
        removed = torch.einsum("bpm,hmd->bphd", sent, W)

        def subtract(x, hook, removed=removed):
            if not late_bound:
                return x - removed
            x = x.clone()
            x[:, :, H - 1] -= H * removed[:, :, H - 1]
            return x

        hooks.append((f"blocks.{layer}.attn.hook_{receiver}", subtract))
    return model.run_with_hooks(tokens, hooks)


_INPUTS = {"q": "queries", "k": "keys", "v": "values"}


def _path_cases(seed: int) -> list[Case]:
    """A two-layer model (its sender never head 0), one with biases and a three-layer one (whose
    layer 1 is not the last), each path in turn."""
    models = random_models(seed, 3, n_layers=2,
                           per_model=[{}, {"use_bias": True}, {"n_layers": 3}])  # fmt: skip
    _randomise_biases(models[1], seed + 5)
    cases = []
    for i, model in enumerate(models):
        H, L = model.cfg.n_heads, model.cfg.n_layers
        tokens = random_tokens(model, seed + 10 + i, batch=2)
        g = generator(seed + i)
        # never head 0 in the first model: an answer that takes head 0, or the sender's layer
        # index for its head, cannot pass by luck
        head = int(torch.randint(1 if i == 0 else 0, H, (), generator=g))
        sender = (0, head)
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens)
        sent = cache["blocks.0.attn.hook_result"][:, :, head]
        for receiver in "qkv":
            expected = evals.run_with_path_ablation(model, tokens, sender, receiver, layer=1)
            mistakes = {
                "the head was removed from everything downstream (its output zeroed): remove it "
                "from one input of layer 1 only.": evals.run_with_ablation(model, tokens, [sender]),
                "the whole of layer 0's output was taken out (hook_attn_out), not the sender's "
                "alone: take the head's own output, cache['blocks.0.attn.hook_result'][:, :, "
                "head].": _subtracting(model, tokens, cache["blocks.0.hook_attn_out"], receiver, [1]),
                "every layer-1 head's hook took the output out of the last head only: a function "
                "defined in a loop over the heads sees the loop variable's final value. Subtract "
                "for every head at once (x - removed), or bind the head when the hook is made.":
                    _subtracting(model, tokens, sent, receiver, [1], late_bound=True),
            }  # fmt: skip
            for other in "qkv".replace(receiver, ""):
                mistakes[
                    f"the head was removed from the {other!r} input, not from {receiver!r}."
                ] = evals.run_with_path_ablation(model, tokens, sender, other, layer=1)
            if head != 0:
                mistakes["the sender's layer index was taken for its head: sender = (layer, "
                         "head), the head is sender[1]."] = (
                    evals.run_with_path_ablation(model, tokens, (0, 0), receiver, layer=1)
                )  # fmt: skip
            if L > 2:
                mistakes["the path was removed from the last layer's input: the receiver is "
                         "layer 1, whatever the model's depth."] = (
                    evals.run_with_path_ablation(model, tokens, sender, receiver, layer=L - 1)
                )  # fmt: skip
                mistakes["the path was removed from every later layer: only layer 1's "
                         f"{_INPUTS[receiver]} lose it."] = (
                    _subtracting(model, tokens, sent, receiver, range(1, L))
                )  # fmt: skip
            tags = {_INPUTS[receiver], *_model_tags(model)}
            tags.add("sender head 0" if head == 0 else "a sender other than head 0")
            where = f"sender L0H{head}, receiver {receiver!r}, {_model_words(model)}"
            note = _BIASES if model.cfg.use_bias else ""
            cases.append(Case((model, tokens, sender, receiver), expected, mistakes, where,
                              tags=tags, describe=_noting(expected, note)))  # fmt: skip
    return cases


declare(Exercise(
    number="3.6", title="path ablation", functions=("path_ablation",), cases=_path_cases,
    reference=evals.run_with_path_ablation,
    withhold=(evals.run_with_path_ablation, evals.run_with_ablation),
    covers=frozenset({"queries", "keys", "values", "biases", "3 layers",
                      "a sender other than head 0"}),
    passed="one path removed at a time (queries, keys, values), for random two- and three-layer "
    "models, with and without biases.",
))  # fmt: skip


# ---- 3.7 who reads whom? -----------------------------------------------------------------------------
def _ratios(model: AttnOnlyTransformer, baseline: bool = True) -> Tensor:
    """Composition score over the random baseline's mean, `[kind, layer-0 head, layer-1 head]`."""
    return torch.stack([
        circuits.composition_scores(model, k)
        / (circuits.composition_baseline(model, k)[0] if baseline else 1.0)
        for k in KINDS
    ])  # fmt: skip


def _strongest(ratios: Tensor, threshold: float, kinds: str = "QKV") -> dict:
    """The map an answer gives that takes, for every layer-1 head, the largest ratio among
    `kinds` (all three: the right answer)."""
    chosen = [KINDS.index(k) for k in kinds]
    found = {}
    for h1 in range(ratios.shape[-1]):
        k, h0 = divmod(int(ratios[chosen, :, h1].argmax()), ratios.shape[1])
        found[h1] = (kinds[k], h0) if ratios[chosen[k], h0, h1] >= threshold else None
    return found


def _first_kind(ratios: Tensor, threshold: float) -> dict:
    """The map of the first kind, in Q, K, V order, whose best ratio reaches the threshold."""
    found = {}
    for h1 in range(ratios.shape[-1]):
        over = [k for k in range(3) if ratios[k, :, h1].max() >= threshold]
        found[h1] = (KINDS[over[0]], int(ratios[over[0], :, h1].argmax())) if over else None
    return found


def _summed_kind(ratios: Tensor, threshold: float) -> dict:
    """The map of the kind whose ratios, summed over the layer-0 heads, are the largest."""
    found = {}
    for h1 in range(ratios.shape[-1]):
        k = int(ratios[:, :, h1].sum(1).argmax())
        h0 = int(ratios[k, :, h1].argmax())
        found[h1] = (KINDS[k], h0) if ratios[k, h0, h1] >= threshold else None
    return found


_MAP_FORMAT = (
    "composition_map must return a dict with one entry per layer-1 head: head index -> None or "
    "(kind, layer-0 head), kind one of 'Q', 'K', 'V'; e.g. {0: ('K', 1), 1: None}"
)


def _read_map(out: object, case: Case) -> dict:
    """The learner's composition map with ints and kind strings, or a CheckFailed naming the
    expected format."""
    ex, n_heads = _MAP.name, case.args[0].cfg.n_heads
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
        if entry is not None and entry[0] not in KINDS:
            raise CheckFailed(ex, f"{_MAP_FORMAT}; got the kind {entry[0]!r}.")
        got[head] = entry
    return got


def _describe_map(expected: dict) -> Callable[[dict], str]:
    def describe(got: dict) -> str:
        wrong = [f"L1H{h}: you found {got.get(h, 'nothing')}, expected {t}"
                 for h, t in expected.items() if got.get(h, "nothing") != t]  # fmt: skip
        return ("; ".join(wrong) + ". Compare each (kind, layer-0 head) by its score divided by "
                "the random baseline's mean; keep the largest if it reaches the threshold.")  # fmt: skip

    return describe


def _map_cases(seed: int) -> list[Case]:
    """Two mystery models (wiring planted by hand, with traps for the first kind over the
    threshold and for the kind that sums highest), at threshold 2 and at a drawn threshold that
    falls between the heads' best ratios."""
    cases = []
    for i in range(2):
        mystery = handmade.mystery_composition(seed + i)
        model = mystery.model
        ratios, scores = _ratios(model), _ratios(model, baseline=False)
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
            expected = circuits.composition_map(model, applied)
            first, summed = _first_kind(ratios, applied), _summed_kind(ratios, applied)
            mistakes = {
                "the scores were not divided by the random baseline's mean: a score means "
                "something only against what random heads of these shapes give "
                "(circuits.composition_baseline).": _strongest(scores, applied),
                "the first kind (in Q, K, V order) whose ratio reaches the threshold was taken: "
                "the strongest reading over all three kinds and all layer-0 heads counts.": first,
                "the kind was chosen by its ratios summed over the layer-0 heads: the single "
                "strongest (kind, layer-0 head) counts.": summed,
                "only K-composition was considered: a head may read through its queries, keys or "
                "values.": _strongest(ratios, applied, kinds="K"),
            }
            if applied != 2.0:
                mistakes["the threshold passed in was not applied (2, the default, was): a head "
                         "maps to None when its best ratio is below `threshold`."] = (
                    _strongest(ratios, 2.0)
                )  # fmt: skip
            tags = {"a threshold other than 2"} if applied != 2.0 else set()
            if (best >= applied).any() and (best < applied).any():
                tags.add("heads on both sides of the threshold")
            if first != expected:
                tags.add("a trap for the first kind over the threshold")
            if summed != expected:
                tags.add("a trap for the kind that sums highest")
            where = f"a mystery model with {model.cfg.n_heads} heads, threshold {applied}"
            cases.append(Case((model, applied), expected, mistakes, where, tags=tags,
                              describe=_describe_map(expected)))  # fmt: skip
    return cases


_MAP = declare(Exercise(
    number="3.7", title="who reads whom?", functions=("composition_map",), cases=_map_cases,
    reference=circuits.composition_map, read=_read_map, block_forward=True,
    withhold=(circuits.composition_map, handmade.mystery_composition),
    covers=frozenset({"a threshold other than 2", "heads on both sides of the threshold",
                      "a trap for the first kind over the threshold",
                      "a trap for the kind that sums highest"}),
    passed="the planted wiring of two mystery models, at threshold 2 and a drawn one.",
))  # fmt: skip


# ---- 3.8 virtual weights ---------------------------------------------------------------------------
_READ_WITH = {"q": "queries, W_Q", "k": "keys, W_K", "v": "values, W_V"}


def _virtual_weight_cases(seed: int) -> list[Case]:
    """Every pair of layers (writer earlier) of a random two- and three-layer model, each kind,
    with heads drawn at check time: writer and reader heads differ (so that no mix-up of the two
    can pass), and each layer pair's three kinds take different writer heads (so that no head
    index can be built in)."""
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
        model_cases = []
        for la in range(L):
            for lb in range(la + 1, L):
                heads = torch.randperm(H, generator=g).tolist()
                for i, kind in enumerate(circuits.READ_KINDS):
                    ha, hb = heads[i % H], heads[(i + 1) % H]
                    expected = circuits.virtual_weight(model, (la, ha), (lb, hb), kind).detach()
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
                    tags = {f"kind {kind!r}", *_model_tags(model)}
                    if lb - la > 1:
                        tags.add("a writer two layers before its reader")
                    where = f"writer L{la}H{ha}, reader L{lb}H{hb}, kind {kind!r}"
                    model_cases.append(Case((model, (la, ha), (lb, hb), kind), expected,
                                            mistakes, where, hints, tags=tags))  # fmt: skip
        for case in model_cases:  # tagged from what the cases hold: several writers per layer
            layer = case.args[1][0]
            if len({c.args[1][1] for c in model_cases if c.args[1][0] == layer}) > 1:
                case.tags = {*case.tags, "several writer heads of one layer"}
        cases += model_cases
    return cases


declare(Exercise(
    number="3.8", title="virtual weights", functions=("virtual_weight",),
    cases=_virtual_weight_cases, reference=circuits.virtual_weight, block_forward=True,
    withhold=(circuits.virtual_weight, circuits.read_shares),
    covers=frozenset({"kind 'q'", "kind 'k'", "kind 'v'", "3 layers",
                      "a writer two layers before its reader",
                      "several writer heads of one layer"}),
    passed="W_O^A @ W_Q/K/V^B for writers one and two layers before their readers, every kind, "
    "several heads of each layer, in random two- and three-layer models.",
))  # fmt: skip


# ---- 3.9 read shares -------------------------------------------------------------------------------
_SHARE_IS = (
    " The share is ‖P W_read‖_F² / ‖W_read‖_F², P the orthogonal projector onto W_O's row space."
)
_RELATIVE = (
    "count as zero only the singular values that are rounding noise *relative to the largest* "
    "(S > S.max() · max(W_O.shape) · torch.finfo(W_O.dtype).eps, torch.linalg.matrix_rank's "
    "tolerance), or use torch.linalg.pinv(W_O) @ W_O"
)


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


def _describe_share(expected: float, lead: str, hint: str) -> Callable[[float], str]:
    def describe(out: float) -> str:
        outside = "" if 0 <= out <= 1 else " A share lies in [0, 1]."
        return f"{lead}got {out:.4f}, expected {expected:.4f}.{outside}{hint or _SHARE_IS}"

    return describe


def _share_case(
    W_read: Tensor, W_O: Tensor, where: str, hint: str = "", lead: str = "", tiny: bool = False
) -> Case:
    """A case of Exercise 3.9, tagged from its weights; `lead` and `hint` say what is special
    about its W_O to a wrong answer, where this case is the first one wrong."""
    share = circuits.read_share(W_read, circuits.row_space(W_O))
    mistakes = _share_mistakes(W_read, W_O, share)
    if tiny:
        mistakes.append((
            "every singular value of a tiny W_O was counted as zero: it is small (scaled by "
            f"1e-9) but of full rank. An absolute threshold cannot tell; {_RELATIVE}.", 0.0,
        ))  # fmt: skip
    S = torch.linalg.svdvals(W_O.double())
    rank, d, D = circuits.row_space(W_O).shape[0], *W_O.shape
    tags = {"share above 1/2"} if share > 0.5 else set()
    tags |= {"share below the random share"} if share < d / D else set()
    if W_read.shape[1] != d:
        tags.add("W_read and W_O of other widths")
    if float(S.max()) < 1e-3 or float(S.max()) > 1e3:
        tags.add("W_O far smaller than 1" if float(S.max()) < 1e-3 else "W_O far larger than 1")
    if rank == d and float(S.min() / S.max()) < 1e-3:
        tags.add("a small but real singular value")
    if W_O.dtype == torch.float64:
        tags.add("float64")
    if rank < d:
        tags.add("rank-deficient W_O")
        if int(torch.linalg.matrix_rank(W_O[:rank].double())) < rank:
            tags.add("a dependent row before the last")
        if rank < d - 1:
            tags.add("rank d_head - 2")
    return Case(
        (W_read, W_O),
        share,
        mistakes,
        where,
        tags=tags,
        describe=_describe_share(share, lead, hint),
    )


def _dependent(
    W_O: Tensor, rows: list[int], g: torch.Generator, sources: list[int] | None = None
) -> tuple[Tensor, str]:
    """W_O with each of `rows` replaced by a power-of-two multiple of another row that is kept
    (one of `sources`, by default any), exact in float32 so that the rank drops exactly; and
    how it was made."""
    W_O = W_O.clone()
    kept = [r for r in sources or range(W_O.shape[0]) if r not in rows]
    made = []
    for row in rows:
        source = kept[int(torch.randint(len(kept), (), generator=g))]
        factor = (2.0, -2.0, 0.5, -0.5)[int(torch.randint(4, (), generator=g))]
        W_O[row] = factor * W_O[source]
        made.append(f"row {row} = {factor:g} × row {source}")
    return W_O, ", ".join(made)


def _read_share_cases(seed: int) -> list[Case]:
    """Readers mostly inside, mostly outside and at random to a writer's subspace, of several
    shapes; W_Os of full rank far from scale 1 (1e-9) and with a small but real singular value;
    last, W_Os of rank below d_head (a row anywhere but last depending on another; two rows
    anywhere, scaled by 1e8): if the first wrong case is one of those, every full-rank one was
    right."""
    g = generator(seed + 1)
    cases, writers = [], []
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
            cases.append(_share_case(W_read, W_O, f"W_{kind} of a random head, d_model {D}, "
                                     f"d_head {d}"))  # fmt: skip
        writers.append((cases[-1].args[0], W_O))
        W = torch.randn(D, d, generator=g)
        cases.append(_share_case(P @ W + 0.3 * outside @ W, W_O,
                                 f"a W_read mostly inside, d_model {D}"))  # fmt: skip
        cases.append(_share_case(outside @ W + 0.4 * P @ W, W_O,
                                 f"a W_read mostly outside, d_model {D}"))  # fmt: skip
        # a writer and a reader of other widths: the answer must not assume d_head
        k = d + 2
        cases.append(_share_case(torch.randn(D, k - 1, generator=g) * 2,
                                 torch.randn(k, D, generator=g) * 0.3,
                                 f"W_read [{D}, {k - 1}], W_O [{k}, {D}]"))  # fmt: skip
    (W_read0, W_O0), (W_read1, W_O1) = writers
    cases.append(_share_case(
        W_read0, W_O0 * 1e-9, "a W_O of full rank scaled by 1e-9 (a head that writes almost "
        "nothing)", tiny=True,
        hint=f" All its singular values are tiny, but none is zero: {_RELATIVE}, never below a "
        "fixed number.",
    ))  # fmt: skip
    # in float64, where a singular value a millionth of the largest is far above rounding noise
    # (in float32 its direction could not be told accurately enough to judge the answer)
    U, S, Vh = torch.linalg.svd(W_O1.double(), full_matrices=False)
    S[int(torch.randint(len(S), (), generator=g))] = 1e-6 * S.max()
    cases.append(_share_case(
        W_read1.double(), (U * S) @ Vh, "a float64 W_O whose smallest singular value is 1e-6 of "
        "its largest",
        hint=" That singular value is small but real (rounding noise in float64 is about 1e-16 of "
        f"the largest): {_RELATIVE}.",
    ))  # fmt: skip
    rank_hint = (
        " W_O writes into rank(W_O) dimensions, here fewer than d_head: project onto its row "
        f"space; {_RELATIVE}. (A QR of W_O.T, cut to the rank or not, spans W_O's first rows, "
        "not its row space, where one of them depends on others.)"
    )
    # a row before the last, a multiple of another row before the last: the first rank(W_O)
    # rows then span less than the row space
    d0, d1 = W_O0.shape[0], W_O1.shape[0]
    W_O, made = _dependent(W_O0, [int(torch.randint(d0 - 1, (), generator=g))], g,
                           sources=list(range(d0 - 1)))  # fmt: skip
    cases.append(_share_case(
        W_read0, W_O, f"W_O [{d0}, {W_O.shape[1]}] with {made}", hint=rank_hint,
        lead=f"right for every W_O of full rank, but not for a W_O of rank {d0 - 1} < d_head: ",
    ))  # fmt: skip
    W_O, made = _dependent(W_O1 * 1e8, torch.randperm(d1, generator=g)[:2].tolist(), g)
    cases.append(_share_case(
        W_read1, W_O, f"W_O [{d1}, {W_O.shape[1]}] scaled by 1e8, with {made}",
        lead=f"right for every W_O of full rank, but not for a W_O of rank {d1 - 2} < d_head "
        "(its zero singular values come out of an SVD as rounding noise, large at this scale): ",
        hint=rank_hint,
    ))  # fmt: skip
    return cases


declare(Exercise(
    number="3.9", title="read shares", functions=("read_share",), cases=_read_share_cases,
    reference=circuits.read_share, block_forward=True,
    withhold=(circuits.read_share, circuits.read_shares, circuits.row_space, circuits.projector,
              circuits.write_subspace),
    on_error={"_LinAlgError": "W_O @ W_O.T is singular where W_O is rank-deficient: project "
              "with the SVD's right singular vectors (or torch.linalg.pinv), not an inverse."},
    covers=frozenset({"share above 1/2", "share below the random share",
                      "W_read and W_O of other widths", "W_O far smaller than 1",
                      "W_O far larger than 1", "a small but real singular value",
                      "rank-deficient W_O", "a dependent row before the last", "rank d_head - 2",
                      "float64"}),
    passed="the share of the squared norm inside a writer's subspace, for readers mostly inside, "
    "mostly outside and at random, several shapes, W_Os far from scale 1 and W_Os of rank below "
    "d_head.",
))  # fmt: skip
