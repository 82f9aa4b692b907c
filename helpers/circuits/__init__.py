"""Circuits read from the weights alone: nothing here runs the model.

Row convention throughout (see `helpers.models`): a circuit's rows are the token it reads and its
columns the logit it writes, e.g. the zero-layer circuit `W_E @ W_U` has row = current token,
column = next-token logit. The paper writes the transpose, W_U W_E. One module per depth:
`zero_layer` (chapter 01), `one_layer` (chapter 02), `two_layer` (chapters 03-04).
"""

from helpers.circuits.one_layer import (
    HeadDescription,
    attention_score_terms,
    copying_score,
    describe_head,
    diagonal_top1_accuracy,
    full_ov_circuit,
    full_qk_circuit,
    ov_eigenvalues,
    positional_pattern,
    positional_qk_circuit,
    skip_trigrams,
    strongest_skip_trigrams,
    top_skip_trigrams,
)
from helpers.circuits.two_layer import (
    COMPOSITION_KINDS,
    composition_baseline,
    composition_map,
    composition_scores,
    k_composition_circuit,
    k_composition_positivity,
    q_composition_circuit,
    random_composition_baseline,
    virtual_head_ov_circuit,
)
from helpers.circuits.zero_layer import (
    best_rank_k,
    direct_path,
    expected_loss,
    pearson,
    row_centred,
    spearman,
)

__all__ = [
    "direct_path",
    "row_centred",
    "pearson",
    "spearman",
    "best_rank_k",
    "expected_loss",
    "full_qk_circuit",
    "positional_qk_circuit",
    "full_ov_circuit",
    "ov_eigenvalues",
    "copying_score",
    "positional_pattern",
    "attention_score_terms",
    "skip_trigrams",
    "top_skip_trigrams",
    "strongest_skip_trigrams",
    "HeadDescription",
    "describe_head",
    "diagonal_top1_accuracy",
    "COMPOSITION_KINDS",
    "composition_scores",
    "composition_baseline",
    "random_composition_baseline",
    "composition_map",
    "virtual_head_ov_circuit",
    "k_composition_circuit",
    "k_composition_positivity",
    "q_composition_circuit",
]
