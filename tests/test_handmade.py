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
