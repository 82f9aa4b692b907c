"""The course as a static site, for a projector or to send to learners before a workshop.

    python3 course.py site            execute the solution notebooks and write site/
    python3 course.py site --out DIR  somewhere else

Pages: `index.html` (what the course is, the chapters with their objectives and times, the table
of the paper's claims as the notebooks measured them), one page per chapter (the executed solution
notebook: prose, code, figures, attention views) and `teaching.html` (TEACHING.md).

Made with nbconvert's HTML exporter (its JupyterLab template), which is already installed with
JupyterLab and renders exactly what JupyterLab shows; Jupyter Book would add a Sphinx or Node tool
chain, and its newer version fetches its theme from the internet at build time. What nbconvert
does not do offline, this file adds:
- formulas: nbconvert loads MathJax from a CDN; here MathJax 2.7 comes from the
  `jupyter-server-mathjax` package (the Jupyter project's offline copy) into `assets/mathjax/`,
  as MathML, which Chromium, Firefox and Safari draw themselves (MathJax's HTML-CSS output would
  need web fonts, which Chromium refuses to load from file://);
- attention views: the first view of each executed notebook carries circuitsvis's 1.3 MB
  JavaScript bundle inline; here it is written once to `assets/circuitsvis.js` and each page that
  shows a view loads that file;
- widgets: a saved notebook keeps a widget's state, not its Python callbacks, and nbconvert would
  load a widget manager from a CDN to show it; here each widget is replaced by its last drawing
  (the PNG in its output area) under a caption naming the values of its controls.
The site has no external requests, which the browser tests check from file:// with the network
blocked.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path

import nbformat
from jinja2 import DictLoader
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import claims  # noqa: E402

from helpers import attention_views  # noqa: E402

SOLUTIONS = ROOT / "notebooks" / "solutions"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
NOTEBOOK_LINK = re.compile(
    r"\((?:\.\./|solutions/|notebooks/(?:solutions/)?)?(\d\d_\w+)\.ipynb(#[^)\s]*)?\)"
)

# The JupyterLab template, minus everything it would fetch from the internet (require.js, the
# widget manager, mermaid, MathJax from a CDN), plus local MathJax and a navigation bar.
TEMPLATE = r"""
{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}
<script type="text/x-mathjax-config">
MathJax.Hub.Config({
  tex2jax: {inlineMath: [["$", "$"], ["\\(", "\\)"]], displayMath: [["$$", "$$"], ["\\[", "\\]"]],
            processEscapes: true},
  "HTML-CSS": {availableFonts: [], webFont: "STIX-Web", imageFont: null, preferredFont: null},
  menuSettings: {renderer: "NativeMML"},
  messageStyle: "none",
  showMathMenu: false
});
</script>
<script src="assets/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"></script>
<style>
  nav.course-nav { display: flex; gap: 1.5em; padding: 0.6em 1em; margin-bottom: 1em;
    border-bottom: 1px solid #ddd; font-family: var(--jp-ui-font-family); font-size: 14px; }
  nav.course-nav a { text-decoration: none; }
  figure.course-widget-still { margin: 0; }
  figure.course-widget-still figcaption { font-size: 13px; color: #555; margin-bottom: 4px; }
  div.course-progress { font-family: var(--jp-code-font-family); font-size: 13px; }
  div.course-progress progress { width: 240px; vertical-align: middle; }
</style>
{%- endblock html_head_js_mathjax -%}
{%- block body_header -%}
{{ super() }}
<nav class="course-nav">{{ resources.course_nav }}</nav>
{%- endblock body_header -%}
{%- block body_footer -%}
<nav class="course-nav">{{ resources.course_nav }}</nav>
{{ super() }}
{%- endblock body_footer -%}
"""


def chapter_notebooks() -> list[Path]:
    return sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb"))


# ---- what nbconvert would fetch from the internet, made local -----------------------------------


def _control_text(model: dict) -> str | None:
    """'description: value' of a control widget's state, None for anything else."""
    state = model.get("state", {})
    label = (state.get("description") or "").rstrip(": ")
    if "_options_labels" in state and state.get("index") is not None:
        value = state["_options_labels"][state["index"]]
    elif "value" in state and not isinstance(state["value"], dict | list):
        value = state["value"]
    else:
        return None
    return f"{label}: {value}" if label else str(value)


def widget_still(model_id: str, state: dict) -> str:
    """HTML for a widget as last drawn (a widget's Python callbacks cannot run in a static
    page): a progress bar (tqdm's) as a bar with its text; any other widget as its output
    area's images and HTML, under a caption naming its controls' values."""
    controls, shown, texts, bars = [], [], [], []

    def walk(mid: str) -> None:
        model = state.get(mid)
        if model is None:
            return
        name, st = model.get("model_name", ""), model.get("state", {})
        if name == "OutputModel":
            for out in st.get("outputs", []):
                data = out.get("data", {})
                if "image/png" in data:
                    png = data["image/png"]
                    png = png if isinstance(png, str) else "".join(png)
                    shown.append(f'<img src="data:image/png;base64,{png.strip()}" alt="figure">')
                elif "text/html" in data:
                    shown.append("".join(data["text/html"]))
            return
        if name in ("FloatProgressModel", "IntProgressModel"):
            if st.get("value", 0) < st.get("max", 100):
                bars.append("")  # unfinished: a bar closed early (leave=False), gone in JupyterLab
                return
            bars.append(
                f'<progress value="{st.get("value", 0)}" max="{st.get("max", 100)}"></progress>'
            )
            return
        if name in ("HTMLModel", "LabelModel"):  # their value is text (HTML-escaped in HTMLModel)
            text = html.unescape(str(st.get("value", ""))).strip()
            if text:
                texts.append(html.escape(text))
            return
        text = _control_text(model)
        if text is not None:
            controls.append(html.escape(text))
        for child in st.get("children", []):
            walk(child.removeprefix("IPY_MODEL_"))

    walk(model_id)
    if bars:  # a progress bar: label, bar, counts and rate, as it ended
        if "" in bars:
            return ""
        parts = [texts[0] if texts else "", *bars, *texts[1:]]
        return f'<div class="course-progress">{" ".join(parts)}</div>'
    caption = "An interactive widget, shown as last drawn"
    if controls or texts:
        caption += " (" + " · ".join(controls + texts) + ")"
    caption += ". Run the notebook in JupyterLab to change it."
    return (
        f'<figure class="course-widget-still"><figcaption>{caption}</figcaption>'
        + "".join(shown)
        + "</figure>"
    )


def make_static(nb: nbformat.NotebookNode, bundle: str) -> bool:
    """Replace widgets by their last drawing and the inline circuitsvis bundle by a link to
    `assets/circuitsvis.js`; returns whether the notebook shows attention views."""
    state = nb.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    inline = f"<script>{bundle}</script>"
    uses_views = False
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = NOTEBOOK_LINK.sub(r"(\1.html\2)", cell.source)
            continue
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW in data:
                model_id = data[WIDGET_VIEW]["model_id"]
                out["data"] = {"text/html": widget_still(model_id, state)}
            elif "text/html" in data:
                text = "".join(data["text/html"])
                if "CircuitsVis.render(" in text:
                    uses_views = True
                    text = text.replace(inline, '<script src="assets/circuitsvis.js"></script>')
                data["text/html"] = text
    return uses_views


# ---- pages --------------------------------------------------------------------------------------


def exporter() -> HTMLExporter:
    return HTMLExporter(
        template_name="lab",
        extra_loaders=[DictLoader({"course.html.j2": TEMPLATE})],
        template_file="course.html.j2",
    )


def nav(prev: tuple[str, str] | None, nxt: tuple[str, str] | None) -> str:
    links = ['<a href="index.html">Course index</a>']
    if prev:
        links.insert(0, f'<a href="{prev[0]}">← {html.escape(prev[1])}</a>')
    if nxt:
        links.append(f'<a href="{nxt[0]}">{html.escape(nxt[1])} →</a>')
    links.append('<a href="teaching.html">Teaching guide</a>')
    return " ".join(links)


def write_page(nb: nbformat.NotebookNode, path: Path, title: str, navigation: str) -> None:
    nb.metadata["title"] = title
    body, _ = exporter().from_notebook_node(nb, resources={"course_nav": navigation})
    path.write_text(body, encoding="utf-8")


def title_of(nb: nbformat.NotebookNode) -> str:
    first = nb.cells[0].source.splitlines()[0]
    return first.lstrip("# ").strip()


def readme_part(heading: str) -> str:
    """A `## heading` section of README.md, without its heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if not match:
        raise ValueError(f"README.md has no section '## {heading}'")
    return match.group(1).strip()


def chapter_summary(nb: nbformat.NotebookNode, page: str) -> str:
    """The chapter's title (linked), time, paper section and objectives, from its first cell."""
    first = nb.cells[0].source
    lines = [f"### [{title_of(nb)}]({page})", ""]
    paper = re.search(r"\*\*Paper:\*\*(.*?)(?=\*\*Time|\n\n)", first, re.S)
    when = re.search(r"\*\*Time:\*\*\s*([^.]*)", first)
    facts = []
    if when:
        facts.append(f"**Time:** {when.group(1).strip()}")
    if paper:
        facts.append(f"**Paper:** {' '.join(paper.group(1).split())}")
    lines += [" · ".join(facts), ""]
    objectives = re.search(r"you will be able to:\n(.*?)(?:\n\n|\Z)", first, re.S)
    if objectives:
        lines += ["By the end you will be able to:", "", objectives.group(1).strip()]
    return "\n".join(lines)


def index_notebook(chapters: list[tuple[nbformat.NotebookNode, str]]) -> nbformat.NotebookNode:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    intro = readme.split("\n## ", 1)[0]
    table = NOTEBOOK_LINK.sub(r"(\1.html\2)", claims.readme_table(readme))
    md = nbformat.v4.new_markdown_cell
    cells = [
        md(intro),
        md(
            "This site shows the complete (solution) notebooks, executed. To do the exercises, "
            "get the course and open it in JupyterLab: `python3 course.py lab`. Teachers: see "
            "the [teaching guide](teaching.html)."
        ),
        md("## The chapters\n\n" + NOTEBOOK_LINK.sub(r"(\1.html\2)", _chapter_table(readme))),
        *(md(chapter_summary(nb, page)) for nb, page in chapters),
        md("## Every claim, checked\n\n" + claims_intro(readme) + "\n\n" + table),
    ]
    return nbformat.v4.new_notebook(cells=cells)


def _chapter_table(readme: str) -> str:
    part = readme_part("The chapters")
    rows = [line for line in part.splitlines() if line.startswith("|")]
    # link each chapter's row to its page
    pages = {p.name[:2]: p.stem for p in chapter_notebooks()}
    linked = []
    for row in rows:
        match = re.match(r"\| (\d\d) \| ([^|]+) \|", row)
        page = pages.get(match[1], "") if match else ""
        if page:
            row = row.replace(f"| {match[2]} |", f"| [{match[2].strip()}]({page}.html) |", 1)
        linked.append(row)
    return "\n".join(linked)


def claims_intro(readme: str) -> str:
    part = readme_part("Every claim, checked")
    return part.split(claims.START)[0].strip()


def teaching_notebook() -> nbformat.NotebookNode:
    text = (ROOT / "TEACHING.md").read_text(encoding="utf-8")
    text = NOTEBOOK_LINK.sub(r"(\1.html\2)", text)
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(text)])


