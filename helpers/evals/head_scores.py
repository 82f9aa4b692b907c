"""Head scores on repeated random tokens: previous-token, prefix-matching (induction),
duplicate-token and copying scores, attention to BOS, and the loss on repeats (chapters 00, 04)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from helpers.data import BOS
from helpers.models import AttnOnlyTransformer, next_token_loss
from helpers.references import reference

# What makes a head an induction head, everywhere in the course (chapters 03-05, exercise 4.8):
# a prefix-matching score (`induction_scores`) of at least this. At 0.5 a head puts at least half
# of its attention, on repeated random tokens, on the token after an earlier copy of the current
# token: more there than on every other position together, which no head does by accident (a head
# that attends anywhere else scores near 0, a uniform one about one over the position). Olsson et
# al. (2022) ask for prefix matching "with much greater than random chance"; this is where the
# course draws the line, the same for trained, hand-made and mystery models.
INDUCTION_HEAD_THRESHOLD = 0.5


def _check_has_heads(model: AttnOnlyTransformer) -> None:
    if model.cfg.n_layers == 0:
        raise ValueError("a zero-layer model has no attention heads to score")


@reference
def _pattern_stack(model: AttnOnlyTransformer, tokens: Tensor) -> Tensor:
    """Every head's attention pattern: `[layer, head, batch, query_pos, key_pos]`."""
    _check_has_heads(model)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    return torch.stack(
        [cache[f"blocks.{i}.attn.hook_pattern"].transpose(0, 1) for i in range(model.cfg.n_layers)]
    )


def _check_repeats(tokens: Tensor, length: int) -> int:
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    if not isinstance(tokens, Tensor) or tokens.ndim != 2:
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(
            f"tokens must be a [batch, pos] tensor of repeated random tokens, got {shape}; "
            "for one sequence use tokens[None]"
        )
    body = tokens.shape[-1] - 1
    if body % length or body // length < 2:
        raise ValueError(
            f"tokens must be BOS + at least 2 blocks of length {length} "
            f"(1 + k * {length} positions), got {tokens.shape[-1]} positions"
        )
    return body // length


@dataclass(frozen=True)
class RepeatLoss:
    """Mean loss on the first (fresh) block and on later (repeated) blocks of repeated tokens."""

    fresh: float
    repeated: float

    @property
    def ratio(self) -> float:
        return self.repeated / self.fresh


@reference
def repeat_loss(logits: Tensor, tokens: Tensor, length: int) -> RepeatLoss:
    """Loss on fresh vs repeated tokens, from logits on a `repeated_random_tokens` batch.

    Fresh: predicting tokens 2..length of the first block (its first token follows BOS and is
    left out). Repeated: predicting tokens 2..length of every later block. The first token of
    each later block is left out too: unpredictable in the second block (nothing followed the
    last token of the first block before), predictable by induction from the third on, but left
    out everywhere for uniformity.
    """
    _check_repeats(tokens, length)
    if not isinstance(logits, Tensor) or logits.shape[:2] != tokens.shape:
        raise ValueError(
            f"logits must be [batch, pos, d_vocab] for tokens {tuple(tokens.shape)}, got "
            f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}"
        )
    losses = next_token_loss(logits, tokens, per_token=True)  # entry i predicts position i + 1
    target = torch.arange(1, tokens.shape[-1])
    block, offset = (target - 1) // length, (target - 1) % length
    fresh = losses[:, (block == 0) & (offset >= 1)].mean()
    repeated = losses[:, (block >= 1) & (offset >= 1)].mean()
    return RepeatLoss(float(fresh), float(repeated))


@torch.no_grad()
def repeated_tokens_loss(model: AttnOnlyTransformer, tokens: Tensor, length: int) -> RepeatLoss:
    """`repeat_loss` of the model's own logits."""
    return repeat_loss(model(tokens), tokens, length)


@reference
@torch.no_grad()
def previous_token_scores(model: AttnOnlyTransformer, tokens: Tensor) -> Tensor:
    """`[layer, head]`: mean attention from each position i >= 1 to position i - 1."""
    patterns = _pattern_stack(model, tokens)
    return patterns.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(-1, -2))


@reference
@torch.no_grad()
def induction_scores(model: AttnOnlyTransformer, tokens: Tensor, length: int) -> Tensor:
    """`[layer, head]` prefix-matching score on repeated random tokens (Olsson et al. 2022):
    for every position in a repeated block, the attention it pays to the positions right after
    the earlier occurrences of its token (where induction says the next token is), summed over
    earlier occurrences and averaged over positions. 1 for a perfect induction head."""
    _check_repeats(tokens, length)
    patterns = _pattern_stack(model, tokens)
    n = tokens.shape[-1]
    target = earlier_occurrence_mask(n, length, shift=1)
    queries = target.any(-1)
    return (patterns * target).sum(-1)[..., queries].mean(dim=(-1, -2))


@reference
@torch.no_grad()
def duplicate_token_scores(model: AttnOnlyTransformer, tokens: Tensor, length: int) -> Tensor:
    """`[layer, head]`: attention from positions in repeated blocks to the earlier occurrences
    of their own token, summed over occurrences, averaged over positions."""
    _check_repeats(tokens, length)
    patterns = _pattern_stack(model, tokens)
    target = earlier_occurrence_mask(tokens.shape[-1], length, shift=0)
    queries = target.any(-1)
    return (patterns * target).sum(-1)[..., queries].mean(dim=(-1, -2))


