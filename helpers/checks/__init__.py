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
    check_best_rank_k,
    check_count_bigrams,
    check_empirical_log_probs,
    check_entropy_rate,
    check_expected_loss,
    check_set_zero_layer_weights,
    check_zero_layer_circuit,
)
from helpers.checks.composition import (
    check_composition_baseline,
    check_composition_map,
    check_composition_scores,
    check_path_ablation,
    check_read_share,
    check_run_with_frozen_patterns,
    check_term_importance,
    check_virtual_head_ov,
    check_virtual_weight,
)
from helpers.checks.induction import (
    check_ablate_heads,
    check_combined_ov_circuit,
    check_duplicate_token_score,
    check_find_induction_circuit,
    check_handmade_induction,
    check_induction_score,
    check_k_composition_circuit,
    check_previous_token_score,
)
from helpers.checks.one_layer import (
    check_copying_score,
    check_crossed_effect,
    check_describe_head,
    check_diagonal_top1,
    check_full_ov_circuit,
    check_full_qk_circuit,
    check_path_expansion,
    check_positional_pattern,
    check_skip_trigrams,
    check_top_skip_trigrams,
)
from helpers.checks.phase_change import (
    check_continuation_kinds,
    check_icl_score,
    check_pattern_preserving_ablation,
    check_slope_fall,
    check_smear_keys,
    check_sweep_predictions,
)
from helpers.checks.residual_stream import (
    check_attention_layer,
    check_attention_pattern,
    check_bos_attention,
    check_concat_then_project,
    check_direct_path_logits,
    check_head_output,
    check_logit_contributions,
    check_rotate_residual,
    check_with_uniform_attention,
    check_write_projector,
)

__all__ = [
    "CheckFailed",
    "ExerciseNotDone",
    "fixed_seed",
    "check_attention_pattern",
    "check_head_output",
    "check_attention_layer",
    "check_concat_then_project",
    "check_bos_attention",
    "check_with_uniform_attention",
    "check_direct_path_logits",
    "check_logit_contributions",
    "check_rotate_residual",
    "check_write_projector",
    "check_count_bigrams",
    "check_empirical_log_probs",
    "check_zero_layer_circuit",
    "check_entropy_rate",
    "check_expected_loss",
    "check_best_rank_k",
    "check_set_zero_layer_weights",
    "check_path_expansion",
    "check_full_ov_circuit",
    "check_full_qk_circuit",
    "check_copying_score",
    "check_skip_trigrams",
    "check_crossed_effect",
    "check_diagonal_top1",
    "check_positional_pattern",
    "check_top_skip_trigrams",
    "check_describe_head",
    "check_composition_scores",
    "check_composition_baseline",
    "check_run_with_frozen_patterns",
    "check_term_importance",
    "check_path_ablation",
    "check_composition_map",
    "check_virtual_head_ov",
    "check_virtual_weight",
    "check_read_share",
    "check_previous_token_score",
    "check_induction_score",
    "check_icl_score",
    "check_continuation_kinds",
    "check_pattern_preserving_ablation",
    "check_smear_keys",
    "check_slope_fall",
    "check_sweep_predictions",
    "check_duplicate_token_score",
    "check_ablate_heads",
    "check_k_composition_circuit",
    "check_combined_ov_circuit",
    "check_handmade_induction",
    "check_find_induction_circuit",
]
