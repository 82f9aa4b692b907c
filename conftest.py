"""How the whole suite is run (`python3 course.py test`; see pyproject.toml): at the repository's
root so that it applies to the nbval items of notebooks/solutions as well as to tests/."""

import os
import shutil

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Chapter 05 loads its recorded runs rather than training them in the everyday suite (its
    notebook's kernels inherit this): the live runs are checked against the recording by
    tests/test_recordings.py (the first steps here, the whole runs under `-m slow`), and the
    browser tests run the chapter live, as a learner does."""
    os.environ.setdefault("COURSE_PHASE_CHANGE_RUNS", "recorded")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """With `--dist loadscope` (what `course.py test` asks for): each notebook's nbval cells go
    to one worker together (they share a kernel), and every other test is a unit of its own,
    handed to whichever worker is free. (xdist's own grouping by mark, `loadgroup`, does not
    work with pytest 9, whose node ids can no longer be rewritten.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class NotebooksTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodeid.split("::", 1)[0] if ".ipynb::" in nodeid else nodeid

    return NotebooksTogether(config, log)


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected what they deselect
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Execute each learner notebook once: when the browser test runs it in JupyterLab (Chromium
    present), tests/test_notebooks.py does not run it again (the browser test checks the same,
    tests/learner_run.py)."""
    in_browser = set()
    if shutil.which("chromium"):
        for item in items:
            params = getattr(item, "callspec", None) and item.callspec.params
            if params and "notebook" in params and params["notebook"][1] == "learner":
                in_browser.add(params["notebook"][0].rsplit("/", 1)[-1])
    deselected = []
    for item in list(items):
        params = getattr(item, "callspec", None) and item.callspec.params
        if (
            getattr(item, "originalname", None)
            == "test_learner_notebook_runs_and_prints_the_readmes_claims"
            and params["path"].name in in_browser
        ):
            deselected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in deselected]
        _RUN_IN_BROWSER.extend(sorted(item.callspec.params["path"].name for item in deselected))
    # The longest units first (each executes a notebook, 5-30 s), so that the workers finish
    # together rather than one running a notebook while the other waits: the suite's wall time
    # drops by about a tenth on 2 cores. The order is otherwise kept (a stable sort).
    items.sort(key=lambda item: not _executes_a_notebook(item))


def _executes_a_notebook(item: pytest.Item) -> bool:
    return ".ipynb::" in item.nodeid or getattr(item, "originalname", None) in (
        "test_learner_notebook_runs_and_prints_the_readmes_claims",
        "test_notebook_in_jupyterlab",
    )


_RUN_IN_BROWSER: list[str] = []


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if _RUN_IN_BROWSER:
        terminalreporter.write_line(
            f"learner notebooks executed in the browser tests, not again by nbclient: "
            f"{', '.join(_RUN_IN_BROWSER)}"
        )
