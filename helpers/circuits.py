"""Circuits read from the weights alone.

Row convention throughout (see `helpers.models`): a circuit's rows are the token it reads and its
columns the logit it writes, e.g. the zero-layer circuit `W_E @ W_U` has row = current token,
column = next-token logit. The paper writes the transpose, W_U W_E.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from helpers.models import AttnOnlyTransformer


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
    model.check_head(layer, head)
    attn = model.blocks[layer].attn
    return attn.W_Q[head], attn.W_K[head], attn.W_V[head], attn.W_O[head]


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


@torch.no_grad()
def full_ov_circuit(model: AttnOnlyTransformer, layer: int, head: int) -> Tensor:
    """`W_E W_V W_O W_U`: `[source token, output logit]`, the transpose of the paper's
    W_U W_OV W_E. Row s: how attending to a token s changes every logit."""
    _, _, W_V, W_O = _head_weights(model, layer, head)
    return model.W_E @ W_V @ W_O @ model.W_U


@torch.no_grad()
def ov_eigenvalues(model: AttnOnlyTransformer, layer: int, head: int) -> Tensor:
    """The non-zero eigenvalues of the full OV circuit, complex, `[d_head]`.

    λ(AB) = λ(BA) (framework paper, "Technical Details"), so the d_vocab × d_vocab circuit
    W_E (W_V W_O W_U) has the same non-zero eigenvalues as the small d_head × d_head matrix
    W_O W_U W_E W_V, which is what we decompose.
    """
    _, _, W_V, W_O = _head_weights(model, layer, head)
    return torch.linalg.eigvals((W_O @ model.W_U @ model.W_E @ W_V).double())


def copying_score(model: AttnOnlyTransformer, layer: int, head: int) -> float:
    """Eigenvalue copying score Σλ / Σ|λ| of the full OV circuit, in [-1, 1].

    +1 when every eigenvalue is positive real (attending to a token raises that token's logit: a
    copying head), about 0 for random weights, -1 for anti-copying. The framework paper uses this
    summary statistic ("Copying / Primarily Positive Eigenvalues"). The sum of eigenvalues is
    real (it is the trace), so the score is real.
    """
    eig = ov_eigenvalues(model, layer, head)
    return float(eig.sum().real / eig.abs().sum())


def _check_k(k: int, n: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in 1..{n} (the vocabulary size), got {k!r}")


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
    if not isinstance(source, int) or not 0 <= source < V:
        raise ValueError(f"source must be a token id in 0..{V - 1}, got {source!r}")
    bad = [t for t in ignore if not 0 <= t < V]
    if bad:
        raise ValueError(f"ignore must hold token ids in 0..{V - 1}, got {bad}")
    _check_k(k, V - len(set(ignore)))
    qk = full_qk_circuit(model, layer, head)[:, source].clone()  # who attends to source
    ov = full_ov_circuit(model, layer, head)[source].clone()  # what attending to source writes
    qk[list(ignore)] = ov[list(ignore)] = float("-inf")
    return qk.topk(k).indices.tolist(), ov.topk(k).indices.tolist()


@torch.no_grad()
def one_layer_path_expansion(model: AttnOnlyTransformer, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Logits of a one-layer model, term by term (framework paper, one-layer path expansion):

        logits = W_E W_U  (direct path)  +  Σ_h A^h · (W_E W_V^h W_O^h W_U)  (one term per head)

    The heads' terms read rows of their full OV circuits, weighted by the attention pattern A^h
    (the only part that needs a forward pass). Returns (direct `[batch, pos, d_vocab]`,
    per-head `[n_heads, batch, pos, d_vocab]`).
    """
    if model.cfg.n_layers != 1:
        raise ValueError(
            f"one_layer_path_expansion needs a one-layer model, got {model.cfg.n_layers}"
        )
    if model.cfg.positional_embedding_type != "shortformer" or model.cfg.use_bias:
        raise ValueError("the token-only expansion needs shortformer positions and no biases")
    tokens = model.validate_tokens(tokens)
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_pattern")
    pattern = cache["blocks.0.attn.hook_pattern"]  # [batch, head, query_pos, key_pos]
    direct = direct_path(model)[tokens]
    terms = []
    for head in range(model.cfg.n_heads):
        ov_rows = full_ov_circuit(model, 0, head)[tokens]  # [batch, key_pos, d_vocab]
        terms.append(pattern[:, head] @ ov_rows)
    return direct, torch.stack(terms)
