"""Behavioural measurements: run a model on generated inputs and measure what it does.

(Where `circuits` reads the weights, `evals` watches the forward pass.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from helpers.data import BOS, SkipTrigramLanguage
from helpers.models import AttnOnlyTransformer, as_index, next_token_loss
from helpers.references import reference


@dataclass(frozen=True)
class ContinuationEffect:
    """How much a source word earlier in the context changes log P(output | … destination)."""

    mean_change: float  # mean of log P(with source) - log P(without), nats
    mean_p_with: float
    mean_p_without: float
    n_contexts: int


def filler_contexts(
    language: SkipTrigramLanguage, n_contexts: int, context_len: int = 8, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Random contexts of filler words, `[n_contexts, context_len]` token ids (no BOS), and for
    each a random position among its first `context_len - 2` (`[n_contexts]`): where a source
    word can go, leaving at least two fillers between it and what follows."""
    if not isinstance(n_contexts, int) or isinstance(n_contexts, bool) or n_contexts < 1:
        raise ValueError(f"n_contexts must be a positive int, got {n_contexts!r}")
    if not isinstance(context_len, int) or isinstance(context_len, bool) or context_len < 3:
        raise ValueError(f"context_len must be an int >= 3, got {context_len!r}")
    gen = torch.Generator().manual_seed(seed)
    fillers = torch.tensor([language.token_to_id[w] for w in language.fillers])
    words = fillers[torch.randint(len(fillers), (n_contexts, context_len), generator=gen)]
    where = torch.randint(context_len - 2, (n_contexts,), generator=gen)
    return words, where


@reference
@torch.no_grad()
def skip_trigram_effect(
    model: AttnOnlyTransformer,
    contexts: Tensor,
    where: Tensor,
    source: int,
    dest: int,
    output: int,
) -> ContinuationEffect:
    """How much the token `source` earlier in the context changes log P(output) after `dest`.

    For each context (`[n, context_len]` token ids without BOS) the model reads BOS + context +
    dest, once as it is and once with `source` written at position `where[i]` of the context, and
    we compare its log-probability of `output` at the last position. Framework paper,
    "Skip-Trigram 'Bugs'": with source = keep, dest = in, output = bay this measures the bug.
    """
    V = model.cfg.d_vocab
    source, dest, output = (as_index(n, t, V) for n, t in (("source", source), ("dest", dest),
                                                            ("output", output)))  # fmt: skip
    if not isinstance(contexts, Tensor) or contexts.ndim != 2:
        raise ValueError("contexts must be a [n_contexts, context_len] tensor of token ids")
    n, length = contexts.shape
    if not isinstance(where, Tensor) or where.shape != (n,):
        raise ValueError(f"where must be a tensor of {n} positions, one per context")
    if where.min() < 0 or where.max() >= length:
        raise ValueError(f"where must hold positions in 0..{length - 1}")
    with_source = contexts.clone()
    with_source[torch.arange(n), where] = source
    edges = torch.full((n, 1), BOS), torch.full((n, 1), dest)
    lp = {}
    for name, ctx in (("with", with_source), ("without", contexts)):
        tokens = torch.cat([edges[0], ctx, edges[1]], dim=1)
        lp[name] = model(tokens)[:, -1].log_softmax(-1)[:, output].double()
    return ContinuationEffect(
        mean_change=float((lp["with"] - lp["without"]).mean()),
        mean_p_with=float(lp["with"].exp().mean()),
        mean_p_without=float(lp["without"].exp().mean()),
        n_contexts=n,
    )


@reference
def continuation_effect(
    model: AttnOnlyTransformer,
    language: SkipTrigramLanguage,
    dest: str,
    output: str,
    source: str = "keep",
    n_contexts: int = 200,
    seed: int = 0,
    context_len: int = 8,
) -> ContinuationEffect:
    """`skip_trigram_effect` of the words `source … dest → output` on `n_contexts` random filler
    contexts of `context_len` words (`filler_contexts`). This is how chapter 02 measures the
    skip-trigram "bug": source = keep, dest = in, output = bay."""
    ids = []
    for word in (source, dest, output):
        if word not in language.token_to_id:
            raise ValueError(f"unknown word {word!r}; the vocabulary is {language.vocab[1:]}")
        ids.append(language.token_to_id[word])
    if not isinstance(context_len, int) or not 3 <= context_len <= model.cfg.n_ctx - 2:
        raise ValueError(
            f"context_len must be an int in 3..{model.cfg.n_ctx - 2}, got {context_len!r}"
        )
    contexts, where = filler_contexts(language, n_contexts, context_len, seed)
    return skip_trigram_effect(model, contexts, where, *ids)


# ---- repeated random tokens (chapter 04) --------------------------------------------------------


def _check_has_heads(model: AttnOnlyTransformer) -> None:
    if model.cfg.n_layers == 0:
        raise ValueError("a zero-layer model has no attention heads to score")


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


def _check_heads(model: AttnOnlyTransformer, heads) -> list[tuple[int, int]]:
    """A list of (layer, head) pairs, validated; a flat pair like (0, 1) is an error, since it
    would silently read as two heads."""
    example = "a list of (layer, head) pairs, e.g. [(0, 1)] or [(0, 1), (1, 2)]"
    if isinstance(heads, (str, Tensor)) or not hasattr(heads, "__iter__"):
        raise ValueError(f"heads must be {example}, got {heads!r}")
    heads = list(heads)
    if not all(isinstance(h, (tuple, list)) and len(h) == 2 for h in heads):
        raise ValueError(f"heads must be {example}, got {heads!r}")
    return [model.check_head(layer, head) for layer, head in heads]


