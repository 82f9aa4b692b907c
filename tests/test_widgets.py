import pytest
import torch

from helpers import widgets
from helpers.data import BigramLanguage
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
    for control, value in ((earlier, 2), (later, 1), (kind, "V"), (kind, "Q")):
        control.value = value
        seen.add(_png(explorer))
    assert len(seen) == 5
    with pytest.raises(ValueError, match="needs a two-layer model, got 1"):
        widgets.composition_explorer(make_model(n_layers=1), [f"t{i}" for i in range(13)])


def test_attention_explorer_redraws():
    model = make_model()
    explorer = widgets.attention_explorer(
        model, random_tokens(model, batch=1), [f"t{i}" for i in range(13)]
    )
    (head,) = explorer.controls
    before = _png(explorer)
    head.value = (1, 2)
    assert _png(explorer) != before
    with pytest.raises(ValueError, match="longer than n_ctx"):
        widgets.attention_explorer(model, torch.zeros(1, 20, dtype=torch.long), ["x"] * 13)
