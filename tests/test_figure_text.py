"""Every figure and widget of the course is legible where the course is read: at JupyterLab's
default width no text is smaller than `plotting.MIN_TEXT_PX` (read back from the PNG, as a
notebook would show it), no figure is scaled down, and the token labels of an axis do not
overlap. Each figure is drawn at the largest size the notebooks use, on the course's models."""

import base64
import io

import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from helpers import circuits, plotting, recipes, widgets
from helpers.attribution import logit_contributions
from helpers.data import induction_probe
from helpers.phase_change import TrainingRecord


def _record(cfg, n_layers: int, snapshots=(), n: int = 31, seed: int = 0) -> TrainingRecord:
    """A record of `n` steps, 20 apart, with random scores (and the given weights)."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, n_layers, 4, generator=g) if n_layers else torch.empty(0)
    return TrainingRecord("two layers", cfg, list(range(0, 20 * n, 20)),
                          [3.9 - 2 * i / n for i in range(n)], [-0.05 * i for i in range(n)],
                          [1.0] * n, scores, scores.flip(0), [], 1.0, list(snapshots))  # fmt: skip


@pytest.fixture(scope="module")
def course() -> dict:
    """The course's checkpoints and what the notebooks draw from them."""
    d = {name: recipes.load(name, progress=False)
         for name in ("copying_2l", "bigram_0l", "skip_trigrams_1l", "induction_2l")}  # fmt: skip
    copying, skip, induction = d["copying_2l"], d["skip_trigrams_1l"], d["induction_2l"]
    tokens = copying.language.sample(1, 16, generator=torch.Generator().manual_seed(0))
    _, cache = copying.model.run_with_cache(tokens)
    d["copying_tokens"] = tokens
    d["copying_text"] = [copying.language.token_labels[t] for t in tokens[0]]
    d["copying_patterns"] = torch.stack(
        [cache[f"blocks.{i}.attn.hook_pattern"][0] for i in range(2)]
    )
    rr = induction_probe(52, batch_size=1)  # 31 tokens
    _, cache = induction.model.run_with_cache(rr)
    d["probe"] = rr
    d["probe_text"] = [induction.language.token_labels[t] for t in rr[0]]
    d["patterns"] = torch.stack([cache[f"blocks.{i}.attn.hook_pattern"][0] for i in range(2)])
    d["qk"] = circuits.full_qk_circuit(skip.model, 0, 2)
    d["ov"] = circuits.full_ov_circuit(skip.model, 0, 2)
    d["k_composition"] = circuits.k_composition_circuit(induction.model, (0, 1), (1, 2))
    return d


def _labels(course, name: str) -> list[str]:
    return course[name].language.token_labels


def _composition_panel(c):
    baselines = {k: (0.12, 0.01) for k in "QKV"}
    return plotting.composition_panel(
        {"Q": 0.05, "K": 0.4, "V": 0.04}, baselines, c["k_composition"],
        _labels(c, "induction_2l"), matrix_title="K-composition term of the QK circuit",
        xlabel="key's previous token (moved by L0)", ylabel="query token", title="L0H1 → L1H2",
    )  # fmt: skip


def _side_by_side_of_three(c):
    letters = _labels(c, "bigram_0l")[1:]
    table = circuits.row_centred(c["bigram_0l"].language.log_probs()[1:, 1:])
    return plotting.side_by_side_heatmaps(
        {"planted": table, "Eckart-Young rank 8": table.T, "trained": -table}, letters, letters,
        xlabel="next", ylabel="current", suptitle="row-centred logit tables",
    )  # fmt: skip


