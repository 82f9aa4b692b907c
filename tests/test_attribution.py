import pytest
import torch

from helpers import attribution
from tests.conftest import make_model, random_tokens


@pytest.mark.parametrize("positions", ["shortformer", "standard"])
@pytest.mark.parametrize("use_bias", [False, True])
def test_components_sum_to_the_logits(positions, use_bias):
    model = make_model(positional_embedding_type=positions, use_bias=use_bias)
    if use_bias:
        with torch.no_grad():
            for block in model.blocks:
                block.attn.b_O.normal_(generator=torch.Generator().manual_seed(0))
                block.attn.b_V.normal_(generator=torch.Generator().manual_seed(1))
            model.unembed.b_U.normal_(generator=torch.Generator().manual_seed(2))
    tokens = random_tokens(model)
    contributions, labels = attribution.logit_contributions(model, tokens)
    n_expected = 1 + (positions == "standard") + 2 * 3 + (2 if use_bias else 0)
    assert contributions.shape == (n_expected, 3, 10, 13) and len(labels) == n_expected
    b_U = model.unembed.b_U if use_bias else 0
    with torch.no_grad():
        assert torch.allclose(contributions.sum(0) + b_U, model(tokens), atol=1e-5)
    resid, _ = attribution.decompose_resid(model, tokens)
    _, cache = model.run_with_cache(tokens)
    assert torch.allclose(resid.sum(0), cache["blocks.1.hook_resid_post"], atol=1e-5)


def test_labels_and_direct_path(model, tokens):
    contributions, labels = attribution.logit_contributions(model, tokens)
    assert labels == ["embed", "L0H0", "L0H1", "L0H2", "L1H0", "L1H1", "L1H2"]
    assert torch.allclose(contributions[0], model.W_E[tokens] @ model.W_U)
    assert torch.allclose(attribution.direct_path_logits(model, tokens), contributions[0])
    standard = make_model(positional_embedding_type="standard")
    expected = (standard.W_E[tokens] + standard.W_pos) @ standard.W_U
    assert torch.allclose(attribution.direct_path_logits(standard, tokens), expected)


def test_head_term_is_the_head_output_unembedded(model, tokens):
    contributions, labels = attribution.logit_contributions(model, tokens)
    _, cache = model.run_with_cache(tokens)
    head = cache["blocks.1.attn.hook_result"][:, :, 2]
    assert torch.allclose(contributions[labels.index("L1H2")], head @ model.W_U)


def test_bad_tokens_rejected(model):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        attribution.logit_contributions(model, torch.tensor([[0, 99]]))
    with pytest.raises(ValueError, match="longer than n_ctx"):
        attribution.direct_path_logits(model, torch.zeros(1, 11, dtype=torch.long))


def _one_layer(**overrides):
    return make_model(n_layers=1, n_heads=2, d_vocab=7, **overrides)


def test_one_layer_path_expansion_is_exact_and_checks_its_model():
    model = _one_layer()
    tokens = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(0))
    direct, heads = attribution.one_layer_path_expansion(model, tokens)
    assert heads.shape == (2, 3, 5, 7)
    with torch.no_grad():
        assert torch.allclose(direct + heads.sum(0), model(tokens), atol=1e-5)
    with pytest.raises(ValueError, match="needs a one-layer model, got 2"):
        attribution.one_layer_path_expansion(make_model(), tokens)
    with pytest.raises(ValueError, match="shortformer positions and no biases"):
        attribution.one_layer_path_expansion(
            _one_layer(positional_embedding_type="standard"), tokens
        )
