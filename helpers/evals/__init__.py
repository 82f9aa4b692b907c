"""Behavioural measurements: run a model on generated inputs and measure what it does.

(Where `circuits` reads the weights, `evals` watches the forward pass.) One module per kind of
measurement: `continuation` (skip-trigram effects, chapter 02), `head_scores` (scores of heads on
repeated random tokens, chapters 00 and 04), `ablations` (heads and paths removed, patterns frozen,
term importance, chapters 03 and 04), `real_text` (bigram statistics, skip-trigrams probed in
held-out text and the search for a skip-trigram bug, chapter 06: `evals.real_text`).
"""

from helpers.evals import real_text
from helpers.evals.ablations import (
    TermImportance,
    run_with_ablation,
    run_with_frozen_patterns,
    run_with_path_ablation,
    run_with_pattern_preserving_ablation,
    term_importance,
)
from helpers.evals.continuation import (
    ContinuationEffect,
    continuation_effect,
    filler_contexts,
    skip_trigram_effect,
)
from helpers.evals.head_scores import (
    INDUCTION_HEAD_THRESHOLD,
    InductionCircuit,
    RepeatLoss,
    bos_attention,
    copying_scores,
    duplicate_token_scores,
    earlier_occurrence_mask,
    find_induction_circuit,
    induction_scores,
    previous_token_scores,
    repeat_loss,
    repeated_tokens_loss,
)

__all__ = [
    "real_text",
    "INDUCTION_HEAD_THRESHOLD",
    "ContinuationEffect",
    "continuation_effect",
    "filler_contexts",
    "skip_trigram_effect",
    "RepeatLoss",
    "repeat_loss",
    "repeated_tokens_loss",
    "previous_token_scores",
    "induction_scores",
    "duplicate_token_scores",
    "earlier_occurrence_mask",
    "copying_scores",
    "bos_attention",
    "InductionCircuit",
    "find_induction_circuit",
    "run_with_ablation",
    "run_with_path_ablation",
    "run_with_frozen_patterns",
    "run_with_pattern_preserving_ablation",
    "TermImportance",
    "term_importance",
]
