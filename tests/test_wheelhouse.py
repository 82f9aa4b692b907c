"""tools/wheelhouse.py downloads every pin into one folder, from which a classroom installs offline.

The fast tests check the pip command lines and the error handling without downloading anything;
the slow one builds a real wheelhouse and installs the course from it into a fresh venv, with
every package index switched off.
"""

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import wheelhouse  # noqa: E402

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def pins(text: str) -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+==[^\s#;]+)", text, flags=re.MULTILINE))


def test_the_downloaded_requirements_drop_the_editable_course_and_keep_every_pin():
    text = (ROOT / "requirements.txt").read_text()
    assert "-e ." in text.splitlines()
    filtered = wheelhouse.downloadable_requirements(text)
    assert not any(line.strip().startswith(("-e", "--editable")) for line in filtered.splitlines())
    assert pins(filtered) == pins(text) and "torch==2.13.0" in pins(filtered)
    assert wheelhouse.downloadable_requirements("a==1\n--editable=.\n-e ./sub\nb==2\n") == (
        "a==1\nb==2\n"
    )


def test_the_build_backend_of_the_course_package_is_downloaded_too():
    assert "setuptools>=61" in wheelhouse.build_requirements()


def test_the_command_for_this_machine_is_a_plain_pip_download(tmp_path):
    cmd = wheelhouse.pip_download_command(tmp_path, tmp_path / "req.txt", ["setuptools>=61"])
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert cmd[4:] == [
        "--dest",
        str(tmp_path),
        "--requirement",
        str(tmp_path / "req.txt"),
        "setuptools>=61",
    ]
    # the interpreter's own version is no foreign target either
    assert (
        wheelhouse.pip_download_command(tmp_path, tmp_path / "req.txt", [], None, PYTHON)
        == cmd[:-1]
    )


def test_a_named_platform_asks_for_wheels_of_that_platform_and_python(tmp_path):
    cmd = wheelhouse.pip_download_command(tmp_path, tmp_path / "r", [], ["win_amd64"], "3.12")
    tail = ["--platform", "win_amd64", "--python-version", "3.12", "--implementation", "cp"]
    assert cmd[-7:] == [*tail, "--only-binary=:all:"]
    linux = ["manylinux_2_28_x86_64", "manylinux2014_x86_64"]
    cmd = wheelhouse.pip_download_command(tmp_path, tmp_path / "r", [], linux)
    assert cmd.count("--platform") == 2 and cmd[cmd.index("--python-version") + 1] == PYTHON
    # another Python alone is a foreign target as well: pip then insists on wheels
    other = "3.99"
    cmd = wheelhouse.pip_download_command(tmp_path, tmp_path / "r", [], None, other)
    assert "--platform" not in cmd and "--only-binary=:all:" in cmd and other in cmd


class Calls(list):
    returncode = 0  # what the stand-in pip exits with


@pytest.fixture
def pip(monkeypatch):
    """Stands in for `pip download`: records the command and leaves one wheel in the folder."""
    calls = Calls()

    def fake_run(cmd, cwd):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("--dest") + 1])
        requirements = Path(cmd[cmd.index("--requirement") + 1]).read_text()
        assert "-e ." not in requirements.splitlines() and "torch==2.13.0" in requirements
        (dest / "a-1.0-py3-none-any.whl").write_bytes(b"x" * 2_000_000)
        return subprocess.CompletedProcess(cmd, calls.returncode)

    monkeypatch.setattr(wheelhouse.subprocess, "run", fake_run)
    return calls


def test_main_fills_the_folder_and_tells_how_learners_install(tmp_path, pip, capsys):
    dest = tmp_path / "new" / "wheels"
    assert wheelhouse.main([str(dest)]) == 0
    out = capsys.readouterr().out
    assert len(pip) == 1 and "--platform" not in pip[0]
    assert f"1 files, 2 MB in {dest}" in out
    assert f"pip install --no-index --find-links {dest} -r requirements.txt" in out


