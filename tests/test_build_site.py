"""`course.py site`, without executing notebooks: widgets become their last drawing, the
circuitsvis bundle becomes one shared file, links between notebooks become links between pages,
and the page template asks nothing of the internet. (tests/browser/test_site.py builds the whole
site and opens it in Chromium, under `slow`.)"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("build_site", ROOT / "tools" / "build_site.py")
build_site = importlib.util.module_from_spec(spec)
sys.modules["build_site"] = build_site
spec.loader.exec_module(build_site)

PNG = "iVBORw0KGgo="  # the output area's image, base64 as nbformat keeps it


def widget_state() -> dict:
    """A saved Explorer (a VBox of an HBox of controls, and an Output) and a tqdm bar."""
    return {
        "box": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_row", "IPY_MODEL_out"]}},
        "row": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_dd", "IPY_MODEL_sl"]}},
        "dd": {"model_name": "DropdownModel", "state": {
            "description": "head", "_options_labels": ["L0H0", "L1H3"], "index": 1}},
        "sl": {"model_name": "IntSliderModel", "state": {"description": "record", "value": 7}},
        "out": {"model_name": "OutputModel", "state": {"outputs": [
            {"output_type": "display_data", "data": {"image/png": PNG}, "metadata": {}}]}},
        "bar": {"model_name": "HBoxModel", "state": {"children": [
            "IPY_MODEL_lbl", "IPY_MODEL_prog", "IPY_MODEL_txt"]}},
        "lbl": {"model_name": "HTMLModel", "state": {"value": "training: 100%"}},
        "prog": {"model_name": "FloatProgressModel", "state": {"value": 600.0, "max": 600.0}},
        "txt": {"model_name": "HTMLModel", "state": {"value": " 600/600 [00:17&lt;00:00]"}},
    }  # fmt: skip


def test_a_widget_becomes_its_last_drawing_under_its_controls_values():
    still = build_site.widget_still("box", widget_state())
    assert f'src="data:image/png;base64,{PNG}"' in still
    assert "head: L1H3" in still and "record: 7" in still
    assert still.startswith('<figure class="course-widget-still">')


def test_a_progress_bar_becomes_a_bar_with_its_text_escaped_once():
    still = build_site.widget_still("bar", widget_state())
    assert '<progress value="600.0" max="600.0"></progress>' in still
    assert "training: 100%" in still and "[00:17&lt;00:00]" in still and "&amp;lt;" not in still
    # a bar closed before its end (tqdm's leave=False) is gone in JupyterLab: gone here too
    state = widget_state()
    state["prog"]["state"]["value"] = 596.0
    assert build_site.widget_still("bar", state) == ""


def notebook_with_outputs(bundle: str) -> nbformat.NotebookNode:
    view = f'<script>{bundle}</script>\n<div id="circuits-vis-x-1"></div><script>CircuitsVis.render("circuits-vis-x-1")</script>'
    code = nbformat.v4.new_code_cell("widgets.attention_explorer(model)")
    code.outputs = [
        nbformat.v4.new_output("display_data", {
            build_site.WIDGET_VIEW: {"model_id": "box", "version_major": 2, "version_minor": 0},
            "text/plain": "Explorer(...)"}),
        nbformat.v4.new_output("display_data", {"text/html": view}),
    ]  # fmt: skip
    md = nbformat.v4.new_markdown_cell(
        "**Next:** [04 · Induction heads](04_induction_heads.ipynb), "
        "[claims](notebooks/solutions/02_one_layer_skip_trigrams.ipynb#claim) and "
        "[the paper](https://transformer-circuits.pub/2021/framework/index.html)"
    )
    nb = nbformat.v4.new_notebook(cells=[md, code])
    nb.metadata["widgets"] = {build_site.WIDGET_STATE: {"state": widget_state()}}
    return nb


def test_make_static_replaces_widgets_the_inline_bundle_and_notebook_links():
    bundle = "var CircuitsVis = {render: function () {}};" * 50
    nb = notebook_with_outputs(bundle)
    assert build_site.make_static(nb, bundle) is True
    assert "widgets" not in nb.metadata  # no widget manager to fetch
    widget, view = (o["data"] for o in nb.cells[1].outputs)
    assert list(widget) == ["text/html"] and "course-widget-still" in widget["text/html"]
    assert bundle not in view["text/html"]
    assert '<script src="assets/circuitsvis.js"></script>' in view["text/html"]
    assert "(04_induction_heads.html)" in nb.cells[0].source
    assert "(02_one_layer_skip_trigrams.html#claim)" in nb.cells[0].source
    assert "transformer-circuits.pub/2021/framework/index.html)" in nb.cells[0].source


def test_pages_load_nothing_from_outside():
    nb = notebook_with_outputs("var CircuitsVis = {};")
    build_site.make_static(nb, "var CircuitsVis = {};")
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("Formula: $W_{OV} = W_V W_O$"))
    page, _ = build_site.exporter().from_notebook_node(nb, resources={"course_nav": "nav"})
    loads = re.findall(r'<(?:script|link|img)[^>]*?(?:src|href)="([^"]+)"', page)
    outside = [u for u in loads if not u.startswith(("assets/", "data:"))]
    assert outside == [], outside
    assert 'src="assets/mathjax/MathJax.js' in page and "cdnjs" not in page and "unpkg" not in page


def test_the_index_lists_every_chapter_with_its_objectives_and_the_claims_table():
    chapters = [
        (nbformat.read(p, as_version=4), p.stem + ".html") for p in build_site.chapter_notebooks()
    ]
    index = build_site.index_notebook(chapters)
    text = "\n".join(c.source for c in index.cells)
    for _, page in chapters:
        assert f"]({page})" in text
    assert text.count("you will be able to:") == len(chapters)
    assert text.count("**Time:**") == len(chapters)
    assert "| 23 |" in text and ".ipynb" not in text
