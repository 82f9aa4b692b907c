"""Checkers of chapter 04."""

import pytest
import torch

from helpers import checks, evals, handmade
from tests.checks.conftest import assert_accepts, assert_rejects


def test_previous_token_score_accepts_reference():
    assert_accepts(checks.check_previous_token_score, lambda p: p.diagonal(-1, -2, -1).mean())
    assert_accepts(
        checks.check_previous_token_score, lambda p: float(p.diagonal(-1, -2, -1).mean())
    )


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda p: p.diagonal(0, -2, -1).mean(), "main diagonal"),
        (lambda p: p.diagonal(1, -2, -1).mean(), "next position"),
        (lambda p: p.diagonal(-1, -2, -1).sum(), "sum was taken"),
        (lambda p: p.mean(), "whole pattern"),
        (lambda p: p.diagonal(-1, -2, -1).mean(-1), "return one number"),
        (lambda p: (p.zero_(), 0.0)[1], "Exercise 4.1"),  # zero the input in place, answer 0
        (lambda p: 0.35, "expected"),
    ],
)
def test_previous_token_score_rejects(wrong, diagnosis):
    assert_rejects(checks.check_previous_token_score, wrong, diagnosis=diagnosis)


def _induction(shift=1, latest_only=False, average=False, fixed_length=None):
    def fn(pattern, length):
        length = fixed_length or length
        n, per_query = pattern.shape[-1], []
        for q in range(1 + length, n):
            rs = [1] if latest_only else list(range(1, (q - 1) // length + 1))
            total = pattern[:, q, [q - r * length + shift for r in rs]].sum(-1)
            per_query.append(total / len(rs) if average else total)
        return float(torch.stack(per_query).mean())

    return fn


def test_induction_score_accepts_the_course_sum(capsys):
    assert_accepts(checks.check_induction_score, _induction())
    assert "Olsson" not in capsys.readouterr().out


def test_induction_score_accepts_olssons_average_with_a_note(capsys):
    assert_accepts(checks.check_induction_score, _induction(average=True))
    assert "as Olsson et al. do" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_induction(shift=0), "duplicate-token score"),
        (_induction(shift=2), "one position too far"),
        (_induction(latest_only=True), "only the most recent earlier copy"),
        (_induction(fixed_length=5), "Exercise 4.2"),  # ignores the length it is given
        (lambda p, length: "0.5", "must return a float"),
        (
            lambda p, length: evals.earlier_occurrence_mask(p.shape[-1], length, 1).float().mean(),
            "reference",
        ),
    ],
)
def test_induction_score_rejects(wrong, diagnosis):
    assert_rejects(checks.check_induction_score, wrong, diagnosis=diagnosis)


def _handmade_parts():
    def prev(model, layout):
        n, V = layout.n_ctx, layout.d_vocab
        position = torch.arange(layout.position.start, layout.position.stop)
        a = model.blocks[0].attn
        a.W_Q[0, position, torch.arange(n)] = 50.0
        a.W_K[0, position[:-1], torch.arange(1, n)] = 50.0
        a.W_V[0, layout.token, :V] = torch.eye(V)
        a.W_O[0, :V, layout.previous] = torch.eye(V)

    def induction(model, layout, key=None, out=None, strength=50.0):
        V = layout.d_vocab
        a = model.blocks[1].attn
        a.W_Q[0, layout.token, :V] = strength * torch.eye(V)
        a.W_K[0, key or layout.previous, :V] = strength * torch.eye(V)
        a.W_V[0, layout.token, :V] = torch.eye(V)
        a.W_O[0, :V, out or layout.output] = torch.eye(V)

    return prev, induction


def test_handmade_accepts_reference():
    prev, induction = _handmade_parts()
    assert_accepts(checks.check_handmade_induction, prev, induction)


def _positional_shortcut(model, layout):
    """Layer 1 attends at a fixed offset (the checker's default length), by position alone."""
    length = (layout.n_ctx - 1) // 3
    n, V = layout.n_ctx, layout.d_vocab
    position = torch.arange(layout.position.start, layout.position.stop)
    a = model.blocks[1].attn
    a.W_Q[0, position, torch.arange(n)] = 50.0
    a.W_K[0, position[: n - length + 1], torch.arange(length - 1, n)] = 50.0
    a.W_V[0, layout.token, :V] = torch.eye(V)
    a.W_O[0, :V, layout.output] = torch.eye(V)


def _partial_previous(model, layout):
    """A previous-token head for the first 20 positions only (the adversarial pass's answer)."""
    n, V = 20, layout.d_vocab
    pos = torch.arange(layout.position.start, layout.position.start + n)
    a = model.blocks[0].attn
    a.W_Q[0, pos, torch.arange(n)] = 50.0
    a.W_K[0, pos[:-1], torch.arange(1, n)] = 50.0
    a.W_V[0, layout.token, :V] = torch.eye(V)
    a.W_O[0, :V, layout.previous] = torch.eye(V)


def _cheat_unembedding(model, layout):
    model.unembed.W_U.zero_()


@pytest.mark.parametrize(
    "variant, diagnosis",
    [
        ("no previous head", "Layer 0 puts as little as"),
        ("partial previous head", "at every one"),
        ("keys read the token", "Layer 1 puts only"),
        ("writes to the token subspace", "check its OV"),
        ("weak scores", "needs <= 0.1"),
        ("positional shortcut", "Layer 1 puts only"),
        ("changes W_U", "only the heads' weights are yours to set"),
        ("the reference", "calls the course's reference `handmade.set_reference_weights`"),
    ],
)
def test_handmade_rejects(variant, diagnosis):
    prev, induction = _handmade_parts()
    args = {
        "no previous head": (lambda m, lay: None, induction),
        "partial previous head": (_partial_previous, induction),
        "keys read the token": (prev, lambda m, lay: induction(m, lay, key=lay.token)),
        "writes to the token subspace": (prev, lambda m, lay: induction(m, lay, out=lay.token)),
        "weak scores": (prev, lambda m, lay: induction(m, lay, strength=0.5)),
        "positional shortcut": (prev, _positional_shortcut),
        "changes W_U": (prev, lambda m, lay: (induction(m, lay), _cheat_unembedding(m, lay))),
        "the reference": (lambda m, lay: None, handmade.set_reference_weights),
    }[variant]
    assert_rejects(checks.check_handmade_induction, *args, diagnosis=diagnosis)
