"""The induction-head phase change (chapter 05): train while recording what forms, measure
in-context learning, and find the window where everything changes at once.

Olsson et al. (2022), "In-context Learning and Induction Heads", Argument 1: early in training,
in one narrow window, induction heads form (the prefix-matching score jumps), in-context learning
appears (the ICL score, late minus early loss, drops from above -0.15 to about -0.4 nats; the
paper's text quotes the amounts, "less than 0.15 nats" and "roughly 0.4") and the training loss
bends down, the one place where its curve is not convex; a one-layer model shows none of these.
`record_training` trains a model and records, every `every` steps, the held-out loss, the ICL
score, each head's previous-token and prefix-matching scores and a copy of the weights;
`find_phase_change` finds the onset of each change; `continuation_kinds` splits tokens into the
paper's "Dursleys" (an earlier bigram repeated) and "Mrs Potter" (an earlier bigram contradicted).
`sweep` trains many small runs until induction forms; `sweep_settings` is the chapter's (exercise
5.6), whose runs `helpers.recordings.phase_change_sweep` trains or loads from their recording.

Its modules:
- `icl`: the ICL score, at two positions or over two bands of them, and the positions it compares;
- `records`: `TrainingRecord` and `record_training`, one run recorded;
- `runs`: `record_runs`, runs side by side in threads, within a time budget (`OverBudget`);
- `window`: the onsets of the three changes and `find_phase_change`;
- `continuation`: Dursleys and "Mrs Potter" (`continuation_kinds`);
- `sweeps`: when induction formed (`formation_step`), and the chapter's sweep.
"""

from helpers.phase_change.continuation import continuation_kinds
from helpers.phase_change.icl import (
    icl_band_score,
    icl_positions,
    icl_score,
    icl_score_from_losses,
)
from helpers.phase_change.records import TrainingRecord, record_training
from helpers.phase_change.runs import PROJECT_AFTER_S, OverBudget, Setting, record_runs
from helpers.phase_change.sweeps import (
    FORMED_BELOW,
    SWEEP_EVERY,
    SWEEP_OUTCOMES,
    formation_step,
    sweep,
    sweep_changes,
    sweep_outcomes,
    sweep_settings,
)
from helpers.phase_change.window import (
    BEND_ONSET,
    MIN_BEND,
    MIN_DROP,
    MIN_RISE,
    ONSET_FRACTION,
    PhaseChange,
    change_onset,
    find_phase_change,
    loss_bend,
    slope_fall,
)

# The constants are re-exported to be read: the code reads each from the module that defines it,
# so a test that changes one patches that module (`phase_change.runs.PROJECT_AFTER_S`).
__all__ = [
    "icl_band_score",
    "icl_positions",
    "icl_score_from_losses",
    "icl_score",
    "TrainingRecord",
    "record_training",
    "Setting",
    "PROJECT_AFTER_S",
    "OverBudget",
    "record_runs",
    "MIN_RISE",
    "MIN_DROP",
    "MIN_BEND",
    "BEND_ONSET",
    "ONSET_FRACTION",
    "change_onset",
    "slope_fall",
    "loss_bend",
    "PhaseChange",
    "find_phase_change",
    "continuation_kinds",
    "FORMED_BELOW",
    "formation_step",
    "SWEEP_EVERY",
    "sweep",
    "SWEEP_OUTCOMES",
    "sweep_settings",
    "sweep_changes",
    "sweep_outcomes",
]
