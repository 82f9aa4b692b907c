"""One-layer circuits (framework paper, "One-Layer Attention-Only Transformers"): the full QK and
OV circuits of a head, its eigenvalues and copying score, the skip-trigrams they encode (chapter 02)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from helpers.circuits.zero_layer import row_centred
from helpers.models import AttnOnlyTransformer, as_index
from helpers.references import reference


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
def positional_pattern(model: AttnOnlyTransformer, layer: int, head: int) -> Tensor:
    """The head's attention pattern from positions alone, `[query pos, key pos]`: the softmax of
    `positional_qk_circuit` over each row (key positions). A previous-token head puts its mass on
    the sub-diagonal."""
    return positional_qk_circuit(model, layer, head).softmax(dim=-1)


@reference
def _skip_trigram_strength(
    model: AttnOnlyTransformer, layer: int, head: int, ignored: list[int]
) -> tuple[Tensor, Tensor]:
    """The two factors of every skip-trigram's strength, QK[d, s] · OV'[s, o] where both are
    positive: (`[source, destination]` QK clamped at 0, `[source, output]` row-centred OV clamped
    at 0), with the ignored tokens' entries 0."""
    qk = full_qk_circuit(model, layer, head).T.clamp_min(0)  # [source, destination]
    ov = full_ov_circuit(model, layer, head)
    ov = (ov - ov.mean(dim=-1, keepdim=True)).clamp_min(0)  # [source, output]
    for factor in (qk, ov):
        factor[ignored] = 0.0
        factor[:, ignored] = 0.0
    return qk, ov


@reference
@torch.no_grad()
def top_skip_trigrams(
    model: AttnOnlyTransformer, layer: int, head: int, n: int, ignore: Sequence[int] = ()
) -> list[tuple[int, int, int]]:
    """The head's n strongest skip-trigrams (source, destination, output), strongest first.

    A skip-trigram's strength is QK[d, s] · OV'[s, o]: how much more than average destination d
    attends to source s (the row-centred QK circuit) times how much more than average attending
    to s raises output o (the full OV circuit with each row's mean removed, since softmax ignores
    a constant added to every logit). Only pairs where both factors are positive count: two
    negatives make a positive product but no skip-trigram. Tokens in `ignore` (e.g. BOS) take no
    part. Framework paper, "Reading off skip-trigrams" (our ranking of the paper's reading).
    """
    return [triple for _, triple in _strongest(model, layer, head, n, ignore)]


@reference
@torch.no_grad()
def strongest_skip_trigrams(
    model: AttnOnlyTransformer, layer: int, n: int, ignore: Sequence[int] = ()
) -> list[tuple[float, int, tuple[int, int, int]]]:
    """The n strongest skip-trigrams of all the heads of a layer, as (strength, head, (source,
    destination, output)), strongest first; a skip-trigram carried by several heads appears once,
    with its strongest head (strength as in `top_skip_trigrams`)."""
    found: dict[tuple[int, int, int], tuple[float, int]] = {}
    for head in range(model.cfg.n_heads):
        for strength, triple in _strongest(model, layer, head, n, ignore):
            if triple not in found or strength > found[triple][0]:
                found[triple] = (strength, head)
    ranked = sorted(((v, h, t) for t, (v, h) in found.items()), key=lambda x: -x[0])
    return ranked[:n]


# sources per block of `_strongest`: about 16 M candidate products held at once
_PRODUCTS_PER_BLOCK = 1 << 24


