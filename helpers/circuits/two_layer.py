"""Two-layer circuits (framework paper, "Two-Layer Attention-Only Transformers"): composition
scores and their random baseline, virtual heads, the Q- and K-composition terms of a later head's
QK circuit (chapters 03-04)."""

from __future__ import annotations

import torch
from torch import Tensor

from helpers.models import AttnOnlyTransformer, as_index
from helpers.references import reference

COMPOSITION_KINDS = ("Q", "K", "V")


@reference
def _frobenius_composition(W_A: Tensor, W_B: Tensor) -> Tensor:
    """‖W_A W_B‖_F / (‖W_A‖_F ‖W_B‖_F), batched over leading axes."""
    num = (W_A @ W_B).flatten(-2).norm(dim=-1)
    return num / (W_A.flatten(-2).norm(dim=-1) * W_B.flatten(-2).norm(dim=-1))


@reference
def _composition_from_weights(
    W_Q2: Tensor,
    W_K2: Tensor,
    W_V2: Tensor,
    W_O2: Tensor,
    W_V1: Tensor,
    W_O1: Tensor,
    kind: str,
    all_pairs: bool = True,
) -> Tensor:
    """Scores from stacked per-head weights: `[earlier head, later head]` for all pairs, or
    `[i]` for the pairs (earlier i, later i) when `all_pairs=False`."""
    OV1 = W_V1 @ W_O1  # [h1, d_model, d_model]: what earlier heads write
    if kind == "Q":  # the later head's queries read it: ‖OV1 · QK2‖
        other = W_Q2 @ W_K2.transpose(-1, -2)
    elif kind == "K":  # its keys read it: ‖OV1 · QK2ᵀ‖
        other = W_K2 @ W_Q2.transpose(-1, -2)
    else:  # its values read it: ‖OV1 · OV2‖
        other = W_V2 @ W_O2
    if all_pairs:
        OV1, other = OV1[:, None], other[None]
    return _frobenius_composition(OV1, other)


@reference
@torch.no_grad()
def composition_scores(
    model: AttnOnlyTransformer, kind: str, earlier_layer: int = 0, later_layer: int = 1
) -> Tensor:
    """Q-, K- or V-composition scores `[earlier head, later head]` (framework paper,
    "Two-Layer Attention-Only Transformers": the Frobenius norm of the product of the two heads'
    matrices divided by the product of their norms).

    In our row convention, with OV = W_V W_O (what the earlier head writes) and QK = W_Q W_Kᵀ:
    Q: ‖OV1 · QK2‖, K: ‖OV1 · QK2ᵀ‖, V: ‖OV1 · OV2‖, each over ‖·‖‖·‖. These equal the paper's
    ‖W_QK2ᵀ W_OV1‖, ‖W_QK2 W_OV1‖ and ‖W_OV2 W_OV1‖ normalised likewise (a matrix and its
    transpose have the same norm). Compare with `composition_baseline`.
    """
    if kind not in COMPOSITION_KINDS:
        raise ValueError(f"kind must be one of {COMPOSITION_KINDS}, got {kind!r}")
    n = model.cfg.n_layers
    if n < 2:
        raise ValueError(f"composition needs a model with at least two layers, got {n}")
    earlier_layer = as_index("earlier_layer", earlier_layer, n)
    later_layer = as_index("later_layer", later_layer, n)
    if not earlier_layer < later_layer:
        raise ValueError(
            f"need 0 <= earlier_layer < later_layer <= {n - 1}, got {earlier_layer}, {later_layer}"
        )
    a1, a2 = model.blocks[earlier_layer].attn, model.blocks[later_layer].attn
    return _composition_from_weights(a2.W_Q, a2.W_K, a2.W_V, a2.W_O, a1.W_V, a1.W_O, kind)


