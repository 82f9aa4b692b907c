"""The repository stands alone: whatever a file of it cites (a document, a module, a tool) is in the
repository, and nothing points outside it."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".toml", ".txt", ".cfg", ""}
# a cited document (NAME.md) or a path inside the repository's own folders
CITED_DOCUMENT = re.compile(r"(?<![\w/.-])([\w-]+\.md)\b")
PLACEHOLDERS = {"NAME.md", "missing.md"}  # in this file, and a file a test makes not to exist
CITED_PATH = re.compile(r"(?<![\w/.-])((?:helpers|tools|tests|notebooks|data)/[\w/.-]*\w)")


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return [ROOT / f for f in listed if Path(f).suffix in TEXT_SUFFIXES and (ROOT / f).is_file()]


def _exists(cited: str) -> bool:
    if "{" in cited or "*" in cited or "NN" in cited:  # a pattern, e.g. notebooks/NN_*.ipynb
        return True
    path = ROOT / cited.rstrip(".")
    return path.exists() or path.with_suffix(".py").exists() or any(ROOT.glob(f"{cited}*"))


def test_every_cited_document_and_path_is_in_the_repository():
    missing = []
    for path in tracked_text_files():
        text = path.read_text(errors="replace")
        for name in set(CITED_DOCUMENT.findall(text)) - PLACEHOLDERS:
            if not (ROOT / name).exists() and not list(ROOT.glob(f"*/{name}")):
                missing.append(f"{path.relative_to(ROOT)} cites {name}")
        for cited in set(CITED_PATH.findall(text)):
            if not _exists(cited):
                missing.append(f"{path.relative_to(ROOT)} cites {cited}")
    assert not missing, "\n".join(sorted(missing))


def test_nothing_points_outside_the_repository():
    outside = re.compile(r"\.\./shared|shared/reference|/work/|/root/|/home/\w+")
    found = [
        f"{path.relative_to(ROOT)}: {match.group()}"
        for path in tracked_text_files()
        if path.name != Path(__file__).name
        for match in outside.finditer(path.read_text(errors="replace"))
    ]
    assert not found, "\n".join(found)
