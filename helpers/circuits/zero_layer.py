"""Zero-layer circuits: the direct path W_E W_U and what it is compared with (chapter 01)."""

from __future__ import annotations

import torch
from torch import Tensor

from helpers.models import AttnOnlyTransformer
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


@reference
def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two tensors' entries (flattened)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    x, y = a.flatten().double(), b.flatten().double()
    x, y = x - x.mean(), y - y.mean()
    return float((x @ y) / (x.norm() * y.norm()))


def spearman(a: Tensor | list[float], b: Tensor | list[float]) -> float:
    """Spearman rank correlation: the Pearson correlation of the two lists' ranks."""
    ranks = [torch.as_tensor(x, dtype=torch.float64).argsort().argsort().double() for x in (a, b)]
    return pearson(*ranks)


@reference
def best_rank_k(M: Tensor, k: int) -> Tensor:
    """The best rank-k approximation of M in Frobenius norm (Eckart–Young): its truncated SVD."""
    if not isinstance(k, int) or not 0 <= k <= min(M.shape[-2:]):
        raise ValueError(f"k must be an int in 0..{min(M.shape[-2:])}, got {k!r}")
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    return (U[..., :k] * S[..., None, :k]) @ Vh[..., :k, :]


@reference
def expected_loss(logits: Tensor, transition_matrix: Tensor, stationary: Tensor) -> float:
    """Cross-entropy (nats/token) of predicting a Markov chain's next state with fixed logits.

    `logits[i, j]` is the logit for next state j given current state i, both `[n_states,
    n_states]`. With the true log-probabilities as logits this is the chain's entropy rate.
    """
    log_q = logits.double().log_softmax(dim=-1)
    return float(-(stationary[:, None] * transition_matrix * log_q).sum())