@reference
@torch.no_grad()
def random_composition_baseline(
    d_model: int, d_head: int, n_samples: int = 200, seed: int = 0, kind: str = "K"
) -> tuple[float, float]:
    """(mean, std) of the composition score between random heads with these shapes: `n_samples`
    pairs of heads whose W_Q, W_K, W_V `[d_model, d_head]` and W_O `[d_head, d_model]` are i.i.d.
    Gaussian (the score does not depend on their scale), each earlier head paired with one later
    head. About 1/sqrt(d_model) when d_head << d_model, for every kind (Q, K and V read random
    matrices of the same shapes). Drawn from a generator seeded with `seed`, in this order: the
    later heads' W_Q, W_K, W_V, W_O, then the earlier heads' W_V, W_O (each `[n_samples, ...]`)."""
    if kind not in COMPOSITION_KINDS:
        raise ValueError(f"kind must be one of {COMPOSITION_KINDS}, got {kind!r}")
    for name, value in (("d_model", d_model), ("d_head", d_head)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an int >= 2, got {n_samples!r}")
    gen = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> Tensor:
        return torch.randn(n_samples, *shape, generator=gen).double()

    D, d = d_model, d_head
    scores = _composition_from_weights(
        draw(D, d), draw(D, d), draw(D, d), draw(d, D), draw(D, d), draw(d, D), kind,
        all_pairs=False,
    )  # fmt: skip
    return float(scores.mean()), float(scores.std())


@reference
def composition_baseline(
    model: AttnOnlyTransformer, kind: str, n_samples: int = 200, seed: int = 0
) -> tuple[float, float]:
    """`random_composition_baseline` for this model's shapes. The framework paper compares
    composition scores with "the empirical expected amount for random matrices of the same
    shapes"."""
    return random_composition_baseline(model.cfg.d_model, model.cfg.d_head, n_samples, seed, kind)


@reference
@torch.no_grad()
def composition_map(
    model: AttnOnlyTransformer,
    threshold: float = 2.0,
    n_samples: int = 200,
    sigmas: float | None = None,
) -> dict[int, tuple[str, int] | None]:
    """For every layer-1 head of a two-layer model: the (kind, layer-0 head) it composes with most,
    measured by composition score over the random baseline, or None if no pair reaches
    `threshold` times the baseline's mean. With `sigmas`, a pair counts instead when its score
    lies at least `sigmas` standard deviations of the baseline above its mean: a model whose
    d_head is a large share of d_model (random scores near 1/sqrt(d_model) are then not small)
    composes well above chance yet never reaches twice the mean (chapter 06)."""
    if model.cfg.n_layers != 2:
        raise ValueError(f"composition_map needs a two-layer model, got {model.cfg.n_layers}")
    if sigmas is not None and not (isinstance(sigmas, (int, float)) and sigmas > 0):
        raise ValueError(f"sigmas must be None or a number > 0, got {sigmas!r}")
    baselines = [composition_baseline(model, kind, n_samples) for kind in COMPOSITION_KINDS]
    scores = torch.stack([composition_scores(model, kind) for kind in COMPOSITION_KINDS])
    mean = torch.tensor([m for m, _ in baselines], dtype=scores.dtype)[:, None, None]
    std = torch.tensor([s for _, s in baselines], dtype=scores.dtype)[:, None, None]
    ratios = scores / mean  # [kind, earlier head, later head]
    passed = ratios >= threshold if sigmas is None else (scores - mean) / std >= sigmas
    found: dict[int, tuple[str, int] | None] = {}
    for h1 in range(model.cfg.n_heads):
        best = int(ratios[..., h1].argmax())
        kind, h0 = divmod(best, model.cfg.n_heads)
        found[h1] = (COMPOSITION_KINDS[kind], h0) if passed[kind, h0, h1] else None
    return found


@reference
@torch.no_grad()
def _head_pair(model: AttnOnlyTransformer, earlier: tuple[int, int], later: tuple[int, int]):
    """(attention module, head) of two heads in strictly increasing layers, validated."""
    if not all(isinstance(h, (tuple, list)) and len(h) == 2 for h in (earlier, later)):
        raise ValueError(f"heads must be (layer, head) pairs, got {earlier!r} and {later!r}")
    l1, h1 = model.check_head(*earlier)
    l2, h2 = model.check_head(*later)
    if not l1 < l2:
        raise ValueError(f"the earlier head must be in an earlier layer, got layers {l1} and {l2}")
    return model.blocks[l1].attn, h1, model.blocks[l2].attn, h2


@reference
@torch.no_grad()
def virtual_head_ov_circuit(
    model: AttnOnlyTransformer, earlier: tuple[int, int], later: tuple[int, int]
) -> Tensor:
    """Full OV circuit of the virtual head "earlier then later" (V-composition):
    `W_E OV_earlier OV_later W_U`, `[source token, output logit]` (framework paper, virtual
    attention heads: their OV matrix is the product of the two heads' OV matrices)."""
    a1, h1, a2, h2 = _head_pair(model, earlier, later)
    return model.W_E @ a1.W_V[h1] @ a1.W_O[h1] @ a2.W_V[h2] @ a2.W_O[h2] @ model.W_U


@reference
@torch.no_grad()
def k_composition_circuit(
    model: AttnOnlyTransformer, prev_head: tuple[int, int], induction_head: tuple[int, int]
) -> Tensor:
    """The K-composition term of an induction head's QK circuit, `[query token, key token]`:
    `(W_E W_Q^ind) (W_E W_V^prev W_O^prev W_K^ind)ᵀ / sqrt(d_head)`.

    Entry (a, b): the score of a query with token a on a key position whose *previous* token is b
    (the previous-token head moved b there). An induction head needs it to be largest when a = b,
    "same-token matching" (framework paper, "How Induction Heads Work")."""
    a1, h1, a2, h2 = _head_pair(model, prev_head, induction_head)
    queries = model.W_E @ a2.W_Q[h2]
    keys = model.W_E @ a1.W_V[h1] @ a1.W_O[h1] @ a2.W_K[h2]
    return queries @ keys.T / model.cfg.d_head**0.5


@reference
@torch.no_grad()
def q_composition_circuit(
    model: AttnOnlyTransformer, earlier_head: tuple[int, int], later_head: tuple[int, int]
) -> Tensor:
    """The Q-composition term of a later head's QK circuit, `[token the earlier head attended to
    from the query position, key token]`: `(W_E W_V^1 W_O^1 W_Q^2) (W_E W_K^2)ᵀ / sqrt(d_head)`."""
    a1, h1, a2, h2 = _head_pair(model, earlier_head, later_head)
    queries = model.W_E @ a1.W_V[h1] @ a1.W_O[h1] @ a2.W_Q[h2]
    keys = model.W_E @ a2.W_K[h2]
    return queries @ keys.T / model.cfg.d_head**0.5


@reference
@torch.no_grad()
def k_composition_positivity(
    model: AttnOnlyTransformer, prev_head: tuple[int, int], induction_head: tuple[int, int]
) -> float:
    """Σλ/Σ|λ| of the K-composition term of an induction head's QK circuit (`k_composition_circuit`):
    +1 when it is a pure "same-token matching" matrix, the QK analogue of a copying OV circuit
    (framework paper, "How Induction Heads Work": the induction heads sit in the corner where
    both this and their OV copying score are high). The term is (W_E W_Q)(W_E W_V W_O W_K)ᵀ, a
    product A Bᵀ of two `[d_vocab, d_head]` matrices, whose non-zero eigenvalues are those of the
    `d_head × d_head` matrix Bᵀ A."""
    a1, h1, a2, h2 = _head_pair(model, prev_head, induction_head)
    model.check_finite()  # eigvals crashes the process on NaN
    A = model.W_E @ a2.W_Q[h2]
    B = model.W_E @ a1.W_V[h1] @ a1.W_O[h1] @ a2.W_K[h2]
    eigenvalues = torch.linalg.eigvals((B.T @ A).double())
    return float(eigenvalues.sum().real / eigenvalues.abs().sum())
