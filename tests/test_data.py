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
    with pytest.raises(ValueError, match="does not match its seed"):
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
