"""Helpers for the checker tests: every checker must accept the reference answer and reject
plausible wrong answers with the right diagnosis, whatever inputs it draws."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from helpers import checks

# Checkers draw their inputs at check time; the tests try several draws.
SEEDS = (0, 1, 2)


def assert_accepts(check: Callable, *answer, seeds=SEEDS, capsys=None) -> None:
    for seed in seeds:
        with checks.fixed_seed(seed):
            check(*answer)


def assert_rejects(check: Callable, *answer, diagnosis: str, seeds=SEEDS) -> None:
    """`check(*answer)` fails for every seed, with `diagnosis` in its message."""
    for seed in seeds:
        with checks.fixed_seed(seed), pytest.raises(checks.CheckFailed) as info:
            check(*answer)
        assert diagnosis in str(info.value), f"seed {seed}: {info.value}"
