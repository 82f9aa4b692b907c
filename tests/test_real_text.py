"""Measurements on real-text models (helpers.evals.real_text), on a small text of our own so that
every number can be worked out by hand."""

import pytest
import torch

from helpers.data import BOS, TextLanguage
from helpers.evals import real_text as rt
from helpers.evals import skip_trigram_effect
from helpers.models import AttnOnlyTransformer, HookedTransformerConfig

SENTENCES = [
    "Return True if the value is set, otherwise return False.\n",
    "Read at most size bytes from the file and return them.\n",
    "The default value is None unless the caller gives another one.\n",
    "Each clause of the statement runs in order and may raise an error.\n",
]


@pytest.fixture(scope="module")
def language(tmp_path_factory) -> TextLanguage:
    folder = tmp_path_factory.mktemp("text")
    for i in range(24):  # 24 documents: every tenth is held out
        lines = [SENTENCES[(i + k) % len(SENTENCES)] for k in range(60)]
        (folder / f"doc{i:02d}.txt").write_text("".join(lines))
    return TextLanguage(folder, 96)


def test_bigram_counts_stay_inside_documents(language):
    counts = rt.bigram_counts(language)
    tokens, starts = language.tokens()
    by_hand = torch.zeros_like(counts)
    for a, b in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True):
        doc = tokens[a:b].long()
        by_hand.index_put_((doc[:-1], doc[1:]), torch.ones(len(doc) - 1, dtype=counts.dtype),
                           accumulate=True)  # fmt: skip
    assert torch.equal(counts, by_hand)
    assert counts.sum() == len(tokens) - (len(starts) - 1)
    assert torch.equal(
        rt.unigram_counts(language), torch.bincount(tokens.long(), minlength=language.d_vocab)
    )


def test_the_smoothed_table_is_a_distribution_that_never_rules_a_pair_out(language):
    table = rt.smoothed_bigram_log_probs(rt.bigram_counts(language))
    assert torch.allclose(table.exp().sum(-1), torch.ones(language.d_vocab, dtype=table.dtype))
    assert torch.isfinite(table).all()
    with pytest.raises(ValueError, match="beta must be a number > 0"):
        rt.smoothed_bigram_log_probs(rt.bigram_counts(language), beta=0)


def test_a_model_that_is_the_bigram_table_agrees_with_it_exactly(language):
    V = language.d_vocab
    cfg = HookedTransformerConfig(n_layers=0, d_model=V, n_heads=0, d_head=1, n_ctx=32,
                                  d_vocab=V)  # fmt: skip
    model = AttnOnlyTransformer(cfg)
    table = rt.smoothed_bigram_log_probs(rt.bigram_counts(language))
    with torch.no_grad():
        model.W_E.copy_(torch.eye(V))
        model.W_U.copy_(table.float())
    agreement = rt.bigram_agreement(model, language, top=20, min_count=1, n_windows=32)
    assert agreement.pearson == pytest.approx(1.0, abs=1e-5)
    assert agreement.model_loss == pytest.approx(agreement.table_loss, abs=1e-4)
    assert agreement.n_pairs == int((rt.bigram_counts(language)[_top(language, 20)] >= 1).sum())
    with pytest.raises(ValueError, match="takes a zero-layer model"):
        rt.bigram_agreement(_one_layer(language), language)


def _top(language, n):
    order = rt.unigram_counts(language).argsort(descending=True)
    return order[(order != BOS) & (order != 1)][:n]


def _one_layer(language, seed=0):
    cfg = HookedTransformerConfig(n_layers=1, d_model=32, n_heads=2, d_head=8, n_ctx=32,
                                  d_vocab=language.d_vocab, seed=seed)  # fmt: skip
    return AttnOnlyTransformer(cfg)


def test_text_contexts_are_held_out_spans(language):
    contexts, where = rt.text_contexts(language, 8, context_len=10, seed=1)
    assert contexts.shape == (8, 10) and (contexts != BOS).all()
    assert where.shape == (8,) and 0 <= where.min() and where.max() < 8
    held = language.held_out().documents()
    assert all(any(language.decode(c) in d for d in held) for c in contexts)
    with pytest.raises(ValueError, match="context_len must be an int >= 3"):
        rt.text_contexts(language, 8, context_len=2)


def test_a_probe_is_the_effect_of_the_source_against_frequent_words(language):
    model = _one_layer(language)
    words = rt.frequent_words(language, 6, skip=0)
    assert all(language.tokenizer.is_word(w) for w in words)
    source = words[0]
    triple = (source, words[1], words[2])
    probe = rt.skip_trigram_probe(model, language, triple, n_contexts=16, controls=3, seed=2)
    contexts, where = rt.text_contexts(language, 16, seed=2)
    controls = [w for w in rt.frequent_words(language, 4) if w != source][:3]
    expected = [skip_trigram_effect(model, contexts, where, w, *triple[1:]).mean_logit_change
                for w in controls]  # fmt: skip
    # one batched forward pass against one per word: equal to float rounding
    assert probe.effect == pytest.approx(
        skip_trigram_effect(model, contexts, where, *triple).mean_logit_change, abs=1e-5
    )
    assert probe.control == pytest.approx(sum(expected) / 3, abs=1e-5)
    assert probe.margin == pytest.approx(probe.effect - probe.control)


def test_readable_tokens_are_frequent_whole_words(language):
    readable = rt.readable_tokens(language, min_count=50)
    counts = rt.unigram_counts(language)
    assert readable and all(counts[t] >= 50 for t in readable)
    assert all(len(language.vocab[t].strip()) > 1 for t in readable)
    assert sorted(readable + rt.ignored_tokens(language, 50)) == list(range(language.d_vocab))


def test_bugs_are_crossed_continuations_the_corpus_never_shows(language):
    model = _one_layer(language, seed=3)
    counts = rt.bigram_counts(language)
    bugs = rt.find_skip_trigram_bugs(model, language, per_head=30, min_count=20, n_probed=4,
                                     n_contexts=16)  # fmt: skip
    assert len(bugs) <= 4
    for bug in bugs:
        s, d, o = bug.crossed.triple
        assert s == bug.source and d == bug.first[0] and o == bug.second[1]
        assert counts[d, o] == 0 and counts[bug.first] > 0 and counts[bug.second] > 0
    margins = [bug.crossed.margin for bug in bugs]
    assert margins == sorted(margins, reverse=True)
    with pytest.raises(ValueError, match="takes a one-layer model"):
        rt.find_skip_trigram_bugs(AttnOnlyTransformer(HookedTransformerConfig(
            n_layers=0, d_model=8, n_heads=0, d_head=1, n_ctx=8, d_vocab=language.d_vocab)),
            language)  # fmt: skip


def test_a_triple_reads_as_text(language):
    ids = [language.tokenizer.index[w] for w in ("Return", " True", " if")]
    assert rt.describe_triple(language, tuple(ids)) == "Return … True → if"
