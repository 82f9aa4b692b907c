"""The static site (`course.py site`) opened from file:// in Chromium with the network blocked:
every page loads without a console error or an outside request, formulas are typeset, attention
views render from the one shared bundle, every widget shows its last drawing, and every link
inside the site leads to a file of the site. Screenshots: artifacts/screenshots/site__*.png."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("build_site", ROOT / "tools" / "build_site.py")
build_site = importlib.util.module_from_spec(spec)
sys.modules["build_site"] = build_site
spec.loader.exec_module(build_site)

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # executes every solution notebook


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    build_site.build(out)
    return out


def shows_widgets(page_name: str) -> bool:
    nb = nbformat.read(build_site.SOLUTIONS / page_name.replace(".html", ".ipynb"), as_version=4)
    return any(re.search(r"\bwidgets\.\w+\(", c.source) for c in nb.cells if c.cell_type == "code")


def test_every_page_loads_offline_and_renders(site, browser, screenshots_dir):
    pages = sorted(site.glob("*.html"))
    assert {p.name for p in pages} >= {"index.html", "teaching.html"}
    assert len(pages) == len(build_site.chapter_notebooks()) + 2
    assert len(list(site.rglob("circuitsvis.js"))) == 1  # shipped once
    problems = []
    for page_path in pages:
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        page = context.new_page()
        outside, errors = [], []

        def block(route, outside=outside):
            if route.request.url.startswith("file://"):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", block)
        page.on("console", lambda m, e=errors: e.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda err, e=errors: e.append(str(err)))
        page.goto(page_path.as_uri(), wait_until="load")
        # MathJax typesets after load; its queue empties when it is done
        page.wait_for_function(
            "() => window.MathJax && MathJax.Hub && MathJax.Hub.queue.pending === 0"
            " && !MathJax.Hub.queue.running",
            timeout=60_000,
        )
        page.wait_for_timeout(500)
        name = page_path.name
        html = page_path.read_text(encoding="utf-8")
        if outside:
            problems.append(f"{name}: requests outside the site: {outside[:3]}")
        if errors:
            problems.append(f"{name}: console errors: {errors[:3]}")
        if "$" in re.sub(r"<script.*?</script>|<style.*?</style>", "", html, flags=re.S):
            if page.locator("math").count() == 0:
                problems.append(f"{name}: formulas were not typeset")
        views = page.locator("[id^=circuits-vis-]")
        for i in range(views.count()):
            if views.nth(i).evaluate("e => e.children.length") == 0:
                problems.append(f"{name}: attention view {i} is empty")
        if "CircuitsVis.render(" in html and views.count() == 0:
            problems.append(f"{name}: attention views are missing")
        stills = page.locator("figure.course-widget-still img")
        for i in range(stills.count()):
            if stills.nth(i).evaluate("img => img.naturalWidth") == 0:
                problems.append(f"{name}: widget image {i} does not load")
        figures = page.locator("figure.course-widget-still")
        if name[:2].isdigit() and shows_widgets(name) and figures.count() == 0:
            problems.append(f"{name}: its widgets are not shown")
        if stills.count() < figures.count():
            problems.append(f"{name}: {figures.count()} widgets but {stills.count()} drawings")
        for href in page.eval_on_selector_all(
            "a[href]", "els => els.map(e => e.getAttribute('href'))"
        ):
            if re.match(r"^(https?:|mailto:|#)", href):
                continue
            if not (site / href.split("#")[0]).is_file():
                problems.append(f"{name}: broken link {href}")
        page.screenshot(path=str(screenshots_dir / f"site__{page_path.stem}.png"), full_page=True)
        context.close()
    assert not problems, "\n".join(problems)
