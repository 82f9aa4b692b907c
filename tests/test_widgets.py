import pytest
import torch

from helpers import widgets
from helpers.data import BigramLanguage
from helpers.plotting import ATTENTION_CMAP, ATTENTION_SCALE
from tests.conftest import make_model, random_tokens


def _png(explorer):
    (output,) = explorer.output.outputs
    return output["data"]["image/png"]


def test_logit_attribution_explorer_redraws_on_every_control():
    model = make_model()
    labels = [f"t{i}" for i in range(13)]
    explorer = widgets.logit_attribution_explorer(model, random_tokens(model, batch=1), labels)
    position, next_token = explorer.controls
    first = _png(explorer)
    position.value = 7
    second = _png(explorer)
    next_token.value = (next_token.value + 1) % 13
    third = _png(explorer)
    assert len({first, second, third}) == 3


def test_logit_attribution_explorer_bad_input():
    model = make_model()
    with pytest.raises(ValueError, match="need 13 token labels, got 2"):
        widgets.logit_attribution_explorer(model, random_tokens(model, batch=1), ["a", "b"])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        widgets.logit_attribution_explorer(model, torch.tensor([[0, 40]]), ["x"] * 13)


def test_bigram_explorer_redraws():
    lang = BigramLanguage(n_states=5, seed=1)
    predicted = torch.full((5, 5), 0.2, dtype=torch.float64)
    explorer = widgets.bigram_explorer(predicted, lang.transition_matrix, list("abcde"))
    (current,) = explorer.controls
    before = _png(explorer)
    current.value = 3
    assert _png(explorer) != before
    with pytest.raises(ValueError, match=r"must both be \[4, 4\]"):
        widgets.bigram_explorer(predicted, lang.transition_matrix, list("abcd"))


def test_circuit_explorer_redraws_for_head_and_source():
    model = make_model(n_layers=2, n_heads=2)
    labels = [f"t{i}" for i in range(13)]
    explorer = widgets.circuit_explorer(model, labels, source=3)
    head, source = explorer.controls
    seen = {_png(explorer)}
    head.value = (1, 1)
    seen.add(_png(explorer))
    source.value = 5
    seen.add(_png(explorer))
    assert len(seen) == 3


def test_circuit_explorer_bad_input():
    with pytest.raises(ValueError, match="need 13 token labels, got 3"):
        widgets.circuit_explorer(make_model(), ["a", "b", "c"])
    with pytest.raises(ValueError, match="zero-layer model has no attention heads"):
        widgets.circuit_explorer(make_model(n_layers=0), [f"t{i}" for i in range(13)])


def test_composition_explorer_redraws_for_every_control():
    model = make_model()
    explorer = widgets.composition_explorer(model, [f"t{i}" for i in range(13)])
    earlier, later, kind = explorer.controls
    seen = {_png(explorer)}
    for control, value in ((earlier, (0, 2)), (later, (1, 1)), (kind, "V"), (kind, "Q")):
        control.value = value
        seen.add(_png(explorer))
    assert len(seen) == 5
    with pytest.raises(ValueError, match="needs a two-layer model, got 1"):
        widgets.composition_explorer(make_model(n_layers=1), [f"t{i}" for i in range(13)])


def test_memory_traffic_explorer_redraws_for_every_control():
    model = make_model()
    explorer = widgets.memory_traffic_explorer(model)
    reader, kind = explorer.controls
    assert [label for label, _ in reader.options] == ["L1H0", "L1H1", "L1H2"]  # readers only
    seen = {_png(explorer)}
    for control, value in ((reader, (1, 2)), (kind, "V"), (kind, "Q")):
        control.value = value
        seen.add(_png(explorer))
    assert len(seen) == 4 and explorer.error is None
    with pytest.raises(ValueError, match="needs two layers or more"):
        widgets.memory_traffic_explorer(make_model(n_layers=1))