# Every plotting function at the largest size the notebooks use it.
FIGURES = {
    "loss_curve": lambda c: plotting.loss_curve(
        c["copying_2l"].history["loss"], reference_lines={"uniform": 3.26, "best": 1.2}
    ),
    "attention_patterns, 2 layers x 2 heads, 16 tokens": lambda c: plotting.attention_patterns(
        c["copying_patterns"], c["copying_text"], title="attention patterns"
    ),
    "attention_patterns, 2 layers x 4 heads, 31 tokens": lambda c: plotting.attention_patterns(
        c["patterns"], c["probe_text"], title="attention patterns"
    ),
    "attention_patterns, 1 + 3 heads, 31 tokens": lambda c: plotting.attention_patterns(
        {"L0H1": c["patterns"][0, 1], **{f"L1H{h}": c["patterns"][1, h] for h in range(3)}},
        c["probe_text"],
    ),
    "contribution_bars": lambda c: plotting.contribution_bars(
        *(lambda t: (t[0][:, 0, 9, 3], t[1]))(
            logit_contributions(c["copying_2l"].model, c["copying_tokens"])
        ),
        total_label="total = model's logit",
    ),  # fmt: skip
    "side_by_side_heatmaps, W_E 27 x 32": lambda c: plotting.side_by_side_heatmaps(
        {"W_E": c["copying_2l"].model.W_E.detach(), "W_E R": c["copying_2l"].model.W_E.detach()},
        _labels(c, "copying_2l"),
        None,
        xlabel="residual stream coordinate",
        ylabel="token",
        suptitle="one model, two bases of its residual stream",
    ),  # fmt: skip
    "side_by_side_heatmaps, 3 x 26 tokens": _side_by_side_of_three,
    "side_by_side_heatmaps, attention from positions": lambda c: plotting.side_by_side_heatmaps(
        {
            "A": circuits.positional_pattern(c["skip_trigrams_1l"].model, 0, 1),
            "B": circuits.positional_pattern(c["induction_2l"].model, 0, 3)[:24, :24],
        },
        attention=True,
        xlabel="key position",
        ylabel="query position",
        suptitle="positions",
    ),  # fmt: skip
    "token_heatmap, probabilities 26 tokens": lambda c: plotting.token_heatmap(
        c["bigram_0l"].language.transition_matrix,
        _labels(c, "bigram_0l")[1:],
        _labels(c, "bigram_0l")[1:],
        centre=False,
        title="P(next | current)",
        xlabel="next",
        ylabel="current",
    ),  # fmt: skip
    "token_heatmap, 43 tokens": lambda c: plotting.token_heatmap(
        c["ov"],
        _labels(c, "skip_trigrams_1l"),
        _labels(c, "skip_trigrams_1l"),
        title="L0H2: full OV circuit",
        xlabel="output token",
        ylabel="source token",
        colorbar_label="logit change",
        ax_size=7,
    ),  # fmt: skip
    "token_heatmap, 53 tokens": lambda c: plotting.token_heatmap(
        c["k_composition"],
        _labels(c, "induction_2l"),
        _labels(c, "induction_2l"),
        title="K-composition term",
        xlabel="key's previous token",
        ylabel="query token",
        ax_size=6,
    ),  # fmt: skip
    "token_heatmap, attention 31 tokens": lambda c: plotting.token_heatmap(
        c["patterns"][1, 2],
        c["probe_text"],
        c["probe_text"],
        attention=True,
        title="L1H2 attention pattern",
        xlabel="key position",
        ylabel="query position",
        ax_size=6,
    ),  # fmt: skip
    "scatter_comparison": lambda c: plotting.scatter_comparison(
        torch.randn(26, 26),
        torch.randn(26, 26),
        xlabel="planted log P, row-centred",
        ylabel="W_E @ W_U, row-centred",
        title="zero-layer model vs planted truth",
    ),  # fmt: skip
    "distribution_comparison, 26 tokens": lambda c: plotting.distribution_comparison(
        {
            "model": c["bigram_0l"].language.transition_matrix[0],
            "true": c["bigram_0l"].language.transition_matrix[1],
        },
        _labels(c, "bigram_0l")[1:],
        title="P(next | 'a')",
    ),  # fmt: skip
    "circuit_panel, 43 tokens": lambda c: plotting.circuit_panel(
        c["qk"], c["ov"], _labels(c, "skip_trigrams_1l"), source=1, title="L0H2, source 'keep'"
    ),
    "composition_panel, 53 tokens": _composition_panel,
    "horizontal_bars": lambda c: plotting.horizontal_bars(
        {"direct path": 0.5, "layer-0 heads": 0.02, "layer-1 heads": 1.2, "K-composition": 0.9},
        xlabel="marginal loss reduction (nats / token)",
        title="term importance",
    ),  # fmt: skip
    "read_share_bars": lambda c: plotting.read_share_bars(
        (s := circuits.read_shares(c["induction_2l"].model, 1, 2, "k")),
        {w: circuits.random_shares(c["induction_2l"].model, 1)[w] for w in s},
        title="what L1H2's W_K reads",
    ),  # fmt: skip
    "loss_by_position": lambda c: plotting.loss_by_position(
        {"two layers": torch.rand(30), "one layer (control)": torch.rand(30)},
        first_position=2,
        boundaries=[11.5, 21.5],
        title="loss per position on repeated random tokens",
    ),  # fmt: skip
    "phase_change_curves, 3 runs": lambda c: plotting.phase_change_curves(
        {
            "two layers": _record(None, 2),
            "one layer": _record(None, 1, seed=1),
            "one layer, smeared keys": _record(None, 1, seed=2),
        },
        windows={"two layers": (200, 300)},
    ),  # fmt: skip
    "history_curves, 2 scores, 81 records": lambda c: plotting.history_curves(
        list(range(0, 8100, 100)),
        {
            "best prefix matching (natural repeats)": torch.rand(81).tolist(),
            "ICL score over bands (nats)": (-torch.rand(81)).tolist(),
        },
        marks={"prefix matching rises": 1200, "ICL falls": 1100},
        title="code_2l: what formed, and when (recorded)",
    ),  # fmt: skip
    "phase_change_panel, 2 x 4 heads, 31 tokens": lambda c: plotting.phase_change_panel(
        list(range(0, 620, 20)),
        c["patterns"][None].repeat(31, 1, 1, 1, 1),
        torch.rand(31, 2, 4),
        torch.rand(31, 2, 4),
        [2.0] * 31,
        [-0.5] * 31,
        20,
        title="two layers: step 400, held-out loss 2.31, ICL -1.02, best prefix-matching 0.91",
    ),  # fmt: skip
    "formation_steps, with predictions": lambda c: plotting.formation_steps(
        {
            "base": 150,
            "half the learning rate": 225,
            "a fifth of the learning rate": None,
            "segments of 4-8 tokens": 125,
            "standard positions": 150,
            "smeared keys": 75,
            "one layer": None,
            "one layer, smeared keys": 100,
        },
        {
            "base": 150,
            "half the learning rate": 225,
            "a fifth of the learning rate": 300,
            "segments of 4-8 tokens": 125,
            "standard positions": 150,
            "smeared keys": 75,
            "one layer": 300,
            "one layer, smeared keys": 100,
        },
        title="8 runs",
        predictions={
            "half the learning rate": "later",
            "one layer": "never",
            "standard positions": "earlier",
        },
        outcomes={
            "half the learning rate": "later",
            "one layer": "never",
            "standard positions": "the same",
        },
    ),  # fmt: skip
}


