import torch

from helpers import handmade


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
