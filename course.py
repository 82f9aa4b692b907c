"""One entry point for the course. Needs only Python 3.11 or newer.

    python3 course.py lab          open the course in JupyterLab
    python3 course.py test         run the test suite (unit tests, notebooks, browser tests)
    python3 course.py test -m slow the checks that are slow by nature (retraining; CI runs both)
    python3 course.py checkpoints  retrain every checkpoint in data/ from its seed
    python3 course.py notebooks    regenerate the learner notebooks from the solution notebooks

For teachers (see TEACHING.md):
    python3 course.py site              build a static site of the course under site/
    python3 course.py progress [DIR..]  run a learner's notebooks headless: which exercises are
                                        done, failing (and why) or not started; --json for tools
    python3 course.py wheelhouse DIR    download every pinned requirement into DIR, for a
                                        classroom without internet (see README)

Every command first makes sure the virtual environment `.venv/` exists and matches
`requirements.txt`, creating or updating it when needed (first use: a few minutes). If the
course folder holds a `wheelhouse/` folder (made by `course.py wheelhouse wheelhouse`), it
installs from there alone, with no internet.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
REQUIREMENTS = ROOT / "requirements.txt"
STAMP = VENV / "requirements.sha256"
WHEELHOUSE = ROOT / "wheelhouse"  # a classroom's offline copy of every requirement, if present
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def ensure_environment() -> None:
    """Create `.venv` and install the pinned requirements, unless that was already done."""
    if sys.version_info < (3, 11):  # noqa: UP036 (this file may be run by an older Python)
        sys.exit(f"The course needs Python 3.11 or newer; this is {sys.version.split()[0]}.")
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if PYTHON.exists() and STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    if not PYTHON.exists():
        print(f"Creating the virtual environment {VENV.relative_to(ROOT)}/ ...", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    print("Installing the course's requirements (first use only; a few minutes) ...", flush=True)
    offline = []
    if WHEELHOUSE.is_dir():
        print(f"(from {WHEELHOUSE.name}/, without the internet)", flush=True)
        offline = ["--no-index", "--find-links", str(WHEELHOUSE)]
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "--quiet", *offline, "-r", str(REQUIREMENTS)],
        cwd=ROOT,
        check=True,
    )
    STAMP.write_text(wanted + "\n")


def run(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> int:
    return subprocess.run([str(PYTHON), *args], cwd=cwd, env=env).returncode


# JupyterLab asks the internet for news and for updates of itself and of extensions; the course
# runs offline, so those requests are switched off (the settings live inside .venv).
LAB_OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}
}


def cmd_lab(extra: list[str]) -> int:
    overrides = VENV / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    overrides.parent.mkdir(parents=True, exist_ok=True)
    overrides.write_text(json.dumps(LAB_OVERRIDES, indent=2) + "\n")
    args = ["--notebook-dir", str(ROOT / "notebooks"), "--LabApp.extension_manager=readonly"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--allow-root")  # containers and workshop VMs often run as root
    return run("-m", "jupyterlab", *args, *extra)


def cmd_test(extra: list[str]) -> int:
    env = dict(os.environ)
    # The test suite never needs the network; keep Jupyter and matplotlib from writing into $HOME.
    env.setdefault("MPLBACKEND", "Agg")
    # Tests run side by side on every core (pytest-xdist; a notebook's cells stay together, see
    # tests/conftest.py), each worker with one thread: the course's models are too small for
    # two threads to beat two processes.
    env.setdefault("OMP_NUM_THREADS", "1")
    workers = min(4, os.cpu_count() or 1)
    if workers > 1 and not any(a.startswith(("-n", "--numprocesses", "--dist")) for a in extra):
        extra = ["-n", str(workers), "--dist", "loadscope", *extra]
    status = run("-m", "pytest", *extra, env=env)
    if status == 5:  # pytest's "no tests collected" must not pass as green
        print("No tests were collected: that is a failure.")
        return 1
    return status


def cmd_checkpoints(extra: list[str]) -> int:
    return run("-m", "helpers.recordings", *extra)


def cmd_notebooks(extra: list[str]) -> int:
    return run(str(ROOT / "tools" / "build_learner_notebooks.py"), *extra)


def tool(script: str):
    """A command that runs tools/<script> with the user's arguments, from the user's folder (so
    that the paths they type mean what they expect)."""
    return lambda extra: run(str(ROOT / "tools" / script), *extra, cwd=Path.cwd())


COMMANDS = {
    "lab": cmd_lab,
    "test": cmd_test,
    "checkpoints": cmd_checkpoints,
    "notebooks": cmd_notebooks,
    "site": tool("build_site.py"),
    "progress": tool("progress.py"),
    "wheelhouse": tool("wheelhouse.py"),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    ensure_environment()
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
