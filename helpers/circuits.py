"""Circuits read from the weights alone.

Row convention throughout (see `helpers.models`): a circuit's rows are the token it reads and its
columns the logit it writes, e.g. the zero-layer circuit `W_E @ W_U` has row = current token,
column = next-token logit. The paper writes the transpose, W_U W_E.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from helpers.models import AttnOnlyTransformer, as_index
from helpers.references import reference


@reference
@torch.no_grad()
def direct_path(model: AttnOnlyTransformer) -> Tensor:
    """The direct path `W_E @ W_U`: `[d_vocab (current token), d_vocab (next-token logit)]`.

    Framework paper, "Zero-Layer Transformers": this is the whole zero-layer model, and its best
    value approximates the bigram log-likelihood log P(next | current), up to a constant per row.
    In deeper models it is the first term of the path expansion.
    """
    W = model.W_E @ model.W_U
    if model.cfg.use_bias:
        W = W + model.unembed.b_U
    return W


@reference
def row_centred(M: Tensor) -> Tensor:
    """Subtract each row's mean. Softmax ignores a constant added to a row of logits, so logits
    (and log-probabilities) are only comparable after centring each row."""
    return M - M.mean(dim=-1, keepdim=True)


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two tensors' entries (flattened)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    x, y = a.flatten().double(), b.flatten().double()
    x, y = x - x.mean(), y - y.mean()
    return float((x @ y) / (x.norm() * y.norm()))


@reference
def best_rank_k(M: Tensor, k: int) -> Tensor:
    """The best rank-k approximation of M in Frobenius norm (Eckart–Young): its truncated SVD."""
    if not isinstance(k, int) or not 0 <= k <= min(M.shape[-2:]):
        raise ValueError(f"k must be an int in 0..{min(M.shape[-2:])}, got {k!r}")
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    return (U[..., :k] * S[..., None, :k]) @ Vh[..., :k, :]


def expected_loss(logits: Tensor, transition_matrix: Tensor, stationary: Tensor) -> float:
    """Cross-entropy (nats/token) of predicting a Markov chain's next state with fixed logits.

    `logits[i, j]` is the logit for next state j given current state i, both `[n_states,
    n_states]`. With the true log-probabilities as logits this is the chain's entropy rate.
    """
    log_q = logits.double().log_softmax(dim=-1)
    return float(-(stationary[:, None] * transition_matrix * log_q).sum())


# ---- one-layer circuits (framework paper, "One-Layer Attention-Only Transformers") -------------


def _head_weights(model: AttnOnlyTransformer, layer: int, head: int) -> tuple[Tensor, ...]:
    layer, head = model.check_head(layer, head)
    attn = model.blocks[layer].attn
    return attn.W_Q[head], attn.W_K[head], attn.W_V[head], attn.W_O[head]


@reference
@torch.no_grad()
def full_qk_circuit(
    model: AttnOnlyTransformer, layer: int, head: int, normalise: bool = True
) -> Tensor:
    """Token-token attention scores `W_E W_Q W_Kᵀ W_Eᵀ / sqrt(d_head)`: `[query token, key token]`.

    The paper's QK circuit W_Eᵀ W_QK W_E (same matrix; it omits the 1/sqrt(d_head) that the
    model applies, which we keep so entries are real scores). Scores for different queries are not
    comparable, since softmax runs per query: with `normalise=True` each query's row has its mean
    over key tokens subtracted, so an entry says how much more than average that query token
    attends to that key token. Positional terms are left out (see `positional_qk_circuit`).
    """
    W_Q, W_K, _, _ = _head_weights(model, layer, head)
    scores = (model.W_E @ W_Q) @ (model.W_E @ W_K).T / model.cfg.d_head**0.5
    return row_centred(scores) if normalise else scores


@reference
@torch.no_grad()
def positional_qk_circuit(model: AttnOnlyTransformer, layer: int, head: int) -> Tensor:
    """Position-position scores `W_pos W_Q W_Kᵀ W_posᵀ / sqrt(d_head)`: `[query pos, key pos]`,
    masked above the diagonal with -inf. Softmax over each row gives the head's attention pattern
    from positions alone; a positional head shows a sharp diagonal band (framework paper,
    "positional" heads in one-layer models)."""
    W_Q, W_K, _, _ = _head_weights(model, layer, head)
    scores = (model.W_pos @ W_Q) @ (model.W_pos @ W_K).T / model.cfg.d_head**0.5
    n = scores.shape[0]
    causal = torch.ones(n, n, dtype=torch.bool, device=scores.device).tril()
    return scores.masked_fill(~causal, float("-inf"))


@reference
@torch.no_grad()
def full_ov_circuit(model: AttnOnlyTransformer, layer: int, head: int) -> Tensor:
    """`W_E W_V W_O W_U`: `[source token, output logit]`, the transpose of the paper's
    W_U W_OV W_E. Row s: how attending to a token s changes every logit."""
    _, _, W_V, W_O = _head_weights(model, layer, head)
    return model.W_E @ W_V @ W_O @ model.W_U


@reference
@torch.no_grad()
def ov_eigenvalues(model: AttnOnlyTransformer, layer: int, head: int) -> Tensor:
    """The non-zero eigenvalues of the full OV circuit, complex, `[d_head]`.

    λ(AB) = λ(BA) (framework paper, "Technical Details"), so the d_vocab × d_vocab circuit
    W_E (W_V W_O W_U) has the same non-zero eigenvalues as the small d_head × d_head matrix
    W_O W_U W_E W_V, which is what we decompose.
    """
    _, _, W_V, W_O = _head_weights(model, layer, head)
    model.check_finite()  # eigvals crashes the process on NaN and hangs on inf
    return torch.linalg.eigvals((W_O @ model.W_U @ model.W_E @ W_V).double())


@reference
def copying_score(model: AttnOnlyTransformer, layer: int, head: int) -> float:
    """Eigenvalue copying score Σλ / Σ|λ| of the full OV circuit, in [-1, 1].

    +1 when every eigenvalue is positive real (attending to a token raises that token's logit: a
    copying head), about 0 for random weights, -1 for anti-copying. The framework paper uses this
    summary statistic ("Copying / Primarily Positive Eigenvalues"). The sum of eigenvalues is
    real (it is the trace), so the score is real.
    """
    eig = ov_eigenvalues(model, layer, head)
    if not eig.abs().sum() > 0:
        raise ValueError(
            f"L{layer}H{head} writes nothing (its OV circuit is zero): no copying score"
        )
    return float(eig.sum().real / eig.abs().sum())


def _token_ids(name: str, ids: Sequence[int], n: int) -> list[int]:
    """Distinct token ids in 0..n-1, or a ValueError (a negative id would silently mean
    another token when indexing)."""
    if isinstance(ids, (int, Tensor)) and not (isinstance(ids, Tensor) and ids.ndim == 1):
        raise ValueError(f"{name} must be a list of token ids, got {ids!r}")
    return sorted({as_index(f"each entry of {name} (a token id)", t, n) for t in ids})


def _check_k(k: int, n: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in 1..{n} (the vocabulary size), got {k!r}")


@reference
@torch.no_grad()
def skip_trigrams(
    model: AttnOnlyTransformer,
    layer: int,
    head: int,
    source: int,
    k: int = 3,
    ignore: Sequence[int] = (),
) -> tuple[list[int], list[int]]:
    """The paper's reading of a skip-trigram "source … destination → output" off the weights:
    fix a source token, take the k destinations whose (normalised) QK score for it is largest and
    the k outputs its OV row raises most. Returns (destinations, outputs), token ids.

    Tokens in `ignore` are never returned, e.g. BOS, which is never a destination that matters
    (it only attends to itself) nor an output (it is never predicted), so its entries are noise.
    """
    V = model.cfg.d_vocab
    source = as_index("source (a token id)", source, V)
    ignore = _token_ids("ignore", ignore, V)
    _check_k(k, V - len(ignore))
    qk = full_qk_circuit(model, layer, head)[:, source].clone()  # who attends to source
    ov = full_ov_circuit(model, layer, head)[source].clone()  # what attending to source writes
    qk[list(ignore)] = ov[list(ignore)] = float("-inf")
    return qk.topk(k).indices.tolist(), ov.topk(k).indices.tolist()


# ---- two-layer circuits (framework paper, "Two-Layer Attention-Only Transformers") -------------

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
def composition_baseline(
    model: AttnOnlyTransformer, kind: str, n_samples: int = 200, seed: int = 0
) -> tuple[float, float]:
    """(mean, std) of the composition score between random heads of this model's shapes.

    The framework paper subtracts "the empirical expected amount for random matrices of the same
    shapes". Random weights: i.i.d. Gaussian, the model's initialisation (the score does not
    depend on their scale). About 1/sqrt(d_model) for d_head << d_model.
    """
    if kind not in COMPOSITION_KINDS:
        raise ValueError(f"kind must be one of {COMPOSITION_KINDS}, got {kind!r}")
    if not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an int >= 2, got {n_samples!r}")
    D, d = model.cfg.d_model, model.cfg.d_head
    gen = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> Tensor:
        return torch.randn(n_samples, *shape, generator=gen, dtype=torch.float64)

    scores = _composition_from_weights(
        draw(D, d),
        draw(D, d),
        draw(D, d),
        draw(d, D),
        draw(D, d),
        draw(d, D),
        kind,
        all_pairs=False,
    )  # sample i's earlier head with sample i's later head
    return float(scores.mean()), float(scores.std())


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
def diagonal_top1_accuracy(M: Tensor, ignore: Sequence[int] = ()) -> float:
    """Fraction of rows whose largest entry is on the diagonal (rows and columns in `ignore`
    left out), e.g. of query tokens whose best key is the same token."""
    if not isinstance(M, Tensor) or M.ndim != 2 or M.shape[0] != M.shape[1]:
        shape = tuple(M.shape) if isinstance(M, Tensor) else type(M).__name__
        raise ValueError(f"need a square matrix (a 2-d tensor), got {shape}")
    if not torch.isfinite(M).all():
        raise ValueError("the matrix holds NaN or infinite values: its argmax means nothing")
    ignored = set(_token_ids("ignore", ignore, M.shape[0]))
    if len(ignored) == M.shape[0]:
        raise ValueError("ignore leaves no rows")
    keep = torch.tensor([i not in ignored for i in range(M.shape[0])])
    sub = M[keep][:, keep]
    return float((sub.argmax(-1) == torch.arange(sub.shape[0])).float().mean())


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
