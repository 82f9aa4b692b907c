"""Behavioural measurements: run a model on generated inputs and measure what it does.

(Where `circuits` reads the weights, `evals` watches the forward pass.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from helpers.data import BOS, SkipTrigramLanguage
from helpers.models import AttnOnlyTransformer


@dataclass(frozen=True)
class ContinuationEffect:
    """How much a source word earlier in the context changes log P(output | … destination)."""

    mean_change: float  # mean of log P(with source) - log P(without), nats
    mean_p_with: float
    mean_p_without: float
    n_contexts: int


@torch.no_grad()
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
    """Effect of `source` in the context on the next-word probability of `output` after `dest`.

    Builds `n_contexts` random contexts of `context_len` filler words, and a copy of each with
    `source` at a random one of its first `context_len - 2` positions; appends `dest` to both and
    compares the model's log P(output) at the last position. This is how chapter 02 measures the
    skip-trigram "bug" (framework paper, "Skip-Trigram 'Bugs'"): source = keep, dest = in,
    output = bay.
    """
    for word in (dest, output, source):
        if word not in language.token_to_id:
            raise ValueError(f"unknown word {word!r}; the vocabulary is {language.vocab[1:]}")
    if not isinstance(n_contexts, int) or n_contexts < 1:
        raise ValueError(f"n_contexts must be a positive int, got {n_contexts!r}")
    if not isinstance(context_len, int) or not 3 <= context_len <= model.cfg.n_ctx - 2:
        raise ValueError(
            f"context_len must be an int in 3..{model.cfg.n_ctx - 2}, got {context_len!r}"
        )
    gen = torch.Generator().manual_seed(seed)
    fillers = torch.tensor([language.token_to_id[w] for w in language.fillers])
    words = fillers[torch.randint(len(fillers), (n_contexts, context_len), generator=gen)]
    where = torch.randint(context_len - 2, (n_contexts,), generator=gen)
    with_source = words.clone()
    with_source[torch.arange(n_contexts), where] = language.token_to_id[source]
    ends = torch.full((n_contexts, 1), language.token_to_id[dest])
    starts = torch.full((n_contexts, 1), BOS)
    out_id = language.token_to_id[output]
    lp = {}
    for name, ctx in (("with", with_source), ("without", words)):
        tokens = torch.cat([starts, ctx, ends], dim=1)
        lp[name] = model(tokens)[:, -1].log_softmax(-1)[:, out_id].double()
    return ContinuationEffect(
        mean_change=float((lp["with"] - lp["without"]).mean()),
        mean_p_with=float(lp["with"].exp().mean()),
        mean_p_without=float(lp["without"].exp().mean()),
        n_contexts=n_contexts,
    )