def _overlapping_tick_labels(fig: Figure) -> list[tuple[str, str]]:
    """Neighbouring tick labels of any axis whose boxes overlap, as last drawn."""
    renderer = fig.canvas.get_renderer()
    found = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            shown = [t for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]
            boxes = [t.get_window_extent(renderer) for t in shown]
            found += [(a.get_text(), b.get_text())
                      for a, b, box, after in zip(shown, shown[1:], boxes, boxes[1:], strict=False)
                      if box.overlaps(after)]  # fmt: skip
    return found


def _assert_legible(png: bytes, what: str) -> None:
    width = Image.open(io.BytesIO(png)).width
    assert width <= plotting.DISPLAY_WIDTH_PX, f"{what}: {width} px wide, scaled down in JupyterLab"
    shown = plotting.displayed_text_px(png)
    assert shown is not None and shown >= plotting.MIN_TEXT_PX, f"{what}: text of {shown} px"


@pytest.mark.parametrize("name", FIGURES)
def test_every_figure_is_legible_at_the_default_width(course, name):
    fig = FIGURES[name](course)
    _assert_legible(plotting.figure_png(fig), name)
    assert not _overlapping_tick_labels(fig)
    assert not plotting.texts_cut_off(fig), name
    assert not [a for a in vars(fig) if a.startswith("course_")]  # state lives in fig.parts


