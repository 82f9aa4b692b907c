"""The README's table of the paper's claims: which notebook checks which claim, with the value it
measured. Generated from the notebooks themselves, and checked by the test suite to be current.

    python tools/claims.py           execute the solution notebooks and rewrite the README's table
    python tools/claims.py --check   exit 1 if the table is not what the notebooks print

How a notebook states a claim: the code cell that asserts claim N carries the cell tag `claim-N`
and, after its asserts, prints one line

    Claim N ✔ <what was measured> (bound: <the threshold asserted>)

The numbers are the course's own, fixed once: the README's table is where a reader finds them, and
`CLAIMS` below holds each claim's statement in the course's words.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SOLUTIONS = ROOT / "notebooks" / "solutions"
START, END = "<!-- claims table: start -->", "<!-- claims table: end -->"
LINE = re.compile(r"^Claim (\d+) ✔ (.*?)(?: \(bounds?: (.*)\))?$")
TAG = re.compile(r"^claim-(\d+)$")

CLAIMS = {
    1: "Heads are independent and additive: concatenating the heads and applying W_O is the sum of each head's own output",
    2: "A one-layer model's logits are exactly the direct path plus, per head, its attention pattern applied to its full OV circuit",
    3: "With the attention patterns frozen, the logits are a linear function of the input embeddings",
    4: "Each head's W_OV and W_QK are low-rank: rank d_head, below d_model",
    5: "A zero-layer model is a bigram table: W_E W_U matches the bigram log-likelihood up to a constant per row, and its loss reaches the entropy rate",
    6: "In a two-layer model the direct path (order 0) is worth a share of the loss on its own",
    7: "Most heads of a one-layer model copy: their OV circuits have mostly positive eigenvalues, unlike at initialisation",
    8: "Copying shows on the OV circuit's diagonal: most tokens raise their own logit most",
    9: "Skip-trigrams read off the QK and OV circuits predict what inserting the source token does",
    10: "The factored form has a bug: a head that learned keep … in → mind and keep … at → bay also raises keep … in → bay",
    11: "Some heads are positional: from positions alone they attend to the previous token",
    12: "Layer 0 of the two-layer model has a previous-token head",
    13: "Layer 1 has induction heads (prefix matching on repeated random tokens); the one-layer control has none",
    14: "Induction heads copy what they attend to",
    15: "On repeated random tokens two layers predict the repeats; one layer cannot",
    16: "The induction heads rely on K-composition with the previous-token head",
    17: "Composition scores of random heads are about 1/sqrt(d_model): the baseline to compare with",
    18: "Induction heads have a copying OV circuit and a same-token-matching K-composition term (both mostly positive eigenvalues)",
    19: "The K-composition term of an induction head's QK circuit matches same tokens (its diagonal wins)",
    20: "Without the previous-token head the induction effect disappears",
    21: "Virtual heads (V-composition, order 2) add little to the loss next to single heads",
    22: "The second layer's heads carry the first-order terms; the first layer's add little on their own",
    23: "The phase change: induction heads, in-context learning and the loss curve change together; the one-layer control does not",
    24: "In-context learning score: late tokens get easier after the phase change only",
    25: "Ablating the induction heads removes the in-context learning",
    26: "Smeared keys let a one-layer model form induction heads, and a two-layer model form them earlier",
    27: "After the phase change, repeated bigrams get easier and conflicting continuations harder",
    28: "λ(AB) = λ(BA): the full OV circuit's non-zero eigenvalues are those of a d_head × d_head matrix",
    29: "The residual stream has no privileged basis: rotating it in every weight leaves the logits unchanged",
    30: "Heads write into small subspaces, and virtual weights carry exactly what a later head reads of an earlier one",
    31: "Composition is reading what was written: induction heads' keys read the previous-token head's subspace",
    32: "Real text, zero layers: W_E W_U is the corpus's bigram table, and predicts held-out text as well as it",
    33: "Real text, one layer: some heads copy (mostly positive OV eigenvalues), none at initialisation",
    34: "Real text: the strongest skip-trigrams read off the circuits raise their output when the source is written into held-out contexts",
    35: "Real text: the skip-trigram bug, a crossed continuation the corpus never shows, raised by a head that learned both rules",
    36: "Real text, two layers (code): an induction head with a previous-token head, the K-composition mechanism, and ablations that remove the in-context gain",
    37: "Real text: in the recorded training, prefix matching rises when the in-context-learning score falls",
}


def claim_tags(cell) -> list[int]:
    return [int(m.group(1)) for t in cell.metadata.get("tags", []) if (m := TAG.match(t))]


def claims_of(nb: nbformat.NotebookNode, name: str) -> dict[int, tuple[str, str, str]]:
    """{claim: (notebook name, measured, bound)} from an executed notebook's claim cells."""
    found = {}
    for index, cell in enumerate(nb.cells):
        numbers = claim_tags(cell)
        if not numbers:
            continue
        text = "".join(
            o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout"
        )
        lines = {
            int(m.group(1)): m for line in text.splitlines() if (m := LINE.match(line.strip()))
        }
        for n in numbers:
            if n not in lines:
                raise ValueError(
                    f"{name}, cell {index}: tagged claim-{n} but prints no 'Claim {n} ✔' line"
                )
            found[n] = (name, lines[n].group(2), lines[n].group(3) or "")
        if extra := sorted(set(lines) - set(numbers)):
            raise ValueError(f"{name}, cell {index}: prints claims {extra} it is not tagged with")
    return found


def table(claims: dict[int, tuple[str, str, str]]) -> str:
    rows = [
        "| # | the paper's claim (in our words) | checked in | measured | bound |",
        "|---|---|---|---|---|",
    ]
    for n in sorted(claims):
        name, measured, bound = claims[n]
        link = f"[{name[:2]}](notebooks/solutions/{name})"
        cells = (CLAIMS[n], link, measured, bound)
        rows.append(f"| {n} | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


def execute(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()  # fmt: skip
    return nb


def readme_table(text: str | None = None) -> str:
    text = README.read_text() if text is None else text
    if START not in text or END not in text:
        raise ValueError(f"README.md lacks the markers {START} … {END}")
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def readme_rows() -> dict[int, str]:
    """The README table's rows by claim number."""
    rows = {}
    for line in readme_table().splitlines():
        if m := re.match(r"^\| (\d+) \|", line):
            rows[int(m.group(1))] = line
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; change nothing")
    args = parser.parse_args(argv)
    claims: dict[int, tuple[str, str, str]] = {}
    for path in sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb")):
        print(f"executing {path.name} ...", flush=True)
        claims |= claims_of(execute(path), path.name)
    new = table(claims)
    if args.check:
        if new != readme_table():
            print("README.md's claims table is out of date: run `python tools/claims.py`.")
            return 1
        return 0
    text = README.read_text()
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    README.write_text(f"{before}{START}\n{new}\n{END}{after}")
    print(f"wrote the claims table: {len(claims)} claims")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
