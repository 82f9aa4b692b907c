"""Every notebook, run through JupyterLab's own UI in Chromium, with no network.

For each notebook on disk (parametrised, so a new chapter needs no edit here):
1. open it, clear its outputs and click Run > Run All Cells;
2. every code cell must run without an error output. Learner notebooks call unfinished exercises in
   cells tagged `raises-exception` (JupyterLab's Run All carries on past those); there, and only
   there, NotImplementedError is expected;
3. change every ipywidget through the page and check that the figure beside it changes;
4. check that every circuitsvis view rendered;
5. no request may leave the machine, from the browser or from the kernel;
6. for a learner notebook, what tests/learner_run.py asks of a Run All (tests/test_notebooks.py
   then does not run it a second time);
7. no text of any figure, widgets' included, is shown smaller than `plotting.MIN_TEXT_PX` at the
   width JupyterLab gives it in a 1280-pixel window;
8. save a full-notebook screenshot (folder printed at the end of the run).

Solution notebooks run here under the `slow` marker (`.ci/run` selects it): nbval already
executes them in the everyday suite.

Cell outputs and kernel state are read from JupyterLab's notebook model (the server runs with
`expose_app_in_browser`), widgets and circuitsvis views from the DOM.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.learner_run import from_jupyterlab, learner_run_problems

pytestmark = pytest.mark.browser

RUN_TIMEOUT_S = 600  # a notebook slower than this should be made smaller, not given more time
WIDGET_TIMEOUT_S = 30  # one widget change: a callback redrawing a figure
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
STUB_ERRORS = {"NotImplementedError", "ExerciseNotDone"}
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")

# JavaScript run in the page. `panel` is the open notebook's NotebookPanel.
PANEL = "const panel = window.jupyterapp.shell.currentWidget;"
NOTEBOOK_READY = f"""() => {{
    if (!window.jupyterapp || !window.jupyterapp.shell) return false;
    {PANEL}
    return !!(panel && panel.context && panel.context.isReady && panel.sessionContext
              && panel.sessionContext.session?.kernel?.status === 'idle');
}}"""
APP_LOADED = "() => !!(window.jupyterapp && window.jupyterapp.shell)"
KERNEL_IDLE = f"() => {{ {PANEL} return panel.sessionContext.session?.kernel?.status === 'idle'; }}"
NOTEBOOK_JSON = f"() => {{ {PANEL} return panel.content.model.toJSON(); }}"
# Run All has finished when the kernel is idle and every non-empty code cell has an execution
# count, or when it stopped at an error in a cell not tagged raises-exception.
RUN_FINISHED = f"""() => {{
    {PANEL}
    if (panel.sessionContext.session?.kernel?.status !== 'idle') return false;
    const source = c => Array.isArray(c.source) ? c.source.join('') : c.source;
    const cells = panel.content.model.toJSON().cells
        .filter(c => c.cell_type === 'code' && source(c).trim() !== '');
    const stoppedAt = c => (c.outputs || []).some(o => o.output_type === 'error')
        && !(c.metadata.tags || []).includes('raises-exception');
    return cells.every(c => c.execution_count !== null) || cells.some(stoppedAt);
}}"""
WIDGETS_RENDERED = """() => ![...document.querySelectorAll('.jp-Notebook .jp-OutputArea-output')]
    .some(e => e.textContent.includes('Loading widget...'))"""


@pytest.fixture(scope="session")
def browser_context(browser):
    """One browser context for every notebook, so that JupyterLab's scripts come from the HTTP
    cache after the first; every request that would leave the machine is blocked, and noted in
    `context.blocked` (the test clears the list before each notebook)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.blocked = []
    context.route("**/*", lambda route: block_if_not_local(route, context.blocked))
    yield context
    context.close()


