"""Fixtures for the browser tests: a throw-away JupyterLab server and the system Chromium.

The server runs from this test process's environment (the course's .venv), on a free localhost port
with a random token, with every Jupyter directory in a temporary folder and a temporary copy of the
notebooks as its root, so running notebooks never writes into the repository or $HOME. It starts
with tests/browser/sitecustomize on PYTHONPATH, which refuses and logs network access in the server
and its kernels.

Environment variables:
    COURSE_NOTEBOOKS_DIR     notebooks to test (default: <repo>/notebooks)
    COURSE_SCREENSHOTS_DIR   where screenshots go (default: <repo>/artifacts/screenshots)
    CI=true                  a missing Chromium fails the run instead of skipping it
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from secrets import token_hex

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITECUSTOMIZE_DIR = Path(__file__).resolve().parent / "sitecustomize"
NOTEBOOKS_DIR = Path(os.environ.get("COURSE_NOTEBOOKS_DIR", ROOT / "notebooks")).resolve()
SCREENSHOTS_DIR = Path(
    os.environ.get("COURSE_SCREENSHOTS_DIR", ROOT / "artifacts" / "screenshots")
).resolve()
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHROMIUM_MISSING = (
    "Chromium not found: apt-get install -y chromium (Debian/Ubuntu) to run the browser tests"
)
SERVER_START_TIMEOUT_S = 90

# JupyterLab user settings for the test server. windowingMode "none" keeps every cell in the DOM, so
# all outputs can be inspected and the screenshot shows the whole notebook; the notification
# settings stop JupyterLab from asking to fetch news or check for updates (a network request).
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}

# Seconds per notebook, filled in by the test and printed in the terminal summary.
NOTEBOOK_TIMINGS: dict[str, float] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives JupyterLab in Chromium (deselect with -m 'not browser')"
    )


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    if not NOTEBOOK_TIMINGS:
        return
    terminalreporter.section("browser tests")
    for name, seconds in NOTEBOOK_TIMINGS.items():
        terminalreporter.write_line(f"{seconds:6.1f} s  {name}")
    terminalreporter.write_line(f"screenshots: {SCREENSHOTS_DIR}")


@dataclass(frozen=True)
class LabServer:
    """A running JupyterLab server and the logs the tests read after each notebook."""

    base_url: str
    token: str
    root_dir: Path  # the temporary copy of the notebooks the server serves
    network_log: Path  # addresses the kernel or server tried to reach outside this machine
    widget_error_log: Path  # exceptions raised in widget callbacks
    server_log: Path

    def api(self, method: str, path: str) -> object:
        """Call the Jupyter REST API (localhost only) and return the decoded JSON, if any."""
        request = urllib.request.Request(
            f"{self.base_url}{path}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """Stop every kernel, so that the next notebook starts with a fresh one."""
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")
        for kernel in self.api("GET", "/api/kernels"):
            self.api("DELETE", f"/api/kernels/{kernel['id']}")

    def server_log_tail(self, lines: int = 40) -> str:
        text = self.server_log.read_text(errors="replace") if self.server_log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def find_notebooks() -> list[tuple[str, str]]:
    """(path under the notebooks folder, "solution" or "learner") for every notebook on disk."""
    solutions = sorted(NOTEBOOKS_DIR.glob("solutions/*.ipynb"))
    learners = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
    return [(p.relative_to(NOTEBOOKS_DIR).as_posix(), "solution") for p in solutions] + [
        (p.relative_to(NOTEBOOKS_DIR).as_posix(), "learner") for p in learners
    ]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Parametrised from the files on disk, so a new chapter is tested without editing the tests.
    # Every notebook run in the browser is `slow` (`.ci/run` selects it): in the everyday suite,
    # nbval executes the solution notebooks and tests/test_notebooks.py the learner notebooks,
    # in a third of the time a browser takes (kernel start-up, rendering, screenshots).
    if "notebook" in metafunc.fixturenames:
        cases = [
            pytest.param(case, id=case[0], marks=[pytest.mark.slow]) for case in find_notebooks()
        ]
        metafunc.parametrize("notebook", cases)


@pytest.fixture(scope="session")
def notebooks_on_disk() -> list[tuple[str, str]]:
    return find_notebooks()


@pytest.fixture(scope="session")
def notebook_timings() -> dict[str, float]:
    return NOTEBOOK_TIMINGS


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        # In CI a missing browser must turn the run red, never quietly skip the browser tests.
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(CHROMIUM_MISSING, pytrace=False)
        pytest.skip(CHROMIUM_MISSING)
    return path


@pytest.fixture(scope="session")
def browser(chromium_path: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def screenshots_dir() -> Path:
    SCREENSHOTS_DIR.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS_DIR


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_ipython_startup(ipython_dir: Path) -> None:
    # Lets sitecustomize see exceptions in widget callbacks, which IPython otherwise only displays.
    startup = ipython_dir / "profile_default" / "startup" / "00-browser-tests.py"
    startup.parent.mkdir(parents=True, exist_ok=True)
    startup.write_text(
        "import sitecustomize\nsitecustomize.watch_widget_callbacks(get_ipython())\n"
    )


def write_lab_settings(settings_dir: Path) -> None:
    for relative_path, values in LAB_SETTINGS.items():
        path = settings_dir / relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def server_environment(tmp: Path) -> dict[str, str]:
    """The server's environment: Jupyter's directories in `tmp`, the network guard on PYTHONPATH."""
    env = dict(os.environ)
    for variable, folder in {
        "JUPYTER_CONFIG_DIR": "config",
        "JUPYTER_RUNTIME_DIR": "runtime",
        "JUPYTER_DATA_DIR": "data",  # the venv's kernelspec and widgets come from sys.prefix
        "JUPYTERLAB_SETTINGS_DIR": "settings",
        "JUPYTERLAB_WORKSPACES_DIR": "workspaces",
        "IPYTHONDIR": "ipython",
        "MPLCONFIGDIR": "matplotlib",
    }.items():
        env[variable] = str(tmp / folder)
        (tmp / folder).mkdir(parents=True, exist_ok=True)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(SITECUSTOMIZE_DIR), os.environ.get("PYTHONPATH")])
    )
    env["COURSE_NETWORK_LOG"] = str(tmp / "network.log")
    env["COURSE_WIDGET_ERROR_LOG"] = str(tmp / "widget_errors.log")
    env.setdefault("MPLBACKEND", "Agg")
    # chapter 05 trains live here, as it does for a learner (or loads its recording, if this
    # machine is too slow), not on the recording the everyday suite uses (conftest.py)
    env.pop("COURSE_PHASE_CHANGE_RUNS", None)
    return env


def wait_until_ready(server: LabServer, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"JupyterLab exited with {process.returncode}:\n{server.server_log_tail()}")
        try:
            server.api("GET", "/api/status")
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(
        f"JupyterLab did not answer within {SERVER_START_TIMEOUT_S} s:\n{server.server_log_tail()}"
    )


def stop(process: subprocess.Popen, runtime_dir: Path) -> None:
    """Stop the server's process group, then any kernel it left behind.

    Kernels run in sessions of their own (jupyter_client starts them so), so killing the server's
    group does not reach them; they are found by their connection file in our runtime folder.
    """
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    for pid in processes_mentioning(str(runtime_dir)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended while we looked
            continue
    return [pid for pid in pids if pid != os.getpid()]


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    tmp = tmp_path_factory.mktemp("jupyterlab")
    root_dir = tmp / "notebooks"
    shutil.copytree(NOTEBOOKS_DIR, root_dir, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    env = server_environment(tmp)
    write_lab_settings(Path(env["JUPYTERLAB_SETTINGS_DIR"]))
    write_ipython_startup(Path(env["IPYTHONDIR"]))
    port, token = free_port(), token_hex(24)
    server = LabServer(
        base_url=f"http://127.0.0.1:{port}",
        token=token,
        root_dir=root_dir,
        network_log=Path(env["COURSE_NETWORK_LOG"]),
        widget_error_log=Path(env["COURSE_WIDGET_ERROR_LOG"]),
        server_log=tmp / "server.log",
    )
    command = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--allow-root",  # CI containers run as root; harmless otherwise
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: the tests read cell outputs
        "--LabApp.extension_manager=readonly",  # never query PyPI for extensions
    ]  # fmt: skip
    with server.server_log.open("w") as log:
        process = subprocess.Popen(
            command, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until_ready(server, process)
        yield server
    finally:
        stop(process, Path(env["JUPYTER_RUNTIME_DIR"]))