def _replay_record(course) -> TrainingRecord:
    """31 records of induction_2l's shape, its weights scaled up record by record."""
    model = course["induction_2l"].model
    weights = model.state_dict()
    snapshots = [{k: v * (0.2 + 0.8 * i / 30) for k, v in weights.items()} for i in range(31)]
    return _record(model.cfg, 2, snapshots)


# Every widget built as its notebook builds it.
WIDGETS = {
    "logit_attribution_explorer": lambda c: widgets.logit_attribution_explorer(
        c["copying_2l"].model, c["copying_tokens"], _labels(c, "copying_2l")
    ),
    "bigram_explorer": lambda c: widgets.bigram_explorer(
        torch.full((26, 26), 1 / 26),
        c["bigram_0l"].language.transition_matrix,
        _labels(c, "bigram_0l")[1:],
    ),  # fmt: skip
    "bigram_explorer, the 20 likeliest of a real vocabulary": lambda c: _real_text_bigrams(),
    "circuit_explorer": lambda c: widgets.circuit_explorer(
        c["skip_trigrams_1l"].model,
        _labels(c, "skip_trigrams_1l"),
        source=c["skip_trigrams_1l"].language.token_to_id["keep"],
    ),  # fmt: skip
    "composition_explorer": lambda c: widgets.composition_explorer(
        c["induction_2l"].model, _labels(c, "induction_2l")
    ),
    "memory_traffic_explorer": lambda c: widgets.memory_traffic_explorer(c["induction_2l"].model),
    "attention_explorer": lambda c: widgets.attention_explorer(
        c["induction_2l"].model, c["probe"][:1], _labels(c, "induction_2l")
    ),
    "phase_change_replay": lambda c: widgets.phase_change_replay(
        _replay_record(c), induction_probe(52, batch_size=1, seed=1)
    ),
}


def _real_text_bigrams():
    """Chapter 06's bigram explorer: the prose model against the corpus, over readable words."""
    from helpers.evals import real_text

    zero = recipes.load("prose_0l", progress=False)
    prose = zero.language
    readable = real_text.readable_tokens(prose)[:40]  # the dropdown's options, fewer for speed
    table = real_text.smoothed_bigram_log_probs(real_text.bigram_counts(prose)).exp()
    predicted = circuits.direct_path(zero.model).softmax(-1)
    return widgets.bigram_explorer(predicted, table, prose.token_labels, names=("model", "corpus"),
                                   initial=readable[0], top_k=20, tokens=readable)  # fmt: skip


def _shown_png(explorer) -> bytes:
    assert explorer.error is None, explorer.error
    (output,) = explorer.output.outputs
    return base64.b64decode(output["data"]["image/png"])


@pytest.mark.parametrize("name", WIDGETS)
def test_every_widget_is_legible_after_every_change(course, name):
    explorer = WIDGETS[name](course)
    _assert_legible(_shown_png(explorer), f"{name}, first drawing")
    assert not plotting.texts_cut_off(explorer._figure), name
    for control in explorer.controls:
        options = getattr(control, "options", None)
        values = [o[1] if isinstance(o, tuple) else o for o in options] if options else None
        for _ in range(2):  # blitted frames, the next value each time
            if values:
                control.value = values[(values.index(control.value) + 1) % len(values)]
            else:
                control.value = control.min + (control.value - control.min + 1) % (
                    control.max - control.min + 1
                )
            _assert_legible(_shown_png(explorer), f"{name}, {control.description} changed")


