import itertools
import math

import numpy as np
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


# ---- repeated random tokens, ablations, term importance -----------------------------------------
import torch  # noqa: E402

from helpers import handmade  # noqa: E402
from helpers.data import repeated_random_tokens  # noqa: E402
from helpers.models import next_token_loss  # noqa: E402
from tests.conftest import make_model, random_tokens  # noqa: E402


@pytest.fixture(scope="module")
def handmade_model():
    model = handmade.reference_model(handmade.Layout())
    tokens = repeated_random_tokens(11, 8, 3, 10, torch.Generator().manual_seed(0))
    return model, tokens


def test_scores_of_a_perfect_hand_made_induction_circuit(handmade_model):
    model, tokens = handmade_model
    prev = evals.previous_token_scores(model, tokens)
    induction = evals.induction_scores(model, tokens, 8)
    duplicate = evals.duplicate_token_scores(model, tokens, 8)
    assert prev[0, 0] > 0.99 and prev[1, 0] < 0.1
    assert induction[1, 0] > 0.99 and induction[0, 0] < 0.1
    assert duplicate.max() < 0.1
    assert evals.copying_scores(model, tokens)[1, 0] > 0.9  # it copies what it attends to
    loss = evals.repeated_tokens_loss(model, tokens, 8)
    assert loss.repeated < 0.01 and loss.fresh > 1.0 and loss.ratio < 0.01


def test_earlier_occurrence_mask_brute_force():
    n, length = 1 + 4 * 3, 4
    for shift in (0, 1):
        mask = evals.earlier_occurrence_mask(n, length, shift)
        latest = evals.earlier_occurrence_mask(n, length, shift, latest_only=True)
        for q, k in itertools.product(range(n), range(n)):
            rs = [r for r in range(1, 4) if q - r * length >= 1 and k == q - r * length + shift]
            assert mask[q, k] == bool(rs and k < q)
            assert latest[q, k] == (1 in rs and k < q)


def test_repeat_loss_by_hand():
    tokens = torch.tensor([[0, 1, 2, 3, 1, 2, 3]])  # BOS + 2 blocks of 3
    logits = torch.zeros(1, 7, 5)
    logits[0, 4, 2] = logits[0, 5, 3] = 100.0  # perfect on the predictable repeats
    loss = evals.repeat_loss(logits, tokens, 3)
    assert np.isclose(loss.fresh, np.log(5)) and loss.repeated < 1e-6
    with pytest.raises(ValueError, match="BOS \\+ at least 2 blocks of length 4"):
        evals.repeat_loss(logits, tokens, 4)


def test_zero_ablation_removes_exactly_the_heads_logit_term():
    model = make_model()
    tokens = random_tokens(model)
    _, cache = model.run_with_cache(tokens)
    ablated = evals.run_with_ablation(model, tokens, [(1, 2)])
    expected = model(tokens) - cache["blocks.1.attn.hook_result"][:, :, 2] @ model.W_U
    assert torch.allclose(ablated, expected, atol=1e-5)
    means = cache["blocks.1.attn.hook_result"][:, :, 2].mean(dim=(0, 1))
    mean_ablated = evals.run_with_ablation(model, tokens, [(1, 2)], kind="mean")
    assert torch.allclose(mean_ablated, expected + means @ model.W_U, atol=1e-5)
    with pytest.raises(ValueError, match="kind must be 'zero' or 'mean'"):
        evals.run_with_ablation(model, tokens, [(1, 2)], kind="resample")
    with pytest.raises(ValueError, match="head must be an int in 0..2, got 3"):
        evals.run_with_ablation(model, tokens, [(0, 3)])


