import torch

from helpers import circuits, handmade


def test_blank_model_layout():
    layout = handmade.Layout(d_vocab=5, n_ctx=7)
    model = handmade.blank_model(layout)
    assert model.cfg.d_model == 3 * 5 + 7 and model.cfg.d_head == 7 and model.cfg.n_heads == 1
    assert torch.equal(model.W_E[:, layout.token], torch.eye(5))
    assert torch.equal(model.W_pos[:, layout.position], torch.eye(7))
    assert torch.equal(model.W_U[layout.output], layout.logit_scale * torch.eye(5))
    assert all(float(p.detach().abs().sum()) == 0 for p in model.blocks.parameters())
    slices = [layout.token, layout.previous, layout.output, layout.position]
    assert [s.start for s in slices] == [0, 5, 10, 15] and slices[-1].stop == model.cfg.d_model


def test_the_reference_solution_lives_here_once():
    from helpers import checks, evals
    from helpers.data import repeated_random_tokens

    layout = handmade.Layout(d_vocab=9, n_ctx=19)
    model = handmade.reference_model(layout)
    tokens = repeated_random_tokens(8, 6, 3, 20, torch.Generator().manual_seed(0))
    assert evals.repeated_tokens_loss(model, tokens, 6).ratio < 0.01
    assert not hasattr(checks, "reference_handmade_weights")  # no second copy in the checkers


def test_layout_sizes_are_checked():
    import pytest

    with pytest.raises(ValueError, match="d_vocab must be an int >= 2, got 1"):
        handmade.Layout(d_vocab=1)
    with pytest.raises(ValueError, match="n_ctx must be an int >= 3"):
        handmade.Layout(n_ctx=2.5)


def test_mystery_models_are_seeded_and_hide_their_truth_in_a_rotation():
    a, b = handmade.mystery_induction(3), handmade.mystery_induction(3)
    assert all(
        torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True)
    )
    assert a.previous_token_head[0] == 0 and all(layer == 1 for layer, _ in a.induction_heads)
    # rotated: the embedding is no longer one-hot in any coordinates
    assert (a.model.W_E.abs() > 1e-3).float().mean() > 0.5
    # every layer-1 head writes through the same OV circuit: only attention tells them apart
    for seed in range(4):
        model = handmade.mystery_induction(seed).model
        ov = [circuits.full_ov_circuit(model, 1, h) for h in range(model.cfg.n_heads)]
        assert all(torch.allclose(o, ov[0], atol=1e-4) for o in ov)
    heads = handmade.mystery_heads(3)
    assert sorted(heads.kinds) == ["anti-copying", "copying", "previous token", "skip-trigrams"]
    assert len(heads.rules) == len(heads.strengths) >= 2
    composition = handmade.mystery_composition(3)
    assert sum(v is None for v in composition.wiring.values()) == 1


def test_set_zero_layer_weights_is_the_truncated_svd():
    from helpers.models import AttnOnlyTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=0, d_model=3, n_heads=0, d_head=1, n_ctx=4, d_vocab=7)
    model = AttnOnlyTransformer(cfg)
    table = torch.randn(7, 7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        handmade.set_zero_layer_weights(model, table)
    U, S, Vh = torch.linalg.svd(table)
    assert torch.allclose(model.W_E @ model.W_U, (U[:, :3] * S[:3]) @ Vh[:3], atol=1e-5)


def test_mystery_heads_defeat_the_naive_readings_of_a_skip_trigram_head():
    """The rules planted in the skip-trigram head are what `describe_head` reads back; reading
    without centring QK or OV, or without leaving BOS out, gives other rules for every check's
    pair of models (the checker of Exercise 2.10 relies on it)."""
    from tests.checks.test_one_layer import describe_reference

    naive = ({"centre_qk": False}, {"centre_ov": False}, {"skip_bos": False})
    caught = {}
    for seed in range(11):
        mystery = handmade.mystery_heads(seed)
        head = mystery.kinds.index("skip-trigrams")
        assert circuits.describe_head(mystery.model, 0, head, 3.0).rules == mystery.rules
        caught[seed] = [
            any(
                describe_reference(mystery.model, head, t, **kw)[2]
                != describe_reference(mystery.model, head, t)[2]
                for t in (3.0, 6.0)
            )
            for kw in naive
        ]
    for seed in range(10):
        assert all(a or b for a, b in zip(caught[seed], caught[seed + 1], strict=True)), seed