def test_a_failed_download_for_another_system_says_why(tmp_path, pip, capsys, monkeypatch):
    pip.returncode = 1
    monkeypatch.setattr(wheelhouse.host, "system", lambda: "Linux")
    assert wheelhouse.main([str(tmp_path), "--platform", "win_amd64"]) == 1
    err = capsys.readouterr().err
    assert "pip download failed (exit 1) for win_amd64" in err
    assert "a machine like the learners'" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{dir}", "--colour", "blue"], "unrecognized arguments: --colour"),
        ([], "the following arguments are required: DIR"),
        (["{dir}", "--python-version", "3"], "--python-version must look like 3.11"),
        (["{dir}", "--platform", "win amd64"], "--platform must be a pip platform tag"),
        (["{file}"], "exists and is not a folder"),
    ],
)
def test_bad_input_is_one_clear_error_and_no_download(tmp_path, pip, capsys, argv, message):
    (tmp_path / "file").write_text("not a folder")
    argv = [a.format(dir=tmp_path / "wheels", file=tmp_path / "file") for a in argv]
    assert wheelhouse.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert pip == [] and not (tmp_path / "wheels").exists()


@pytest.mark.slow
def test_the_course_installs_from_the_wheelhouse_with_every_index_off(tmp_path):
    wheels = tmp_path / "wheels"
    start = time.monotonic()
    assert wheelhouse.main([str(wheels)]) == 0
    downloaded = time.monotonic()
    megabytes = sum(p.stat().st_size for p in wheels.iterdir()) / 1e6

    # No configuration file (PIP_CONFIG_FILE=os.devnull makes pip skip them all) and no PIP_*
    # variable (this machine sets PIP_FIND_LINKS, which a config file cannot switch off).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1"}
    env.pop("VIRTUAL_ENV", None)
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    python = tmp_path / "venv" / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    config = subprocess.run(
        [python, "-m", "pip", "config", "list"], env=env, capture_output=True, text=True
    ).stdout
    assert not re.search(r"find-links|index-url|constraint", config.replace("no-index", ""))

    install = [python, "-m", "pip", "install", "--no-index", "--find-links", wheels]
    subprocess.run([*install, "-r", "requirements.txt"], cwd=ROOT, env=env, check=True)
    installed = time.monotonic()
    print(
        f"\nwheelhouse: download {downloaded - start:.0f} s, {megabytes:.0f} MB; "
        f"offline install {installed - downloaded:.0f} s"
    )

    imports = "import torch, helpers, ipywidgets, jupyterlab, circuitsvis, nbval; "
    version = subprocess.run(
        [python, "-c", imports + "print(torch.__version__)"],
        cwd=tmp_path,  # helpers must come from the install, not from the current folder
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert version.startswith("2.13.0")


def test_course_py_installs_from_a_wheelhouse_in_the_course_folder(tmp_path, monkeypatch):
    """With `wheelhouse/` beside course.py, the set-up commands install from it alone."""
    spec = importlib.util.spec_from_file_location("course_py", ROOT / "course.py")
    course = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(course)
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.touch()  # an existing venv whose requirements changed
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("torch==2.13.0\n")
    commands = []
    monkeypatch.setattr(course, "PYTHON", python)
    monkeypatch.setattr(course, "STAMP", tmp_path / "venv" / "stamp")
    monkeypatch.setattr(course, "REQUIREMENTS", requirements)
    monkeypatch.setattr(course.subprocess, "run", lambda cmd, **kw: commands.append(cmd))
    for present in (False, True):
        monkeypatch.setattr(course, "WHEELHOUSE", tmp_path / "wheelhouse")
        if present:
            (tmp_path / "wheelhouse").mkdir()
        (tmp_path / "venv" / "stamp").unlink(missing_ok=True)
        course.ensure_environment()
    online, offline = commands
    assert "--no-index" not in online
    assert offline[offline.index("--no-index") + 1 : offline.index("--no-index") + 3] == [
        "--find-links", str(tmp_path / "wheelhouse"),
    ]  # fmt: skip
