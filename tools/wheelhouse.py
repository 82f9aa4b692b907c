"""Download everything the course installs into one folder, for a classroom without internet.

    python tools/wheelhouse.py DIR [--platform TAG] [--python-version X.Y]

fills DIR with every pinned requirement of requirements.txt (and their dependencies) plus the build
backend that the course's own package (`-e .`) needs, so that learners can then install with

    pip install --no-index --find-links DIR -r requirements.txt

By default it downloads for this machine (plain `pip download`). With --platform (pip's platform
tag: manylinux_2_28_x86_64, macosx_14_0_arm64, win_amd64, ...) or another --python-version, it
downloads wheels for that target instead, which works only where every pin has such a wheel.
"""

from __future__ import annotations

import argparse
import platform as host
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements.txt"
PYPROJECT = ROOT / "pyproject.toml"
THIS_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


class UsageError(Exception):
    """Bad input: reported as one line, never as a traceback."""


def downloadable_requirements(text: str) -> str:
    """requirements.txt without its editable lines (`-e .`), which `pip download` cannot take."""
    kept = [line for line in text.splitlines() if not re.match(r"\s*(-e|--editable)(\s|=|$)", line)]
    return "\n".join(kept) + "\n"


def build_requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """What an offline `pip install -e .` needs: the build-system requirements of pyproject.toml.

    With build isolation pip installs them from --find-links into a throwaway environment, so they
    must be in the wheelhouse even though nothing in requirements.txt names them. `wheel` is not
    needed: setuptools has built wheels by itself since 70.1, and the newest one is downloaded.
    """
    return list(tomllib.loads(pyproject.read_text())["build-system"]["requires"])


def pip_download_command(
    dest: Path,
    requirements_file: Path,
    extra: list[str],
    platforms: list[str] | None = None,
    python_version: str | None = None,
) -> list[str]:
    """The `pip download` command line: plain for this machine, binary-only for another target."""
    cmd = [sys.executable, "-m", "pip", "download", "--dest", str(dest)]
    cmd += ["--requirement", str(requirements_file), *extra]
    if platforms or (python_version or THIS_PYTHON) != THIS_PYTHON:
        # pip cannot run another platform's build scripts, so it insists on wheels for a
        # foreign target (and wants all three tags spelled out to pick them).
        for platform in platforms or []:
            cmd += ["--platform", platform]
        cmd += ["--python-version", python_version or THIS_PYTHON]
        cmd += ["--implementation", "cp", "--only-binary=:all:"]
    return cmd


def operating_system(tag: str) -> str:
    """The operating system (as platform.system() names it) that a pip platform tag is for."""
    for prefix, name in (("win", "Windows"), ("macosx", "Darwin"), ("ios", "iOS")):
        if tag.startswith(prefix):
            return name
    return "Linux" if "linux" in tag else tag


def failure_hint(platforms: list[str] | None) -> str:
    """Why a download for a named platform most likely failed, in a teacher's words."""
    foreign = [tag for tag in platforms or [] if operating_system(tag) != host.system()]
    if foreign:
        # pip evaluates dependency markers such as platform_system == "Linux" for this machine,
        # not for the target (pypa/pip#11664), so it asks for wheels of the wrong system's
        # dependencies (torch's CUDA packages, for one), which do not exist for the target.
        return (
            f"pip resolves dependencies for {host.system()}, not for {', '.join(foreign)} "
            "(a known pip limitation): build the wheelhouse on a machine like the learners' "
            "instead, without --platform"
        )
    return "a pin may have no wheel for that platform tag (try a newer tag, or repeat --platform)"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="course.py wheelhouse",
        description="Download every pinned requirement into DIR for an offline classroom install.",
    )
    parser.add_argument("dir", metavar="DIR", type=Path, help="folder to fill (created if needed)")
    parser.add_argument(
        "--platform",
        metavar="TAG",
        action="append",
        help="pip platform tag to download for, e.g. manylinux_2_28_x86_64, macosx_14_0_arm64, "
        "win_amd64 (default: this machine); repeat it to accept several tags, as Linux needs: "
        "pip does not count manylinux2014 wheels as manylinux_2_28 ones",
    )
    parser.add_argument(
        "--python-version",
        metavar="X.Y",
        default=THIS_PYTHON,
        help=f"Python version to download for (default: {THIS_PYTHON})",
    )
    args = parser.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python_version):
        raise UsageError(f"--python-version must look like 3.11, not {args.python_version!r}")
    for tag in args.platform or []:
        if not re.fullmatch(r"[A-Za-z0-9_.]+", tag):
            raise UsageError(
                f"--platform must be a pip platform tag such as win_amd64, not {tag!r}"
            )
    if args.dir.exists() and not args.dir.is_dir():
        raise UsageError(f"{args.dir} exists and is not a folder")
    return args


def summary(dest: Path) -> str:
    files = [path for path in dest.iterdir() if path.is_file()]
    megabytes = sum(path.stat().st_size for path in files) / 1e6
    return f"{len(files)} files, {megabytes:.0f} MB in {dest}"


def main(argv: list[str]) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exit_:  # argparse has already printed the usage and its message
        return exit_.code if isinstance(exit_.code, int) else 2
    except UsageError as error:
        print(f"wheelhouse: error: {error}", file=sys.stderr)
        return 2

    dest = args.dir.resolve()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"wheelhouse: error: cannot create {dest}: {error.strerror}", file=sys.stderr)
        return 2
    target = f"{' + '.join(args.platform or ['this machine'])}, Python {args.python_version}"
    extra = build_requirements()
    with tempfile.TemporaryDirectory() as tmp:
        filtered = Path(tmp) / "requirements.txt"
        filtered.write_text(downloadable_requirements(REQUIREMENTS.read_text()))
        cmd = pip_download_command(dest, filtered, extra, args.platform, args.python_version)
        print(f"Downloading the pins of {REQUIREMENTS.name} and {' '.join(extra)} for {target}:")
        print("  " + " ".join(cmd), flush=True)
        # From the course folder, as learners install: a relative path in a pin means the same.
        returncode = subprocess.run(cmd, cwd=ROOT).returncode
    if returncode != 0:
        hint = failure_hint(args.platform) if args.platform else "see pip's message above"
        print(
            f"wheelhouse: error: pip download failed (exit {returncode}) for {target}: {hint}.",
            file=sys.stderr,
        )
        return returncode

    sdists = sorted(p.name for p in dest.iterdir() if p.name.endswith((".tar.gz", ".zip")))
    if sdists:
        # An sdist is built on the learner's machine, and its own build backend is not here.
        print(f"Note: source distributions, built at install time: {', '.join(sdists)}")
    print(f"Wheelhouse ready: {summary(dest)}.")
    print(f"Learners install with: pip install --no-index --find-links {dest} -r requirements.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
