"""Static figures (matplotlib). Pure functions: tensors and labels in, a `Figure` out.

Figures are built with `matplotlib.figure.Figure`, not pyplot, so nothing is drawn twice and no
global state is kept; a notebook displays a returned figure by leaving it as a cell's last value.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from PIL import Image as PILImage
from torch import Tensor


class CourseFigure(Figure):
    """A matplotlib Figure that Jupyter shows as a PNG when it is a cell's value (no pyplot)."""

    def _repr_png_(self) -> bytes:
        return figure_png(self)


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=float)


def _largest_magnitude(*arrays: np.ndarray) -> float:
    """The largest |entry| over the finite entries of `arrays`, or 1 if there is none (or it is 0),
    so that a colour scale always has a range."""
    finite = [np.abs(a[np.isfinite(a)]) for a in arrays]
    return max((float(f.max()) for f in finite if f.size), default=0.0) or 1.0


def diverging_norm(*arrays: np.ndarray) -> TwoSlopeNorm:
    """A colour scale centred on 0 and symmetric, covering the finite entries of `arrays`: for
    logits, circuits and other signed quantities (use with the "RdBu_r" colour map)."""
    bound = _largest_magnitude(*arrays)
    return TwoSlopeNorm(0.0, -bound, bound)


def _check_labels(name: str, labels: Sequence[str] | None, n: int) -> None:
    if labels is not None and len(labels) != n:
        raise ValueError(
            f"{name} has {len(labels)} labels but the matrix has {n} entries on that axis"
        )


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
    ax_size: float = 5.0,
) -> Figure:
    """A labelled heat-map of a `[rows, cols]` matrix, e.g. token × token.

    With `centre=True` the colour map is diverging and centred on 0 (red positive, blue
    negative), the right choice for logits and circuits; otherwise sequential.
    """
    M = _numpy(matrix)
    if M.ndim != 2:
        raise ValueError(f"token_heatmap needs a 2-d matrix, got shape {M.shape}")
    _check_labels("row_labels", row_labels, M.shape[0])
    _check_labels("col_labels", col_labels, M.shape[1])
    fig = CourseFigure(figsize=(ax_size * 1.2, ax_size), layout="constrained")
    ax = fig.add_subplot()
    if centre:
        im = ax.imshow(
            M, cmap="RdBu_r", norm=diverging_norm(M), aspect="auto", interpolation="nearest"
        )
    else:
        im = ax.imshow(M, cmap="viridis", aspect="auto", interpolation="nearest")
    fontsize = 8 if max(M.shape) <= 32 else 6
    if row_labels is not None and len(row_labels) <= 64:
        ax.set_yticks(range(M.shape[0]), row_labels, fontsize=fontsize)
    if col_labels is not None and len(col_labels) <= 64:
        ax.set_xticks(range(M.shape[1]), col_labels, fontsize=fontsize, rotation=90)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    bar = fig.colorbar(im, ax=ax, label=colorbar_label, shrink=0.8)
    fig.course_parts = (ax, im, bar, centre)
    return fig


def update_token_heatmap(fig: Figure, matrix: Tensor | np.ndarray, *, title: str = "") -> list:
    """Redraw a `token_heatmap` figure for another matrix of the same size and labels: the
    image, its colour bar and the title change. Returns the artists that changed (for
    `figure_png_blit`)."""
    ax, im, bar, centre = fig.course_parts
    M = _numpy(matrix)
    if M.shape != im.get_array().shape:
        raise ValueError(f"the matrix must stay {im.get_array().shape}, got {M.shape}")
    im.set_data(M)
    if centre:
        im.set_norm(diverging_norm(M))
    else:
        finite = M[np.isfinite(M)]
        im.set_clim(float(finite.min()), float(finite.max())) if finite.size else None
    bar.update_normal(im)
    ax.title.set_text(title)
    return [im, *ax.spines.values(), bar.ax, ax.title]


