"""Colour scales and token axes, what the figures are built from: the colour maps (attention
weights, signed and non-negative quantities) and their scales, and token labels fitted along an
axis (every one where they fit, else every k-th); axes placed in inches for fixed layouts."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.image import AxesImage

from helpers.plotting.figures import PNG_DPI, TOKEN_FONTS_PT

# Attention weights are probabilities: one sequential map on a fixed 0..1 scale for every
# attention pattern, so that any two patterns compare at a glance. Purple, as in circuitsvis's
# attention views, which the course shows beside these figures.
ATTENTION_CMAP = "Purples"
ATTENTION_SCALE = (0.0, 1.0)
DIVERGING_CMAP = "RdBu_r"  # signed quantities, red positive, centred on 0 (`diverging_norm`)
# non-negative quantities other than attention (probabilities), from 0 to the largest entry: a
# map unlike ATTENTION_CMAP, so that a probability table is not read as an attention pattern
SEQUENTIAL_CMAP = "viridis"


def _largest_magnitude(*arrays: np.ndarray) -> float:
    """The largest |entry| over the finite entries of `arrays`, or 1 if there is none (or it is 0),
    so that a colour scale always has a range."""
    finite = [np.abs(a[np.isfinite(a)]) for a in arrays]
    return max((float(f.max()) for f in finite if f.size), default=0.0) or 1.0


def diverging_norm(*arrays: np.ndarray) -> Normalize:
    """A colour scale centred on 0 and symmetric, from -m to m where m is the largest |entry|
    over the finite entries of `arrays`: for logits, circuits and other signed quantities (use
    with `DIVERGING_CMAP`). A plain linear `Normalize`, whose colour bar matplotlib draws on a
    linear axis; a colour bar of any other kind of scale is drawn through the scale's functions,
    several times slower, and a widget redraws its colour bars."""
    bound = _largest_magnitude(*arrays)
    return Normalize(-bound, bound)


def _scale_kind(centre: bool, attention: bool) -> str:
    return "attention" if attention else "diverging" if centre else "sequential"


def _colours(kind: str, *arrays: np.ndarray) -> dict:
    """imshow's colour arguments for a kind of quantity: attention weights (0..1), signed
    ("diverging", centred on 0) or non-negative ("sequential", 0 to the largest entry)."""
    if kind == "attention":
        return {"cmap": ATTENTION_CMAP, "vmin": ATTENTION_SCALE[0], "vmax": ATTENTION_SCALE[1]}
    if kind == "diverging":
        return {"cmap": DIVERGING_CMAP, "norm": diverging_norm(*arrays)}
    return {"cmap": SEQUENTIAL_CMAP, "vmin": 0.0, "vmax": _largest_magnitude(*arrays)}


def _recolour(image: AxesImage, kind: str, M: np.ndarray) -> None:
    if kind == "diverging":
        image.set_norm(diverging_norm(M))
    elif kind == "sequential":
        image.set_clim(0.0, _largest_magnitude(M))


def _check_labels(name: str, labels: Sequence[str] | None, n: int) -> None:
    if labels is not None and len(labels) != n:
        raise ValueError(
            f"{name} has {len(labels)} labels but the matrix has {n} entries on that axis"
        )


@functools.lru_cache(maxsize=256)
def _text_px(texts: tuple[str, ...], fontsize: float) -> tuple[float, float]:
    """(width of the widest of `texts`, height of a line) in pixels at dpi 100, at `fontsize`
    points, as matplotlib lays out one-line texts."""
    measure = RendererAgg(1, 1, PNG_DPI)
    prop = FontProperties(size=fontsize)
    sizes = [measure.get_text_width_height_descent(t, prop, ismath=False) for t in [*texts, "lp"]]
    return max(w for w, _, _ in sizes), max(h for _, h, _ in sizes)


def _token_layout(labels: Sequence[str], axis: str, length_in: float, fontsize: float):
    """How token labels go along an axis `length_in` inches long, at `fontsize` points: (k,
    rotation), every k-th label shown (1: all of them). A label takes its line's height along a y
    axis; along an x axis its width where that fits, else (turned a quarter) its line's height;
    and a pixel between neighbours."""
    width, line = _text_px(tuple(labels), fontsize)
    pitch = length_in * PNG_DPI / len(labels)
    flat = axis == "x" and (width <= line or width + 1 <= pitch)
    room = (width if flat else line) + 1
    return max(1, math.ceil(room / pitch - 1e-9)), 90 if axis == "x" and not flat else 0


def _token_font(*axes: tuple[Sequence[str] | None, str, float]) -> float:
    """The largest of `TOKEN_FONTS_PT` at which every label fits on every axis given as (labels,
    "x" or "y", length in inches), so that a figure's token axes share one size; else the
    smallest, with every k-th label shown."""
    for size in TOKEN_FONTS_PT:
        if all(_token_layout(labels, axis, length, size)[0] == 1
               for labels, axis, length in axes if labels):  # fmt: skip
            return size
    return TOKEN_FONTS_PT[-1]


def _token_pitch_in(labels: Sequence[str] | None, axis: str) -> float:
    """The least room a token label needs along its axis, in inches (at the smallest font)."""
    if not labels:
        return 0.0
    width, line = _text_px(tuple(labels), TOKEN_FONTS_PT[-1])
    return ((min(width, line) if axis == "x" else line) + 1) / PNG_DPI


def _label_depth_in(labels: Sequence[str] | None, axis: str) -> float:
    """How far an axis's token labels may reach out from it, in inches (at the largest font,
    turned a quarter on an x axis unless they are single letters; 0 without labels)."""
    if not labels:
        return 0.0
    width, line = _text_px(tuple(labels), TOKEN_FONTS_PT[0])
    return ((width if axis == "y" or width > line else line) + 8) / PNG_DPI


def _label_tokens(ax: Axes, axis: str, labels: Sequence[str], length_in: float,
                  fontsize: float) -> int:  # fmt: skip
    """Label one axis of a heat map with a token per row or column, every one where they fit
    along `length_in` inches without overlapping, else every k-th (k = 2, 3, ...). Returns k."""
    step, rotation = _token_layout(labels, axis, length_in, fontsize)
    ticks = list(range(0, len(labels), step))
    text = [labels[i] for i in ticks]
    if axis == "y":
        ax.set_yticks(ticks, text, fontsize=fontsize)
    else:
        ax.set_xticks(ticks, text, fontsize=fontsize, rotation=rotation)
    return step


def _every(label: str, step: int) -> str:
    """An axis label that says when only every `step`-th token is labelled."""
    if step == 1:
        return label
    nth = {2: "2nd", 3: "3rd"}.get(step, f"{step}th")
    # on a line of its own: a vertical label must fit the height of a one-row figure
    return f"{label}\n(every {nth} token labelled)" if label else f"every {nth} token labelled"


def _inches(fig: Figure, left: float, bottom: float, width: float, height: float) -> Axes:
    """An axes placed in inches from the figure's lower left corner (fixed layouts, which a
    widget redraws faster than a constrained one)."""
    w, h = fig.get_size_inches()
    return fig.add_axes((left / w, bottom / h, width / w, height / h))