def build(out: Path, jobs: int | None = None, notebooks: list[Path] | None = None) -> list[Path]:
    """Execute the solution notebooks and write the site into `out`; returns the pages."""
    notebooks = notebooks or chapter_notebooks()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # kernels side by side, one thread each
    os.environ.setdefault("MPLBACKEND", "Agg")
    started = time.perf_counter()
    with ThreadPoolExecutor(jobs or min(4, os.cpu_count() or 1)) as pool:
        executed = list(pool.map(claims.execute, notebooks))  # widget state kept
    print(f"executed {len(notebooks)} notebooks in {time.perf_counter() - started:.0f} s")
    if out.exists():
        shutil.rmtree(out)
    assets = out / "assets"
    assets.mkdir(parents=True)
    shutil.copytree(files("jupyter_server_mathjax").joinpath("static"), assets / "mathjax")
    bundle = attention_views.bundle()  # the exact text the notebooks' first views inlined
    (assets / "circuitsvis.js").write_text(bundle, encoding="utf-8")

    pages = [p.stem + ".html" for p in notebooks]
    titles = [title_of(nb) for nb in executed]
    written = []
    for i, (nb, page) in enumerate(zip(executed, pages, strict=True)):
        prev = (pages[i - 1], titles[i - 1]) if i else None
        nxt = (pages[i + 1], titles[i + 1]) if i + 1 < len(pages) else None
        make_static(nb, bundle)
        write_page(nb, out / page, titles[i], nav(prev, nxt))
        written.append(out / page)
    index = index_notebook(list(zip(executed, pages, strict=True)))
    write_page(index, out / "index.html", "Transformer Circuits, hands-on", nav(None, None))
    write_page(teaching_notebook(), out / "teaching.html", "Teaching guide", nav(None, None))
    written += [out / "index.html", out / "teaching.html"]
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    print(
        f"wrote {len(written)} pages and assets to {out} ({size:.1f} MB); open {out / 'index.html'}"
    )
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="course.py site", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "site", help="folder (default site/)")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        print(f"course.py site: {args.out} exists and is not a folder", file=sys.stderr)
        return 2
    build(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
