"""Exercises of chapter 04, declared: head scores on repeated random tokens, the mechanism of
induction (ablations, K-composition, OV circuits), a hand-made induction head and an induction
circuit found in a mystery model."""

# importing each module declares its exercises
from helpers.checks.induction import by_hand, mechanism, mystery, scores  # noqa: F401
