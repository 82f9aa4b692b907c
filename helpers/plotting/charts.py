"""Lines, bars and scatters: `loss_curve`, `contribution_bars`, `distribution_comparison`,
`scatter_comparison`, `loss_by_position`, `horizontal_bars` and what a head reads
(`read_share_bars`); each `update_` function redraws its figure for a widget."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from helpers.plotting.axes import _check_labels, _every, _label_tokens, _token_font
from helpers.plotting.figures import MAX_WIDTH_IN, NOTE_FONT_PT, CourseFigure, _numpy, _parts


def loss_curve(
    losses: Sequence[float] | Tensor,
    *,
    reference_lines: Mapping[str, float] | None = None,
    title: str = "Training loss",
    smooth: int = 20,
) -> Figure:
    """Loss per step (raw, faint) with a moving average, and labelled horizontal reference lines
    (e.g. the entropy rate, the loss of uniform guessing)."""
    y = _numpy(losses).ravel()
    if y.size == 0:
        raise ValueError("loss_curve needs at least one loss value")
    fig = CourseFigure(figsize=(7, 3.8), layout="constrained")
    ax = fig.add_subplot()
    steps = np.arange(len(y))
    ax.plot(steps, y, color="tab:blue", alpha=0.25, lw=0.8, label="loss per step")
    if smooth > 1 and len(y) >= smooth:
        kernel = np.ones(smooth) / smooth
        ax.plot(steps[smooth - 1 :], np.convolve(y, kernel, mode="valid"), color="tab:blue", lw=2,
                label=f"moving average ({smooth} steps)")  # fmt: skip
    for i, (name, value) in enumerate((reference_lines or {}).items()):
        ax.axhline(value, ls="--", color=f"C{i + 1}", lw=1.2, label=f"{name} = {value:.3f}")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.legend(loc="best")  # away from the curve, which falls from the top left
    ax.grid(alpha=0.3)
    return fig


@dataclass
class _ContributionParts:
    ax: Axes
    bars: object  # BarContainer: one bar per component, then the total
    zero: object  # the line at 0
    notes: list


def contribution_bars(
    contributions: Tensor | np.ndarray,
    labels: Sequence[str],
    *,
    title: str = "",
    total_label: str = "total",
) -> Figure:
    """Horizontal bars of each component's contribution to one logit, plus their sum."""
    c = _numpy(contributions).ravel()
    _check_labels("labels", labels, len(c))
    values = np.append(c, c.sum())
    fig = CourseFigure(figsize=(6.5, 0.35 * len(values) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.barh(range(len(values)), values)
    ax.set_yticks(range(len(values)), [*labels, total_label])
    ax.invert_yaxis()
    zero = ax.axvline(0, color="black", lw=0.8)
    notes = [ax.annotate("", (0, i), xytext=(4, 0), textcoords="offset points", va="center",
                         fontsize=NOTE_FONT_PT) for i in range(len(values))]  # fmt: skip
    ax.set_xlabel("contribution to the logit")
    ax.set_title(title)
    ax.margins(x=0.2)
    fig.parts = _ContributionParts(ax, bars, zero, notes)
    _set_contributions(fig.parts, values)
    return fig


def _set_contributions(parts: _ContributionParts, values: np.ndarray) -> None:
    for i, (rectangle, note, v) in enumerate(zip(parts.bars, parts.notes, values, strict=True)):
        rectangle.set_width(float(v))
        total = i == len(values) - 1
        rectangle.set_color("0.3" if total else "tab:red" if v > 0 else "tab:blue")
        note.set_text(f"{v:+.2f}")
        note.xy = (float(v), i)
        note.xyann = (4 if v >= 0 else -4, 0)  # points beside the bar's end
        note.set_horizontalalignment("left" if v >= 0 else "right")
    parts.ax.relim()
    parts.ax.autoscale_view(scaley=False)


def update_contribution_bars(
    fig: Figure, contributions: Tensor | np.ndarray, *, title: str = ""
) -> list:
    """Redraw a `contribution_bars` figure for other contributions of the same components: the
    bars, their values, the contribution axis and the title change, the component names stay.
    Returns the artists that changed (for `figure_png_blit`)."""
    parts = _parts(fig, _ContributionParts, "contribution_bars")
    c = _numpy(contributions).ravel()
    n = len(parts.bars) - 1
    if len(c) != n:
        raise ValueError(f"need {n} contributions (one per component), got {len(c)}")
    _set_contributions(parts, np.append(c, c.sum()))
    ax = parts.ax
    ax.title.set_text(title)
    return [*parts.bars, parts.zero, ax.xaxis, *ax.spines.values(), *parts.notes, ax.title]


@dataclass
class _DistributionParts:
    ax: Axes
    bars: list  # a BarContainer per distribution
    legend: object


def distribution_comparison(
    distributions: Mapping[str, Tensor | np.ndarray],
    labels: Sequence[str],
    *,
    title: str = "",
) -> Figure:
    """Grouped bars comparing probability distributions over the same tokens."""
    arrays = {k: _numpy(v).ravel() for k, v in distributions.items()}
    for name, p in arrays.items():
        _check_labels(f"distribution {name!r}", labels, len(p))
    n = len(labels)
    width = 0.8 / len(arrays)
    fig_width = min(MAX_WIDTH_IN, max(6.0, 0.28 * n + 2))
    fig = CourseFigure(figsize=(fig_width, 3.6), layout="constrained")
    ax = fig.add_subplot()
    bars = [ax.bar(np.arange(n) + (i - (len(arrays) - 1) / 2) * width, p, width, label=name)
            for i, (name, p) in enumerate(arrays.items())]  # fmt: skip
    length = fig_width - 1.5  # less the probability axis and the bars' margins
    step = _label_tokens(ax, "x", labels, length, _token_font((labels, "x", length)))
    ax.set_xlabel(_every("next token", step))
    ax.set_ylabel("probability")
    ax.set_title(title)
    legend = ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.parts = _DistributionParts(ax, bars, legend)
    return fig


def update_distribution_comparison(
    fig: Figure, distributions: Mapping[str, Tensor | np.ndarray], *, title: str = ""
) -> list:
    """Redraw a `distribution_comparison` figure for other distributions over the same tokens:
    the bars' heights, the probability axis and the title change, the token labels stay.
    Returns the artists that changed (for `figure_png_blit`)."""
    parts = _parts(fig, _DistributionParts, "distribution_comparison")
    arrays = [_numpy(v).ravel() for v in distributions.values()]
    if len(arrays) != len(parts.bars) or any(
        len(p) != len(b) for p, b in zip(arrays, parts.bars, strict=False)
    ):
        raise ValueError("the distributions must stay as many, over as many tokens")
    for p, container in zip(arrays, parts.bars, strict=True):
        for rectangle, height in zip(container, p, strict=True):
            rectangle.set_height(float(height))
    ax = parts.ax
    ax.relim()
    ax.autoscale_view()
    ax.title.set_text(title)
    patches = [r for container in parts.bars for r in container]
    return [*patches, ax.yaxis, *ax.spines.values(), parts.legend, ax.title]  # in drawing order


def scatter_comparison(
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
) -> Figure:
    """Scatter of two matrices' matching entries with the y = x line, e.g. learned vs true."""
    a, b = _numpy(x).ravel(), _numpy(y).ravel()
    if a.shape != b.shape:
        raise ValueError(f"x and y must have the same number of entries, got {a.size} and {b.size}")
    fig = CourseFigure(figsize=(4.8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(a, b, s=6, alpha=0.5)
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--", label="y = x")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def loss_by_position(
    curves: Mapping[str, Tensor | np.ndarray],
    *,
    boundaries: Sequence[float] = (),
    first_position: int = 1,
    title: str = "",
    xlabel: str = "position of the predicted token",
) -> Figure:
    """Per-position loss curves `{name: [pos]}` on one axis, with dotted vertical lines at
    `boundaries` (e.g. where a repeat starts). Entry i is plotted at position first_position + i."""
    fig = CourseFigure(figsize=(8, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for name, values in curves.items():
        y = _numpy(values).ravel()
        ax.plot(np.arange(first_position, first_position + len(y)), y, marker=".", label=name)
    for x in boundaries:
        ax.axvline(x, color="0.6", ls=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss (nats)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def horizontal_bars(values: Mapping[str, float], *, xlabel: str = "", title: str = "") -> Figure:
    """One labelled horizontal bar per entry, top to bottom in order, value written at its end."""
    if not values:
        raise ValueError("horizontal_bars needs at least one value")
    names, numbers = list(values), [float(v) for v in values.values()]
    fig = CourseFigure(figsize=(6.5, 0.45 * len(names) + 1.3), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(range(len(names)), numbers, color=[f"C{i}" for i in range(len(names))])
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    for i, v in enumerate(numbers):
        ax.annotate(f"{v:.3f}", (v, i), xytext=(4, 0), textcoords="offset points", va="center",
                    fontsize=NOTE_FONT_PT)  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.margins(x=0.15)
    return fig


# -- what a head reads -------------------------------------------------------------------------


@dataclass
class _ReadShareParts:
    ax: Axes
    writers: list[str]
    bars: object  # BarContainer, one bar per writer
    ticks: list  # each writer's random share
    notes: list
    legend: object


def read_share_bars(
    shares: Mapping[str, float | None],
    baselines: Mapping[str, float],
    *,
    xlabel: str = "share of the read weight's squared norm inside the writer's subspace",
    title: str = "",
) -> Figure:
    """Horizontal bars of a reader's share in each writer's subspace (`circuits.read_shares`),
    each with its random share (a writer of dimension k: k / d_model) as a black tick; a share
    of None is a writer whose output does not reach this input. The scale is fixed (0 to 1), so
    that readers and inputs compare."""
    writers = list(shares)
    if set(baselines) != set(writers):
        raise ValueError(
            f"shares and baselines need the same writers, got {writers} and {sorted(baselines)}"
        )
    fig = CourseFigure(figsize=(7.5, 0.42 * len(writers) + 1.4), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(writers))
    bars = ax.barh(y, [0.0] * len(writers), color="tab:purple")
    ticks = [ax.vlines(baselines[w], i - 0.42, i + 0.42, color="black", lw=2,
                       label="random share" if i == 0 else None)
             for i, w in enumerate(writers)]  # fmt: skip
    notes = [ax.annotate("", (0, i), xytext=(4, 0), textcoords="offset points", va="center",
                         fontsize=NOTE_FONT_PT) for i in range(len(writers))]  # fmt: skip
    for note in notes:  # texts that change must not move the axes (the layout is kept)
        note.set_in_layout(False)
    ax.set_yticks(y, writers)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.35)  # room for the notes right of a full bar
    ax.set_xticks(np.linspace(0, 1, 6))  # a share is at most 1
    ax.set_xlabel(xlabel, fontsize=9)
    legend = ax.legend(loc="lower right", fontsize=NOTE_FONT_PT)
    ax.set_title(title)
    fig.parts = _ReadShareParts(ax, writers, bars, ticks, notes, legend)
    _set_read_shares(fig.parts, shares, baselines)
    return fig


def _set_read_shares(parts: _ReadShareParts, shares, baselines) -> None:
    for i, (w, rectangle, tick, note) in enumerate(
        zip(parts.writers, parts.bars, parts.ticks, parts.notes, strict=True)
    ):
        share, random = shares[w], baselines[w]
        rectangle.set_width(share or 0.0)
        tick.set_segments([[(random, i - 0.42), (random, i + 0.42)]])
        note.xy = (max(share or 0.0, random), i)  # right of the bar and of the tick
        note.set_text("does not enter this input" if share is None
                      else f"{share:.2f} ({share / random:.1f}× random)")  # fmt: skip


def update_read_share_bars(
    fig: Figure, shares: Mapping[str, float | None], baselines: Mapping[str, float], *, title=""
) -> list:
    """Redraw a `read_share_bars` figure for another reader or input with the same writers.
    Returns the artists that changed (for `figure_png_blit`)."""
    parts = _parts(fig, _ReadShareParts, "read_share_bars")
    if list(shares) != parts.writers:
        raise ValueError(f"the writers must stay {parts.writers}, got {list(shares)}")
    _set_read_shares(parts, shares, baselines)
    parts.ax.title.set_text(title)
    # in drawing order: the spines and the legend are drawn over the bars
    return [*parts.bars, *parts.ticks, *parts.ax.spines.values(), *parts.notes, parts.legend,
            parts.ax.title]  # fmt: skip
