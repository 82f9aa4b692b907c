"""Static figures (matplotlib). Pure functions: tensors and labels in, a `Figure` out.

Figures are built with `matplotlib.figure.Figure`, not pyplot, so nothing is drawn twice and no
global state is kept; a notebook displays a returned figure by leaving it as a cell's last value.

Every figure is sized for where the course is read. JupyterLab shows a PNG at its natural size
unless it is wider than the output area, which scales it down with all its text; so figures are
at most `MAX_WIDTH_IN` wide (nothing is scaled at dpi 100) and no text in them is smaller than
`MIN_TEXT_PX` there. Each PNG written here records its smallest text (`png_min_text_px`), which
the tests read back for every figure and widget.

Colours say what is shown: `ATTENTION_CMAP` on a fixed 0..1 scale for attention patterns,
`DIVERGING_CMAP` centred on 0 for signed quantities (logits, circuits), `SEQUENTIAL_CMAP` from 0
for other non-negative ones (probabilities).

Its modules, one kind of figure each after the first two:
- `figures`: `CourseFigure`, the sizes figures are made for, PNG writing with the smallest text
  recorded, and blitting, which redraws for a widget only what changed;
- `axes`: colour maps and scales, token labels fitted along an axis, axes placed in inches;
- `heatmaps`: token × token matrices, alone or side by side, and attention patterns in a grid;
- `charts`: lines, bars and scatters (losses, contributions, distributions, read shares);
- `panels`: a head's QK and OV circuits, and the composition of two heads;
- `training`: the phase change (training replayed, runs compared, when induction formed).
A widget redraws a figure with the `update_` function beside it, then `figure_png_blit`.
"""

from helpers.plotting.axes import (
    ATTENTION_CMAP,
    ATTENTION_SCALE,
    DIVERGING_CMAP,
    SEQUENTIAL_CMAP,
    diverging_norm,
)
from helpers.plotting.charts import (
    contribution_bars,
    distribution_comparison,
    horizontal_bars,
    loss_by_position,
    loss_curve,
    read_share_bars,
    scatter_comparison,
    update_contribution_bars,
    update_distribution_comparison,
    update_read_share_bars,
)
from helpers.plotting.figures import (
    DISPLAY_WIDTH_PX,
    MAX_WIDTH_IN,
    MIN_TEXT_PX,
    NOTE_FONT_PT,
    PNG_DPI,
    TEXT_PX_KEY,
    TOKEN_FONTS_PT,
    CourseFigure,
    displayed_text_px,
    figure_png,
    figure_png_blit,
    png_min_text_px,
    smallest_text_px,
    texts_cut_off,
)
from helpers.plotting.heatmaps import (
    attention_patterns,
    side_by_side_heatmaps,
    token_heatmap,
    update_token_heatmap,
)
from helpers.plotting.panels import (
    circuit_panel,
    composition_panel,
    update_circuit_panel,
    update_composition_panel,
)
from helpers.plotting.training import (
    formation_steps,
    history_curves,
    phase_change_curves,
    phase_change_panel,
    update_phase_change_panel,
)

__all__ = [
    "PNG_DPI",
    "DISPLAY_WIDTH_PX",
    "MAX_WIDTH_IN",
    "MIN_TEXT_PX",
    "TOKEN_FONTS_PT",
    "NOTE_FONT_PT",
    "TEXT_PX_KEY",
    "ATTENTION_CMAP",
    "ATTENTION_SCALE",
    "DIVERGING_CMAP",
    "SEQUENTIAL_CMAP",
    "CourseFigure",
    "smallest_text_px",
    "texts_cut_off",
    "png_min_text_px",
    "displayed_text_px",
    "figure_png",
    "figure_png_blit",
    "diverging_norm",
    "token_heatmap",
    "update_token_heatmap",
    "side_by_side_heatmaps",
    "attention_patterns",
    "loss_curve",
    "contribution_bars",
    "update_contribution_bars",
    "distribution_comparison",
    "update_distribution_comparison",
    "scatter_comparison",
    "circuit_panel",
    "update_circuit_panel",
    "composition_panel",
    "update_composition_panel",
    "loss_by_position",
    "horizontal_bars",
    "phase_change_panel",
    "update_phase_change_panel",
    "phase_change_curves",
    "history_curves",
    "formation_steps",
    "read_share_bars",
    "update_read_share_bars",
]
