"""Exercises 3.1 and 3.2: composition scores and their random baseline."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from helpers import circuits
from helpers.checks._base import generator, random_models
from helpers.checks._judge import Case, same
from helpers.checks._registry import Exercise, declare
from helpers.checks.composition._shared import (
    KINDS,
    model_tags,
    model_words,
    noting,
    scale_weights,
)
from helpers.circuits import two_layer

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
    scale_weights(small, 1e-3)
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
                tags = {f"{kind}-composition", *model_tags(model)}
                where, note = f"{kind}-composition, {model_words(model)}", ""
                if not 1e-2 < float(a0.W_O.abs().mean()) < 1e2:
                    tags.add("weights far from scale 1")
                    where += ", weights 1000 times smaller than usual"
                    note = (" The score does not depend on the weights' scale: is something "
                            "added to a norm (an epsilon), or compared with a fixed number?")  # fmt: skip
                cases.append(Case((model, kind), expected, mistakes, where, tags=tags,
                                  describe=noting(expected, note)))  # fmt: skip
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