@pytest.fixture(scope="session")
def lab_page(browser_context, lab_server):
    """One JupyterLab page for every notebook: the application starts once (about 5 s), and each
    test opens its notebook in it and closes it after."""
    page = browser_context.new_page()
    page.on(
        "websocket",
        lambda ws: None if is_local(ws.url) else browser_context.blocked.append(ws.url),
    )
    page.goto(f"{lab_server.base_url}/lab?reset&token={lab_server.token}")
    page.wait_for_function(APP_LOADED, timeout=120_000)
    page.evaluate("async () => { await window.jupyterapp.restored; }")
    yield page
    page.close()


def test_notebook_in_jupyterlab(
    notebook, browser_context, lab_page, lab_server, screenshots_dir, notebook_timings
):
    """`notebook` is (path under notebooks/, "solution" or "learner"); see pytest_generate_tests."""
    path, kind = notebook
    started = time.monotonic()
    network_log_start = log_size(lab_server.network_log)
    widget_log_start = log_size(lab_server.widget_error_log)
    blocked_requests = browser_context.blocked
    blocked_requests.clear()
    page = lab_page
    page.set_viewport_size({"width": 1280, "height": 900})
    problems: list[str] = []
    try:
        open_notebook(page, lab_server, path)
        run_all_cells(page)
        executed = page.evaluate(NOTEBOOK_JSON)
        problems += cell_problems(executed, kind)
        if kind == "learner":  # what tests/test_notebooks.py checks when there is no browser
            problems += learner_run_problems(from_jupyterlab(executed), Path(path).name)
        problems += widget_problems(page, lab_server)
        problems += circuitsvis_problems(page)
        problems += figure_text_problems(page)
    finally:
        save_screenshot(
            page, screenshots_dir / (path.replace("/", "__").removesuffix(".ipynb") + ".png")
        )
        close_notebook(page)
        lab_server.shutdown_kernels()
        notebook_timings[path] = time.monotonic() - started
    problems += [f"the browser tried to reach {url}" for url in dict.fromkeys(blocked_requests)]
    problems += [
        f"the kernel tried to reach {line}"
        for line in new_lines(lab_server.network_log, network_log_start)
    ]
    problems += widget_error_lines(lab_server.widget_error_log, widget_log_start)
    if problems:
        pytest.fail(f"{path}:\n- " + "\n- ".join(problems), pytrace=False)


def test_notebooks_exist(notebooks_on_disk):
    # An empty parametrisation would pass silently; a course without notebooks is broken.
    assert notebooks_on_disk, "no notebooks found under notebooks/ (or $COURSE_NOTEBOOKS_DIR)"


# --- network ----------------------------------------------------------------------------------


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("data", "blob", "about") or parts.hostname in LOCAL_HOSTS


def block_if_not_local(route, blocked: list[str]) -> None:
    if is_local(route.request.url):
        route.continue_()
    else:
        blocked.append(route.request.url)
        route.abort("blockedbyclient")


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def new_lines(path: Path, start: int) -> list[str]:
    """Lines appended to a log file since it had `start` bytes."""
    if not path.exists():
        return []
    with path.open("rb") as log:
        log.seek(start)
        return log.read().decode(errors="replace").splitlines()


def widget_error_lines(path: Path, start: int) -> list[str]:
    """One problem per traceback in the widget error log, shortened to its last frames."""
    text = "\n".join(new_lines(path, start))
    tracebacks = [t for t in text.split("Traceback (most recent call last):") if t.strip()]
    return [
        f"a widget callback raised an exception:\n{last_lines(t.splitlines())}" for t in tracebacks
    ]


# --- running the notebook ---------------------------------------------------------------------


def open_notebook(page, server, path: str) -> None:
    """Open `path` in the running JupyterLab (the page started from an empty workspace, and
    each test closes its notebook), and wait for its kernel."""
    page.evaluate(
        "p => window.jupyterapp.commands.execute('docmanager:open', {path: p, factory: 'Notebook'})",
        path,
    )
    page.wait_for_function(NOTEBOOK_READY, timeout=120_000)
    assert page.evaluate(f"() => {{ {PANEL} return panel.context.path; }}") == path


