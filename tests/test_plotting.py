import io
import re

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from helpers import plotting
from helpers.phase_change import TrainingRecord


def _assert_same_picture(blitted: bytes, full: bytes) -> None:
    """Two PNGs of one figure: the same size, and at most 0.01 % of the pixels differ (they are
    identical today; a missing axis label alone is about 0.03 % of them)."""
    pixels = [np.asarray(Image.open(io.BytesIO(p)).convert("RGB"), float) for p in (blitted, full)]
    assert pixels[0].shape == pixels[1].shape
    assert (np.abs(pixels[0] - pixels[1]).max(-1) > 40).mean() < 0.0001


def _png(fig):
    data = fig._repr_png_()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return data


def test_heatmap_is_labelled():
    fig = plotting.token_heatmap(torch.randn(3, 4), ["a", "b", "c"], ["w", "x", "y", "z"],
                                 title="T", xlabel="next", ylabel="current")  # fmt: skip
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and ax.get_title() == "T" and ax.get_xlabel() == "next"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["w", "x", "y", "z"]
    _png(fig)


def test_heatmap_bad_input():
    with pytest.raises(ValueError, match="row_labels has 2 labels but the matrix has 3"):
        plotting.token_heatmap(torch.zeros(3, 3), ["a", "b"])
    with pytest.raises(ValueError, match="needs a 2-d matrix"):
        plotting.token_heatmap(torch.zeros(3))


def test_side_by_side_shares_one_scale():
    fig = plotting.side_by_side_heatmaps({"A": torch.ones(2, 2), "B": -3 * torch.ones(2, 2)})
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2 and images[0].norm.vmin == images[1].norm.vmin == -3
    with pytest.raises(ValueError, match="one shape"):
        plotting.side_by_side_heatmaps({"A": torch.ones(2, 2), "B": torch.ones(3, 2)})


def test_loss_curve_and_references():
    fig = plotting.loss_curve([3.0] * 50, reference_lines={"entropy rate": 2.0})
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "entropy rate = 2.000" in labels and "moving average (20 steps)" in labels
    with pytest.raises(ValueError, match="at least one loss"):
        plotting.loss_curve([])


