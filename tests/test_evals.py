import math

import pytest

from helpers import evals
from helpers.data import SkipTrigramLanguage
from helpers.models import AttnOnlyTransformer, HookedTransformerConfig


@pytest.fixture(scope="module")
def setup():
    language = SkipTrigramLanguage()
    model = AttnOnlyTransformer(HookedTransformerConfig(
        n_layers=1, d_model=16, n_heads=2, d_head=4, n_ctx=16, d_vocab=language.d_vocab))  # fmt: skip
    return model, language


def test_continuation_effect_is_deterministic_and_consistent(setup):
    model, language = setup
    a = evals.continuation_effect(model, language, "in", "bay", n_contexts=20, seed=1)
    b = evals.continuation_effect(model, language, "in", "bay", n_contexts=20, seed=1)
    assert a == b and a.n_contexts == 20
    assert 0 < a.mean_p_with < 1 and 0 < a.mean_p_without < 1 and math.isfinite(a.mean_change)
    c = evals.continuation_effect(model, language, "in", "bay", source="the", n_contexts=20, seed=1)
    assert c != a


def test_a_model_that_ignores_context_has_no_effect(setup):
    _, language = setup
    zero_layer = AttnOnlyTransformer(HookedTransformerConfig(
        n_layers=0, d_model=16, n_heads=0, d_head=4, n_ctx=16, d_vocab=language.d_vocab))  # fmt: skip
    effect = evals.continuation_effect(zero_layer, language, "in", "bay", n_contexts=10)
    assert abs(effect.mean_change) < 1e-9


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dest": "inn"}, r"unknown word 'inn'"),
        ({"n_contexts": 0}, r"n_contexts must be a positive int"),
        ({"context_len": 15}, r"context_len must be an int in 3..14, got 15"),
    ],
)
def test_bad_input(setup, kwargs, message):
    model, language = setup
    args = {"dest": "in", "output": "bay", **kwargs}
    with pytest.raises(ValueError, match=message):
        evals.continuation_effect(model, language, **args)