@reference
def strongest_products(qk: Tensor, ov: Tensor, n: int) -> list[tuple[float, tuple[int, int, int]]]:
    """The n largest products qk[s, d] · ov[s, o] of two non-negative `[source, destination]` and
    `[source, output]` matrices, as (product, (s, d, o)), largest first; zero products left out.

    A triple among the n largest has, for its source, a destination among that source's n
    largest qk entries and an output among its n largest ov entries (both factors are
    non-negative). So only V · n² products are candidates, never all V³ (4 GB of them at
    d_vocab 1024), and sources are taken a block at a time."""
    V = qk.shape[0]
    k = min(n, qk.shape[1], ov.shape[1])
    qk_value, destination = qk.topk(k, dim=1)  # [source, k]
    ov_value, output = ov.topk(k, dim=1)
    best_values, best_triples = torch.empty(0, dtype=qk.dtype), torch.empty(0, 3, dtype=torch.long)
    block = max(1, _PRODUCTS_PER_BLOCK // (k * k))
    for first in range(0, V, block):
        sources = torch.arange(first, min(V, first + block))
        products = qk_value[sources, :, None] * ov_value[sources, None, :]  # [block, k, k]
        values, flat = products.flatten().topk(min(n, products.numel()))
        s, d, o = flat // (k * k), flat // k % k, flat % k
        triples = torch.stack([sources[s], destination[sources[s], d], output[sources[s], o]], 1)
        best_values = torch.cat([best_values, values])
        best_triples = torch.cat([best_triples, triples])
        best_values, order = best_values.topk(min(n, len(best_values)))
        best_triples = best_triples[order]
    return [(v, tuple(t)) for v, t in zip(best_values.tolist(), best_triples.tolist(), strict=True)
            if v > 0]  # fmt: skip


@reference
def _strongest(model, layer, head, n, ignore) -> list[tuple[float, tuple[int, int, int]]]:
    """The head's n strongest (strength, skip-trigram), strongest first."""
    V = model.cfg.d_vocab
    ignored = _token_ids("ignore", ignore, V)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= V**3:
        raise ValueError(f"n must be a positive int, got {n!r}")
    return strongest_products(*_skip_trigram_strength(model, layer, head, ignored), n)


@dataclass(frozen=True)
class HeadDescription:
    """What `describe_head` reads off a head's weights."""

    previous_token: float  # its position-only attention on the previous position (mean)
    copying: float  # its eigenvalue copying score
    rules: frozenset[tuple[int, int, int]]  # its strong skip-trigrams (source, destination, output)


@reference
@torch.no_grad()
def describe_head(
    model: AttnOnlyTransformer,
    layer: int,
    head: int,
    threshold: float = 3.0,
    ignore: Sequence[int] = (0,),
) -> HeadDescription:
    """A one-layer head, reverse-engineered from its weights (chapter 02's methods together):

    - `previous_token`: the mean, over query positions 1.., of its position-only attention on the
      previous position (`positional_pattern`);
    - `copying`: its eigenvalue copying score (`copying_score`);
    - `rules`: for every source token s not in `ignore`, the destination d that attends to it most
      (row-centred QK) and the output o it raises most (OV with each row centred), kept when both
      QK[d, s] and OV'[s, o] are at least `threshold`.
    """
    pattern = positional_pattern(model, layer, head)
    qk = full_qk_circuit(model, layer, head)  # [destination, source]
    ov = full_ov_circuit(model, layer, head)
    ov = ov - ov.mean(dim=-1, keepdim=True)  # [source, output]
    ignored = _token_ids("ignore", ignore, model.cfg.d_vocab)
    qk[ignored] = qk[:, ignored] = -torch.inf
    ov[:, ignored] = -torch.inf
    rules = set()
    for s in range(model.cfg.d_vocab):
        if s in ignored:
            continue
        d, o = int(qk[:, s].argmax()), int(ov[s].argmax())
        if qk[d, s] >= threshold and ov[s, o] >= threshold:
            rules.add((s, d, o))
    return HeadDescription(
        previous_token=float(pattern.diagonal(-1).mean()),
        copying=copying_score(model, layer, head),
        rules=frozenset(rules),
    )


@reference
@torch.no_grad()
def attention_score_terms(
    model: AttnOnlyTransformer, head: int, tokens: Tensor
) -> dict[str, Tensor]:
    """The four parts of a layer-0 head's attention scores on one sequence of a shortformer model,
    each `[query pos, key pos]` (before the causal mask and softmax; they sum to the scores):

        (e_a + p_i) W_QK (e_b + p_j)ᵀ / sqrt(d_head) = token-token + token-position
                                                       + position-token + position-position

    for query token a at position i and key token b at position j (framework paper, positional
    terms of the one-layer QK circuit). `positional_qk_circuit` is the last term alone.
    """
    if model.cfg.positional_embedding_type != "shortformer":
        raise ValueError("the split needs shortformer positions (added to queries and keys only)")
    tokens = model.validate_tokens(tokens)
    if tokens.shape[0] != 1:
        raise ValueError(f"give one sequence, [pos] or [1, pos], got {tuple(tokens.shape)}")
    W_Q, W_K, _, _ = _head_weights(model, 0, head)
    E, P = model.W_E[tokens[0]], model.W_pos[: tokens.shape[1]]  # [pos, d_model]
    scale = model.cfg.d_head**0.5

    def term(query: Tensor, key: Tensor) -> Tensor:
        return (query @ W_Q) @ (key @ W_K).T / scale

    return {
        "token-token": term(E, E),
        "token-position": term(E, P),
        "position-token": term(P, E),
        "position-position": term(P, P),
    }