@reference
@torch.no_grad()
def run_with_ablation(
    model: AttnOnlyTransformer,
    tokens: Tensor,
    heads,
    kind: str = "zero",
    reference: Tensor | None = None,
) -> Tensor:
    """Logits with the outputs of `heads` (a list of (layer, head)) removed.

    "zero": the head writes nothing. "mean": it writes its mean output (over batch and positions)
    on `reference` tokens (default: `tokens`), i.e. its average behaviour without any
    information about this input.
    """
    if kind not in ("zero", "mean"):
        raise ValueError(f"kind must be 'zero' or 'mean', got {kind!r}")
    heads = _check_heads(model, heads)
    means: dict[int, Tensor] = {}
    if kind == "mean":
        _, cache = model.run_with_cache(
            tokens if reference is None else reference,
            names_filter=lambda n: n.endswith("hook_result"),
        )
        means = {
            layer: cache[f"blocks.{layer}.attn.hook_result"].mean(dim=(0, 1)) for layer, _ in heads
        }

    hooks = []
    for layer in sorted({layer for layer, _ in heads}):
        chosen = [h for layer_, h in heads if layer_ == layer]

        def ablate(result: Tensor, hook, chosen=chosen, layer=layer) -> Tensor:
            result = result.clone()  # [batch, pos, head, d_model]
            result[:, :, chosen] = 0.0 if kind == "zero" else means[layer][chosen]
            return result

        hooks.append((f"blocks.{layer}.attn.hook_result", ablate))
    return model.run_with_hooks(tokens, hooks)


@reference
@torch.no_grad()
def run_with_path_ablation(
    model: AttnOnlyTransformer, tokens: Tensor, sender: tuple[int, int], receiver: str, layer: int
) -> Tensor:
    """Logits with `sender`'s output removed from one input only: the queries ("q"), keys ("k")
    or values ("v") of every head in `layer`. Everything else still sees it. Separates Q-, K- and
    V-composition by their effect."""
    ((s_layer, s_head),) = _check_heads(model, [sender])
    if receiver not in ("q", "k", "v"):
        raise ValueError(f"receiver must be 'q', 'k' or 'v', got {receiver!r}")
    message = f"layer must be an int in {s_layer + 1}..{model.cfg.n_layers - 1}, got {layer!r}"
    try:
        layer = as_index("layer", layer, model.cfg.n_layers)
    except ValueError:
        raise ValueError(message) from None
    if layer <= s_layer:
        raise ValueError(message)
    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{s_layer}.attn.hook_result")
    sent = cache[f"blocks.{s_layer}.attn.hook_result"][:, :, s_head]  # [batch, pos, d_model]
    W = getattr(model.blocks[layer].attn, f"W_{receiver.upper()}")  # [head, d_model, d_head]
    removed = torch.einsum("bpm,hmd->bphd", sent, W)

    def subtract(x: Tensor, hook) -> Tensor:
        return x - removed

    return model.run_with_hooks(tokens, [(f"blocks.{layer}.attn.hook_{receiver}", subtract)])


@dataclass(frozen=True)
class TermImportance:
    """Losses (nats/token) of the path expansion truncated at each order, frozen patterns."""

    uniform: float  # ln d_vocab: no information at all
    order_0: float  # direct path only
    order_1: float  # + every single head reading the embeddings
    order_2: float  # + virtual heads (layer 1 reading layer 0's output): the whole model
    layer_0_only: float  # direct path + first-order terms of layer-0 heads
    layer_1_only: float  # direct path + first-order terms of layer-1 heads

    @property
    def marginal(self) -> dict[str, float]:
        return {
            "direct path (order 0)": self.uniform - self.order_0,
            "single heads (order 1)": self.order_0 - self.order_1,
            "virtual heads (order 2)": self.order_1 - self.order_2,
        }


@reference
@torch.no_grad()
def term_importance(model: AttnOnlyTransformer, tokens: Tensor) -> TermImportance:
    """Marginal loss of each order of the two-layer path expansion (framework paper, "Term
    Importance Analysis"): record every head's attention pattern on `tokens`, then recompute the
    logits with the patterns frozen and the residual stream truncated: order 0 is W_E W_U;
    order 1 adds each head applied to the embeddings alone; order 2 lets layer-1 heads also read
    layer 0's outputs (V-composition: the virtual heads). Freezing the patterns keeps Q- and
    K-composition intact, so only V-composition is ablated.
    """
    if model.cfg.n_layers != 2:
        raise ValueError(f"term_importance needs a two-layer model, got {model.cfg.n_layers}")
    if model.cfg.positional_embedding_type != "shortformer" or model.cfg.use_bias:
        raise ValueError("term_importance needs shortformer positions and no biases")
    tokens = model.validate_tokens(tokens)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    x0 = model.W_E[tokens]  # [batch, pos, d_model]

    def heads_out(layer: int, x: Tensor) -> Tensor:  # every head of `layer` reading x
        attn = model.blocks[layer].attn
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [batch, head, q, k]
        v = torch.einsum("bkm,hmd->bhkd", x, attn.W_V)
        return torch.einsum("bhqk,bhkd,hdm->bqm", pattern, v, attn.W_O)

    def loss(resid: Tensor) -> float:
        return float(next_token_loss(resid @ model.W_U, tokens))

    l0, l1_first = heads_out(0, x0), heads_out(1, x0)
    return TermImportance(
        uniform=float(torch.log(torch.tensor(float(model.cfg.d_vocab)))),
        order_0=loss(x0),
        order_1=loss(x0 + l0 + l1_first),
        order_2=loss(x0 + l0 + heads_out(1, x0 + l0)),
        layer_0_only=loss(x0 + l0),
        layer_1_only=loss(x0 + l1_first),
    )
