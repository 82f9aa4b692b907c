"""Exercise checkers: one `check_…` per exercise.

A checker runs the learner's function on inputs it draws at check time, compares with the course's
reference (computed first, on its own copy of the inputs) or with the planted truth, and either
prints a one-line confirmation or raises `CheckFailed` with a diagnosis: what is wrong, on which
axis, and which common mistake the answer matches. A stub that still raises NotImplementedError
becomes a one-line `ExerciseNotDone`. See `helpers.checks._base` for the rules every checker
follows.
"""

from helpers.checks._base import CheckFailed, ExerciseNotDone, fixed_seed
from helpers.checks.bigrams import (
    check_count_bigrams,
    check_empirical_log_probs,
    check_zero_layer_circuit,
)
from helpers.checks.composition import check_k_composition_scores, check_virtual_head_ov
from helpers.checks.induction import (
    check_handmade_induction,
    check_induction_score,
    check_previous_token_score,
)
from helpers.checks.one_layer import (
    check_copying_score,
    check_crossed_effect,
    check_full_ov_circuit,
    check_full_qk_circuit,
    check_path_expansion,
    check_skip_trigrams,
)
from helpers.checks.residual_stream import (
    check_attention_pattern,
    check_direct_path_logits,
    check_head_output,
)

__all__ = [
    "CheckFailed",
    "ExerciseNotDone",
    "fixed_seed",
    "check_attention_pattern",
    "check_head_output",
    "check_direct_path_logits",
    "check_count_bigrams",
    "check_empirical_log_probs",
    "check_zero_layer_circuit",
    "check_path_expansion",
    "check_full_ov_circuit",
    "check_full_qk_circuit",
    "check_copying_score",
    "check_skip_trigrams",
    "check_crossed_effect",
    "check_k_composition_scores",
    "check_virtual_head_ov",
    "check_previous_token_score",
    "check_induction_score",
    "check_handmade_induction",
]
