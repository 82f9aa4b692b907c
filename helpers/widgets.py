"""Interactive explorers (ipywidgets). Thin: each wires controls to a function of
`helpers.plotting` and shows the figure as a PNG in an Output widget.

The figure goes into the Output widget through its `outputs` trait rather than `with out:`, which
keeps nbval's comparison clean and makes every widget testable in plain pytest: setting a
control's `.value` redraws synchronously, with no kernel or browser.

A drawing that fails shows its error inside the widget (ipywidgets would otherwise swallow it and
leave a stale figure on screen that no longer matches the controls).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence

import ipywidgets as widgets
import torch
from IPython.display import HTML, Image
from matplotlib.figure import Figure
from torch import Tensor

from helpers import circuits
from helpers.attribution import logit_contributions
from helpers.data import BOS
from helpers.models import AttnOnlyTransformer, as_index
from helpers.phase_change import TrainingRecord
from helpers.plotting import (
    circuit_panel,
    composition_panel,
    contribution_bars,
    distribution_comparison,
    figure_png,
    figure_png_blit,
    phase_change_panel,
    read_share_bars,
    token_heatmap,
    update_circuit_panel,
    update_composition_panel,
    update_contribution_bars,
    update_distribution_comparison,
    update_phase_change_panel,
    update_read_share_bars,
    update_token_heatmap,
)

# controls sized to their content, so that an explorer's controls sit on one line above its
# figure at JupyterLab's default width (ipywidgets' defaults are wider)
CONTROL_WIDTH = "16em"
TOGGLE_STYLE = {"button_width": "3.5em"}
ERROR_CLASS = "course-widget-error"  # the browser tests fail on any element of this class


class Explorer(widgets.VBox):
    """Controls on top, the figure below; `render()` redraws from the controls' values.

    If drawing fails, the error is shown in place of the figure and kept in `error`.
    """

    def __init__(
        self,
        controls: list[widgets.Widget],
        draw: Callable[[], Figure],
        update: Callable[[Figure], list] | None = None,
    ):
        """`update(figure)`, if given, changes the figure `draw()` made for the controls' new
        values and returns the artists it changed: only those are redrawn (`figure_png_blit`)."""
        self.output = widgets.Output(layout=widgets.Layout(min_height="200px"))
        self.controls = controls
        self.error: Exception | None = None
        self._draw, self._update, self._figure = draw, update, None
        super().__init__([widgets.HBox(controls), self.output])
        for control in controls:
            control.observe(lambda _change: self.render(), names="value")
        self.render()

    def render(self) -> None:
        try:
            if self._update is not None and self._figure is not None:
                png = figure_png_blit(self._figure, self._update(self._figure))
            else:
                figure = self._draw()
                png = figure_png(figure)
                self._figure = figure  # kept for `update`, and for checks of what is shown
            shown = Image(data=png, format="png")
            self.error = None
        except Exception as err:  # shown to the learner, who can pick other values
            self.error = err
            shown = HTML(
                f'<pre class="{ERROR_CLASS}" style="color: #b00; white-space: pre-wrap;">'
                f"This view could not be drawn for these values:\n"
                f"{html.escape(type(err).__name__)}: {html.escape(str(err))}</pre>"
            )
        self.output.outputs = ()
        self.output.append_display_data(shown)


def head_dropdown(
    model: AttnOnlyTransformer, layers: Sequence[int] | None = None, description: str = "head"
) -> widgets.Dropdown:
    """A dropdown of heads "L{layer}H{head}" whose value is (layer, head)."""
    if model.cfg.n_layers == 0:
        raise ValueError("a zero-layer model has no attention heads")
    layers = range(model.cfg.n_layers) if layers is None else layers
    options = [(f"L{layer}H{head}", (layer, head))
               for layer in layers for head in range(model.cfg.n_heads)]  # fmt: skip
    return widgets.Dropdown(options=options, value=options[0][1], description=description,
                            layout=widgets.Layout(width=CONTROL_WIDTH))  # fmt: skip


def token_dropdown(labels: Sequence[str], value: int, description: str) -> widgets.Dropdown:
    """A dropdown of tokens, shown by label, whose value is the token id."""
    return widgets.Dropdown(
        options=[(label, i) for i, label in enumerate(labels)],
        value=value,
        description=description,
        layout=widgets.Layout(width=CONTROL_WIDTH),
    )


def _check_model_and_labels(model: AttnOnlyTransformer, token_labels: Sequence[str]) -> None:
    if len(token_labels) != model.cfg.d_vocab:
        raise ValueError(f"need {model.cfg.d_vocab} token labels, got {len(token_labels)}")
    model.check_finite()


def logit_attribution_explorer(
    model: AttnOnlyTransformer, tokens: Tensor, token_labels: list[str]
) -> Explorer:
    """Chapter 00: pick a position and a next token; see each component's contribution to that
    token's logit at that position (embedding, every head), and their sum = the model's logit."""
    tokens = model.validate_tokens(tokens)[0]  # one sequence: [pos]
    _check_model_and_labels(model, token_labels)
    contributions, labels = logit_contributions(model, tokens)  # [component, 1, pos, d_vocab]
    contributions = contributions[:, 0]
    text = [token_labels[int(t)] for t in tokens]
    position = widgets.IntSlider(
        value=min(3, len(tokens) - 1), min=0, max=len(tokens) - 1, description="position",
        continuous_update=False,
    )  # fmt: skip
    next_token = token_dropdown(
        token_labels, int(tokens[min(position.value + 1, len(tokens) - 1)]), "next token"
    )

    def values() -> tuple:
        pos, tok = position.value, next_token.value
        context = " ".join(text[max(0, pos - 5) : pos + 1])
        title = f"logit of {token_labels[tok]!r} after …{context}  (position {pos})"
        return contributions[:, pos, tok], title

    def draw() -> Figure:
        values_, title = values()
        return contribution_bars(values_, labels, title=title, total_label="total = model's logit")

    def update(figure: Figure) -> list:  # the same components: bars, values, axis and title
        values_, title = values()
        return update_contribution_bars(figure, values_, title=title)

    return Explorer([position, next_token], draw, update)


def bigram_explorer(
    predicted: Tensor,
    true: Tensor,
    token_labels: list[str],
    names: tuple[str, str] = ("model", "true"),
    initial: int = 0,
    top_k: int | None = None,
    tokens: Sequence[int] | None = None,
) -> Explorer:
    """Chapter 01: pick a current token; compare the model's next-token distribution (a row of
    softmax(W_E @ W_U)) with the planted chain's transition probabilities. For a real vocabulary
    (chapter 06) `top_k` shows only the k next tokens likeliest under either distribution (a bar
    per token of a thousand is unreadable), and `tokens` limits the current tokens offered."""
    if predicted.shape != true.shape or predicted.shape[0] != len(token_labels):
        raise ValueError(
            f"predicted {tuple(predicted.shape)} and true {tuple(true.shape)} must both be "
            f"[{len(token_labels)}, {len(token_labels)}] (one row per current token)"
        )
    for name, table in (("predicted", predicted), ("true", true)):
        if not torch.isfinite(table).all():
            raise ValueError(f"the {name} probabilities hold NaN or infinite values")
    V = len(token_labels)
    if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k <= V):
        raise ValueError(f"top_k must be None or an int in 1..{V}, got {top_k!r}")
    offered = list(range(V)) if tokens is None else [int(t) for t in tokens]
    if not offered or not all(0 <= t < V for t in offered) or initial not in offered:
        raise ValueError(f"tokens must be token ids in 0..{V - 1} that include initial={initial!r}")
    current = widgets.Dropdown(
        options=[(token_labels[t], t) for t in offered], value=initial, description="current",
        layout=widgets.Layout(width=CONTROL_WIDTH),
    )  # fmt: skip

    def values() -> tuple:
        i = current.value
        tv = 0.5 * float((predicted[i] - true[i]).abs().sum())
        title = f"P(next | {token_labels[i]!r}); total variation distance {tv:.3f}"
        shown = (slice(None) if top_k is None
                 else torch.maximum(predicted[i], true[i]).topk(top_k).indices)  # fmt: skip
        labels = token_labels if top_k is None else [token_labels[t] for t in shown.tolist()]
        if top_k is not None:
            title += f" (the {top_k} likeliest next tokens)"
        return {names[0]: predicted[i][shown], names[1]: true[i][shown]}, labels, title

    def draw() -> Figure:
        distributions, labels, title = values()
        return distribution_comparison(distributions, labels, title=title)

    def update(figure: Figure) -> list:  # the same tokens: bars, probability axis and title
        distributions, _, title = values()
        return update_distribution_comparison(figure, distributions, title=title)

    # with top_k the next tokens shown change with the current token: each change redraws
    return Explorer([current], draw, update if top_k is None else None)


def circuit_explorer(
    model: AttnOnlyTransformer, token_labels: list[str], source: int = 1, k: int = 3
) -> Explorer:
    """Chapter 02: pick a head and a source token; see the head's full QK and OV circuits, its
    eigenvalue copying score, and the skip-trigrams "source … destination → output" read off
    the weights for that source."""
    head = head_dropdown(model)
    _check_model_and_labels(model, token_labels)
    token = token_dropdown(token_labels, as_index("source", source, model.cfg.d_vocab), "source")
    cache: dict[tuple[int, int], tuple] = {}

    def values() -> tuple:
        layer, h = head.value
        if (layer, h) not in cache:  # circuits per head, computed once
            cache[(layer, h)] = (
                circuits.full_qk_circuit(model, layer, h),
                circuits.full_ov_circuit(model, layer, h),
                circuits.copying_score(model, layer, h),
            )
        qk, ov, score = cache[(layer, h)]
        dests, outs = circuits.skip_trigrams(model, layer, h, token.value, k, ignore=[BOS])
        src = token_labels[token.value]
        trigrams = ", ".join(f"{token_labels[d]}" for d in dests)
        outputs = ", ".join(f"{token_labels[o]}" for o in outs)
        title = f"L{layer}H{h}: copying score {score:+.2f}.   {src!r} … [{trigrams}] → [{outputs}]"
        return qk, ov, title

    def draw() -> Figure:
        qk, ov, title = values()
        return circuit_panel(qk, ov, token_labels, source=token.value, title=title)

    def update(figure: Figure) -> list:  # same axes and labels: only the heatmaps, bars, title
        qk, ov, title = values()
        return update_circuit_panel(figure, qk, ov, source=token.value, title=title)

    return Explorer([head, token], draw, update)


def composition_explorer(model: AttnOnlyTransformer, token_labels: list[str]) -> Explorer:
    """Chapter 03: pick a layer-0 head, a layer-1 head and a kind of composition; see the pair's
    Q-, K- and V-composition scores against the random baseline, and the token × token matrix of
    the chosen composition (K: the K-composition term of the later head's QK circuit; Q: the
    Q-composition term; V: the virtual head's full OV circuit)."""
    if model.cfg.n_layers != 2:
        raise ValueError(f"composition_explorer needs a two-layer model, got {model.cfg.n_layers}")
    _check_model_and_labels(model, token_labels)
    earlier = head_dropdown(model, layers=[0], description="layer 0")
    later = head_dropdown(model, layers=[1], description="layer 1")
    kind = widgets.ToggleButtons(options=["K", "Q", "V"], value="K", description="matrix",
                                 style=TOGGLE_STYLE)  # fmt: skip
    scores = {k: circuits.composition_scores(model, k) for k in circuits.COMPOSITION_KINDS}
    baselines = {k: circuits.composition_baseline(model, k) for k in circuits.COMPOSITION_KINDS}
    finite = [float(v[v.isfinite()].max()) for v in scores.values() if v.isfinite().any()]
    ymax = max(finite, default=None)  # one scale for every pair, so that pairs compare

    def values() -> tuple:
        (_, e), (_, l_) = earlier.value, later.value
        pair = {k: float(scores[k][e, l_]) for k in circuits.COMPOSITION_KINDS}
        if undefined := [k for k, v in pair.items() if not math.isfinite(v)]:
            raise ValueError(
                f"the {'/'.join(undefined)}-composition of L0H{e} and L1H{l_} is undefined (0/0): "
                "one of the two heads' matrices is all zeros"
            )
        if kind.value == "K":
            M = circuits.k_composition_circuit(model, (0, e), (1, l_))
            names = (
                "K-composition term of the QK circuit",
                "key's previous token (moved by L0)",
                "query token",
            )
        elif kind.value == "Q":
            M = circuits.q_composition_circuit(model, (0, e), (1, l_))
            names = (
                "Q-composition term of the QK circuit",
                "key token",
                "token L0 moved to the query",
            )
        else:
            M = circuits.virtual_head_ov_circuit(model, (0, e), (1, l_))
            names = ("virtual head's full OV circuit", "output token", "source token")
        texts = dict(matrix_title=names[0], xlabel=names[1], ylabel=names[2],
                     title=f"L0H{e} → L1H{l_}")  # fmt: skip
        return pair, M, texts

    def draw() -> Figure:
        pair, M, texts = values()
        return composition_panel(pair, baselines, M, token_labels, ymax=ymax, **texts)

    def update(figure: Figure) -> list:  # same token labels: the rest is redrawn over them
        pair, M, texts = values()
        return update_composition_panel(figure, pair, baselines, M, **texts)

    return Explorer([earlier, later, kind], draw, update)


def memory_traffic_explorer(model: AttnOnlyTransformer) -> Explorer:
    """Chapter 03: pick a reader head (layer 1 or later) and one of its inputs (Q, K or V); see
    the share of that input's read weight inside every writer's subspace (the embedding, the
    positions where they enter, each earlier head) against the random share (claim 31)."""
    if model.cfg.n_layers < 2:
        raise ValueError(
            f"memory_traffic_explorer needs two layers or more (a layer-0 head reads only the "
            f"embedding), got {model.cfg.n_layers}"
        )
    model.check_finite()
    reader = head_dropdown(model, layers=range(1, model.cfg.n_layers), description="reader")
    kind = widgets.ToggleButtons(options=["K", "Q", "V"], value="K", description="input",
                                 style=TOGGLE_STYLE)  # fmt: skip
    table = {(r, k): circuits.read_shares(model, *r, k.lower())
             for _, r in reader.options for k in kind.options}  # fmt: skip
    baselines = circuits.random_shares(model, model.cfg.n_layers - 1)  # every possible writer
    writers = list(baselines)

    def values() -> tuple[dict, str]:
        found = table[(reader.value, kind.value)]
        layer, head = reader.value
        return (
            {w: found.get(w) for w in writers},
            f"what L{layer}H{head}'s W_{kind.value} reads: its share in each writer's subspace",
        )

    def draw() -> Figure:
        shares, title = values()
        return read_share_bars(shares, baselines, title=title)

    def update(figure: Figure) -> list:
        shares, title = values()
        return update_read_share_bars(figure, shares, baselines, title=title)

    return Explorer([reader, kind], draw, update)


def attention_explorer(
    model: AttnOnlyTransformer, tokens: Tensor, token_labels: list[str]
) -> Explorer:
    """Chapter 04: pick a head; see its attention pattern on one sequence (e.g. repeated random
    tokens), rows = query positions, columns = key positions, labelled with the tokens, in the
    course's attention colours on their fixed 0..1 scale (`plotting.ATTENTION_CMAP`)."""
    head = head_dropdown(model)
    _check_model_and_labels(model, token_labels)
    tokens = model.validate_tokens(tokens)[:1]
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    text = [token_labels[int(t)] for t in tokens[0]]

    def draw() -> Figure:
        layer, h = head.value
        return token_heatmap(
            cache[f"blocks.{layer}.attn.hook_pattern"][0, h], text, text, attention=True,
            title=f"L{layer}H{h} attention pattern", xlabel="key position (attended to)",
            ylabel="query position", ax_size=6,
        )  # fmt: skip

    def update(figure: Figure) -> list:  # the same tokens and scale: only the pattern changes
        layer, h = head.value
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, h]
        return update_token_heatmap(figure, pattern, title=f"L{layer}H{h} attention pattern")

    return Explorer([head], draw, update)


