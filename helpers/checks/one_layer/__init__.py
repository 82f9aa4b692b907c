"""Exercises of chapter 02, declared: one layer's circuits, copying, skip-trigrams, and a head
described from its weights."""

# importing each module declares its exercises
from helpers.checks.one_layer import circuits, copying, describe, skip_trigrams  # noqa: F401