def side_by_side_heatmaps(
    matrices: Mapping[str, Tensor | np.ndarray],
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    *,
    suptitle: str = "",
    xlabel: str = "",
    ylabel: str = "",
    centre: bool = True,
    ax_size: float = 4.2,
) -> Figure:
    """Several matrices of one shape on a shared colour scale, titled by key.

    `centre=True`: diverging colours centred on 0 (circuits, logits); False: sequential colours
    from 0 (attention patterns, probabilities)."""
    arrays = {k: _numpy(v) for k, v in matrices.items()}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1:
        raise ValueError(f"side_by_side_heatmaps needs matrices of one shape, got {shapes}")
    fig = CourseFigure(figsize=(ax_size * len(arrays) + 1, ax_size), layout="constrained")
    axes = fig.subplots(1, len(arrays), squeeze=False)[0]
    style = (
        {"cmap": "RdBu_r", "norm": diverging_norm(*arrays.values())}
        if centre
        else {"cmap": "Blues", "vmin": 0.0, "vmax": _largest_magnitude(*arrays.values())}
    )
    for ax, (name, M) in zip(axes, arrays.items(), strict=True):
        im = ax.imshow(M, aspect="auto", interpolation="nearest", **style)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        if row_labels is not None and len(row_labels) <= 40:
            ax.set_yticks(range(M.shape[0]), row_labels, fontsize=7)
        if col_labels is not None and len(col_labels) <= 40:
            ax.set_xticks(range(M.shape[1]), col_labels, fontsize=7, rotation=90)
    axes[0].set_ylabel(ylabel)
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    fig.suptitle(suptitle)
    return fig


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
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    return fig


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
    notes = [ax.annotate("", (0, i), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
             for i in range(len(values))]  # fmt: skip
    ax.set_xlabel("contribution to the logit")
    ax.set_title(title)
    ax.margins(x=0.2)
    fig.course_parts = (ax, bars, zero, notes)
    _set_contributions(fig, values)
    return fig


def _set_contributions(fig: Figure, values: np.ndarray) -> None:
    ax, bars, _, notes = fig.course_parts
    for i, (rectangle, note, v) in enumerate(zip(bars, notes, values, strict=True)):
        rectangle.set_width(float(v))
        total = i == len(values) - 1
        rectangle.set_color("0.3" if total else "tab:red" if v > 0 else "tab:blue")
        note.set_text(f"{v:+.2f}")
        note.xy = (float(v), i)
        note.xyann = (4 if v >= 0 else -4, 0)  # points beside the bar's end
        note.set_horizontalalignment("left" if v >= 0 else "right")
    ax.relim()
    ax.autoscale_view(scaley=False)


def update_contribution_bars(
    fig: Figure, contributions: Tensor | np.ndarray, *, title: str = ""
) -> list:
    """Redraw a `contribution_bars` figure for other contributions of the same components: the
    bars, their values, the contribution axis and the title change, the component names stay.
    Returns the artists that changed (for `figure_png_blit`)."""
    ax, bars, zero, notes = fig.course_parts
    c = _numpy(contributions).ravel()
    if len(c) != len(bars) - 1:
        raise ValueError(f"need {len(bars) - 1} contributions (one per component), got {len(c)}")
    _set_contributions(fig, np.append(c, c.sum()))
    ax.title.set_text(title)
    return [*bars, zero, ax.xaxis, *ax.spines.values(), *notes, ax.title]  # in drawing order


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
    fig = CourseFigure(figsize=(max(6.0, 0.28 * n + 2), 3.6), layout="constrained")
    ax = fig.add_subplot()
    bars = [ax.bar(np.arange(n) + (i - (len(arrays) - 1) / 2) * width, p, width, label=name)
            for i, (name, p) in enumerate(arrays.items())]  # fmt: skip
    ax.set_xticks(range(n), labels, fontsize=8)
    ax.set_xlabel("next token")
    ax.set_ylabel("probability")
    ax.set_title(title)
    legend = ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.course_parts = (ax, bars, legend)
    return fig


def update_distribution_comparison(
    fig: Figure, distributions: Mapping[str, Tensor | np.ndarray], *, title: str = ""
) -> list:
    """Redraw a `distribution_comparison` figure for other distributions over the same tokens:
    the bars' heights, the probability axis and the title change, the token labels stay.
    Returns the artists that changed (for `figure_png_blit`)."""
    ax, bars, legend = fig.course_parts
    arrays = [_numpy(v).ravel() for v in distributions.values()]
    if len(arrays) != len(bars) or any(
        len(p) != len(b) for p, b in zip(arrays, bars, strict=False)
    ):
        raise ValueError("the distributions must stay as many, over as many tokens")
    for p, container in zip(arrays, bars, strict=True):
        for rectangle, height in zip(container, p, strict=True):
            rectangle.set_height(float(height))
    ax.relim()
    ax.autoscale_view()
    ax.title.set_text(title)
    patches = [r for container in bars for r in container]
    return [*patches, ax.yaxis, *ax.spines.values(), legend, ax.title]  # in drawing order


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


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (for widgets, which display images rather than live figures)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def figure_png_blit(fig: Figure, changed: Sequence) -> bytes:
    """The figure as PNG bytes, redrawing only the artists in `changed` over a background of
    everything else, rendered once (at dpi 100) and kept with the figure. Drawing a figure's
    axes and token labels takes most of a redraw (about 1 s of 1.3 s for a circuit panel on a
    2-core laptop); a widget whose controls change only images and texts need not pay it."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    fig.set_dpi(100)
    if getattr(fig, "course_background", None) is None:
        # draw once with everything shown: the layout, and the place of every text an axes
        # positions while drawing (titles, axis labels), are then kept (hiding the changing
        # parts must not move the rest)
        canvas.draw()
        if fig.get_layout_engine() is not None:
            fig.set_layout_engine("none")
        visible = [artist.get_visible() for artist in changed]
        # a hidden title or label is moved off the figure as its axes draw: put it back after
        placed = [a.get_position() if isinstance(a, Text) else None for a in changed]
        for artist in changed:
            artist.set_visible(False)
        canvas.draw()
        fig.course_background = canvas.copy_from_bbox(fig.bbox)
        for artist, shown, position in zip(changed, visible, placed, strict=True):
            artist.set_visible(shown)
            if position is not None:
                artist.set_position(position)
    # an update may mark the first `course_blit_still` changed artists as drawn the same as last
    # time: they come from the copy of the canvas taken after the first `course_blit_layer`
    layer, still = getattr(fig, "course_blit_layer", 0), getattr(fig, "course_blit_still", 0)
    layered = getattr(fig, "course_layered", None)
    if still and layered is not None and layered[0] == still == layer:
        canvas.restore_region(layered[1])
    else:
        canvas.restore_region(fig.course_background)
        still = 0
    renderer = canvas.get_renderer()
    for i, artist in enumerate(changed[still:], start=still):
        if i == layer and layer:
            fig.course_layered = (layer, canvas.copy_from_bbox(fig.bbox))
        if artist.get_visible():
            artist.draw(renderer)
    image = PILImage.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba())
    image = image.convert("RGB")  # a quarter less to encode and send; the figure is opaque
    buffer = io.BytesIO()
    image.save(buffer, format="png", compress_level=1)
    return buffer.getvalue()


def circuit_panel(
    qk: Tensor | np.ndarray,
    ov: Tensor | np.ndarray,
    labels: Sequence[str],
    *,
    source: int | None = None,
    title: str = "",
    ax_size: float = 4.6,
) -> Figure:
    """A head's full QK circuit `[query, key]` and full OV circuit `[source, output]` side by side,
    each on its own zero-centred scale; with `source`, its QK column and OV row are outlined."""
    qk_np, ov_np = _numpy(qk), _numpy(ov)
    for name, M in (("qk", qk_np), ("ov", ov_np)):
        if M.shape != (len(labels), len(labels)):
            raise ValueError(f"{name} must be [{len(labels)}, {len(labels)}], got {M.shape}")
    # fixed margins rather than constrained layout: this figure is redrawn by a widget, and
    # constrained layout's extra drawing pass doubles the time per redraw
    fig = CourseFigure(figsize=(2 * ax_size + 1.8, ax_size + 0.9))
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.17, top=0.88, wspace=0.3)
    ax_qk, ax_ov = fig.subplots(1, 2)
    fontsize = 7 if len(labels) <= 48 else 5
    for ax, M, name, xl, yl in (
        (ax_qk, qk_np, "QK circuit (row-centred scores)", "key (source) token", "query (destination) token"),
        (ax_ov, ov_np, "OV circuit (logit change)", "output token", "source token"),
    ):  # fmt: skip
        im = ax.imshow(M, cmap="RdBu_r", norm=diverging_norm(M),
                       aspect="auto", interpolation="nearest")  # fmt: skip
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        if len(labels) <= 64:
            ax.set_xticks(range(len(labels)), labels, fontsize=fontsize, rotation=90)
            ax.set_yticks(range(len(labels)), labels, fontsize=fontsize)
        bar = fig.colorbar(im, ax=ax, shrink=0.8, pad=0.02)
        fig.course_parts = getattr(fig, "course_parts", []) + [(im, bar)]
    n = len(labels)
    outlines = (_outline(-0.5, -0.5, 1, n), _outline(-0.5, -0.5, n, 1))
    ax_qk.add_patch(outlines[0])  # the source's column: who attends to it
    ax_ov.add_patch(outlines[1])  # its row: what it writes
    fig.course_outlines = outlines
    fig.suptitle(title)
    _place_outlines(fig, source)
    return fig


def _place_outlines(fig: Figure, source: int | None) -> None:
    qk_column, ov_row = fig.course_outlines
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
    changed, same = [], []
    for (im, bar), M in zip(fig.course_parts, (_numpy(qk), _numpy(ov)), strict=True):
        if M.shape != im.get_array().shape:
            raise ValueError(f"the circuits must stay {im.get_array().shape}, got {M.shape}")
        same.append(np.array_equal(M, im.get_array(), equal_nan=True))
        if not same[-1]:
            im.set_data(M)
            im.set_norm(diverging_norm(M))
            bar.update_normal(im)
        changed += [im, *im.axes.spines.values(), bar.ax]  # the frame over the image, as drawn
    # the same circuits (another source token): the images and colour bars come from the last
    # frame, only the outlines and the title are drawn
    fig.course_blit_layer = len(changed)
    fig.course_blit_still = len(changed) if all(same) else 0
    _place_outlines(fig, source)
    fig._suptitle.set_text(title)
    return [*changed, *fig.course_outlines, fig._suptitle]


def _outline(x: float, y: float, w: float, h: float):
    return Rectangle((x, y), w, h, fill=False, edgecolor="black", lw=1.5)


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
    band of ±2 standard deviations), beside a token × token product matrix. `ymax` fixes the
    bars' scale (an explorer passes the largest score of any pair, so that pairs compare)."""
    if set(scores) != set(baselines):
        raise ValueError(
            f"scores and baselines need the same kinds, got {sorted(scores)} and {sorted(baselines)}"
        )
    M = _numpy(matrix)
    if M.shape != (len(labels), len(labels)):
        raise ValueError(f"matrix must be [{len(labels)}, {len(labels)}], got {M.shape}")
    fig = CourseFigure(figsize=(11, 4.6))
    fig.subplots_adjust(left=0.07, right=0.97, bottom=0.14, top=0.86, wspace=0.3)
    grid = fig.add_gridspec(1, 3)
    ax_bar, ax_mat = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1:])
    _composition_bars(ax_bar, scores, baselines, ymax)
    im = ax_mat.imshow(M, cmap="RdBu_r", norm=diverging_norm(M), aspect="auto",
                       interpolation="nearest")  # fmt: skip
    if len(labels) <= 64:
        ax_mat.set_xticks(range(len(labels)), labels, fontsize=6)
        ax_mat.set_yticks(range(len(labels)), labels, fontsize=6)
    ax_mat.set_title(matrix_title, fontsize=10)
    ax_mat.set_xlabel(xlabel)
    ax_mat.set_ylabel(ylabel)
    bar = fig.colorbar(im, ax=ax_mat, shrink=0.8, pad=0.02)
    fig.suptitle(title)
    fig.course_parts = (ax_bar, ax_mat, im, bar)
    return fig