def phase_change_replay(record: TrainingRecord, tokens: Tensor) -> Explorer:
    """Chapter 05: a slider over the recorded steps of a training run; see every head's attention
    pattern on one sequence (e.g. repeated random tokens) at that step, the heads' scores so far,
    and the held-out loss and ICL score of the whole run with a cursor at that step. Every
    pattern is computed when the widget is made, so moving the slider only redraws."""
    if not record.snapshots:
        raise ValueError("the record kept no weights: record_training(..., snapshots=True)")
    if record.cfg.n_layers == 0:
        raise ValueError("a zero-layer model has no attention patterns to replay")
    model = record.model_at(0)
    tokens = model.validate_tokens(tokens)[:1]
    patterns = []
    for snapshot in record.snapshots:
        model.load_state_dict(snapshot)
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
        patterns.append(
            torch.stack(
                [
                    cache[f"blocks.{layer}.attn.hook_pattern"][0]
                    for layer in range(record.cfg.n_layers)
                ]
            )  # fmt: skip
        )
    patterns = torch.stack(patterns)  # [record, layer, head, query, key]
    step = widgets.IntSlider(
        value=len(record.steps) - 1, min=0, max=len(record.steps) - 1, description="record",
        continuous_update=False,
    )  # fmt: skip

    def title() -> str:
        i = step.value
        best = float(record.prefix_matching[i, -1].max())
        name = record.name or "training"
        if record.source == "recorded":  # loaded from data/, not trained in this session
            name += " (recorded)"
        return (f"{name}: step {record.steps[i]}, held-out loss "
                f"{record.heldout_loss[i]:.2f}, ICL {record.icl[i]:+.2f}, best prefix-matching "
                f"{best:.2f}")  # fmt: skip

    def draw() -> Figure:
        return phase_change_panel(
            record.steps, patterns, record.prefix_matching, record.previous_token,
            record.heldout_loss, record.icl, step.value, title=title(),
        )  # fmt: skip

    def update(figure: Figure) -> list:
        return update_phase_change_panel(figure, step.value, title=title())

    return Explorer([step], draw, update)
