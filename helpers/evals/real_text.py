"""Measurements on models of real text (chapter 06), where no truth was planted: the corpus
itself is the truth. Bigram statistics for the zero-layer model, skip-trigrams probed in held-out
contexts for the one-layer model, and the search for a skip-trigram "bug".

A skip-trigram read off the weights (`circuits.top_skip_trigrams`) is a claim about the model;
`skip_trigram_probe` tests it the way chapter 02 tested the planted ones: write the source token
into real held-out contexts that end at the destination, and see how much the output's logit
rises, against a control that writes a frequent word instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from helpers.circuits import (
    direct_path,
    full_ov_circuit,
    full_qk_circuit,
    pearson,
    row_centred,
    top_skip_trigrams,
)
from helpers.data import BOS, TextLanguage
from helpers.data.tokenizer import UNK
from helpers.evals.ablations import run_with_ablation
from helpers.evals.head_scores import repeat_loss
from helpers.models import AttnOnlyTransformer, as_index, next_token_loss
from helpers.references import reference

# how a withheld reference of this module is named to the learner (helpers.references)
REFERENCE_PREFIX = "evals.real_text"
# The smoothing of the bigram table: (count + BETA · unigram) / (row total + BETA). 30 is the
# value that gave the prose corpus's held-out text the lowest loss among 1, 3, 10, 30, 100, 300.
BETA = 30.0


def unigram_counts(language: TextLanguage) -> Tensor:
    """`[d_vocab]`: how often each token occurs in the language's split."""
    tokens, _ = language.tokens()
    return torch.bincount(tokens.long(), minlength=language.d_vocab)


@reference
def document_bigram_counts(documents: list[Tensor], d_vocab: int) -> Tensor:
    """`[d_vocab, d_vocab]`: counts of (current, next) token pairs inside each document (a list
    of 1-d tensors of token ids); the last token of one document and the first of the next are
    not a pair, as no training window holds both."""
    pairs = [doc[:-1].long() * d_vocab + doc[1:].long() for doc in documents if len(doc) > 1]
    flat = torch.cat(pairs) if pairs else torch.zeros(0, dtype=torch.long)
    return torch.bincount(flat, minlength=d_vocab * d_vocab).view(d_vocab, d_vocab)