def test_contribution_bars_show_the_total():
    fig = plotting.contribution_bars(torch.tensor([1.0, -0.5]), ["embed", "L0H0"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["embed", "L0H0", "total"]
    assert [round(p.get_width(), 3) for p in ax.patches] == [1.0, -0.5, 0.5]
    with pytest.raises(ValueError, match="labels has 1 labels but the matrix has 2"):
        plotting.contribution_bars(torch.tensor([1.0, -0.5]), ["embed"])


def test_distribution_and_scatter():
    fig = plotting.distribution_comparison(
        {"a": torch.ones(3) / 3, "b": torch.tensor([1.0, 0, 0])}, ["x", "y", "z"]
    )
    assert len(fig.axes[0].patches) == 6
    fig = plotting.scatter_comparison(torch.arange(4.0), torch.arange(4.0), xlabel="x", ylabel="y")
    assert fig.axes[0].get_xlabel() == "x"
    with pytest.raises(ValueError, match="same number of entries"):
        plotting.scatter_comparison(torch.ones(3), torch.ones(4), xlabel="x", ylabel="y")


def test_circuit_panel_shapes_and_outline():
    fig = plotting.circuit_panel(torch.randn(4, 4), torch.randn(4, 4), list("abcd"), source=2)
    qk_ax, ov_ax = fig.axes[:2]
    assert qk_ax.get_xlabel() == "key (source) token" and ov_ax.get_ylabel() == "source token"
    assert len(qk_ax.patches) == 1 and len(ov_ax.patches) == 1
    with pytest.raises(ValueError, match=r"ov must be \[4, 4\], got \(4, 3\)"):
        plotting.circuit_panel(torch.randn(4, 4), torch.randn(4, 3), list("abcd"))


def test_composition_panel():
    fig = plotting.composition_panel(
        {"Q": 0.1, "K": 0.3, "V": 0.1},
        {k: (0.12, 0.01) for k in "QKV"},
        torch.randn(3, 3),
        list("abc"),
    )
    assert len(fig.axes[0].patches) >= 3
    with pytest.raises(ValueError, match="same kinds"):
        plotting.composition_panel({"Q": 0.1}, {"K": (0.1, 0.01)}, torch.randn(3, 3), list("abc"))
    with pytest.raises(ValueError, match=r"matrix must be \[3, 3\]"):
        plotting.composition_panel({"K": 0.1}, {"K": (0.1, 0.01)}, torch.randn(2, 3), list("abc"))


def test_loss_by_position_and_horizontal_bars():
    fig = plotting.loss_by_position(
        {"a": torch.ones(5), "b": torch.zeros(5)}, boundaries=[2.5], first_position=2
    )
    ax = fig.axes[0]
    assert len(ax.lines) == 3 and list(ax.lines[0].get_xdata()) == [2, 3, 4, 5, 6]
    fig = plotting.horizontal_bars({"x": 1.0, "y": 0.5}, xlabel="nats")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["x", "y"]
    with pytest.raises(ValueError, match="at least one value"):
        plotting.horizontal_bars({})


def test_one_diverging_scale_that_ignores_non_finite_entries():
    M = torch.tensor([[1.0, -4.0], [float("nan"), float("inf")]]).numpy()
    norm = plotting.diverging_norm(M, -2 * M)
    assert (norm.vmin, norm(0.0), norm.vmax) == (-8.0, 0.5, 8.0)  # 0 in the middle
    assert plotting.diverging_norm(torch.zeros(2, 2).numpy()).vmax == 1.0  # never an empty range


def test_every_heatmap_draws_a_matrix_with_nan_entries():
    M = torch.randn(3, 3)
    M[0, 1] = float("nan")
    labels = ["a", "b", "c"]
    _png(plotting.token_heatmap(M, labels, labels))
    _png(plotting.side_by_side_heatmaps({"A": M, "B": M}, labels, labels))
    _png(plotting.circuit_panel(M, M, labels, source=1))
    _png(plotting.composition_panel({"K": 0.3}, {"K": (0.1, 0.01)}, M, labels))


def test_a_blitted_update_draws_what_a_full_redraw_draws():
    labels = [f"t{i}" for i in range(7)]
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 7, generator=g), 3 * torch.randn(7, 7, generator=g)
    fig = plotting.circuit_panel(a, a.T, labels, source=1, title="first")
    for source, M, title in ((3, b, "second"), (None, a, "third"), (5, a, "fourth"), (2, a, "5")):
        changed = plotting.update_circuit_panel(fig, M, M.T, source=source, title=title)
        # the same circuits for another source: the images come from the last frame
        assert bool(fig.blit.still) == (title in ("fourth", "5"))
        blitted = plotting.figure_png_blit(fig, changed)
        full = plotting.figure_png(
            plotting.circuit_panel(M, M.T, labels, source=source, title=title)
        )
        _assert_same_picture(blitted, full)
    with pytest.raises(ValueError, match="must stay"):
        plotting.update_circuit_panel(fig, torch.zeros(3, 3), torch.zeros(3, 3))


def test_a_blitted_composition_panel_draws_what_a_full_redraw_draws():
    labels = [f"t{i}" for i in range(6)]
    baselines = {k: (0.12, 0.01) for k in "QKV"}
    g = torch.Generator().manual_seed(1)
    panels = [({"Q": 0.1, "K": 0.3, "V": 0.05}, torch.randn(6, 6, generator=g), "first"),
              ({"Q": 0.2, "K": 0.1, "V": 0.4}, 2 * torch.randn(6, 6, generator=g), "second")]  # fmt: skip
    scores, M, name = panels[0]
    texts = lambda name: dict(matrix_title=f"{name} matrix", xlabel=f"{name} x",  # noqa: E731
                              ylabel=f"{name} y", title=name)  # fmt: skip
    for ymax in (None, 0.4):  # the scale changing with the scores, or fixed at the tallest bar
        scores, M, name = panels[0]
        fig = plotting.composition_panel(scores, baselines, M, labels, ymax=ymax, **texts(name))
        for scores, M, name in panels[::-1]:
            changed = plotting.update_composition_panel(fig, scores, baselines, M, **texts(name))
            assert (fig.axes[0] in changed) == (ymax is None)
            blitted = plotting.figure_png_blit(fig, changed)
            full = plotting.figure_png(
                plotting.composition_panel(scores, baselines, M, labels, ymax=ymax, **texts(name))
            )
            _assert_same_picture(blitted, full)


def test_a_blitted_heatmap_draws_what_a_full_redraw_draws():
    labels = [f"t{i}" for i in range(8)]
    g = torch.Generator().manual_seed(2)
    first, second = torch.rand(8, 8, generator=g), 0.5 * torch.rand(8, 8, generator=g)
    for scale in ({"centre": False}, {"centre": True}, {"attention": True}):
        fig = plotting.token_heatmap(first, labels, labels, title="first", **scale)
        blitted = plotting.figure_png_blit(
            fig, plotting.update_token_heatmap(fig, second, title="second")
        )
        full = plotting.figure_png(
            plotting.token_heatmap(second, labels, labels, title="second", **scale)
        )
        _assert_same_picture(blitted, full)
    with pytest.raises(ValueError, match="needs a figure made by token_heatmap"):
        plotting.update_token_heatmap(plotting.loss_curve([1.0, 2.0]), second)


def test_a_blitted_distribution_comparison_draws_what_a_full_redraw_draws():
    labels = [f"t{i}" for i in range(9)]
    g = torch.Generator().manual_seed(3)
    first = {k: torch.rand(9, generator=g).softmax(0) for k in ("model", "true")}
    second = {k: (3 * torch.rand(9, generator=g)).softmax(0) for k in ("model", "true")}
    fig = plotting.distribution_comparison(first, labels, title="first")
    blitted = plotting.figure_png_blit(
        fig, plotting.update_distribution_comparison(fig, second, title="second")
    )
    full = plotting.figure_png(plotting.distribution_comparison(second, labels, title="second"))
    _assert_same_picture(blitted, full)


def test_a_blitted_contribution_bars_draws_what_a_full_redraw_draws():
    names = ["embed", "L0H0", "L0H1", "L1H0"]
    first, second = torch.tensor([1.0, -0.5, 0.2, 2.0]), torch.tensor([-3.0, 0.1, 0.4, -0.2])
    fig = plotting.contribution_bars(first, names, title="first")
    for values, title in ((second, "second"), (first, "first")):
        changed = plotting.update_contribution_bars(fig, values, title=title)
        blitted = plotting.figure_png_blit(fig, changed)
        full = plotting.figure_png(plotting.contribution_bars(values, names, title=title))
        _assert_same_picture(blitted, full)
    with pytest.raises(ValueError, match="need 4 contributions"):
        plotting.update_contribution_bars(fig, torch.zeros(3))


def test_a_blitted_read_share_bars_draws_what_a_full_redraw_draws():
    baselines = {"L0H0": 0.25, "L0H1": 0.25, "embed": 0.8, "pos": 0.5}
    first = {"L0H0": 0.75, "L0H1": 0.1, "embed": 0.6, "pos": 0.3}
    second = {"L0H0": 0.2, "L0H1": 0.3, "embed": 0.95, "pos": None}  # positions do not enter
    fig = plotting.read_share_bars(first, baselines, title="first")
    for shares, title in ((second, "second"), (first, "first")):
        changed = plotting.update_read_share_bars(fig, shares, baselines, title=title)
        blitted = plotting.figure_png_blit(fig, changed)
        full = plotting.figure_png(plotting.read_share_bars(shares, baselines, title=title))
        _assert_same_picture(blitted, full)
    with pytest.raises(ValueError, match="the writers must stay"):
        plotting.update_read_share_bars(fig, {"L0H0": 0.1}, baselines)
    with pytest.raises(ValueError, match="same writers"):
        plotting.read_share_bars(first, {"L0H0": 0.25})


def test_phase_change_curves_draw_every_run_and_window():
    def run(name: str, scores: torch.Tensor) -> TrainingRecord:
        return TrainingRecord(name, None, [0, 10, 20], [3.0, 2.5, 2.0], [0.0, -0.2, -0.5],
                              [1.0, 0.8, 0.5], scores, scores, [], 1.0)  # fmt: skip

    runs = {"two": run("two", torch.rand(3, 2, 2)), "zero layers": run("zero", torch.empty(0))}
    fig = plotting.phase_change_curves(runs, windows={"two": (5, 15)})
    assert [len(ax.lines) for ax in fig.axes] == [2, 3, 2]  # the ICL axis has its zero line
    assert len(fig.axes[0].patches) == 1
    _png(fig)


def test_history_curves_draw_a_panel_per_score_and_a_line_per_mark():
    fig = plotting.history_curves([0, 100, 200], {"a": [0.1, 0.2, 0.4], "b": [0.0, -0.1, -0.3]},
                                  marks={"rise": 100, "fall": None}, title="t")  # fmt: skip
    assert len(fig.axes) == 2
    assert [len(ax.lines) for ax in fig.axes] == [2, 2]  # the curve and the one drawn mark
    assert fig.axes[0].lines[1].get_xdata()[0] == 100
    _png(fig)


def test_formation_steps_show_runs_that_never_formed():
    fig = plotting.formation_steps({"base": 150, "slow": None}, {"base": 150, "slow": 300})
    ax = fig.axes[0]
    assert [p.get_width() for p in ax.patches] == [150, 300]
    assert "none by step 300" in ax.texts[1].get_text()
    _png(fig)


def test_heatmap_colours_say_what_is_drawn():
    M = torch.rand(4, 4)
    for scale, cmap, clim in (
        ({}, plotting.DIVERGING_CMAP, (-M.max().item(), M.max().item())),
        ({"centre": False}, plotting.SEQUENTIAL_CMAP, (0.0, M.max().item())),
        ({"attention": True}, plotting.ATTENTION_CMAP, plotting.ATTENTION_SCALE),
    ):
        for fig in (plotting.token_heatmap(M, **scale),
                    plotting.side_by_side_heatmaps({"a": M, "b": M / 2}, **scale)):  # fmt: skip
            image = fig.axes[0].images[0]
            assert image.get_cmap().name == cmap
            assert image.get_clim() == pytest.approx(clim)


def test_attention_patterns_lays_out_a_row_per_layer():
    P = torch.rand(2, 3, 5, 5).softmax(-1)  # [layer, head, query_pos, key_pos]
    fig = plotting.attention_patterns(P, list("abcde"), title="T")
    shown = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in shown] == ["L0H0", "L0H1", "L0H2", "L1H0", "L1H1", "L1H2"]
    assert len(fig.axes) == 6 + 1  # and one colour bar
    assert [t.get_text() for t in shown[0].get_yticklabels()] == list("abcde")
    fig = plotting.attention_patterns({f"h{i}": P[0, 0] for i in range(5)}, columns=4)
    assert sum(ax.get_visible() for ax in fig.axes if ax.images) == 5  # a row of 4, then 1
    with pytest.raises(ValueError, match=r"\[layer, head, query_pos, key_pos\]"):
        plotting.attention_patterns(P[0])
    with pytest.raises(ValueError, match="labels has 2 labels"):
        plotting.attention_patterns(P, ["a", "b"])
    with pytest.raises(ValueError, match="one \\[query_pos, key_pos\\] shape"):
        plotting.attention_patterns({"a": P[0, 0], "b": P[0, 0, :3]})