def test_the_check_finds_text_too_small():
    small = plotting.CourseFigure(figsize=(4, 3))
    small.add_subplot().set_title("5 pt", fontsize=5)
    assert plotting.smallest_text_px(small) == pytest.approx(5 * 100 / 72)
    assert plotting.displayed_text_px(plotting.figure_png(small)) < plotting.MIN_TEXT_PX
    wide = plotting.CourseFigure(figsize=(20, 3))  # 2000 px, shown at DISPLAY_WIDTH_PX
    wide.add_subplot().set_xlabel("7 pt", fontsize=7)
    assert plotting.smallest_text_px(wide) == pytest.approx(
        7 * 100 / 72 * plotting.DISPLAY_WIDTH_PX / 2000
    )
    png = plotting.figure_png(wide)
    assert plotting.png_min_text_px(png) == pytest.approx(7 * 100 / 72, abs=0.01)  # native
    assert plotting.displayed_text_px(png) < plotting.MIN_TEXT_PX
    assert plotting.displayed_text_px(png, display_width=2000) > plotting.MIN_TEXT_PX


def test_only_shown_text_counts():
    fig = plotting.CourseFigure(figsize=(4, 3))
    ax = fig.add_subplot()
    ax.set_title("")  # empty
    ax.text(0.5, 0.5, "hidden", fontsize=4).set_visible(False)
    ax.set_xticks([0, 0.5], ["0", "0.5"], fontsize=10)
    ax.set_yticks([0, 5], ["0", "outside the view"], fontsize=12)
    ax.get_yticklabels()[1].set_fontsize(4)
    ax.set(xlim=(0, 1), ylim=(0, 1))  # the tick at 5 is not drawn
    assert plotting.smallest_text_px(fig) == pytest.approx(10 * 100 / 72)
    assert plotting.smallest_text_px(plotting.CourseFigure()) == float("inf")  # no text at all
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "white").save(buffer, format="png")
    assert plotting.png_min_text_px(buffer.getvalue()) is None
    assert plotting.displayed_text_px(buffer.getvalue()) is None


def test_a_blitted_frame_records_what_a_full_drawing_records():
    labels = [f"t{i}" for i in range(7)]
    qk, ov = torch.randn(7, 7, generator=torch.Generator().manual_seed(0)).unbind(0)[:2]
    qk, ov = torch.outer(qk, ov), torch.outer(ov, qk)
    fig = plotting.circuit_panel(qk, ov, labels, source=1, title="first")
    full = plotting.png_min_text_px(plotting.figure_png(fig))
    for qk_now, source in ((ov, 2), (ov, 3)):  # new circuits, then only another source
        changed = plotting.update_circuit_panel(fig, qk_now, ov, source=source, title="next")
        assert plotting.png_min_text_px(plotting.figure_png_blit(fig, changed)) == full


def _attention_images(fig: Figure) -> list:
    return [image for ax in fig.axes for image in ax.images]


@pytest.mark.parametrize(
    "draw",
    [
        lambda P, text: plotting.token_heatmap(P[1, 0], text, text, attention=True),
        lambda P, text: plotting.side_by_side_heatmaps(
            {"a": P[0, 0], "b": P[1, 1]}, attention=True
        ),
        lambda P, text: plotting.attention_patterns(P, text),
        lambda P, text: plotting.phase_change_panel(
            [0, 10],
            torch.stack([P, P]),
            torch.rand(2, 2, 4),
            torch.rand(2, 2, 4),
            [1, 1],
            [0, 0],
            1,
        ),
    ],
    ids=["token_heatmap", "side_by_side_heatmaps", "attention_patterns", "phase_change_panel"],
)
def test_attention_is_drawn_in_one_colour_map_on_a_fixed_scale(draw):
    P = torch.rand(2, 4, 6, 6, generator=torch.Generator().manual_seed(0)).tril()
    images = _attention_images(draw(P / P.sum(-1, keepdim=True), list("abcdef")))
    assert images and all(image.get_cmap().name == plotting.ATTENTION_CMAP for image in images)
    assert all(image.get_clim() == plotting.ATTENTION_SCALE for image in images)