def test_path_ablation_brute_force_for_values():
    """Removing head L0H1 from layer 1's values = recomputing layer 1 with values read from
    resid - that head's output, patterns unchanged."""
    model = make_model()
    tokens = random_tokens(model)
    _, cache = model.run_with_cache(tokens)
    sent = cache["blocks.0.attn.hook_result"][:, :, 1]
    resid1 = cache["blocks.1.hook_resid_pre"]
    a1 = model.blocks[1].attn
    v = torch.einsum("bpm,hmd->bphd", resid1 - sent, a1.W_V)
    z = torch.einsum("bhqk,bkhd->bqhd", cache["blocks.1.attn.hook_pattern"], v)
    out = torch.einsum("bqhd,hdm->bqm", z, a1.W_O)
    expected = (resid1 + out) @ model.W_U
    got = evals.run_with_path_ablation(model, tokens, (0, 1), "v", layer=1)
    assert torch.allclose(got, expected, atol=1e-5)
    for receiver in ("q", "k"):  # changes the patterns, so the logits change
        assert not torch.allclose(
            evals.run_with_path_ablation(model, tokens, (0, 1), receiver, 1), model(tokens)
        )
    with pytest.raises(ValueError, match="receiver must be 'q', 'k' or 'v'"):
        evals.run_with_path_ablation(model, tokens, (0, 1), "o", 1)
    with pytest.raises(ValueError, match="layer must be an int in 1..1, got 0"):
        evals.run_with_path_ablation(model, tokens, (0, 1), "k", 0)


def test_term_importance_against_hooks():
    model = make_model()
    tokens = random_tokens(model)
    terms = evals.term_importance(model, tokens)
    with torch.no_grad():
        assert np.isclose(terms.order_2, next_token_loss(model(tokens), tokens).item(), atol=1e-5)
        assert np.isclose(
            terms.order_0, next_token_loss(model.W_E[tokens] @ model.W_U, tokens).item(), atol=1e-5
        )
    # order 1 = the model with frozen patterns whose layer 1 reads the embeddings only
    _, cache = model.run_with_cache(tokens)
    frozen = [
        (
            f"blocks.{i}.attn.hook_pattern",
            lambda x, hook, i=i: cache[f"blocks.{i}.attn.hook_pattern"],
        )
        for i in range(2)
    ]
    layer0_out = cache["blocks.0.hook_attn_out"]
    hooks = [*frozen, ("blocks.1.hook_resid_pre", lambda x, hook: cache["hook_embed"]),
             ("blocks.1.hook_resid_post", lambda x, hook: x + layer0_out)]  # fmt: skip
    order1 = next_token_loss(model.run_with_hooks(tokens, hooks), tokens).item()
    assert np.isclose(terms.order_1, order1, atol=1e-5)
    assert set(terms.marginal) == {
        "direct path (order 0)",
        "single heads (order 1)",
        "virtual heads (order 2)",
    }
    with pytest.raises(ValueError, match="needs a two-layer model, got 1"):
        evals.term_importance(make_model(n_layers=1), tokens)


def test_skip_trigram_effect_by_hand(setup):
    model, language = setup
    contexts, where = evals.filler_contexts(language, 5, context_len=6, seed=2)
    assert contexts.shape == (5, 6) and where.shape == (5,) and (where <= 3).all()
    keep, in_, bay = (language.token_to_id[w] for w in ("keep", "in", "bay"))
    effect = evals.skip_trigram_effect(model, contexts, where, keep, in_, bay)
    changes = []
    for ctx, w in zip(contexts, where, strict=True):
        with_keep = ctx.clone()
        with_keep[w] = keep
        lp = [model(torch.cat([torch.tensor([0]), c, torch.tensor([in_])]))[0, -1].log_softmax(-1)[bay]
              for c in (with_keep, ctx)]  # fmt: skip
        changes.append(float((lp[0] - lp[1]).detach()))
    assert np.isclose(effect.mean_change, np.mean(changes), atol=1e-5)


def test_one_dimensional_tokens_are_refused_where_they_would_give_garbage():
    model = make_model()
    tokens = repeated_random_tokens(12, 3, 3, 2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"for one sequence use tokens\[None\]"):
        evals.repeated_tokens_loss(model, tokens[0], 3)
    with pytest.raises(ValueError, match=r"for one sequence use tokens\[None\]"):
        evals.copying_scores(model, tokens[0])
    assert evals.repeated_tokens_loss(model, tokens[:1], 3).fresh > 0  # [1, pos] is fine