def test_token_labels_thin_out_only_where_they_cannot_fit():
    letters = [chr(ord("a") + i % 26) for i in range(31)]
    fig = plotting.attention_patterns(torch.rand(2, 4, 31, 31), letters)  # 31 tokens, 4 across
    ax = fig.axes[0]
    every = int(re.search(r"every (\d+)\w\w token labelled", fig.get_supxlabel()).group(1))
    assert every >= 2 and len(ax.get_xticks()) == len(range(0, 31, every))
    fig = plotting.attention_patterns(torch.rand(2, 2, 16, 16), letters[:16])
    assert len(fig.axes[0].get_xticks()) == 16 and "every" not in fig.get_supxlabel()


def test_formation_steps_reveal_the_predictions():
    formed = {"base": 150, "faster": 100, "slower": 200, "never": None}
    trained = {"base": 150, "faster": 100, "slower": 200, "never": 300}
    said = {"faster": "earlier", "slower": "the same", "never": "never"}
    happened = {"faster": "earlier", "slower": "later", "never": "never"}
    fig = plotting.formation_steps(formed, trained, predictions=said, outcomes=happened)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "earlier ✔" in texts and "never ✔" in texts
    assert "the same ✘ (it was later)" in texts and "you said" in texts
    with pytest.raises(ValueError, match="need the outcomes of the same runs"):
        plotting.formation_steps(formed, trained, predictions={"faster": "sooner"})
    with pytest.raises(ValueError, match="runs other than"):
        plotting.formation_steps(formed, trained, predictions={"base": "the same"},
                                 outcomes=happened)  # fmt: skip


def test_update_state_lives_in_named_parts():
    fig = plotting.contribution_bars(torch.tensor([1.0, -0.5]), ["embed", "L0H0"])
    assert fig.parts is not None and not [a for a in vars(fig) if a.startswith("course_")]
    assert plotting.loss_curve([1.0]).parts is None  # a figure no widget updates
