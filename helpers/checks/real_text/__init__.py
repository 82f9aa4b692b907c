"""Exercises of chapter 06, declared: the corpus's bigrams (6.1, 6.2), skip-trigrams at a real
vocabulary and the search for their bug (6.3, 6.4), and the induction circuit of a model of code
and its phase change (6.5, 6.6)."""

# importing each module declares its exercises
from helpers.checks.real_text import corpus, induction, skip_trigrams  # noqa: F401
