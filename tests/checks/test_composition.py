"""Checkers of chapter 03."""

import pytest

from helpers import checks, circuits
from tests.checks.conftest import assert_accepts, assert_rejects


def _kcomp(m, qk_transposed=True, normalise=True, swap=False):
    a0, a1 = m.blocks[0].attn, m.blocks[1].attn
    OV = a0.W_V @ a0.W_O
    QK = a1.W_Q @ a1.W_K.transpose(-1, -2)
    other = QK.transpose(-1, -2) if qk_transposed else QK
    prod = (OV[:, None] @ other[None]).flatten(-2).norm(dim=-1)
    if normalise:
        prod = prod / (OV.flatten(-2).norm(dim=-1)[:, None] * QK.flatten(-2).norm(dim=-1)[None])
    return prod.T if swap else prod


def test_k_composition_accepts_reference():
    assert_accepts(checks.check_k_composition_scores, _kcomp)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda m: _kcomp(m, qk_transposed=False), "these are Q-composition scores"),
        (lambda m: _kcomp(m, swap=True), "axes are swapped"),
        (lambda m: _kcomp(m, normalise=False), "not normalised"),
        (lambda m: _kcomp(m) * 0 + 0.125, "matches none"),  # the random baseline as a constant
        (lambda m: _kcomp(m)[0], "returned shape"),
        (lambda m: circuits.composition_scores(m, "K"), "calls the course's reference"),
    ],
)
def test_k_composition_rejects(wrong, diagnosis):
    assert_rejects(checks.check_k_composition_scores, wrong, diagnosis=diagnosis)


def test_k_composition_rejects_v_composition():
    a0 = lambda m: m.blocks[0].attn  # noqa: E731
    a1 = lambda m: m.blocks[1].attn  # noqa: E731

    def v_comp(m):
        OV0, OV1 = a0(m).W_V @ a0(m).W_O, a1(m).W_V @ a1(m).W_O
        prod = (OV0[:, None] @ OV1[None]).flatten(-2).norm(dim=-1)
        return prod / (OV0.flatten(-2).norm(dim=-1)[:, None] * OV1.flatten(-2).norm(dim=-1)[None])

    assert_rejects(checks.check_k_composition_scores, v_comp, diagnosis="V-composition")


def _virtual(m, h0, h1):
    return m.W_E @ m.W_V[0, h0] @ m.W_O[0, h0] @ m.W_V[1, h1] @ m.W_O[1, h1] @ m.W_U


def test_virtual_head_accepts_reference():
    assert_accepts(checks.check_virtual_head_ov, _virtual)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (
            lambda m, h0, h1: (
                m.W_E @ m.W_V[1, h1] @ m.W_O[1, h1] @ m.W_V[0, h0] @ m.W_O[0, h0] @ m.W_U
            ),
            "wrong order",
        ),
        (lambda m, h0, h1: _virtual(m, h0, h1).T, "circuit is transposed"),
        (lambda m, h0, h1: m.W_E @ m.W_V[0, h0] @ m.W_O[0, h0] @ m.W_U, "layer-1 head is missing"),
        (lambda m, h0, h1: m.W_E @ m.W_V[1, h1] @ m.W_O[1, h1] @ m.W_U, "layer-0 head is missing"),
        (
            lambda m, h0, h1: _virtual(m, h1, h0),
            "L0H0, L1H1",
        ),  # heads swapped: wrong off the diagonal
        (lambda m, h0, h1: circuits.virtual_head_ov_circuit(m, (0, h0), (1, h1)), "reference"),
    ],
)
def test_virtual_head_rejects(wrong, diagnosis):
    assert_rejects(checks.check_virtual_head_ov, wrong, diagnosis=diagnosis)
