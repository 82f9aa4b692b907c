"""Exercises of chapter 01, declared: the bigram statistics of a language and the zero-layer model
that learns them."""

# importing each module declares its exercises
from helpers.checks.bigrams import language, model  # noqa: F401
