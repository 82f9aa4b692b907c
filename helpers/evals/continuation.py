"""Skip-trigram effects: what a source word earlier in the context does to a prediction
(chapter 02)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from helpers.data import BOS, SkipTrigramLanguage
from helpers.models import AttnOnlyTransformer, as_index
from helpers.references import reference


@dataclass(frozen=True)
class ContinuationEffect:
    """How much a source word earlier in the context changes log P(output | … destination)."""

    mean_change: float  # mean of log P(with source) - log P(without), nats
    mean_p_with: float
    mean_p_without: float
    n_contexts: int
    mean_logit_change: float  # mean change of the output's logit


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
    lp, logit = {}, {}
    for name, ctx in (("with", with_source), ("without", contexts)):
        last = model(torch.cat([edges[0], ctx, edges[1]], dim=1))[:, -1].double()
        lp[name], logit[name] = last.log_softmax(-1)[:, output], last[:, output]
    return ContinuationEffect(
        mean_change=float((lp["with"] - lp["without"]).mean()),
        mean_p_with=float(lp["with"].exp().mean()),
        mean_p_without=float(lp["without"].exp().mean()),
        n_contexts=n,
        mean_logit_change=float((logit["with"] - logit["without"]).mean()),
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
