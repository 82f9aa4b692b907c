import itertools

import numpy as np
import pytest
import torch

from helpers import circuits
from helpers.data import BigramLanguage
from tests.conftest import make_model


def test_direct_path_is_w_e_w_u_entry_by_entry():
    model = make_model(n_layers=0, n_heads=0)
    M = circuits.direct_path(model)
    for i, j in itertools.product(range(13), range(13)):
        assert torch.isclose(
            M[i, j], sum(model.W_E[i, k] * model.W_U[k, j] for k in range(16)), atol=1e-5
        )


def test_zero_layer_direct_path_is_the_whole_model():
    model = make_model(n_layers=0, n_heads=0, n_ctx=13)
    tokens = torch.arange(13)[None]
    with torch.no_grad():
        assert torch.allclose(model(tokens)[0], circuits.direct_path(model))


def test_row_centred_and_pearson():
    M = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    assert torch.allclose(
        circuits.row_centred(M), torch.tensor([[-2.0, -1.0, 3.0], [-1.0, -1.0, 2.0]])
    )
    a, b = torch.randn(5, 5), torch.randn(5, 5)
    assert np.isclose(circuits.pearson(a, b), np.corrcoef(a.flatten(), b.flatten())[0, 1])
    assert np.isclose(circuits.pearson(a, 3 * a + 1), 1.0)
    with pytest.raises(ValueError, match=r"shapes differ: \(5, 5\) vs \(5,\)"):
        circuits.pearson(a, b[0])


def test_best_rank_k_is_optimal_against_random_rank_k_matrices():
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(8, 6, generator=gen, dtype=torch.float64)
    approx = circuits.best_rank_k(M, 2)
    assert torch.linalg.matrix_rank(approx) == 2
    best = (M - approx).norm()
    for _ in range(200):  # Eckart-Young: no rank-2 matrix is closer
        other = torch.randn(8, 2, generator=gen, dtype=torch.float64) @ torch.randn(
            2, 6, generator=gen, dtype=torch.float64
        )
        assert (M - other).norm() >= best
    assert torch.allclose(circuits.best_rank_k(M, 6), M)
    with pytest.raises(ValueError, match=r"k must be an int in 0..6, got 7"):
        circuits.best_rank_k(M, 7)


def test_expected_loss_of_the_truth_is_the_entropy_rate():
    lang = BigramLanguage(n_states=5, seed=2)
    P = lang.transition_matrix
    assert np.isclose(circuits.expected_loss(P.log(), P, lang.stationary), lang.entropy_rate())
    assert np.isclose(
        circuits.expected_loss(P.log() + 7.0, P, lang.stationary), lang.entropy_rate()
    )
    assert circuits.expected_loss(torch.zeros(5, 5), P, lang.stationary) > lang.entropy_rate()
    assert np.isclose(circuits.expected_loss(torch.zeros(5, 5), P, lang.stationary), np.log(5))
