"""The phase change (chapter 05), figures of training over time: `phase_change_panel` replays
a run at one record (`update_phase_change_panel` moves it), `phase_change_curves` compares runs'
held-out loss, ICL score and prefix-matching score, and `formation_steps` shows when induction
formed in each run of a sweep."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.text import Text
from torch import Tensor

from helpers.plotting.axes import ATTENTION_CMAP, ATTENTION_SCALE, _inches
from helpers.plotting.figures import MAX_WIDTH_IN, NOTE_FONT_PT, CourseFigure, _numpy, _parts


@dataclass
class _PhaseChangeParts:
    patterns: np.ndarray  # [record, layer, head, query_pos, key_pos]
    steps: np.ndarray
    images: list  # one per head, layer by layer
    lines: list  # (line, its values at every record)
    cursor: object
    suptitle: Text


def phase_change_panel(
    steps: Sequence[int],
    patterns: Tensor | np.ndarray,
    prefix_matching: Tensor | np.ndarray,
    previous_token: Tensor | np.ndarray,
    loss: Sequence[float],
    icl: Sequence[float],
    index: int,
    *,
    title: str = "",
) -> Figure:
    """Training replayed at record `index`: every head's attention pattern on one sequence
    (`patterns`: [record, layer, head, query, key], in `ATTENTION_CMAP` on 0..1, a row per
    layer), below them each head's prefix-matching score up to that step (the last layer's heads
    solid and named, earlier layers dotted, [record, layer, head]) with the best previous-token
    score of layer 0, and the held-out loss and ICL score over the whole run with a cursor at
    that step. `update_phase_change_panel` moves it."""
    P = _numpy(patterns)
    pm, pt = _numpy(prefix_matching), _numpy(previous_token)
    steps = np.asarray(steps)
    n_records, n_layers, n_heads = P.shape[:3]
    if not (pm.shape == pt.shape == (n_records, n_layers, n_heads) == (len(steps), *P.shape[1:3])
            and len(loss) == len(icl) == len(steps)):  # fmt: skip
        raise ValueError("patterns, scores, loss and icl need one entry per recorded step")
    # a fixed layout in inches (see circuit_panel): the patterns in a grid, the curves below
    n_pos = P.shape[-1]
    cols = min(n_heads, 4)
    rows = n_layers * math.ceil(n_heads / cols)
    cell = min(1.6, (MAX_WIDTH_IN - 0.55 - 1.1 - 0.15 * (cols - 1)) / cols)
    curves = 2.3  # the height of the curves' axes
    height = 0.55 + rows * (cell + 0.3) + 0.55 + curves + 0.55
    fig = CourseFigure(figsize=(MAX_WIDTH_IN, height))
    ticks = list(range(0, n_pos, 10))
    images = []
    for layer in range(n_layers):
        for head in range(n_heads):
            r, c = layer * (rows // n_layers) + head // cols, head % cols
            bottom = height - 0.55 - (r + 1) * (cell + 0.3) + 0.05
            ax = _inches(fig, 0.55 + c * (cell + 0.15), bottom, cell, cell)
            images.append(ax.imshow(P[index, layer, head], cmap=ATTENTION_CMAP,
                                    vmin=ATTENTION_SCALE[0], vmax=ATTENTION_SCALE[1],
                                    interpolation="nearest", aspect="auto"))  # fmt: skip
            ax.set_xticks(ticks, [str(t) for t in ticks] if r == rows - 1 else [])
            ax.set_yticks(ticks, [str(t) for t in ticks] if c == 0 else [])
            ax.tick_params(labelsize=NOTE_FONT_PT, length=2, pad=1)
            ax.set_title(f"L{layer}H{head}", fontsize=9, pad=3)
    grid_top = height - 0.55
    grid_height = rows * (cell + 0.3) - 0.25
    bar_ax = _inches(fig, 0.55 + cols * (cell + 0.15) + 0.05, grid_top - grid_height, 0.15,
                     grid_height)  # fmt: skip
    fig.colorbar(images[0], cax=bar_ax, label="attention weight (positions: query ↓, key →)")
    bar_ax.yaxis.label.set_size(NOTE_FONT_PT)
    # the scores, their legend to the right (1.6 in), then the loss and ICL curves with room for
    # ticks and an axis label on either side (0.75 in each): both curves share what is left
    curve_width = (MAX_WIDTH_IN - 0.55 - 1.6 - 0.75 - 0.75) / 2
    ax_scores = _inches(fig, 0.55, 0.55, curve_width, curves)
    ax_loss = _inches(fig, MAX_WIDTH_IN - 0.75 - curve_width, 0.55, curve_width, curves)
    lines = []
    for layer in range(n_layers):
        for head in range(n_heads):
            last = layer == n_layers - 1
            (line,) = ax_scores.plot(steps[: index + 1], pm[: index + 1, layer, head],
                                     "-" if last else ":", color=f"C{head}", lw=1.4 if last else 1,
                                     label=f"L{layer}H{head}" if last else None)  # fmt: skip
            lines.append((line, pm[:, layer, head]))
    if n_layers > 1:
        ax_scores.plot([], [], ":", color="0.4", label="earlier layers\n(same colours)")
    best_previous = pt[:, 0].max(-1)  # the best previous-token score in layer 0, per record
    (prev_line,) = ax_scores.plot(
        steps[: index + 1], best_previous[: index + 1], color="black", lw=1.5,
        label="previous-token\nscore, best head\nof layer 0",
    )  # fmt: skip
    lines.append((prev_line, best_previous))
    ax_scores.set_xlim(steps[0], steps[-1])
    ax_scores.set_ylim(0, 1)
    ax_scores.set_ylabel("score")
    ax_scores.set_xlabel("training step")
    ax_scores.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=NOTE_FONT_PT,
                     title="prefix-matching", title_fontsize=NOTE_FONT_PT + 1, borderaxespad=0,
                     frameon=False)  # fmt: skip
    ax_loss.plot(steps, loss, color="tab:blue", label="held-out loss")
    ax_loss.set_ylabel("held-out loss (nats)", color="tab:blue")
    ax_loss.set_xlabel("training step")
    ax_icl = ax_loss.twinx()
    ax_icl.plot(steps, icl, color="tab:red", label="ICL score")
    ax_icl.set_ylabel("ICL score (nats)", color="tab:red")
    cursor = ax_loss.axvline(steps[index], color="black", lw=1)
    suptitle = fig.suptitle(title, y=1 - 0.1 / height, va="top")
    fig.parts = _PhaseChangeParts(P, steps, images, lines, cursor, suptitle)
    return fig


def update_phase_change_panel(fig: Figure, index: int, *, title: str = "") -> list:
    """Move a `phase_change_panel` to record `index`: the patterns, the scores drawn so far, the
    cursor and the title change. Returns the artists that changed (for `figure_png_blit`)."""
    parts = _parts(fig, _PhaseChangeParts, "phase_change_panel")
    steps = parts.steps
    if not isinstance(index, (int, np.integer)) or not 0 <= index < len(steps):
        raise ValueError(f"index must be a record in 0..{len(steps) - 1}, got {index!r}")
    P = parts.patterns
    for image, pattern in zip(parts.images, P[index].reshape(-1, *P.shape[-2:]), strict=True):
        image.set_data(pattern)
    for line, values in parts.lines:
        line.set_data(steps[: index + 1], values[: index + 1])
    parts.cursor.set_xdata([steps[index], steps[index]])
    parts.suptitle.set_text(title)
    frames = [spine for image in parts.images for spine in image.axes.spines.values()]
    lines = [line for line, _ in parts.lines]
    return [*parts.images, *frames, *lines, parts.cursor, parts.suptitle]


def phase_change_curves(
    runs: Mapping[str, object], *, windows: Mapping[str, tuple[int, int] | None] | None = None
) -> Figure:
    """Held-out loss, ICL score and the best prefix-matching score of the last layer over
    training, one line per run (`runs`: name -> a `phase_change.TrainingRecord`), with each
    run's phase-change window shaded where `windows` gives one; the runs' legend below, where a
    run loaded from its recording says so."""
    fig = CourseFigure(figsize=(MAX_WIDTH_IN, 3.9), layout="constrained")
    axes = fig.subplots(1, 3)
    for i, (name, run) in enumerate(runs.items()):
        colour = f"C{i}"
        best = (run.prefix_matching[:, -1].amax(-1).numpy() if run.prefix_matching.numel()
                else np.zeros(len(run.steps)))  # fmt: skip
        for ax, values in zip(axes, (run.heldout_loss, run.icl, best), strict=True):
            ax.plot(run.steps, values, color=colour, label=_run_label(name, run))
            window = (windows or {}).get(name)
            if window is not None:
                ax.axvspan(*window, color=colour, alpha=0.12)
    for ax, label in zip(axes, ("held-out loss (nats)", "ICL score (nats)",
                                "best prefix-matching score,\nlast layer"), strict=True):  # fmt: skip
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].axhline(0, color="0.5", lw=0.8)
    axes[2].set_ylim(0, 1)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center",
               ncols=max(1, len(runs)))  # fmt: skip
    return fig


def _run_label(name: str, run: object) -> str:
    """A run's name, and "(recorded)" for a record loaded from its recording rather than trained
    here (`TrainingRecord.source`)."""
    return f"{name} (recorded)" if getattr(run, "source", "live") == "recorded" else name


def formation_steps(
    formed: Mapping[str, int | None],
    trained: Mapping[str, int],
    *,
    title: str = "",
    predictions: Mapping[str, str] | None = None,
    outcomes: Mapping[str, str] | None = None,
) -> Figure:
    """When induction formed in each run of a sweep: a bar per run to the step where it formed
    (`formed`), or, where it never did (None), a pale bar to the last step trained (`trained`).
    The first run is the base the others are compared with.

    `predictions` and `outcomes` (run name -> what was predicted, and what happened: e.g.
    "earlier" than the base, as `phase_change.sweep_outcomes` says) are the reveal of a "predict,
    then test" exercise: beside each bar, what was predicted, ✔ where it was right, ✘ and what
    happened where it was not."""
    names = list(formed)
    predictions = dict(predictions or {})
    outcomes = dict(outcomes or {})
    if unknown := sorted(set(predictions) - set(names[1:])):
        raise ValueError(f"predictions for runs other than {names[1:]}: {unknown}")
    if missing := sorted(set(predictions) - set(outcomes)):
        raise ValueError(f"predictions need the outcomes of the same runs; none for {missing}")
    fig = CourseFigure(figsize=(MAX_WIDTH_IN if predictions else 8, 0.45 * len(names) + 1.4),
                       layout="constrained")  # fmt: skip
    ax = fig.add_subplot()
    for i, name in enumerate(names):
        step = formed[name]
        if step is None:
            ax.barh(i, trained[name], color="0.85", hatch="//", edgecolor="0.6")
            ax.annotate(f" none by step {trained[name]}", (trained[name], i), va="center",
                        fontsize=NOTE_FONT_PT)  # fmt: skip
        else:
            ax.barh(i, step, color="tab:blue" if i else "0.3")
            ax.annotate(f" {step}", (step, i), va="center", fontsize=NOTE_FONT_PT)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("training step where induction formed (loss on repeats < half the fresh loss)")
    ax.margins(x=0.25)
    ax.set_title(title)
    if predictions:
        ax.annotate("you said", (1, 1), xycoords="axes fraction", xytext=(10, 4),
                    textcoords="offset points", va="bottom", fontsize=9, weight="bold")  # fmt: skip
        for i, name in enumerate(names):
            if name not in predictions:
                continue
            said, outcome = predictions[name], outcomes[name]
            right = said == outcome
            text = f"{said} ✔" if right else f"{said} ✘ (it was {outcome})"
            ax.annotate(text, (1, i), xycoords=("axes fraction", "data"), xytext=(10, 0),
                        textcoords="offset points", va="center", fontsize=9,
                        color="tab:green" if right else "tab:red")  # fmt: skip
    return fig


def history_curves(
    steps: Sequence[int],
    curves: Mapping[str, Sequence[float]],
    *,
    marks: Mapping[str, int | None] | None = None,
    title: str = "",
) -> Figure:
    """Recorded scores over training, one panel per score (`curves`: label -> values at
    `steps`), with a vertical line at each step of `marks` (label -> step; None: not drawn),
    e.g. where each change starts (`phase_change.change_onset`)."""
    fig = CourseFigure(figsize=(MAX_WIDTH_IN, 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(curves)))
    for ax, (label, values) in zip(axes, curves.items(), strict=True):
        ax.plot(steps, values, color="C0")
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for i, (label, step) in enumerate((marks or {}).items()):
        if step is None:
            continue
        for ax in axes:
            # dashed, then dotted and thinner: marks at the same step stay visible on one another
            ax.axvline(step, color=f"C{i + 1}", ls=("--", ":")[i % 2], lw=(2.0, 1.4)[i % 2],
                       label=f"{label} (step {step})")  # fmt: skip
    if marks:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center",
                   ncols=max(1, len(marks)))  # fmt: skip
    if title:
        fig.suptitle(title)
    return fig