def close_notebook(page) -> None:
    """Close the open notebook without the "save changes?" dialog (the server's copy is a
    temporary one anyway)."""
    page.evaluate(
        "() => { for (const w of [...window.jupyterapp.shell.widgets('main')]) {"
        " if (w.context) { w.context.model.dirty = false; } w.dispose(); } }"
    )


def run_all_cells(page) -> None:
    # Clearing first resets execution counts, so RUN_FINISHED cannot be fooled by saved outputs.
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    page.wait_for_function(RUN_FINISHED, timeout=RUN_TIMEOUT_S * 1000, polling=250)
    page.wait_for_function(WIDGETS_RENDERED, timeout=WIDGET_TIMEOUT_S * 1000)


def cell_problems(notebook: dict, kind: str) -> list[str]:
    """Errors in the cell outputs of the notebook model; `kind` is "solution" or "learner"."""
    problems = []
    for number, cell in enumerate(notebook["cells"], start=1):
        if cell["cell_type"] != "code" or not "".join(cell["source"]).strip():
            continue
        expects_stub = kind == "learner" and "raises-exception" in cell["metadata"].get("tags", [])
        if cell["execution_count"] is None:
            problems.append(f"cell {number} did not run (Run All stopped before it)")
        for output in cell.get("outputs", []):
            problem = output_problem(output, expects_stub)
            if problem:
                problems.append(f"cell {number}: {problem}")
    return problems


def output_problem(output: dict, expects_stub: bool) -> str | None:
    if output["output_type"] == "error":
        # an unfinished exercise: the stub's NotImplementedError, or the checker's ExerciseNotDone
        if expects_stub and output["ename"] in STUB_ERRORS:
            return None
        return f"{output['ename']}: {output['evalue']}\n{last_lines(output['traceback'])}"
    text = "".join(output.get("text", ""))
    if output["output_type"] == "stream" and output["name"] == "stderr" and "Traceback" in text:
        return f"traceback on stderr:\n{last_lines(text.splitlines())}"
    return None


def last_lines(lines: list[str], count: int = 6) -> str:
    text = ANSI_ESCAPE.sub("", "\n".join(lines))
    return "\n".join(text.splitlines()[-count:])


# --- widgets ----------------------------------------------------------------------------------

# Each control kind rendered by ipywidgets 8: a CSS selector for the element to act on, and how to
# give it another value. Range sliders have two handles; the first one is moved.
CONTROLS = {
    "Dropdown": ".widget-dropdown select",
    "Select": ".widget-select select",
    "Slider": ".widget-slider .noUi-handle-lower",
    "ToggleButtons": ".widget-toggle-buttons",
    "RadioButtons": ".widget-radio-box",
    "Checkbox": ".widget-checkbox input[type=checkbox]",
    "ToggleButton": ".jp-Notebook button.widget-toggle-button:not(.widget-toggle-buttons *)",
    "Button": ".jp-Notebook button.widget-button",
}
# Outputs a control may redraw: an ipywidgets.Output (the course's figures) or an Image widget.
OUTPUTS_NEAR = """control => {
    const cell = control.closest('.jp-Cell');
    const outputs = [...cell.querySelectorAll('.widget-output, .widget-image')]
        .filter(o => !o.contains(control));
    return outputs.length ? outputs.map(o => o.innerHTML).join('\\n') : null;
}"""
WIDGET_TRACEBACKS = """() => [...document.querySelectorAll(
        '.jp-Notebook .widget-output [data-mime-type="application/vnd.jupyter.stderr"]')]
    .map(e => e.textContent).filter(t => t.includes('Traceback') || t.includes('Error'))"""
# helpers.widgets shows a drawing that failed inside the widget, in an element of this class
WIDGET_DRAWING_ERRORS = """() => [...document.querySelectorAll('.jp-Notebook .course-widget-error')]
    .map(e => e.textContent)"""


