import json
import socket
import urllib.request

import pytest
import torch

from helpers import attention_views


@pytest.fixture(autouse=True)
def fresh_session():
    attention_views.reset()
    yield
    attention_views.reset()


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _pattern(n=5, heads=2):
    return torch.rand(heads, n, n, generator=torch.Generator().manual_seed(0)).softmax(-1)


def test_bundle_once_then_small_views_without_network(no_network):
    first = attention_views.attention_heads(_pattern(), list("abcde"))._repr_html_()
    second = attention_views.attention_heads(_pattern(), list("vwxyz"))._repr_html_()
    assert "var CircuitsVis" in first and len(first) > 1_000_000
    assert "var CircuitsVis" not in second and len(second) < 50_000
    assert "CircuitsVis.render(" in second and "CircuitsVis.AttentionHeads" in second
    assert first.count("</script>") == 2  # the bundle's own "</script>" is escaped


def test_output_is_deterministic_and_ids_unique():
    a = attention_views.attention_heads(_pattern(), list("abcde"))._repr_html_()
    b = attention_views.attention_heads(_pattern(), list("abcde"))._repr_html_()
    attention_views.reset()
    again = attention_views.attention_heads(_pattern(), list("abcde"))._repr_html_()
    assert a == again  # same session history, same output
    id_a = a.split('<div id="')[1].split('"')[0]
    id_b = b.split('<div id="')[1].split('"')[0]
    assert id_a.startswith("circuits-vis-") and id_a != id_b
    view = attention_views.attention_heads(_pattern(), list("abcde"))
    assert view._repr_html_() == view._repr_html_()  # re-displaying a view changes nothing


def test_tokens_cannot_break_out_of_the_script():
    html = attention_views.attention_heads(_pattern(n=2), ["</script>", "x"])._repr_html_()
    assert html.count("</script>") == 2


def test_missing_bundle_message():
    attention_views.attention_heads(_pattern(), list("abcde"))._repr_html_()
    html = attention_views.attention_heads(_pattern(), list("abcde"))._repr_html_()
    assert 'typeof CircuitsVis === "undefined"' in html and "Run All" in html


@pytest.mark.parametrize(
    "pattern, tokens, names, message",
    [
        (torch.rand(5, 5), list("abcde"), None, r"shape \[head, dest, src\]"),
        (torch.rand(2, 5, 4), list("abcde"), None, r"with dest == src, got \(2, 5, 4\)"),
        (torch.rand(2, 5, 5), list("abc"), None, r"got 3 tokens for a pattern over 5 positions"),
        (torch.rand(2, 5, 5), list("abcde"), ["h0"], r"got 1 head names for 2 heads"),
    ],
)
def test_bad_input(pattern, tokens, names, message):
    with pytest.raises(ValueError, match=message):
        attention_views.attention_heads(pattern, tokens, names)


@pytest.mark.parametrize("label", ["<!--<script>", "</script><script>alert(1)</script>", "a&b>c"])
def test_token_labels_are_escaped_inside_the_script(label):
    attention_views.attention_heads(_pattern(n=2), ["a", "b"])._repr_html_()  # the bundle's view
    html = attention_views.attention_heads(_pattern(n=2), [label, "x"])._repr_html_()
    assert html.count("<script>") == html.count("</script>") == 1 and "<!--" not in html
    props = html.split("CircuitsVis.AttentionHeads, ", 1)[1].split(");\n", 1)[0]
    assert not set("<>&") & set(props)
    assert json.loads(props)["tokens"] == [label, "x"]  # the page still shows the label as given
