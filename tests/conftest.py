import pytest
import torch

from helpers.models import AttnOnlyTransformer, HookedTransformerConfig


def make_model(**overrides) -> AttnOnlyTransformer:
    cfg = dict(
        n_layers=2, d_model=16, n_heads=3, d_head=4, n_ctx=10, d_vocab=13, initializer_range=0.3
    )
    cfg.update(overrides)
    return AttnOnlyTransformer(HookedTransformerConfig(**cfg))


def random_tokens(model: AttnOnlyTransformer, batch: int = 3, pos: int | None = None, seed=0):
    pos = model.cfg.n_ctx if pos is None else pos
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.cfg.d_vocab, (batch, pos), generator=gen)


@pytest.fixture
def model() -> AttnOnlyTransformer:
    return make_model()


@pytest.fixture
def tokens(model) -> torch.Tensor:
    return random_tokens(model)
