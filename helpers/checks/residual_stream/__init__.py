"""Exercises of chapter 00, declared: one attention head and a whole layer; the cache, hooks and
the paths to the logits; the residual stream's lack of a privileged basis and a head's write
subspace."""

# importing each module declares its exercises
from helpers.checks.residual_stream import attention, basis, paths  # noqa: F401
