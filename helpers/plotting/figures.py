"""The course's figure and how it is shown: `CourseFigure`, a matplotlib Figure that Jupyter
shows as a PNG; the sizes every figure is made for (at most `MAX_WIDTH_IN` wide, no text smaller
than `MIN_TEXT_PX`); PNG writing, which records the figure's smallest text (`png_min_text_px`);
and `figure_png_blit`, which redraws only the parts of a figure that a widget changed."""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image as PILImage
from PIL.PngImagePlugin import PngInfo
from torch import Tensor

PNG_DPI = 100  # every PNG written here: one inch of figure is 100 pixels
# JupyterLab's output area in a 1280 px browser window, in its default layout (the file browser
# open on the left), as the browser tests measure it (JupyterLab 4.6): a PNG wider than this is
# scaled down to it, text included. (With the file browser closed the area is wider.)
DISPLAY_WIDTH_PX = 848
MAX_WIDTH_IN = DISPLAY_WIDTH_PX / PNG_DPI  # a figure this wide or narrower is shown unscaled
# the smallest text a figure may show, as an em size in pixels as displayed (6.5 pt at dpi 100):
# the floor the course set after tick labels and legends shown at 5 to 8 px in JupyterLab were
# reported unreadable on a laptop
MIN_TEXT_PX = 9
# token tick labels: the largest size at which a figure's tokens all fit, 12.5 to 9.7 px at dpi 100
TOKEN_FONTS_PT = (9, 8, 7)
NOTE_FONT_PT = 8  # values written beside bars, small legends
TEXT_PX_KEY = "course:min-text-px"  # the PNG tEXt chunk with the smallest text, in native pixels


@dataclass
class _BlitState:
    """What `figure_png_blit` keeps between the frames of one figure."""

    background: object | None = None  # the canvas without the changing artists
    background_text_px: float = math.inf  # the smallest text drawn in the background
    # an update may mark the first `still` changed artists as drawn as in the last frame: they
    # then come from `layered`, a copy of the canvas taken once the first `layer` were drawn
    layer: int = 0
    still: int = 0
    layered: object | None = None
    layered_at: int = 0
    layered_text_px: float = math.inf
    # the canvas's renderer, measuring: one per figure, so that matplotlib's cache of text
    # metrics, kept per renderer, serves every frame
    meter: _TextMeter | None = None


