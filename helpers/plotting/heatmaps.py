"""Heat maps: `token_heatmap` (one matrix, e.g. token × token; `update_token_heatmap` redraws
it for a widget), `side_by_side_heatmaps` (several on one colour scale) and `attention_patterns`
(a grid of attention patterns on one 0..1 scale)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colorbar import Colorbar
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from torch import Tensor

from helpers.plotting.axes import (
    _check_labels,
    _colours,
    _every,
    _label_depth_in,
    _label_tokens,
    _recolour,
    _scale_kind,
    _token_font,
    _token_pitch_in,
)
from helpers.plotting.figures import MAX_WIDTH_IN, CourseFigure, _numpy, _parts


@dataclass
class _HeatmapParts:
    ax: Axes
    image: AxesImage
    colorbar: Colorbar
    kind: str  # "attention", "diverging" or "sequential" (`_colours`)


def token_heatmap(
    matrix: Tensor | np.ndarray,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    colorbar_label: str = "",
    centre: bool = True,
    attention: bool = False,
    ax_size: float = 5.0,
) -> Figure:
    """A labelled heat-map of a `[rows, cols]` matrix, e.g. token × token.

    Colours: with `attention=True`, an attention pattern, in `ATTENTION_CMAP` on 0..1; otherwise
    with `centre=True` (the default) a signed quantity such as logits or circuits, diverging and
    centred on 0 (red positive, blue negative); with `centre=False` a non-negative one such as
    probabilities, in `SEQUENTIAL_CMAP` from 0.

    The matrix is `ax_size` inches a side, or more where its token labels need the room, within a
    figure at most `MAX_WIDTH_IN` wide; where the labels cannot all fit, every 2nd (3rd, ...) is
    shown and the axis label says so.
    """
    M = _numpy(matrix)
    if M.ndim != 2:
        raise ValueError(f"token_heatmap needs a 2-d matrix, got shape {M.shape}")
    _check_labels("row_labels", row_labels, M.shape[0])
    _check_labels("col_labels", col_labels, M.shape[1])
    needed = [len(labels) * _token_pitch_in(labels, axis)
              for labels, axis in ((row_labels, "y"), (col_labels, "x")) if labels]  # fmt: skip
    side = min(max([ax_size, *needed]), MAX_WIDTH_IN)
    # generous margins (labels, colour bar), so that the axes constrained layout leaves are at
    # least as large as the ones the token labels are spaced for
    left = 0.2 + 0.3 * bool(ylabel) + _label_depth_in(row_labels, "y")
    right = 1.0 + 0.3 * bool(colorbar_label)
    width = min(left + side + right, MAX_WIDTH_IN)
    depth = 0.2 + 0.4 * bool(title) + 0.3 * bool(xlabel) + _label_depth_in(col_labels, "x")
    fig = CourseFigure(figsize=(width, side + depth), layout="constrained")
    ax = fig.add_subplot()
    kind = _scale_kind(centre, attention)
    image = ax.imshow(M, aspect="auto", interpolation="nearest", **_colours(kind, M))
    length = {"y": side, "x": width - left - right}
    font = _token_font((row_labels, "y", length["y"]), (col_labels, "x", length["x"]))
    row_step = _label_tokens(ax, "y", row_labels, length["y"], font) if row_labels else 1
    col_step = _label_tokens(ax, "x", col_labels, length["x"], font) if col_labels else 1
    ax.set_title(title)
    ax.set_xlabel(_every(xlabel, col_step) if col_labels else xlabel)
    ax.set_ylabel(_every(ylabel, row_step) if row_labels else ylabel)
    label = colorbar_label or ("attention weight" if attention else "")
    bar = fig.colorbar(image, ax=ax, label=label, shrink=0.8)
    fig.parts = _HeatmapParts(ax, image, bar, kind)
    return fig


def update_token_heatmap(fig: Figure, matrix: Tensor | np.ndarray, *, title: str = "") -> list:
    """Redraw a `token_heatmap` figure for another matrix of the same size and labels: the
    image, its colour bar (unless on the fixed attention scale) and the title change. Returns the
    artists that changed (for `figure_png_blit`)."""
    parts = _parts(fig, _HeatmapParts, "token_heatmap")
    M = _numpy(matrix)
    if M.shape != parts.image.get_array().shape:
        raise ValueError(f"the matrix must stay {parts.image.get_array().shape}, got {M.shape}")
    parts.image.set_data(M)
    _recolour(parts.image, parts.kind, M)
    parts.ax.title.set_text(title)
    changed = [parts.image, *parts.ax.spines.values()]
    if parts.kind != "attention":
        parts.colorbar.update_normal(parts.image)
        changed.append(parts.colorbar.ax)
    return [*changed, parts.ax.title]


def side_by_side_heatmaps(
    matrices: Mapping[str, Tensor | np.ndarray],
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    *,
    suptitle: str = "",
    xlabel: str = "",
    ylabel: str = "",
    centre: bool = True,
    attention: bool = False,
    ax_size: float = 4.2,
) -> Figure:
    """Several matrices of one shape in a row, titled by key, on one colour scale (its bar below).

    Colours as in `token_heatmap`: `attention=True` for attention patterns (`ATTENTION_CMAP`,
    0..1); else `centre=True` for signed quantities (circuits, logits: diverging, centred on 0),
    `centre=False` for non-negative ones (probabilities: `SEQUENTIAL_CMAP` from 0). The rows are
    labelled on the first matrix only. For many attention patterns, see `attention_patterns`."""
    arrays = {k: _numpy(v) for k, v in matrices.items()}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1:
        raise ValueError(f"side_by_side_heatmaps needs matrices of one shape, got {shapes}")
    ((n_rows, n_cols),) = shapes
    _check_labels("row_labels", row_labels, n_rows)
    _check_labels("col_labels", col_labels, n_cols)
    n = len(arrays)
    left = 0.15 + 0.3 * bool(ylabel) + _label_depth_in(row_labels, "y")
    panel = min(ax_size, (MAX_WIDTH_IN - left - 0.1 - 0.12 * (n - 1)) / n)
    needed = n_rows * _token_pitch_in(row_labels, "y")
    height = min(max(panel * n_rows / n_cols, needed, 1.0), MAX_WIDTH_IN)
    depth = 1.3 + 0.4 * bool(suptitle) + 0.3 * bool(xlabel) + _label_depth_in(col_labels, "x")
    fig = CourseFigure(figsize=(left + n * panel + 0.12 * (n - 1) + 0.1, height + depth),
                       layout="constrained")  # fmt: skip
    axes = fig.subplots(1, n, squeeze=False, sharey=True)[0]
    kind = _scale_kind(centre, attention)
    colours = _colours(kind, *arrays.values())
    font = _token_font((row_labels, "y", height), (col_labels, "x", panel))
    row_step = col_step = 1
    for i, (ax, (name, M)) in enumerate(zip(axes, arrays.items(), strict=True)):
        image = ax.imshow(M, aspect="auto", interpolation="nearest", **colours)
        ax.set_title(name)
        if col_labels:
            col_step = _label_tokens(ax, "x", col_labels, panel, font)
        if row_labels and i == 0:
            row_step = _label_tokens(ax, "y", row_labels, height, font)
        ax.set_xlabel(_every(xlabel, col_step))
    axes[0].set_ylabel(_every(ylabel, row_step))
    label = "attention weight" if attention else ""
    fig.colorbar(image, ax=list(axes), orientation="horizontal", shrink=0.6, aspect=40,
                 label=label)  # fmt: skip
    fig.suptitle(suptitle)
    return fig


def attention_patterns(
    patterns: Tensor | np.ndarray | Mapping[str, Tensor | np.ndarray],
    labels: Sequence[str] | None = None,
    *,
    title: str = "",
    xlabel: str = "key position (attended to)",
    ylabel: str = "query position",
    columns: int = 4,
) -> Figure:
    """Attention patterns in a grid, on `ATTENTION_CMAP`'s fixed 0..1 scale with one colour bar.

    `patterns`: `[layer, head, query_pos, key_pos]` (one row of panels per layer, titled
    "L{layer}H{head}"), or a mapping name -> `[query_pos, key_pos]` (rows in order). Rows wrap
    at `columns` panels. `labels`: the sequence's tokens, on both axes (keys below the bottom
    panels, queries left of the first column); every 2nd (3rd, ...) where they cannot all fit,
    as the axis label then says. The figure fits `MAX_WIDTH_IN`, so it is never scaled down.
    """
    if isinstance(patterns, Mapping):
        named = {name: _numpy(p) for name, p in patterns.items()}
        rows = [list(named)[i : i + columns] for i in range(0, len(named), columns)]
    else:
        P = _numpy(patterns)  # [layer, head, query_pos, key_pos]
        if P.ndim != 4:
            raise ValueError(f"patterns must be [layer, head, query_pos, key_pos], got {P.shape}")
        named = {f"L{layer}H{head}": P[layer, head]
                 for layer in range(P.shape[0]) for head in range(P.shape[1])}  # fmt: skip
        per_layer = [[f"L{layer}H{h}" for h in range(P.shape[1])] for layer in range(P.shape[0])]
        rows = [
            names[i : i + columns] for names in per_layer for i in range(0, len(names), columns)
        ]
    if not named:
        raise ValueError("attention_patterns needs at least one pattern")
    shapes = {p.shape for p in named.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"every pattern must be one [query_pos, key_pos] shape, got {shapes}")
    ((n_query, n_key),) = shapes
    _check_labels("labels", labels, n_key)
    _check_labels("labels", labels, n_query)
    n_cols = max(len(row) for row in rows)
    left = 0.45 + _label_depth_in(labels, "y")
    panel = min(2.4, (MAX_WIDTH_IN - left - 0.9 - 0.15 * (n_cols - 1)) / n_cols)
    bottom = 0.5 + _label_depth_in(labels, "x")
    height = len(rows) * (panel + 0.35) + bottom + 0.45 * bool(title)
    width = left + n_cols * panel + 0.15 * (n_cols - 1) + 0.9
    fig = CourseFigure(figsize=(width, height), layout="constrained")
    grid = fig.subplots(len(rows), n_cols, squeeze=False, sharex=True, sharey=True)
    font = _token_font((labels, "x", panel), (labels, "y", panel))
    key_step = query_step = 1
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = grid[r, c]
            if c >= len(row):
                ax.set_visible(False)
                continue
            image = ax.imshow(named[row[c]], interpolation="nearest", aspect="auto",
                              **_colours("attention"))  # fmt: skip
            ax.set_title(row[c], fontsize=10)
            if labels:
                key_step = _label_tokens(ax, "x", labels, panel, font)
                query_step = _label_tokens(ax, "y", labels, panel, font)
            below = r + 1 < len(rows) and c < len(rows[r + 1])
            ax.tick_params(labelbottom=not below, labelleft=c == 0)
    fig.supxlabel(_every(xlabel, key_step))
    fig.supylabel(_every(ylabel, query_step))
    shown = [ax for ax in grid.ravel() if ax.get_visible()]
    fig.colorbar(image, ax=shown, shrink=0.8, label="attention weight")
    if title:
        fig.suptitle(title)
    return fig