def widget_problems(page, server) -> list[str]:
    problems = []
    drawing_errors = list(page.evaluate(WIDGET_DRAWING_ERRORS))  # as first drawn
    for kind, selector in CONTROLS.items():
        controls = page.locator(selector)
        for index in range(controls.count()):
            name = f"{kind} #{index + 1}"
            print(f"changing {name}")  # shown by pytest when the test fails
            log_start = log_size(server.widget_error_log)

            def callback_failed(log_start: int = log_start) -> bool:
                return log_size(server.widget_error_log) > log_start

            problems += exercise_control(page, kind, controls.nth(index), name, callback_failed)
            drawing_errors += page.evaluate(WIDGET_DRAWING_ERRORS)
    if page.locator(".jupyter-widgets-error-widget").count():
        problems.append("a widget failed to display ('Error displaying widget')")
    problems += [f"error in a widget's output:\n{t}" for t in page.evaluate(WIDGET_TRACEBACKS)]
    problems += [f"a widget could not draw:\n{t}" for t in dict.fromkeys(drawing_errors)]
    return problems


def exercise_control(page, kind: str, control, name: str, callback_failed) -> list[str]:
    """Give one control another value; its figure must change (Buttons: must not break).

    `callback_failed()` tells whether the kernel logged an exception in a widget callback since the
    change; the test reports the log itself, here it only ends the wait early.
    """
    control.scroll_into_view_if_needed()
    before = control.evaluate(OUTPUTS_NEAR)
    change_value(page, kind, control)
    page.wait_for_function(KERNEL_IDLE, timeout=WIDGET_TIMEOUT_S * 1000)
    if before is None or kind == "Button":
        return []  # nothing to compare; errors are caught by the widget log and output checks
    deadline = time.monotonic() + WIDGET_TIMEOUT_S
    while control.evaluate(OUTPUTS_NEAR) == before:
        if callback_failed() or page.evaluate(WIDGET_DRAWING_ERRORS):
            return [f"{name}: its callback raised an exception (see below)"]
        if time.monotonic() > deadline:
            return [f"{name}: changing its value did not change the output beside it"]
        time.sleep(0.2)
    return []


def change_value(page, kind: str, control) -> None:
    if kind in ("Dropdown", "Select"):
        values = control.evaluate("s => [...s.options].map(o => o.value)")
        current = control.input_value()
        control.select_option(next(v for v in values if v != current))
    elif kind == "Slider":
        vertical = control.get_attribute("aria-orientation") == "vertical"
        at_max = control.get_attribute("aria-valuenow") == control.get_attribute("aria-valuemax")
        control.focus()
        keys = ("ArrowDown", "ArrowUp") if vertical else ("ArrowLeft", "ArrowRight")
        page.keyboard.press(keys[0] if at_max else keys[1])
    elif kind == "ToggleButtons":
        control.locator("button:not(.mod-active)").first.click()
    elif kind == "RadioButtons":
        control.locator("input[type=radio]:not(:checked)").first.check()
    else:  # Checkbox, ToggleButton, Button
        control.click()


# --- circuitsvis ------------------------------------------------------------------------------

CIRCUITSVIS_VIEWS = """() => [...document.querySelectorAll('.jp-Notebook [id^="circuits-vis-"]')]
    .map(e => ({id: e.id, children: e.childElementCount,
                height: e.getBoundingClientRect().height}))"""


def circuitsvis_problems(page) -> list[str]:
    """circuitsvis renders React into a div#circuits-vis-...; an empty div means it failed."""
    deadline = time.monotonic() + WIDGET_TIMEOUT_S
    print(f"circuitsvis views: {len(page.evaluate(CIRCUITSVIS_VIEWS))}")
    while True:
        views = page.evaluate(CIRCUITSVIS_VIEWS)
        blank = [v["id"] for v in views if not v["children"] or not v["height"]]
        if not blank or time.monotonic() > deadline:
            return [f"circuitsvis view {view_id} stayed empty" for view_id in blank]
        time.sleep(0.5)


# --- figures ----------------------------------------------------------------------------------

