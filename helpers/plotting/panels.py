"""Circuits and composition, panels that widgets redraw: `circuit_panel` (a head's full QK
circuit above its full OV circuit) and `composition_panel` (a pair of heads' composition scores
against the random baseline, beside a token × token product matrix), with their `update_`
functions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colorbar import Colorbar
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from torch import Tensor

from helpers.plotting.axes import (
    DIVERGING_CMAP,
    _every,
    _inches,
    _label_depth_in,
    _label_tokens,
    _token_font,
    _token_pitch_in,
    diverging_norm,
)
from helpers.plotting.figures import MAX_WIDTH_IN, NOTE_FONT_PT, CourseFigure, _numpy, _parts


@dataclass
class _CircuitParts:
    images: tuple[AxesImage, AxesImage]  # QK, OV
    colorbars: tuple[Colorbar, Colorbar]
    outlines: tuple[Rectangle, Rectangle]  # the source's QK column and OV row
    suptitle: Text


def circuit_panel(
    qk: Tensor | np.ndarray,
    ov: Tensor | np.ndarray,
    labels: Sequence[str],
    *,
    source: int | None = None,
    title: str = "",
    ax_size: float = 4.0,
) -> Figure:
    """A head's full QK circuit `[query, key]` above its full OV circuit `[source, output]`, each
    on its own zero-centred scale; with `source`, its QK column and OV row are outlined. One above
    the other, so that each has the figure's width for its token labels (43 tokens, all labelled,
    within `MAX_WIDTH_IN`); each matrix is `ax_size` inches a side or more, as its labels need."""
    qk_np, ov_np = _numpy(qk), _numpy(ov)
    n = len(labels)
    for name, M in (("qk", qk_np), ("ov", ov_np)):
        if M.shape != (n, n):
            raise ValueError(f"{name} must be [{n}, {n}], got {M.shape}")
    # a fixed layout, in inches, rather than constrained layout: this figure is redrawn by a
    # widget, and constrained layout's extra drawing pass doubles the time of a first frame
    y_labels, x_labels = _label_depth_in(labels, "y"), _label_depth_in(labels, "x")
    left, right = 0.45 + y_labels, 0.8
    side = min(max(ax_size, n * max(_token_pitch_in(labels, "x"), _token_pitch_in(labels, "y"))),
               MAX_WIDTH_IN - left - right)  # fmt: skip
    width = max(left + side + right, 7.5)  # room for a long title
    below, above = x_labels + 0.45, 0.35  # tick labels and axis label; title
    height = 0.5 + 2 * (above + side + below)
    fig = CourseFigure(figsize=(width, height))
    bottoms = [height - 0.5 - (i + 1) * (above + side) - i * below for i in range(2)]
    axes = [_inches(fig, left, bottom, side, side) for bottom in bottoms]  # QK above OV
    font = _token_font((labels, "x", side), (labels, "y", side))
    images, colorbars = [], []
    for ax, bottom, M, name, xl, yl in (
        (axes[0], bottoms[0], qk_np, "QK circuit (row-centred scores)", "key (source) token",
         "query (destination) token"),
        (axes[1], bottoms[1], ov_np, "OV circuit (logit change)", "output token", "source token"),
    ):  # fmt: skip
        image = ax.imshow(M, cmap=DIVERGING_CMAP, norm=diverging_norm(M), aspect="auto",
                          interpolation="nearest")  # fmt: skip
        ax.set_title(name, fontsize=10)
        x_step = _label_tokens(ax, "x", labels, side, font)
        y_step = _label_tokens(ax, "y", labels, side, font)
        ax.set_xlabel(_every(xl, x_step))
        ax.set_ylabel(_every(yl, y_step))
        bar_ax = _inches(fig, left + side + 0.12, bottom + 0.1 * side, 0.15, 0.8 * side)
        images.append(image)
        colorbars.append(fig.colorbar(image, cax=bar_ax))
    outlines = (_outline(-0.5, -0.5, 1, n), _outline(-0.5, -0.5, n, 1))
    images[0].axes.add_patch(outlines[0])  # the source's column: who attends to it
    images[1].axes.add_patch(outlines[1])  # its row: what it writes
    suptitle = fig.suptitle(title, y=1 - 0.12 / height, va="top")
    fig.parts = _CircuitParts(tuple(images), tuple(colorbars), outlines, suptitle)
    _place_outlines(fig.parts, source)
    return fig


def _place_outlines(parts: _CircuitParts, source: int | None) -> None:
    qk_column, ov_row = parts.outlines
    qk_column.set_visible(source is not None)
    ov_row.set_visible(source is not None)
    if source is not None:
        qk_column.set_x(source - 0.5)
        ov_row.set_y(source - 0.5)


def update_circuit_panel(
    fig: Figure,
    qk: Tensor | np.ndarray,
    ov: Tensor | np.ndarray,
    *,
    source: int | None = None,
    title: str = "",
) -> list:
    """Redraw a `circuit_panel` figure for other circuits of the same size, or another source:
    its images, colour bars, outlines and title change, its axes and token labels stay. Returns
    the artists that changed (for `figure_png_blit`)."""
    parts = _parts(fig, _CircuitParts, "circuit_panel")
    changed, same = [], []
    for image, bar, M in zip(parts.images, parts.colorbars, (_numpy(qk), _numpy(ov)), strict=True):
        if M.shape != image.get_array().shape:
            raise ValueError(f"the circuits must stay {image.get_array().shape}, got {M.shape}")
        same.append(np.array_equal(M, image.get_array(), equal_nan=True))
        if not same[-1]:
            image.set_data(M)
            image.set_norm(diverging_norm(M))
            bar.update_normal(image)
        changed += [image, *image.axes.spines.values(), bar.ax]  # the frame over the image
    # the same circuits (another source token): the images and colour bars come from the last
    # frame, only the outlines and the title are drawn
    fig.blit.layer = len(changed)
    fig.blit.still = len(changed) if all(same) else 0
    _place_outlines(parts, source)
    parts.suptitle.set_text(title)
    return [*changed, *parts.outlines, parts.suptitle]


def _outline(x: float, y: float, w: float, h: float) -> Rectangle:
    return Rectangle((x, y), w, h, fill=False, edgecolor="black", lw=1.5)


@dataclass
class _CompositionBars:
    kinds: list[str]
    bars: object  # BarContainer, one bar per kind
    bands: list  # each kind's baseline band and mean line
    notes: list
    legend: object
    ymax: float | None
    top: float  # the bar chart's upper limit


@dataclass
class _CompositionParts:
    ax_bar: Axes
    ax_mat: Axes
    image: AxesImage
    colorbar: Colorbar
    suptitle: Text
    bars: _CompositionBars


def composition_panel(
    scores: Mapping[str, float],
    baselines: Mapping[str, tuple[float, float]],
    matrix: Tensor | np.ndarray,
    labels: Sequence[str],
    *,
    matrix_title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    ymax: float | None = None,
) -> Figure:
    """Composition scores of one pair of heads as bars against the random baseline (mean, with a
    band of ±2 standard deviations), beside a token × token product matrix (53 tokens, all
    labelled, within `MAX_WIDTH_IN`). `ymax` fixes the bars' scale (an explorer passes the
    largest score of any pair, so that pairs compare)."""
    if set(scores) != set(baselines):
        raise ValueError(
            f"scores and baselines need the same kinds, got {sorted(scores)} and {sorted(baselines)}"
        )
    M = _numpy(matrix)
    n = len(labels)
    if M.shape != (n, n):
        raise ValueError(f"matrix must be [{n}, {n}], got {M.shape}")
    # a fixed layout in inches (see circuit_panel): bars, the matrix, its colour bar
    bar_left, bar_width = 0.75, 1.6
    mat_left = bar_left + bar_width + 0.45 + _label_depth_in(labels, "y")
    side = min(max(4.0, n * max(_token_pitch_in(labels, "x"), _token_pitch_in(labels, "y"))),
               MAX_WIDTH_IN - mat_left - 0.8)  # fmt: skip
    bottom = 0.5 + _label_depth_in(labels, "x")
    height = bottom + side + 0.85
    fig = CourseFigure(figsize=(mat_left + side + 0.8, height))
    ax_bar = _inches(fig, bar_left, bottom, bar_width, side)
    ax_mat = _inches(fig, mat_left, bottom, side, side)
    bars = _composition_bars(ax_bar, scores, baselines, ymax)
    image = ax_mat.imshow(M, cmap=DIVERGING_CMAP, norm=diverging_norm(M), aspect="auto",
                          interpolation="nearest")  # fmt: skip
    font = _token_font((labels, "x", side), (labels, "y", side))
    x_step = _label_tokens(ax_mat, "x", labels, side, font)
    y_step = _label_tokens(ax_mat, "y", labels, side, font)
    ax_mat.set_title(matrix_title, fontsize=10)
    ax_mat.set_xlabel(_every(xlabel, x_step))
    ax_mat.set_ylabel(_every(ylabel, y_step))
    bar_ax = _inches(fig, mat_left + side + 0.12, bottom + 0.1 * side, 0.15, 0.8 * side)
    colorbar = fig.colorbar(image, cax=bar_ax)
    suptitle = fig.suptitle(title, y=1 - 0.1 / height, va="top")
    fig.parts = _CompositionParts(ax_bar, ax_mat, image, colorbar, suptitle, bars)
    return fig


def _composition_bars(ax_bar: Axes, scores: Mapping[str, float], baselines, ymax=None):
    kinds = list(scores)
    x = np.arange(len(kinds))
    bars = ax_bar.bar(
        x, [scores[k] for k in kinds], color=["tab:orange", "tab:red", "tab:purple"][: len(kinds)]
    )
    bands, notes = [], []
    for i, k in enumerate(kinds):
        mean, std = baselines[k]
        bands.append(ax_bar.fill_between([i - 0.45, i + 0.45], mean - 2 * std, mean + 2 * std,
                     color="0.7", alpha=0.6, label="random ±2σ" if i == 0 else None))  # fmt: skip
        bands.append(ax_bar.hlines(mean, i - 0.45, i + 0.45, color="black", lw=1))
        notes.append(ax_bar.annotate(f"{scores[k]:.2f}\n({scores[k] / mean:.1f}×)",
                     (i, scores[k]), ha="center", va="bottom", fontsize=NOTE_FONT_PT))  # fmt: skip
    ax_bar.set_xticks(x, kinds)
    ax_bar.set_xlabel("composition")
    ax_bar.set_ylabel("composition score")
    top = _composition_top(scores, baselines, ymax)
    ax_bar.set_ylim(0, top)
    legend = ax_bar.legend(loc="upper left", fontsize=NOTE_FONT_PT)
    return _CompositionBars(kinds, bars, bands, notes, legend, ymax, top)


def _composition_top(scores: Mapping[str, float], baselines, ymax: float | None) -> float:
    largest = max(max(scores.values()), max(m + 2 * s for m, s in baselines.values()))
    return max(largest, ymax or 0.0) * 1.3


def update_composition_panel(
    fig: Figure,
    scores: Mapping[str, float],
    baselines: Mapping[str, tuple[float, float]],
    matrix: Tensor | np.ndarray,
    *,
    matrix_title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
) -> list:
    """Redraw a `composition_panel` figure for another pair of heads or kind (a matrix of the
    same size): the bars, the matrix, its colour bar and the texts change, the token labels
    stay. Returns the artists that changed (for `figure_png_blit`)."""
    parts = _parts(fig, _CompositionParts, "composition_panel")
    M = _numpy(matrix)
    if M.shape != parts.image.get_array().shape:
        raise ValueError(f"the matrix must stay {parts.image.get_array().shape}, got {M.shape}")
    old = parts.bars
    if list(scores) == old.kinds and _composition_top(scores, baselines, old.ymax) == old.top:
        for i, (k, rectangle, note) in enumerate(zip(old.kinds, old.bars, old.notes, strict=True)):
            mean = baselines[k][0]
            rectangle.set_height(scores[k])
            note.set_text(f"{scores[k]:.2f}\n({scores[k] / mean:.1f}×)")
            note.xy = note.xyann = (i, scores[k])  # the point and the text placed on it
        # in drawing order, the bands over the bars; the legend, in the top eighth, stays above
        # the tallest bar and its note (at most 1 / 1.3 of the height, plus two lines)
        bar_parts = [*old.bars, *old.bands, *old.notes]
    else:  # another scale: the whole bar chart
        parts.ax_bar.cla()
        parts.bars = _composition_bars(parts.ax_bar, scores, baselines, old.ymax)
        bar_parts = [parts.ax_bar]
    parts.image.set_data(M)
    parts.image.set_norm(diverging_norm(M))
    parts.colorbar.update_normal(parts.image)
    ax = parts.ax_mat
    ax.title.set_text(matrix_title)
    ax.xaxis.label.set_text(xlabel)
    ax.yaxis.label.set_text(ylabel)
    parts.suptitle.set_text(title)
    return [*bar_parts, parts.image, *ax.spines.values(), parts.colorbar.ax, ax.title,
            ax.xaxis.label, ax.yaxis.label, parts.suptitle]  # fmt: skip