def _composition_bars(ax_bar, scores: Mapping[str, float], baselines, ymax=None) -> None:
    kinds = list(scores)
    x = np.arange(len(kinds))
    bars = ax_bar.bar(
        x, [scores[k] for k in kinds], color=["tab:orange", "tab:red", "tab:purple"][: len(kinds)]
    )
    bands, notes = [], []
    for i, k in enumerate(kinds):
        mean, std = baselines[k]
        bands.append(ax_bar.fill_between([i - 0.45, i + 0.45], mean - 2 * std, mean + 2 * std,
                     color="0.7", alpha=0.6, label="random baseline ±2σ" if i == 0 else None))  # fmt: skip
        bands.append(ax_bar.hlines(mean, i - 0.45, i + 0.45, color="black", lw=1))
        notes.append(ax_bar.annotate(f"{scores[k]:.2f}\n({scores[k] / mean:.1f}×)",
                     (i, scores[k]), ha="center", va="bottom", fontsize=8))  # fmt: skip
    ax_bar.set_xticks(x, [f"{k}-comp." for k in kinds])
    ax_bar.set_ylabel("composition score")
    top = _composition_top(scores, baselines, ymax)
    ax_bar.set_ylim(0, top)
    legend = ax_bar.legend(loc="upper left", fontsize=8)
    ax_bar.course_parts = (kinds, bars, bands, notes, legend, ymax, top)


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
    ax_bar, ax_mat, im, bar = fig.course_parts
    M = _numpy(matrix)
    if M.shape != im.get_array().shape:
        raise ValueError(f"the matrix must stay {im.get_array().shape}, got {M.shape}")
    kinds, bars, bands, notes, legend, ymax, top = ax_bar.course_parts
    if list(scores) == kinds and _composition_top(scores, baselines, ymax) == top:
        for i, (k, rectangle, note) in enumerate(zip(kinds, bars, notes, strict=True)):
            mean = baselines[k][0]
            rectangle.set_height(scores[k])
            note.set_text(f"{scores[k]:.2f}\n({scores[k] / mean:.1f}×)")
            note.xy = note.xyann = (i, scores[k])  # the point and the text placed on it
        # in drawing order, the bands over the bars; the legend, in the top eighth, stays above
        # the tallest bar and its note (at most 1 / 1.3 of the height, plus two lines)
        bar_parts = [*bars, *bands, *notes]
    else:  # another scale: the whole bar chart
        ax_bar.cla()
        _composition_bars(ax_bar, scores, baselines, ymax)
        bar_parts = [ax_bar]
    im.set_data(M)
    im.set_norm(diverging_norm(M))
    bar.update_normal(im)
    ax_mat.title.set_text(matrix_title)
    ax_mat.xaxis.label.set_text(xlabel)
    ax_mat.yaxis.label.set_text(ylabel)
    fig._suptitle.set_text(title)
    return [*bar_parts, im, *ax_mat.spines.values(), bar.ax, ax_mat.title, ax_mat.xaxis.label,
            ax_mat.yaxis.label, fig._suptitle]  # fmt: skip


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
        ax.annotate(
            f"{v:.3f}", (v, i), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8
        )
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.margins(x=0.15)
    return fig


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
    (`patterns`: [record, layer, head, query, key]), each head's prefix-matching and
    previous-token scores up to that step ([record, layer, head]), and the held-out loss and ICL
    score over the whole run with a cursor at that step. `update_phase_change_panel` moves it."""
    P = _numpy(patterns)
    pm, pt = _numpy(prefix_matching), _numpy(previous_token)
    steps = np.asarray(steps)
    n_records, n_layers, n_heads = P.shape[:3]
    if not (pm.shape == pt.shape == (n_records, n_layers, n_heads) == (len(steps), *P.shape[1:3])
            and len(loss) == len(icl) == len(steps)):  # fmt: skip
        raise ValueError("patterns, scores, loss and icl need one entry per recorded step")
    fig = CourseFigure(figsize=(13, 2.2 * n_layers + 2.2))
    fig.subplots_adjust(left=0.02, right=0.93, bottom=0.1, top=0.86)
    outer = fig.add_gridspec(1, 2, width_ratios=[n_heads, 3.2], wspace=0.12)
    left = outer[0].subgridspec(n_layers, n_heads, wspace=0.08, hspace=0.25)
    right = outer[1].subgridspec(2, 1, hspace=0.45)
    images = []
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = fig.add_subplot(left[layer, head])
            images.append(ax.imshow(P[index, layer, head], cmap="viridis", vmin=0, vmax=1,
                                    interpolation="nearest"))  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"L{layer}H{head}", fontsize=9)
    ax_scores = fig.add_subplot(right[0])
    ax_loss = fig.add_subplot(right[1])
    lines = []
    for layer in range(n_layers):
        for head in range(n_heads):
            colour = f"C{head}"
            style = "-" if layer == n_layers - 1 else ":"
            (line,) = ax_scores.plot(steps[: index + 1], pm[: index + 1, layer, head], style,
                                     color=colour, lw=1.2)  # fmt: skip
            lines.append((line, pm[:, layer, head]))
    (prev_line,) = ax_scores.plot(steps[: index + 1], pt[: index + 1, 0].max(-1), color="black",
                                  lw=1.5, label="best previous-token score, layer 0")  # fmt: skip
    lines.append((prev_line, pt[:, 0].max(-1)))
    ax_scores.plot([], [], "-", color="0.4", label=f"prefix-matching, layer {n_layers - 1} heads")
    if n_layers > 1:
        ax_scores.plot([], [], ":", color="0.4", label="prefix-matching, earlier layers")
    ax_scores.set_xlim(steps[0], steps[-1])
    ax_scores.set_ylim(0, 1)
    ax_scores.set_ylabel("score")
    ax_scores.legend(loc="upper left", fontsize=7)
    ax_loss.plot(steps, loss, color="tab:blue", label="held-out loss")
    ax_loss.set_ylabel("loss (nats)", color="tab:blue")
    ax_loss.set_xlabel("training step")
    ax_icl = ax_loss.twinx()
    ax_icl.plot(steps, icl, color="tab:red", label="ICL score")
    ax_icl.set_ylabel("ICL score (nats)", color="tab:red")
    cursor = ax_loss.axvline(steps[index], color="black", lw=1)
    fig.suptitle(title)
    fig.course_parts = (P, steps, images, lines, cursor)
    return fig


def update_phase_change_panel(fig: Figure, index: int, *, title: str = "") -> list:
    """Move a `phase_change_panel` to record `index`: the patterns, the scores drawn so far, the
    cursor and the title change. Returns the artists that changed (for `figure_png_blit`)."""
    P, steps, images, lines, cursor = fig.course_parts
    if not isinstance(index, (int, np.integer)) or not 0 <= index < len(steps):
        raise ValueError(f"index must be a record in 0..{len(steps) - 1}, got {index!r}")
    for image, pattern in zip(images, P[index].reshape(-1, *P.shape[-2:]), strict=True):
        image.set_data(pattern)
    for line, values in lines:
        line.set_data(steps[: index + 1], values[: index + 1])
    cursor.set_xdata([steps[index], steps[index]])
    fig._suptitle.set_text(title)
    frames = [spine for image in images for spine in image.axes.spines.values()]
    return [*images, *frames, *(line for line, _ in lines), cursor, fig._suptitle]


def phase_change_curves(
    runs: Mapping[str, object], *, windows: Mapping[str, tuple[int, int] | None] | None = None
) -> Figure:
    """Held-out loss, ICL score and the best prefix-matching score of the last layer over
    training, one line per run (`runs`: name -> a `phase_change.TrainingRecord`), with each
    run's phase-change window shaded where `windows` gives one."""
    fig = CourseFigure(figsize=(13, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    for i, (name, run) in enumerate(runs.items()):
        colour = f"C{i}"
        best = (run.prefix_matching[:, -1].amax(-1).numpy() if run.prefix_matching.numel()
                else np.zeros(len(run.steps)))  # fmt: skip
        for ax, values in zip(axes, (run.heldout_loss, run.icl, best), strict=True):
            ax.plot(run.steps, values, color=colour, label=name)
            window = (windows or {}).get(name)
            if window is not None:
                ax.axvspan(*window, color=colour, alpha=0.12)
    for ax, label in zip(axes, ("held-out loss (nats)", "ICL score (nats)",
                                "best prefix-matching score, last layer"), strict=True):  # fmt: skip
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].axhline(0, color="0.5", lw=0.8)
    axes[2].set_ylim(0, 1)
    axes[0].legend()
    return fig


def formation_steps(
    formed: Mapping[str, int | None], trained: Mapping[str, int], *, title: str = ""
) -> Figure:
    """When induction formed in each run of a sweep: a bar per run to the step where it formed
    (`formed`), or, where it never did (None), a pale bar to the last step trained (`trained`)."""
    names = list(formed)
    fig = CourseFigure(figsize=(8, 0.45 * len(names) + 1.3), layout="constrained")
    ax = fig.add_subplot()
    for i, name in enumerate(names):
        step = formed[name]
        if step is None:
            ax.barh(i, trained[name], color="0.85", hatch="//", edgecolor="0.6")
            ax.annotate(
                f" none by step {trained[name]}", (trained[name], i), va="center", fontsize=8
            )
        else:
            ax.barh(i, step, color="tab:blue" if i else "0.3")
            ax.annotate(f" {step}", (step, i), va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("training step where induction formed (loss on repeats < half the fresh loss)")
    ax.margins(x=0.25)
    ax.set_title(title)
    return fig


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
                         fontsize=8) for i in range(len(writers))]  # fmt: skip
    for note in notes:  # texts that change must not move the axes (the layout is kept)
        note.set_in_layout(False)
    ax.set_yticks(y, writers)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.35)  # room for the notes right of a full bar
    ax.set_xticks(np.linspace(0, 1, 6))  # a share is at most 1
    ax.set_xlabel(xlabel, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title)
    fig.course_parts = (ax, writers, bars, ticks, notes)
    _set_read_shares(fig, shares, baselines)
    return fig


def _set_read_shares(fig: Figure, shares, baselines) -> None:
    _, writers, bars, ticks, notes = fig.course_parts
    for i, (w, rectangle, tick, note) in enumerate(zip(writers, bars, ticks, notes, strict=True)):
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
    ax, writers, bars, ticks, notes = fig.course_parts
    if list(shares) != writers:
        raise ValueError(f"the writers must stay {writers}, got {list(shares)}")
    _set_read_shares(fig, shares, baselines)
    ax.title.set_text(title)
    # in drawing order: the spines and the legend are drawn over the bars
    return [*bars, *ticks, *ax.spines.values(), *notes, ax.get_legend(), ax.title]