# Every PNG the course draws records the size of its smallest text at its own width
# (helpers.plotting.png_min_text_px); JupyterLab shows an image at that width or, when the output
# area is narrower, scaled down to fit. Each image is scrolled into view first: JupyterLab lays out
# only the cells on screen.
FIGURES = """async () => {
    const found = [];
    const widths = [...document.querySelectorAll('.jp-Notebook .jp-OutputArea-output')]
        .map(a => a.getBoundingClientRect().width);
    for (const img of document.querySelectorAll('.jp-Notebook .jp-OutputArea-output img')) {
        img.scrollIntoView({block: 'center'});
        await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
        // the part of the cell's output area a reader can see: an image wider than it is cut off
        const box = img.getBoundingClientRect();
        const panel = img.closest('.jp-WindowedPanel-outer') || img.closest('.jp-Notebook');
        let visible = panel ? panel.getBoundingClientRect().right : box.right;
        for (let e = img.parentElement; e && e !== panel; e = e.parentElement) {
            if (getComputedStyle(e).overflowX !== 'visible') {
                visible = Math.min(visible, e.getBoundingClientRect().right);
            }
        }
        found.push({src: img.src.slice(0, 22) === 'data:image/png;base64,' ? img.src : null,
                    natural: img.naturalWidth, shown: box.width,
                    cut: Math.max(0, box.right - visible)});
    }
    return {figures: found, outputWidth: Math.max(0, ...widths)};
}"""


def figure_text_problems(page) -> list[str]:
    """No text of any figure (widgets' included) is shown smaller than plotting.MIN_TEXT_PX."""
    import base64

    from helpers import plotting

    found = page.evaluate(FIGURES)
    print(f"output area {found['outputWidth']:.0f} px wide; {len(found['figures'])} figures")
    problems = []
    for number, figure in enumerate(found["figures"], start=1):
        if not figure["src"] or not figure["natural"]:
            continue
        smallest = plotting.png_min_text_px(base64.b64decode(figure["src"].split(",", 1)[1]))
        if smallest is None:
            problems.append(
                f"figure {number} does not record its text size (not drawn by plotting)"
            )
            continue
        if figure["cut"] > 1:
            problems.append(
                f"figure {number} is cut off: {figure['cut']:.0f} px of it lie beyond the right "
                f"edge of its output ({figure['natural']} px wide)"
            )
        shown = smallest * figure["shown"] / figure["natural"]
        if shown < plotting.MIN_TEXT_PX:
            problems.append(
                f"figure {number}: its smallest text is shown {shown:.1f} px high "
                f"({figure['natural']} px wide, shown at {figure['shown']:.0f} px); "
                f"the floor is {plotting.MIN_TEXT_PX} px"
            )
    return problems


# --- screenshot -------------------------------------------------------------------------------


def save_screenshot(page, path: Path) -> None:
    """Screenshot the whole notebook: JupyterLab scrolls inside the notebook, not the page, so the
    window is made as tall as the notebook first (Chromium draws at most 16000 pixels at a time,
    so a taller notebook is taken in parts, `<name>.png`, `<name>-2.png`, …, scrolled in turn)."""
    try:
        height = page.evaluate(
            "() => { const n = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer');"
            " if (!n) return 900; n.scrollTop = 0;"
            " return n.scrollHeight + n.getBoundingClientRect().top + 60; }"
        )
        part_height = int(min(max(height, 900), 16000))
        page.set_viewport_size({"width": 1280, "height": part_height})
        page.wait_for_timeout(300)  # let JupyterLab re-layout
        page.screenshot(path=str(path), full_page=True)
        scrolled, part = part_height - 200, 2  # each part overlaps the one before a little
        while scrolled < height - 200:
            page.evaluate(
                "y => { document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer')"
                ".scrollTop = y; }",
                scrolled,
            )
            page.wait_for_timeout(300)
            page.screenshot(path=str(path.with_name(f"{path.stem}-{part}{path.suffix}")))
            scrolled, part = scrolled + part_height - 200, part + 1
    except Exception as error:  # a screenshot is a diagnostic; never hide the real failure
        print(f"screenshot {path} failed: {error}")
