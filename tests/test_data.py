import math

import pytest
import torch

from helpers.data import (
    BOS,
    BigramLanguage,
    CopyingLanguage,
    next_token_counts,
    stationary_distribution,
)


@pytest.fixture(scope="module")
def language() -> BigramLanguage:
    return BigramLanguage(n_states=8, scale=1.5, decay=0.8, seed=3)


def test_transition_matrix_is_stochastic_and_stationary_is_stationary(language):
    P = language.transition_matrix
    assert P.shape == (8, 8) and (P > 0).all()
    assert torch.allclose(P.sum(-1), torch.ones(8, dtype=P.dtype))
    pi = language.stationary
    assert torch.allclose(pi @ P, pi) and math.isclose(float(pi.sum()), 1.0)


def test_entropy_rate_matches_definition_and_bounds(language):
    P, pi = language.transition_matrix, language.stationary
    by_hand = sum(-pi[i] * sum(P[i, j] * math.log(P[i, j]) for j in range(8)) for i in range(8))
    assert math.isclose(language.entropy_rate(), float(by_hand), rel_tol=1e-9)
    assert 0 < language.entropy_rate() < math.log(8)


def test_samples_follow_the_planted_chain(language):
    tokens = language.sample(4000, 50, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (4000, 50) and tokens.dtype == torch.long
    assert (tokens[:, 0] == BOS).all() and (tokens[:, 1:] >= 1).all() and (tokens < 9).all()
    counts = next_token_counts(tokens, 9)[1:, 1:].double()
    empirical = counts / counts.sum(-1, keepdim=True)
    assert (empirical - language.transition_matrix).abs().max() < 0.02
    first = torch.bincount(tokens[:, 1] - 1, minlength=8).double() / 4000
    assert (first - language.stationary).abs().max() < 0.03  # chain starts in π


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(language):
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = language.sample(5, 9, generator=torch.Generator().manual_seed(1))
    b = language.sample(5, 9, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(torch.rand(1), before)
    assert torch.equal(
        BigramLanguage(8, 1.5, 0.8, seed=3).sample(4, 6),
        BigramLanguage(8, 1.5, 0.8, seed=3).sample(4, 6),
    )


def test_same_seed_same_language_and_round_trip(language):
    again = BigramLanguage.from_dict(language.to_dict())
    assert torch.equal(again.transition_matrix, language.transition_matrix)
    assert not torch.equal(
        BigramLanguage(8, 1.5, 0.8, seed=4).transition_matrix, language.transition_matrix
    )
    with pytest.raises(ValueError, match="transition_matrix does not match its seed"):
        BigramLanguage.from_dict(
            {**language.to_dict(), "transition_matrix": language.transition_matrix.T}
        )
    with pytest.raises(ValueError, match="not a bigram language"):
        BigramLanguage.from_dict({"name": "copying"})


def test_log_probs_layout(language):
    L = language.log_probs()
    assert L.shape == (9, 9) and torch.isinf(L[:, BOS]).all()
    assert torch.allclose(L[1:, 1:].exp(), language.transition_matrix)
    assert torch.allclose(L[BOS, 1:].exp(), language.stationary)
    assert language.token_labels[:3] == ["<BOS>", "a", "b"]


def test_stationary_distribution_of_a_known_chain():
    P = torch.tensor([[0.9, 0.1], [0.5, 0.5]], dtype=torch.float64)
    assert torch.allclose(
        stationary_distribution(P), torch.tensor([5 / 6, 1 / 6], dtype=torch.float64)
    )


def test_next_token_counts_by_hand():
    tokens = torch.tensor([[0, 1, 2, 1], [0, 2, 2, 1]])
    counts = next_token_counts(tokens, 3)
    assert counts.tolist() == [[0, 1, 1], [0, 0, 1], [0, 2, 1]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_states": 1}, "n_states must be at least 2"),
        ({"n_states": 0}, "n_states must be a positive int"),
        ({"scale": 0.0}, "need scale > 0"),
        ({"decay": 1.5}, "0 < decay <= 1"),
    ],
)
def test_bad_language_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BigramLanguage(**kwargs)


def test_bad_sample_sizes(language):
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        language.sample(0, 5)
    with pytest.raises(ValueError, match="n_ctx must be a positive int, got -2"):
        language.sample(2, -2)


def test_copying_language_uses_k_tokens_per_sequence():
    lang = CopyingLanguage(n_states=10, k=3, seed=1)
    tokens = lang.sample(200, 40, generator=torch.Generator().manual_seed(0))
    assert (tokens[:, 0] == BOS).all()
    distinct = [len(set(row[1:].tolist())) for row in tokens]
    assert max(distinct) == 3 and min(distinct) >= 1
    assert set(tokens[:, 1:].unique().tolist()) == set(range(1, 11))  # every token gets used
    assert CopyingLanguage.from_dict(lang.to_dict()).k == 3
    with pytest.raises(ValueError, match="k must be at most n_states=10, got 11"):
        CopyingLanguage(n_states=10, k=11)


def test_repeated_segments_truth_and_variety():
    from helpers.data import RepeatedSegmentLanguage

    lang = RepeatedSegmentLanguage(n_states=20, segment_len=(3, 8), seed=2)
    tokens, predictable = lang.sample_with_truth(
        300, 32, generator=torch.Generator().manual_seed(0)
    )
    assert tokens.shape == predictable.shape == (300, 32) and (tokens[:, 0] == BOS).all()
    assert not predictable[:, :2].any()
    lengths, offsets = set(), set()
    for row, mask in zip(tokens.tolist(), predictable.tolist(), strict=True):
        where = [i for i, m in enumerate(mask) if m]
        assert where == list(range(where[0], where[-1] + 1))  # one contiguous run
        length = len(where) + 1  # the segment's first token is not predictable
        start2 = where[0] - 1
        matches = [
            s
            for s in range(1, start2 - length + 1)
            if row[s : s + length] == row[start2 : start2 + length]
        ]
        assert matches, "the segment occurs earlier"
        lengths.add(length)
        offsets.add(start2 - matches[-1])
    assert len(lengths) == 6 and len(offsets) > 10  # lengths 3..8 and many offsets: no fixed period


def test_repeated_random_tokens_layout_and_errors():
    from helpers.data import repeated_random_tokens

    t = repeated_random_tokens(10, 4, 3, 5, torch.Generator().manual_seed(0))
    assert t.shape == (5, 13) and (t[:, 0] == BOS).all()
    assert torch.equal(t[:, 1:5], t[:, 5:9]) and torch.equal(t[:, 1:5], t[:, 9:13])
    assert all(len(set(row[1:5].tolist())) == 4 for row in t)
    with pytest.raises(ValueError, match="length must be at most n_states=10"):
        repeated_random_tokens(10, 11, 2, 1, torch.Generator())
    from helpers.data import RepeatedSegmentLanguage

    with pytest.raises(ValueError, match="segment_len must be"):
        RepeatedSegmentLanguage(segment_len=(5, 3))
    with pytest.raises(ValueError, match="n_ctx must be an int >= 9"):
        RepeatedSegmentLanguage(segment_len=(4, 6)).sample(2, 8)


# ---- the shared base --------------------------------------------------------------------------
from helpers.data import (  # noqa: E402
    LANGUAGES,
    PROBE_LENGTH,
    Language,
    RepeatedSegmentLanguage,
    SkipTrigramLanguage,
    induction_probe,
    language_from_dict,
)

ALL_LANGUAGES = [
    BigramLanguage(n_states=6, seed=1),
    CopyingLanguage(n_states=7, k=2, seed=1),
    SkipTrigramLanguage(seed=1),
    RepeatedSegmentLanguage(n_states=9, segment_len=(3, 5), seed=1),
]


@pytest.mark.parametrize("language", ALL_LANGUAGES, ids=lambda lang: lang.name)
def test_every_language_shares_the_base(language):
    assert isinstance(language, Language) and LANGUAGES[language.name] is type(language)
    labels = language.token_labels
    assert len(labels) == language.d_vocab and len(set(labels)) == len(labels)
    again = language_from_dict(language.to_dict())
    assert type(again) is type(language) and again.to_dict().keys() == language.to_dict().keys()
    tokens = language.sample(3, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tokens, again.sample(3, 16, generator=torch.Generator().manual_seed(0)))
    assert (
        tokens.shape == (3, 16)
        and (tokens[:, 0] == BOS).all()
        and (tokens < language.d_vocab).all()
    )
    text = language.decode(tokens[0])
    assert text.startswith(language.bos_label)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        language.sample(0, 16)


def test_language_from_dict_names_the_known_languages():
    with pytest.raises(ValueError, match="unknown language 'wiki'; known: bigram, copying"):
        language_from_dict({"name": "wiki"})
    with pytest.raises(ValueError, match="lacks \\['k'\\]"):
        language_from_dict({"name": "copying", "n_states": 5, "seed": 0})


def test_letters_decode_to_one_character_per_token_with_bos_shown_as_a_caret():
    language = RepeatedSegmentLanguage(n_states=52)
    assert language.token_labels[:3] == ["^", "a", "b"] and language.token_labels[-1] == "Z"
    assert language.decode(torch.tensor([0, 1, 2, 27])) == "^abA"


def test_induction_probe_is_the_standard_repeated_random_tokens():
    tokens = induction_probe(20, batch_size=4, seed=3)
    assert tokens.shape == (4, 1 + 3 * PROBE_LENGTH)
    block = tokens[:, 1 : 1 + PROBE_LENGTH]
    assert torch.equal(tokens[:, 1 + PROBE_LENGTH : 1 + 2 * PROBE_LENGTH], block)
    assert torch.equal(induction_probe(20, batch_size=4, seed=3), tokens)


# ---- the skip-trigram language ----------------------------------------------------------------
@pytest.fixture(scope="module")
def skip() -> SkipTrigramLanguage:
    return SkipTrigramLanguage(seed=0)


def test_skip_trigram_encoding_and_rule_table(skip):
    ids = skip.encode("keep the in")
    assert ids.tolist() == [
        BOS,
        skip.token_to_id["keep"],
        skip.token_to_id["the"],
        skip.token_to_id["in"],
    ]
    assert skip.decode(ids) == "<BOS> keep the in"
    table = skip.rule_table()
    assert table[skip.token_to_id["keep"], skip.token_to_id["in"]] == skip.token_to_id["mind"]
    assert table[skip.token_to_id["keep"], skip.token_to_id["at"]] == skip.token_to_id["bay"]
    assert (table >= 0).sum() == len(skip.rules)
    with pytest.raises(ValueError, match=r"unknown words \['kept'\]"):
        skip.encode("kept in")


def _next_after(tokens, first, then):
    """Tokens that follow `then` in sequences where `first` occurs before it."""
    out = []
    for row in tokens.tolist():
        for t in range(2, len(row) - 1):
            if row[t] == then and first in row[:t]:
                out.append(row[t + 1])
    return out


def test_skip_trigram_rules_fire_only_after_their_source(skip):
    tokens = skip.sample(3000, 24, generator=torch.Generator().manual_seed(0))
    keep, in_, mind = (skip.token_to_id[w] for w in ("keep", "in", "mind"))
    after = _next_after(tokens, keep, in_)
    assert len(after) > 100 and after.count(mind) / len(after) > 0.75  # p_rule = 0.8
    without = [row[t + 1] for row in tokens.tolist() for t in range(1, 23)
               if row[t] == in_ and keep not in row[:t]]  # fmt: skip
    assert len(without) > 100 and without.count(mind) / len(without) < 0.1


def test_adjacent_rule_needs_its_source_right_before(skip):
    tokens = skip.sample(4000, 24, generator=torch.Generator().manual_seed(1))
    back, and_, forth = (skip.token_to_id[w] for w in ("back", "and", "forth"))
    adjacent, far = [], []
    for row in tokens.tolist():
        for t in range(2, 23):
            if row[t] == and_:
                (adjacent if row[t - 1] == back else far if back in row[:t] else []).append(
                    row[t + 1]
                )
    assert adjacent and adjacent.count(forth) / len(adjacent) > 0.7
    assert far and far.count(forth) / len(far) < 0.1


def test_skip_trigram_language_round_trips_and_rejects_bad_rules(skip):
    again = SkipTrigramLanguage.from_dict(skip.to_dict())
    assert again.vocab == skip.vocab and again.rules == skip.rules
    with pytest.raises(ValueError, match="each destination must belong to one rule"):
        SkipTrigramLanguage(rules=(("a", "b", "c"), ("d", "b", "e")))
    with pytest.raises(ValueError, match="three words"):
        SkipTrigramLanguage(rules=(("a", "b"),))


def test_entropy_rate_of_a_matrix_matches_the_language():
    from helpers.data import entropy_rate

    language = BigramLanguage(n_states=6, seed=4)
    assert entropy_rate(language.transition_matrix) == pytest.approx(language.entropy_rate())
    P = torch.full((4, 4), 0.25, dtype=torch.float64)
    assert entropy_rate(P) == pytest.approx(math.log(4))
