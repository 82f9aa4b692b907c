"""circuitsvis attention views that work offline, loading circuitsvis's JavaScript once.

`circuitsvis.attention.attention_heads(...)` probes the internet before every display (a 1 s
timeout when offline) and then inlines its whole 1.3 MB JavaScript bundle into each view, with a
random element id. Here the same React component is rendered from the same bundle, but:
- nothing touches the network: the bundle is read from the installed circuitsvis package;
- the bundle is sent to the page once per kernel session, with the first view; later views are a
  few kilobytes of data and a call into the already loaded `window.CircuitsVis`;
- element ids are derived from the view's content, so the same input gives the same output.

If a later view is shown on a page that never received the bundle (the notebook was reopened and
only that cell was re-run), it says so and asks to run the first view's cell again; use
`reset()` to send the bundle with the next view.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from importlib.resources import files

import torch
from circuitsvis.utils.convert_props import convert_props
from torch import Tensor

_state = {"bundle_sent": False, "views": 0}


def bundle() -> str:
    """circuitsvis's JavaScript bundle, ready to go inside an inline <script> (the static site
    writes the same text to its one shared file)."""
    source = files("circuitsvis").joinpath("dist/cdn/iife.js").read_text(encoding="utf-8")
    # a literal "</script>" inside the inline script would end it early
    return source.replace("</script>", "<\\/script>")


def reset() -> None:
    """Send the JavaScript bundle again with the next view (e.g. after reloading the page)."""
    _state["bundle_sent"] = False
    _state["views"] = 0


class AttentionView:
    """An HTML view of attention patterns, displayed by Jupyter through `_repr_html_`."""

    def __init__(self, component: str, props: dict):
        self.component = component
        # The props go inside an inline <script>, where "</script>" or "<!--" in a token label
        # would end or derail the script. "<", ">" and "&" only occur inside JSON strings, where
        # their \\u escapes mean the same characters.
        self.props_json = (
            convert_props(props)
            .replace("<", "\\u003c")
            .replace(">", "\\u003e")
            .replace("&", "\\u0026")
        )
        digest = hashlib.sha256((component + self.props_json).encode()).hexdigest()[:12]
        # content hash + a per-session counter: unique on the page, and the same on every run
        _state["views"] += 1
        self.element_id = f"circuits-vis-{digest}-{_state['views']}"
        self._html: str | None = None

    def _repr_html_(self) -> str:
        # Decided on first display, then fixed: displaying the same view again gives the same HTML.
        if self._html is None:
            include_bundle = not _state["bundle_sent"]
            _state["bundle_sent"] = True
            self._html = self.html(include_bundle)
        return self._html

    def html(self, include_bundle: bool) -> str:
        script = f"<script>{bundle()}</script>\n" if include_bundle else ""
        missing = json.dumps(
            "The attention viewer's JavaScript is not loaded in this page: run the first cell "
            "that shows an attention view again (or Run All)."
        )
        return (
            f'{script}<div id="{self.element_id}" style="margin: 15px 0;"></div>\n'
            "<script>\n"
            "(function () {\n"
            f'  const el = document.getElementById("{self.element_id}");\n'
            '  if (typeof CircuitsVis === "undefined") {\n'
            f"    el.textContent = {missing};\n"
            "    return;\n"
            "  }\n"
            f'  CircuitsVis.render("{self.element_id}", CircuitsVis.{self.component}, '
            f"{self.props_json});\n"
            "})();\n"
            "</script>"
        )


def attention_heads(
    pattern: Tensor,
    tokens: Sequence[str],
    head_names: Sequence[str] | None = None,
) -> AttentionView:
    """Interactive view of several heads' patterns, `pattern` of shape `[head, dest, src]`
    (one sequence), with the sequence's tokens as labels. Same arguments as circuitsvis's
    `attention_heads`."""
    if not isinstance(pattern, Tensor):
        pattern = torch.as_tensor(pattern)
    if pattern.ndim != 3 or pattern.shape[1] != pattern.shape[2]:
        raise ValueError(
            f"pattern must have shape [head, dest, src] with dest == src, got {tuple(pattern.shape)}"
        )
    if len(tokens) != pattern.shape[-1]:
        raise ValueError(
            f"got {len(tokens)} tokens for a pattern over {pattern.shape[-1]} positions"
        )
    if head_names is not None and len(head_names) != pattern.shape[0]:
        raise ValueError(f"got {len(head_names)} head names for {pattern.shape[0]} heads")
    props = {
        # rounded: 3 decimals is finer than the eye can see, and keeps views small
        "attention": (pattern.detach().cpu().double() * 1000).round().div(1000).tolist(),
        "tokens": list(tokens),
        "attentionHeadNames": list(head_names) if head_names is not None else None,
        "maskUpperTri": True,
    }
    return AttentionView("AttentionHeads", props)
