"""Exercises of chapter 03, declared: composition scores and virtual weights, hooks on two layers,
and reading a model's wiring."""

# importing each module declares its exercises
from helpers.checks.composition import hooks, scores, virtual, wiring  # noqa: F401