def test_scores_of_a_zero_layer_model_are_an_error():
    model = make_model(n_layers=0, n_heads=0)
    tokens = repeated_random_tokens(12, 3, 3, 2, torch.Generator().manual_seed(0))
    for score in (evals.previous_token_scores, evals.copying_scores):
        with pytest.raises(ValueError, match="zero-layer model has no attention heads"):
            score(model, tokens)
    with pytest.raises(ValueError, match="zero-layer model has no attention heads"):
        evals.induction_scores(model, tokens, 3)


def test_ablated_heads_must_be_a_list_of_pairs():
    model = make_model()
    tokens = random_tokens(model)
    with pytest.raises(
        ValueError, match=r"heads must be a list of \(layer, head\) pairs, e.g. \[\(0, 1\)\]"
    ):
        evals.run_with_ablation(model, tokens, (0, 1))  # would read as two heads
    ablated = evals.run_with_ablation(model, tokens, [(torch.tensor(0), np.int64(1))])
    assert torch.allclose(ablated, evals.run_with_ablation(model, tokens, [(0, 1)]))


def test_bos_attention_by_hand():
    model = make_model()
    tokens = random_tokens(model)
    _, cache = model.run_with_cache(tokens)
    expected = torch.stack(
        [cache[f"blocks.{i}.attn.hook_pattern"][:, :, 1:, 0].mean(dim=(0, 2)) for i in range(2)]
    )
    assert torch.allclose(evals.bos_attention(model, tokens), expected)


def test_run_with_frozen_patterns_changes_only_what_it_freezes():
    model = make_model()
    tokens, other = random_tokens(model, seed=0), random_tokens(model, seed=1)
    _, cache = model.run_with_cache(tokens)
    own = {i: cache[f"blocks.{i}.attn.hook_pattern"] for i in range(2)}
    assert torch.allclose(
        evals.run_with_frozen_patterns(model, tokens, own), model(tokens), atol=1e-5
    )
    _, other_cache = model.run_with_cache(other)
    frozen = evals.run_with_frozen_patterns(
        model, tokens, {1: other_cache["blocks.1.attn.hook_pattern"]}
    )
    assert not torch.allclose(frozen, model(tokens))


def test_find_induction_circuit_on_hand_made_models():
    for seed in range(3):
        mystery = handmade.mystery_induction(seed)
        cfg = mystery.model.cfg
        length = min(cfg.d_vocab - 1, (cfg.n_ctx - 1) // 2)
        tokens = repeated_random_tokens(
            cfg.d_vocab - 1, length, (cfg.n_ctx - 1) // length, 20, torch.Generator().manual_seed(0)
        )
        found = evals.find_induction_circuit(mystery.model, tokens, length)
        assert found.previous_token_head == mystery.previous_token_head
        assert sorted(found.induction_heads) == mystery.induction_heads
    with pytest.raises(ValueError, match="two-layer model"):
        evals.find_induction_circuit(make_model(n_layers=1), tokens, length)


def test_skip_trigram_effect_also_measures_logits(setup):
    model, language = setup
    contexts, where = evals.filler_contexts(language, 5, context_len=6, seed=2)
    keep, in_, bay = (language.token_to_id[w] for w in ("keep", "in", "bay"))
    effect = evals.skip_trigram_effect(model, contexts, where, keep, in_, bay)
    with_keep = contexts.clone()
    with_keep[torch.arange(5), where] = keep
    edges = torch.zeros(5, 1, dtype=torch.long), torch.full((5, 1), in_)
    with torch.no_grad():
        a = model(torch.cat([edges[0], with_keep, edges[1]], 1))[:, -1, bay]
        b = model(torch.cat([edges[0], contexts, edges[1]], 1))[:, -1, bay]
    assert np.isclose(effect.mean_logit_change, float((a - b).mean()), atol=1e-5)