def bigram_counts(language: TextLanguage) -> Tensor:
    """`document_bigram_counts` of the documents of the language's split."""
    tokens, starts = language.tokens()
    bounds = starts.tolist()
    documents = [tokens[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return document_bigram_counts(documents, language.d_vocab)


@reference
def smoothed_bigram_log_probs(counts: Tensor, beta: float = BETA) -> Tensor:
    """`[d_vocab, d_vocab]` log P(next | current) of a bigram table smoothed toward the unigram
    distribution: (C[c, n] + beta · P(n)) / (Σ_n C[c, n] + beta), where P(n) = (Σ_c C[c, n] + 1)
    / (Σ C + d_vocab) (add-one, so that no token is ruled out). A pair never seen still gets the
    unigram's probability, scaled down by how much its row has seen."""
    if not (isinstance(beta, (int, float)) and beta > 0):
        raise ValueError(f"beta must be a number > 0, got {beta!r}")
    counts = counts.double()
    unigram = (counts.sum(0) + 1) / (counts.sum() + counts.shape[1])  # no token left at P = 0
    return ((counts + beta * unigram) / (counts.sum(1, keepdim=True) + beta)).log()


def table_loss(log_probs: Tensor, tokens: Tensor) -> float:
    """Mean loss of a bigram table `[d_vocab, d_vocab]` predicting `tokens` (`[batch, pos]`),
    over the same positions as the course's held-out losses (each token after the first
    following BOS)."""
    predicted = log_probs[tokens[:, 1:-1], tokens[:, 2:]]
    return float(-predicted.mean())


def model_loss(model: AttnOnlyTransformer, tokens: Tensor) -> float:
    """The model's mean loss on `tokens` over the positions `table_loss` uses."""
    with torch.no_grad():
        return float(next_token_loss(model(tokens), tokens, per_token=True)[:, 1:].mean())


@dataclass(frozen=True)
class BigramAgreement:
    """How closely a zero-layer model's `W_E W_U` matches the corpus's bigram statistics."""

    pearson: float  # row-centred W_E W_U against row-centred smoothed log-probs, well-seen pairs
    pearson_all: float  # the same over every column of the frequent rows
    n_pairs: int  # the well-seen pairs compared
    model_loss: float  # on held-out windows
    table_loss: float  # the smoothed bigram table on the same windows


def bigram_agreement(
    model: AttnOnlyTransformer,
    language: TextLanguage,
    top: int = 200,
    min_count: int = 5,
    n_windows: int = 256,
) -> BigramAgreement:
    """Compare a zero-layer model with the corpus's smoothed bigram table: the Pearson
    correlation of the row-centred matrices over the pairs seen at least `min_count` times among
    the `top` most frequent tokens (rows), and over all columns of those rows; and both held-out
    losses on `n_windows` held-out windows. Framework paper, "Zero-Layer Transformers": W_E W_U
    approximates the bigram log-likelihood."""
    if model.cfg.n_layers != 0:
        raise ValueError(f"bigram_agreement takes a zero-layer model, got {model.cfg.n_layers}")
    counts = bigram_counts(language)
    table = smoothed_bigram_log_probs(counts)
    frequent = unigram_counts(language).argsort(descending=True)
    rows = frequent[(frequent != BOS) & (frequent != UNK)][:top]
    W = row_centred(direct_path(model).double())[rows]
    T = row_centred(table)[rows]
    seen = counts[rows] >= min_count
    held = language.held_out().sample(
        n_windows, model.cfg.n_ctx, generator=torch.Generator().manual_seed(12345)
    )
    return BigramAgreement(
        pearson=pearson(W[seen], T[seen]),
        pearson_all=pearson(W, T),
        n_pairs=int(seen.sum()),
        model_loss=model_loss(model, held),
        table_loss=table_loss(table, held),
    )


def text_contexts(
    language: TextLanguage, n_contexts: int = 200, context_len: int = 23, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Real contexts for probing: `[n_contexts, context_len]` spans of held-out text (no BOS),
    and for each a random position among its first `context_len - 2` where a source token can be
    written (as `filler_contexts` does with chapter 02's filler words)."""
    if not isinstance(n_contexts, int) or isinstance(n_contexts, bool) or n_contexts < 1:
        raise ValueError(f"n_contexts must be a positive int, got {n_contexts!r}")
    if not isinstance(context_len, int) or isinstance(context_len, bool) or context_len < 3:
        raise ValueError(f"context_len must be an int >= 3, got {context_len!r}")
    generator = torch.Generator().manual_seed(seed)
    spans = language.held_out().sample(n_contexts, context_len + 1, generator=generator)[:, 1:]
    where = torch.randint(context_len - 2, (n_contexts,), generator=generator)
    return spans, where


@dataclass(frozen=True)
class Probe:
    """A skip-trigram probed in real contexts: the mean rise of the output's logit when the
    source is written into the context (`effect`), and when a frequent word is written there
    instead (`control`, the mean over the control words)."""

    triple: tuple[int, int, int]
    effect: float
    control: float

    @property
    def margin(self) -> float:
        return self.effect - self.control


def frequent_words(language: TextLanguage, n: int = 20, skip: int = 20) -> list[int]:
    """Control tokens: `n` frequent word tokens, after the `skip` most frequent (which are the
    commonest function words, sources of many skip-trigrams themselves)."""
    counts = unigram_counts(language)
    words = [int(t) for t in counts.argsort(descending=True) if language.tokenizer.is_word(int(t))]
    return words[skip : skip + n]


def skip_trigram_probe(
    model: AttnOnlyTransformer,
    language: TextLanguage,
    triple: tuple[int, int, int],
    n_contexts: int = 200,
    controls: int = 5,
    seed: int = 0,
) -> Probe:
    """Probe the skip-trigram (source, destination, output) in `n_contexts` held-out contexts
    that end at the destination (`text_contexts`): the mean change of the output's logit when
    the source is written at a random earlier position, and the same for `controls` frequent
    words written there instead (`frequent_words`; a control word equal to the source is
    skipped)."""
    V = model.cfg.d_vocab
    source, dest, output = (as_index(n, t, V) for n, t in zip(("source", "destination", "output"),
                                                              triple, strict=True))  # fmt: skip
    contexts, where = text_contexts(language, n_contexts, seed=seed)
    words = [w for w in frequent_words(language, controls + 1) if w != source][:controls]
    # what `skip_trigram_effect` measures, for the source and every control word in one batch:
    # BOS + context (with the word written at `where`, or as it is) + destination
    variants = []
    for word in (source, *words):
        written = contexts.clone()
        written[torch.arange(len(contexts)), where] = word
        variants.append(written)
    variants.append(contexts)
    body = torch.cat(variants)
    tokens = torch.cat([torch.full((len(body), 1), BOS), body, torch.full((len(body), 1), dest)], 1)
    with torch.no_grad():
        last = model(tokens)[:, -1, output].double().view(len(variants), -1)
    changes = (last[:-1] - last[-1]).mean(-1)  # [source, control words]
    return Probe((source, dest, output), float(changes[0]), float(changes[1:].mean()))


def readable_tokens(language: TextLanguage, min_count: int = 100) -> list[int]:
    """Word tokens seen at least `min_count` times: skip-trigrams among them read as text and
    have enough data behind them. The rest are what `top_skip_trigrams` should ignore."""
    counts = unigram_counts(language)
    return [t for t in range(language.d_vocab)
            if counts[t] >= min_count and language.tokenizer.is_word(t)]  # fmt: skip


def ignored_tokens(language: TextLanguage, min_count: int = 100) -> list[int]:
    """Every token that is not a `readable_tokens` one (BOS and UNK included)."""
    keep = set(readable_tokens(language, min_count))
    return [t for t in range(language.d_vocab) if t not in keep]


@dataclass(frozen=True)
class SkipTrigramBug:
    """Two skip-trigrams of one head that share a source, and the crossed continuation the
    corpus never shows: `source … first[0] → second[1]`."""

    head: int
    source: int
    first: tuple[int, int]  # (destination, output)
    second: tuple[int, int]
    crossed: Probe  # (source, first destination, second output), probed
    crossed_count: int  # how often the corpus has first destination → second output: 0


@reference
def crossed_continuations(
    rules: list[tuple[int, int, int]], counts: Tensor
) -> list[tuple[int, int, int]]:
    """The bug candidates among one head's skip-trigram `rules` (source, destination, output):
    for two rules with the same source whose bigrams (destination → output) the corpus shows
    (`counts[d, o] > 0`), with different destinations and different outputs, the crossed
    skip-trigram (source, first destination, second output) when the corpus never shows its
    bigram (`counts[first destination, second output] == 0`). Each once, sorted."""
    supported = [(s, d, o) for s, d, o in rules if counts[d, o] > 0]
    crossed = {
        (s1, d1, o2)
        for s1, d1, o1 in supported
        for s2, d2, o2 in supported
        if s1 == s2 and d1 != d2 and o1 != o2 and counts[d1, o2] == 0
    }
    return sorted(crossed)


def find_skip_trigram_bugs(
    model: AttnOnlyTransformer,
    language: TextLanguage,
    per_head: int = 40,
    min_count: int = 100,
    n_probed: int = 10,
    n_contexts: int = 200,
) -> list[SkipTrigramBug]:
    """Search every head of a one-layer model for the framework paper's skip-trigram "bug"
    ("keep … in → mind" and "keep … at → bay" make "keep … in → bay" likelier): among each
    head's `per_head` strongest skip-trigrams of readable tokens (`readable_tokens`), two that
    share a source and whose bigrams (destination → output) the corpus shows, while the crossed
    bigram (first destination → second output) never occurs in it. The `n_probed` crossed
    continuations the head's circuits make strongest are probed (`skip_trigram_probe`), and come
    back ordered by how far the crossed output rises above the control, largest first."""
    if model.cfg.n_layers != 1:
        raise ValueError(
            f"find_skip_trigram_bugs takes a one-layer model, got {model.cfg.n_layers}"
        )
    counts = bigram_counts(language)
    ignore = ignored_tokens(language, min_count)
    candidates: dict[tuple[int, int, int], tuple[float, int, tuple[int, int], tuple[int, int]]] = {}
    for head in range(model.cfg.n_heads):
        qk = full_qk_circuit(model, 0, head)  # [destination, source]
        ov = full_ov_circuit(model, 0, head)
        ov = ov - ov.mean(-1, keepdim=True)  # [source, output], as the ranking reads it
        rules = top_skip_trigrams(model, 0, head, per_head, ignore=ignore)
        for crossed in crossed_continuations(rules, counts):
            s, d1, o2 = crossed
            supported = [(d, o) for s_, d, o in rules if s_ == s and counts[d, o] > 0]
            first = next((d, o) for d, o in supported if d == d1 and o != o2)
            second = next((d, o) for d, o in supported if o == o2 and d != d1)
            strength = float(qk[d1, s] * ov[s, o2])
            if crossed not in candidates or strength > candidates[crossed][0]:
                candidates[crossed] = (strength, head, first, second)
    strongest = sorted(candidates.items(), key=lambda item: -item[1][0])[:n_probed]
    found = [
        SkipTrigramBug(head, crossed[0], first, second,
                       skip_trigram_probe(model, language, crossed, n_contexts), 0)
        for crossed, (_, head, first, second) in strongest
    ]  # fmt: skip
    return sorted(found, key=lambda bug: -bug.crossed.margin)


def describe_triple(language: TextLanguage, triple: tuple[int, int, int]) -> str:
    """A skip-trigram as text: "Return … True → if" (whitespace visible)."""
    labels = language.token_labels
    s, d, o = (labels[t].lstrip("·") for t in triple)
    return f"{s} … {d} → {o}"


def median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


@reference
@torch.no_grad()
def ablated_gain(
    model: AttnOnlyTransformer, probe: Tensor, length: int, heads: list[tuple[int, int]]
) -> float:
    """The share of the in-context gain on a repeat probe (`TextLanguage.repeat_probe`) that
    mean-ablating `heads` removes: the gain is the loss on the first copy minus the loss on the
    repeat (`repeat_loss`), and the share is 1 - gain with the heads ablated / gain without.
    1 when the ablation removes the whole gain, 0 when it removes none (more than 1 when the
    repeat becomes harder than the first copy)."""
    plain = repeat_loss(model(probe), probe, length)
    ablated = repeat_loss(run_with_ablation(model, probe, heads, kind="mean"), probe, length)
    return 1 - (ablated.fresh - ablated.repeated) / (plain.fresh - plain.repeated)
