"""Companion package of "Transformer Circuits, hands-on".

One module per concept: `models` (the attention-only transformer), `data` (languages with planted
ground truth), `train`, `checkpoints`, `recipes` (the course's trained models), `phase_change`
(training while watching induction heads form), `attribution` and `circuits` (analysis), `checks`
(exercise checkers), `plotting` and `widgets`.
"""