@reference
def earlier_occurrence_mask(n: int, length: int, shift: int, latest_only: bool = False) -> Tensor:
    """`[query, key]` mask for BOS + blocks of `length` repeated tokens (n positions): True where
    key = q - r * length + shift for an earlier block r >= 1, i.e. an earlier occurrence of the
    query's token (shift 0) or the token that followed it (shift 1: where induction looks).
    With `latest_only`, only r = 1."""
    pos = torch.arange(n)
    delta = pos[:, None] - pos[None, :] + shift  # q - k + shift = r * length
    r = delta // length
    mask = (delta % length == 0) & (r >= 1) & (pos[None, :] >= 1) & (pos[None, :] < pos[:, None])
    mask &= pos[:, None] - r * length >= 1  # the earlier occurrence itself is a real token
    if latest_only:
        mask &= r == 1
    return mask


@reference
@torch.no_grad()
def copying_scores(model: AttnOnlyTransformer, tokens: Tensor) -> Tensor:
    """`[layer, head]` copying score in [-1, 1], our reading of Olsson et al.'s evaluator.

    On repeated random tokens (or any sequences): map each head's output at every position
    through the unembedding (its direct effect on the logits), softmax, subtract the mean over
    the vocabulary and apply a ReLU (as in Bansal et al.'s implementation); r = (raise of the
    token the head attends to most) / (raise of all tokens that occur anywhere in the sequence).
    r is 1 when the head raises only the attended token and 0 when it raises only others; the
    score is 2r - 1. Positions attending mostly to BOS are skipped (BOS is never predicted).
    """
    _check_has_heads(model)
    if not isinstance(tokens, Tensor) or tokens.ndim != 2:
        raise ValueError("tokens must be a [batch, pos] tensor; for one sequence use tokens[None]")
    tokens = model.validate_tokens(tokens)
    _, cache = model.run_with_cache(
        tokens, names_filter=lambda n: n.endswith("hook_pattern") or n.endswith("hook_result")
    )
    scores = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    in_sequence = torch.zeros(tokens.shape[0], model.cfg.d_vocab, dtype=torch.bool)
    in_sequence.scatter_(1, tokens, True)
    in_sequence[:, BOS] = False
    for layer in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [batch, head, q, k]
        result = cache[f"blocks.{layer}.attn.hook_result"]  # [batch, pos, head, d_model]
        logits = torch.einsum("bphm,mv->bhpv", result, model.W_U)
        probs = logits.softmax(-1)  # as in Bansal et al.'s implementation
        raised = (probs - probs.mean(-1, keepdim=True)).relu()  # [batch, head, pos, vocab]
        attended = tokens.gather(1, pattern.argmax(-1).flatten(1)).view(pattern.shape[:-1])
        own = raised.gather(-1, attended[..., None])[..., 0]
        total = (raised * in_sequence[:, None, None, :]).sum(-1)
        valid = (attended != BOS) & (total > 0)
        ratio = torch.where(valid, own / total.clamp_min(1e-12), torch.nan)  # [batch, head, pos]
        scores[layer] = 2 * ratio.nanmean(dim=(0, 2)) - 1
    return scores


# ---- ablations and term importance (chapters 03 and 04) ----------------------------------------


@reference
@torch.no_grad()
def bos_attention(model: AttnOnlyTransformer, tokens: Tensor) -> Tensor:
    """`[layer, head]`: mean attention paid to position 0 (BOS) by the positions >= 1 (position 0
    can only attend to itself). A head with nothing to do rests its attention on BOS."""
    patterns = _pattern_stack(model, tokens)  # [layer, head, batch, query, key]
    return patterns[..., 1:, 0].mean(dim=(-1, -2))


@dataclass(frozen=True)
class InductionCircuit:
    """The heads found by `find_induction_circuit`, and the scores that found them."""

    previous_token_head: tuple[int, int]
    induction_heads: list[tuple[int, int]]
    previous_token_scores: Tensor  # [layer, head]
    induction_scores: Tensor  # [layer, head]


@reference
@torch.no_grad()
def find_induction_circuit(
    model: AttnOnlyTransformer,
    tokens: Tensor,
    length: int,
    threshold: float = INDUCTION_HEAD_THRESHOLD,
) -> InductionCircuit:
    """The induction circuit of a two-layer model, from its behaviour on repeated random tokens
    (`tokens`: BOS + blocks of `length`): the layer-0 head with the highest previous-token score,
    and the layer-1 heads whose prefix-matching score is at least `threshold`, best first."""
    if model.cfg.n_layers != 2:
        raise ValueError(
            f"find_induction_circuit needs a two-layer model, got {model.cfg.n_layers}"
        )
    prev, induction = previous_token_scores(model, tokens), induction_scores(model, tokens, length)
    order = induction[1].argsort(descending=True).tolist()
    return InductionCircuit(
        previous_token_head=(0, int(prev[0].argmax())),
        induction_heads=[(1, h) for h in order if induction[1, h] >= threshold],
        previous_token_scores=prev,
        induction_scores=induction,
    )