def test_attention_explorer_redraws():
    model = make_model()
    explorer = widgets.attention_explorer(
        model, random_tokens(model, batch=1), [f"t{i}" for i in range(13)]
    )
    (head,) = explorer.controls
    before = _png(explorer)
    head.value = (1, 2)
    assert _png(explorer) != before
    (image,) = explorer._figure.axes[0].images  # in the course's attention colours
    assert (image.get_cmap().name, image.get_clim()) == (ATTENTION_CMAP, ATTENTION_SCALE)
    with pytest.raises(ValueError, match="longer than n_ctx"):
        widgets.attention_explorer(model, torch.zeros(1, 20, dtype=torch.long), ["x"] * 13)


def test_a_failing_drawing_is_shown_in_the_widget_not_swallowed():
    model = make_model()
    with torch.no_grad():
        model.blocks[1].attn.W_Q[1] = 0.0  # L1H1 attends uniformly: its QK composition is 0/0
    explorer = widgets.composition_explorer(model, [f"t{i}" for i in range(13)])
    earlier, later, kind = explorer.controls
    assert explorer.error is None
    later.value = (1, 1)
    assert explorer.error is not None
    (output,) = explorer.output.outputs
    html = output["data"]["text/html"]
    assert widgets.ERROR_CLASS in html and "could not be drawn for these values" in html
    later.value = (1, 0)  # other values draw again
    assert explorer.error is None and "image/png" in explorer.output.outputs[0]["data"]


@pytest.mark.parametrize(
    "build",
    [
        lambda m: widgets.circuit_explorer(m, [f"t{i}" for i in range(13)]),
        lambda m: widgets.composition_explorer(m, [f"t{i}" for i in range(13)]),
        widgets.memory_traffic_explorer,
        lambda m: widgets.attention_explorer(
            m, random_tokens(m, batch=1), [f"t{i}" for i in range(13)]
        ),
        lambda m: widgets.logit_attribution_explorer(
            m, random_tokens(m, batch=1), [f"t{i}" for i in range(13)]
        ),
    ],
)
def test_widgets_refuse_non_finite_weights_up_front(build):
    model = make_model()
    with torch.no_grad():
        model.blocks[0].attn.W_V[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="holds NaN values"):
        build(model)


def test_dropdown_helpers():
    model = make_model()
    heads = widgets.head_dropdown(model)
    assert heads.value == (0, 0) and [label for label, _ in heads.options][-1] == "L1H2"
    assert [v for _, v in widgets.head_dropdown(model, layers=[1]).options] == [
        (1, 0),
        (1, 1),
        (1, 2),
    ]
    tokens = widgets.token_dropdown(["a", "b", "c"], 2, "token")
    assert tokens.value == 2 and tokens.label == "c"
    with pytest.raises(ValueError, match=r"source must be an int in 0..12, got 13"):
        widgets.circuit_explorer(model, [f"t{i}" for i in range(13)], source=13)


def test_bigram_explorer_shows_the_likeliest_next_tokens_of_a_large_vocabulary():
    V = 300
    generator = torch.Generator().manual_seed(0)
    predicted = torch.randn(V, V, generator=generator).softmax(-1)
    true = torch.randn(V, V, generator=generator).softmax(-1)
    labels = [f"w{i}" for i in range(V)]
    explorer = widgets.bigram_explorer(predicted, true, labels, initial=7, top_k=12,
                                       tokens=[7, 8, 9])  # fmt: skip
    (current,) = explorer.controls
    assert [value for _, value in current.options] == [7, 8, 9]
    shown = [t.get_text() for t in explorer._figure.axes[0].get_xticklabels() if t.get_text()]
    expected = torch.maximum(predicted[7], true[7]).topk(12).indices.tolist()
    assert (
        set(shown) <= {labels[t] for t in expected} and len(explorer._figure.axes[0].patches) == 24
    )
    before = _png(explorer)
    current.value = 9
    assert _png(explorer) != before and explorer.error is None
    with pytest.raises(ValueError, match=r"top_k must be None or an int in 1..300"):
        widgets.bigram_explorer(predicted, true, labels, top_k=0)
    with pytest.raises(ValueError, match="that include initial=0"):
        widgets.bigram_explorer(predicted, true, labels, tokens=[5])