class CourseFigure(Figure):
    """A matplotlib Figure that Jupyter shows as a PNG when it is a cell's value (no pyplot).

    `parts` holds what the figure's update function changes (a dataclass per kind of figure; None
    for a figure no widget updates), `blit` what `figure_png_blit` keeps between frames."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{"dpi": PNG_DPI, **kwargs})
        self.parts: object | None = None
        self.blit = _BlitState()

    def _repr_png_(self) -> bytes:
        return figure_png(self)


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=float)


def _parts(fig: Figure, kind: type, made_by: str):
    if not isinstance(getattr(fig, "parts", None), kind):
        raise ValueError(f"this update needs a figure made by {made_by}")
    return fig.parts


# -- text size: measured, written into every PNG, read back -------------------------------------


class _TextMeter:
    """Draws through `renderer` and keeps the smallest font size (em, in pixels) of the texts it
    draws: exactly what the figure shows (hidden or empty texts, and tick labels outside the
    view, are never drawn)."""

    def __init__(self, renderer: RendererAgg, find_cut: bool = False):
        self.renderer = renderer
        self.smallest = math.inf
        self.cut: list[str] | None = [] if find_cut else None  # texts reaching past the canvas

    def __getattr__(self, name: str):
        return getattr(self.renderer, name)

    def draw_text(self, gc, x, y, s, prop, angle, ismath=False, mtext=None):
        if s.strip():
            size = prop.get_size_in_points() * self.renderer.dpi / 72
            self.smallest = min(self.smallest, size)
            if self.cut is not None and mtext is not None:
                box = mtext.get_window_extent(self.renderer)
                width, height = self.renderer.get_canvas_width_height()
                if box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1:
                    self.cut.append(s)
        self.renderer.draw_text(gc, x, y, s, prop, angle, ismath=ismath, mtext=mtext)


def _canvas(fig: Figure, dpi: float) -> FigureCanvasAgg:
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    if fig.dpi != dpi:
        fig.set_dpi(dpi)
    return canvas


def _draw(fig: Figure, dpi: float = PNG_DPI) -> tuple[FigureCanvasAgg, float]:
    """Draw the whole figure at `dpi` on its Agg canvas (as `canvas.draw()` does); returns the
    canvas and the smallest text drawn, in pixels."""
    canvas = _canvas(fig, dpi)
    renderer = canvas.get_renderer()
    renderer.clear()
    meter = _TextMeter(renderer)
    fig.draw(meter)
    return canvas, meter.smallest


def texts_cut_off(fig: Figure) -> list[str]:
    """The texts the figure draws partly or wholly outside itself, which its PNG cuts off (an axis
    label beyond the edge of a fixed layout, say). It draws the figure."""
    canvas = _canvas(fig, PNG_DPI)
    renderer = canvas.get_renderer()
    renderer.clear()
    meter = _TextMeter(renderer, find_cut=True)
    fig.draw(meter)
    return meter.cut


def _displayed(text_px: float, width_px: float, display_width: float) -> float:
    return text_px * min(1.0, display_width / width_px)


def smallest_text_px(fig: Figure, display_width: float = DISPLAY_WIDTH_PX) -> float:
    """The smallest text the figure shows, as an em size in pixels once its PNG (dpi 100) is shown
    in an output area `display_width` pixels wide, which scales down a wider image: over every
    visible, non-empty text drawn (titles, axis and tick labels, legends, annotations, colour
    bars). Infinite for a figure without text. It draws the figure."""
    canvas, text_px = _draw(fig)
    return _displayed(text_px, canvas.get_width_height()[0], display_width)


def _png(canvas: FigureCanvasAgg, text_px: float) -> bytes:
    """The canvas as a PNG, with the smallest text size in a tEXt chunk."""
    image = PILImage.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba())
    image = image.convert("RGB")  # a quarter less to encode and send; the figure is opaque
    info = PngInfo()
    info.add_text(TEXT_PX_KEY, f"{text_px:.2f}")
    buffer = io.BytesIO()
    image.save(buffer, format="png", pnginfo=info)
    return buffer.getvalue()


def _quick_png(canvas: FigureCanvasAgg, text_px: float) -> bytes:
    """The canvas as a PNG, as `_png` but written here, rows unfiltered and compressed at zlib's
    fastest level: for a widget's every frame. PIL picks a filter for every row, which takes
    most of its time; the file is a little larger."""
    rgba = np.asarray(canvas.buffer_rgba())  # [height, width, 4]
    height, width, _ = rgba.shape
    rows = np.zeros((height, 1 + 3 * width), np.uint8)  # each row: filter 0 (none), then RGB
    rows[:, 1:] = rgba[..., :3].reshape(height, -1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits per channel, RGB
    text = TEXT_PX_KEY.encode("latin-1") + b"\0" + f"{text_px:.2f}".encode("latin-1")
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"tEXt", text)
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)) + chunk(b"IEND", b""))  # fmt: skip


def png_min_text_px(png: bytes) -> float | None:
    """The smallest text size a PNG of this module records (em, in its own pixels), or None for
    a PNG that records none."""
    found = PILImage.open(io.BytesIO(png)).text.get(TEXT_PX_KEY)
    return None if found is None else float(found)


def displayed_text_px(png: bytes, display_width: float = DISPLAY_WIDTH_PX) -> float | None:
    """The smallest text of a PNG of this module as shown in an output area `display_width`
    pixels wide (a wider PNG is scaled down to fit), or None for a PNG that records none."""
    text_px = png_min_text_px(png)
    if text_px is None:
        return None
    return _displayed(text_px, PILImage.open(io.BytesIO(png)).width, display_width)


def figure_png(fig: Figure, dpi: int = PNG_DPI) -> bytes:
    """The figure as PNG bytes (for widgets, which display images rather than live figures),
    recording its smallest text (`png_min_text_px`)."""
    previous = fig.dpi
    canvas, text_px = _draw(fig, dpi)
    png = _png(canvas, text_px)
    fig.set_dpi(previous)
    return png


def figure_png_blit(fig: CourseFigure, changed: Sequence) -> bytes:
    """The figure as PNG bytes (dpi 100), redrawing only the artists in `changed` over a
    background of everything else, rendered once and kept in `fig.blit`. Drawing a figure's axes
    and token labels is most of a full redraw; a widget whose controls change only images and
    texts need not pay for it. The PNG records the smallest text of the frame, that of the
    background (measured once) and of what was drawn over it."""
    state = fig.blit
    canvas = _canvas(fig, PNG_DPI)
    if state.background is None:
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
        canvas, state.background_text_px = _draw(fig)
        state.background = canvas.copy_from_bbox(fig.bbox)
        for artist, shown, position in zip(changed, visible, placed, strict=True):
            artist.set_visible(shown)
            if position is not None:
                artist.set_position(position)
    still, text_px = state.still, state.background_text_px
    if still and state.layered is not None and state.layered_at == still == state.layer:
        canvas.restore_region(state.layered)
        text_px = min(text_px, state.layered_text_px)
    else:
        canvas.restore_region(state.background)
        still = 0
    if state.meter is None or state.meter.renderer is not canvas.get_renderer():
        state.meter = _TextMeter(canvas.get_renderer())
    meter = state.meter
    meter.smallest = math.inf
    for i, artist in enumerate(changed[still:], start=still):
        if i == state.layer and state.layer and not still:
            state.layered, state.layered_at = canvas.copy_from_bbox(fig.bbox), state.layer
            state.layered_text_px = meter.smallest
        if artist.get_visible():
            artist.draw(meter)
    return _quick_png(canvas, min(text_px, meter.smallest))
