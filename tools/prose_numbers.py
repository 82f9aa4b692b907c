"""Numbers typed in the notebooks' prose, and how each one is kept true.

    python tools/prose_numbers.py            list every typed number and how it is accounted for
    python tools/prose_numbers.py --check    exit 1 if a number is unaccounted for, a registered
                                             phrase is gone from the prose, or a check fails

A number the prose states about what a cell computes goes stale as soon as a model or a recipe
changes, so the rule is: a cell prints it (or an assert's message does), and the prose refers to
the printout. The markdown cells of the solution notebooks (the learner notebooks are generated
from them) may still hold numbers of these kinds, and nothing else:
- structural: section, exercise, claim and chapter numbers, list markers, a citation's year, the
  index of a layer, head or position, an exercise's difficulty line and time estimate; found by
  the patterns in `STRUCTURAL`;
- inside `code` or a $formula$: code runs, and a formula is a definition;
- registered in `REGISTERED` below, phrase by phrase, as one of
  * "paper": a number from one of the papers (or another cited source), not about our models;
  * "definition": part of a definition, a threshold the text explains, or a worked example of
    arithmetic that holds whatever the models learn;
  * "setting": a setting of the course's models, data or measurements, with a `check` that
    reads it off the objects themselves (a checkpoint's config, a language's parameters);
  * "measured": a number about what the models learned, with a `check` that recomputes it.
The test suite (tests/test_prose_numbers.py) runs `--check`.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "notebooks" / "solutions"

# a number: digits, with decimals or thousands separators, a leading sign or a percent after it
NUMBER = re.compile(r"(?<![\w.·/])[−+-]?\d+(?:[.,]\d+)*(?:\s?%)?(?![\w])")
CODE_OR_MATH = re.compile(r"```.*?```|`[^`]*`|\$\$.*?\$\$|\$[^$]*\$", re.S)
# where a number only names a place in the course or in a model, or is an authors' estimate
STRUCTURAL = [
    re.compile(p)
    for p in (
        r"(?m)^\s*#.*$",  # headings
        r"(?m)^\s*\d+\.\s",  # numbered lists
        r"(?m)^> \*\*Difficulty\*\*.*$",  # an exercise's difficulty, importance and minutes
        r"\*\*Time:\*\* about [^.]*\.",  # a chapter's time estimate
        r"[Ee]xercises?\s\d+\.\d+(?:\s?[–-]\s?\d+\.\d+)?",
        r"[Cc]laims?\s\d+(?:(?:,\s|\sand\s|–)\d+)*",
        r"[Ss]ections?\s\d+(?:(?:,\s|\sand\s|–)\d+)*",
        r"[Cc]hapters?\s\d+(?:\s?[–-]\s?\d+)?",
        r"[Nn]otebooks?\s\d+(?:(?:\s?[–-]\s?|\sand\s)\d+)?",
        r"\[\d\d · [^\]]*\]\(\d\d_\w+\.ipynb\)",  # links to chapters
        r"Argument\s\d",
        r"et\sal\.,?\s\(?\d{4}\)?",  # citations
        r"\(\d{4}\)",
        r"(?i)\blayers?\s\d\b",
        r"\blayer-\d\b",
        r"\bheads?\s\d\b",
        r"\btoken\s\d\b",
        r"\bpositions?\s\d+(?:,\s\d+)*(?:,\s…)?",
        r"\border(?:s)?\s\d(?:(?:,\s|\sand\s)\d)*",
        r"\border-\d",
        r"\b(?:rows?|columns?|entry|offset|key|keys|query)\s[−-]?\d+",
        # arithmetic on a one-letter variable: i − 1, j + 1, 1/(q + 1), r = 1, 2, …
        r"\b\d+\s?[−+·/]\s?\(?\*?[a-zA-Zα-ω]\*?\b|\b[a-zA-Zα-ω]\*?\s?[−+=<>≥≤]\s?\d+(?:,\s\d+)*",
        r"1/√\w+|1/sqrt",
        # 0 and 1 on their own: ends of a scale, an identity, an index ("a score of 1", "near 0")
        r"(?<![\w.·/])[−+-]?[01](?![\w/%]|[.,]\d)",
    )
]


@dataclass(frozen=True)
class Registered:
    """A phrase of one notebook's prose holding typed numbers, and why they may stay."""

    notebook: str  # its two-digit prefix, e.g. "02"
    phrase: str  # exactly as in the markdown (a cell's text with line breaks read as spaces)
    kind: str  # "paper", "definition", "setting" or "measured"
    why: str  # for "paper" and "definition": the source or the reason
    check: Callable[[], bool] | None = field(default=None, compare=False)


@functools.cache
def _load(name: str):
    from helpers import recipes

    return recipes.load(name)


def _cfg(name: str):
    return _load(name).model.cfg


def _language(name: str):
    return _load(name).language


def _exercises(notebook: str) -> int:
    (path,) = SOLUTIONS.glob(f"{notebook}_*.ipynb")
    return sum(source.lstrip().startswith("### Exercise") or "\n### Exercise" in source
               for _, source in markdown_cells(path))  # fmt: skip


def _code(notebook: str, *snippets: str) -> bool:
    """Whether the notebook's code (every code cell) holds each snippet: a setting the prose
    names, written in the cell that uses it."""
    (path,) = SOLUTIONS.glob(f"{notebook}_*.ipynb")
    code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells
                     if c.cell_type == "code")  # fmt: skip
    return all(snippet in code for snippet in snippets)


def _source(function: Callable, *snippets: str) -> bool:
    import inspect

    from helpers.references import original

    text = inspect.getsource(original(function))
    return all(snippet in text for snippet in snippets)


def _default(function: Callable, name: str):
    import inspect

    return inspect.signature(function).parameters[name].default


def _benchmark_seconds(*recipes: str) -> float:
    """The retraining time of the recipes in BENCHMARKS.md ("each recipe retrained"), summed."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    return sum(float(re.search(rf"^  {name}\s+([\d.]+) s$", text, re.M).group(1))
               for name in recipes)  # fmt: skip


def _chapter05_seconds(cell: str, load: str) -> float:
    """A live time of chapter 05's training cells in BENCHMARKS.md ("chapter05"): `cell` starts
    the cell's line, `load` is "quiet" or "busy"."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    line = re.search(rf"^  {re.escape(cell)}.*$", text, re.M).group()
    quiet, busy = re.search(r"live\s+([\d.]+) s quiet,\s+([\d.]+) s beside", line).groups()
    return float(quiet if load == "quiet" else busy)


def _about(stated: float, measured: float) -> bool:
    """ "About" a measured time: within a factor of 1.5 either way."""
    return measured / 1.5 <= stated <= measured * 1.5


def _recipe(name: str):
    from helpers import recipes

    return recipes.RECIPES[name]


def _corpus_python() -> str:
    import json
    import lzma

    payload = json.loads(lzma.decompress((ROOT / "data" / "text" / "prose.json.xz").read_bytes()))
    return payload["python"]


def _unseen_pair_share(name: str) -> float:
    from helpers.evals import real_text

    counts = real_text.bigram_counts(_language(name))
    return float((counts == 0).double().mean())


def _circuitsvis_megabytes() -> float:
    from importlib.resources import files

    return len(files("circuitsvis").joinpath("dist/cdn/iife.js").read_bytes()) / 1e6


def _registered() -> list[Registered]:
    from helpers import evals, phase_change
    from helpers.checks.induction import by_hand as induction_checks
    from helpers.data import PROBE_LENGTH
    from helpers.evals import real_text

    copying, bigrams = _language("copying_2l"), _language("bigram_0l")
    skip, repeats = _language("skip_trigrams_1l"), _language("induction_2l")
    rank4 = _cfg("bigram_0l_rank4")

    def shape(name: str, **expected) -> Callable[[], bool]:
        return lambda: all(getattr(_cfg(name), k) == v for k, v in expected.items())

    def live(cell: str, quiet: float, busy: float) -> Callable[[], bool]:
        return lambda: (
            _about(quiet, _chapter05_seconds(cell, "quiet"))
            and _about(busy, _chapter05_seconds(cell, "busy"))
        )

    S, D, C, M, T = "setting", "definition", "cited", "measured", "time"
    R = Registered
    # fmt: off
    return [
        # 00
        R("00", "You write 10 exercises", S, "", lambda: _exercises("00") == 10),
        R("00", "each sequence picks 4 of the 26 letters and then draws every next letter uniformly "
          "at random from those 4", S, "", lambda: (copying.k, copying.n_states) == (4, 26)),
        R("00", "about 10 s on a 2-core laptop", T, "", lambda: _about(10, _benchmark_seconds("copying_2l"))),
        R("00", "guessing uniformly among the 26 letters costs ln 26 nats", S, "", lambda: copying.n_states == 26),
        R("00", "once all 4 letters of a sequence have appeared the best possible loss is ln 4", S, "",
          lambda: copying.k == 4),
        # 01
        R("01", "Markov chain over the 26 letters", S, "", lambda: bigrams.n_states == 26),
        R("01", "(d_model = 32, more than the 27 tokens)", S, "", shape("bigram_0l", d_model=32, d_vocab=27)),
        R("01", "(about 10 s, as measured", T, "", lambda: _about(10, _benchmark_seconds("bigram_0l"))),
        R("01", "milliseconds for 100,000 tokens", D, "a speed to aim for in the exercise"),
        R("01", "the same row plus 5 give the same distribution", D, "an example of a constant added to a row"),
        R("01", "over the 26 real letters", S, "", lambda: bigrams.n_states == 26),
        R("01", "With 27 tokens and `d_model = 4`, the model can only represent rank-4", S, "",
          lambda: (rank4.d_vocab, rank4.d_model) == (27, 4)),
        R("01", "Now two rank-4 zero-layer models", S, "", lambda: rank4.d_model == 4),
        R("01", "on the language (d_model = 4)", S, "", lambda: rank4.d_model == 4),
        R("01", "nothing of rank 4 is closer", S, "", lambda: rank4.d_model == 4),
        R("01", "The trained rank-4 model pays only the small cost printed above for its 4 dimensions", S, "",
          lambda: rank4.d_model == 4),
        R("01", "Pearson r ≥ 0.95", S, "", lambda: _code("01", "assert r >= 0.95")),
        R("01", "within 0.05 nats of the chain's entropy rate", S, "", lambda: _code("01", "abs(exact_loss - H) <= 0.05")),
        # 02
        R("02", "80 % of the time", S, "", lambda: skip.p_rule == 0.8),
        R("02", "Besides the rules, 15 % of words copy", S, "", lambda: skip.p_copy == 0.15),
        R("02", "(15 % of words repeat an earlier word)", S, "", lambda: skip.p_copy == 0.15),
        R("02", "one layer of four heads (d_model 64, d_head 16)", S, "",
          shape("skip_trigrams_1l", n_layers=1, n_heads=4, d_model=64, d_head=16)),
        R("02", "trained for about 30 s (as", T, "", lambda: _about(30, _benchmark_seconds("skip_trigrams_1l"))),
        R("02", "(top-1 ≥ 0.3)", S, "", lambda: _code("02", "if diagonal_share[head] >= 0.3:")),
        R("02", "(10 of 12 heads there)", C, "the framework paper, one-layer models: copying heads"),
        R("02", "among the top-3 destinations of A and C among the top-3 outputs", S, "",
          lambda: _code("02", "source, k=3, ignore=[BOS])")),
        R("02", "The 20 strongest skip-trigrams", S, "", lambda: _code("02", "strongest_skip_trigrams(model, 0, 20,")),
        R("02", "200 random contexts of filler words before the destination", S, "",
          lambda: _code("02", "filler_contexts(language, 200, context_len=8")),
        R("02", "over the top 20, where", S, "", lambda: _code("02", "strongest_skip_trigrams(model, 0, 20,")),
        R("02", "200 random contexts of 8 filler words", S, "",
          lambda: (_default(evals.continuation_effect, "n_contexts"),
                   _default(evals.continuation_effect, "context_len")) == (200, 8)),
        R("02", "at least 3 times likelier (a change of at least ln 3", S, "",
          lambda: _code("02", "assert min(crossed.values()) >= math.log(3)")),
        R("02", "inlines 1.3 MB of JavaScript", M, "", lambda: round(_circuitsvis_megabytes(), 1) == 1.3),
        R("02", "score ≥ 0.7 here", S, "", lambda: _code("02", "assert trained >= 0.7")),
        # 03
        R("03", "four-heads-per-layer model (d_model 64, d_head 16)", S, "",
          shape("induction_2l", n_layers=2, n_heads=4, d_model=64, d_head=16)),
        R("03", "trained in about 40 s (as", T, "", lambda: _about(40, _benchmark_seconds("induction_2l"))),
        R("03", "a planted Markov chain over 52 letters", S, "", lambda: repeats.n_states == 52),
        R("03", "a random segment of 4–12 letters", S, "", lambda: tuple(repeats.segment_len) == (4, 12)),
        R("03", "(0.3 nats against 5.2 for the single heads)", C,
          "the framework paper, term importance of its two-layer model"),
        R("03", "The paper's direct path was worth 1.8 nats below uniform", C, "the framework paper, term importance"),
        R("03", "(grey band: ±2 standard deviations)", D, "the band the explorer draws around the baseline"),
        # 04
        R("04", "about 60 s together, as measured", T, "",
          lambda: _about(60, _benchmark_seconds("induction_2l", "induction_1l"))),
        R("04", "a head that raises the sequence's 10 distinct tokens indiscriminately gives the attended "
          "one a share of 1/10, a score of 2 · 0.1 − 1 = −0.8", S, "",
          lambda: PROBE_LENGTH == 10 and abs(2 / PROBE_LENGTH - 1 - (-0.8)) < 1e-9),
        R("04", "Olsson et al.'s heads scored 0.69 and 0.89 (in a 40-layer model)", C,
          "Olsson et al. (2022), copying scores of induction heads"),
        R("04", "ARENA found 31 % for the strongest induction head of its model alone and 96 % for two", C,
          "ARENA's chapter on induction heads"),
        R("04", "say 50 per matching direction", D, "a suggestion: any large value works"),
        R("04", "`length` ≥ 2 repeated random tokens", D,
          "the scores' domain: with blocks of 1 token the induction target is the query itself"),
        R("04", "(≥ 0.8 of the attention), an induction score ≥ 0.8, and a loss on repeats ≤ 0.1 ×", S, "",
          lambda: (induction_checks.PREVIOUS_NEEDED, induction_checks.INDUCTION_NEEDED,
                  induction_checks.LOSS_RATIO_NEEDED) == (0.8, 0.8, 0.1)),
        # 05
        R("05", "On a quiet 2-core laptop this cell takes about 15 s; beside a busy program, about 20 s",
          T, "", live("the two-layer model", 15, 20)),
        R("05", "in contexts of 512 tokens", C, "Olsson et al. (2022), the in-context learning score"),
        R("05", "(nats per 100 steps) falls 0.05 below the best slope so far", S, "",
          lambda: phase_change.BEND_ONSET == 0.05 and _source(phase_change.slope_fall, "* 100")),
        R("05", "must rise by 0.3, the ICL score fall by 0.3 nats, the slope fall by 0.1", S, "",
          lambda: (phase_change.MIN_RISE, phase_change.MIN_DROP, phase_change.MIN_BEND) == (0.3, 0.3, 0.1)),
        R("05", "its slope in **nats per 100 steps**", S, "", lambda: _source(phase_change.slope_fall, "* 100")),
        R("05", "less than 0.15 nats before the phase change and about 0.4 after it", C,
          "Olsson et al. (2022), Argument 1"),
        R("05", "above −0.15 before, at most −0.3 after", S, "",
          lambda: _code("05", "assert before > -0.15 and after <= -0.3")),
        R("05", "More than 100 % removed", D, "over all of it: the score changed sign"),
        R("05", "2 where it conflicts", D, "the exercise's encoding of the kinds"),
        R("05", "(live, about 10 s on a quiet 2-core laptop and about 15 s beside a busy program", T, "",
          live("the sweep", 10, 15)),
        R("05", "**segments of 4-8 tokens: never.**", S, "",
          lambda: "segments of 4-8 tokens" in phase_change.sweep_settings()),
        # 06
        R("06", "at a vocabulary of 1,024 tokens", S, "", shape("prose_1l", d_vocab=1024)),
        R("06", "cut from CPython 3.11.7's standard library", S, "", lambda: _corpus_python() == "3.11.7"),
        R("06", "(GPT-2's kind)", D, "a model's name"),
        R("06", "95 % of the pairs of a 1,024-token vocabulary are", M, "",
          lambda: round(100 * _unseen_pair_share("prose_0l")) == 95),
        R("06", "The zero-layer model trained on the prose for 1,000 steps", S, "",
          lambda: _recipe("prose_0l").training.n_steps == 1000),
        R("06", "over the pairs seen at least 5 times among the 200 most frequent tokens", S, "",
          lambda: (_default(real_text.bigram_agreement, "min_count"),
                   _default(real_text.bigram_agreement, "top")) == (5, 200)),
        R("06", "eight heads of 16 dimensions (d_model 128, n_ctx 64)", S, "",
          shape("prose_1l", n_heads=8, d_head=16, d_model=128, n_ctx=64)),
        R("06", "same prose for 1,000 steps", S, "", lambda: _recipe("prose_1l").training.n_steps == 1000),
        R("06", "had 10 of its 12 heads copying", C, "the framework paper, one-layer models: copying heads"),
        R("06", "a thousand million here (4 GB)", M, "", lambda: round(1024**3 * 4 / 1e9) == 4),
        R("06", "words seen at least 100 times", S, "",
          lambda: _default(real_text.readable_tokens, "min_count") == 100),
        R("06", "200 contexts of real held-out", S, "",
          lambda: _default(real_text.skip_trigram_probe, "n_contexts") == 200),
        R("06", "over every head's 40 strongest readable", S, "",
          lambda: _default(real_text.find_skip_trigram_bugs, "per_head") == 40),
        R("06", "two heads of 32 dimensions per layer (d_model 64) and a context of 256", S, "",
          shape("code_2l", n_layers=2, n_heads=2, d_head=32, d_model=64, n_ctx=256)),
        R("06", "for 8,000 steps (about 65 M tokens", S, "",
          lambda: (_recipe("code_2l").training.n_steps, round(8000 * 32 * 256 / 1e6)) == (8000, 66)
          and _recipe("code_2l").training.batch_size == 32),
        R("06", "one head per layer in d_model 32", S, "",
          lambda: (phase_change.sweep_settings()["base"][0].n_heads,
                   phase_change.sweep_settings()["base"][0].d_model) == (1, 32)),
        R("06", "most of the 512 tokens are rare", S, "", shape("code_2l", d_vocab=512)),
        R("06", "a 30-token span of a", S, "", lambda: _code("06", "length=30")),
        R("06", "recorded every 100 steps", S, "", lambda: _recipe("code_2l").training.eval_every == 100),
    ]
    # fmt: on


REGISTERED: list[Registered] = []  # filled by `registered()` (it imports helpers)


def registered() -> list[Registered]:
    if not REGISTERED:
        REGISTERED.extend(_registered())
    return REGISTERED


@dataclass(frozen=True)
class Found:
    notebook: str
    cell: int
    number: str
    context: str
    how: str  # "code or formula", "structural", a registered kind, or "" (unaccounted for)


def markdown_cells(path: Path) -> list[tuple[int, str]]:
    nb = nbformat.read(path, as_version=4)
    return [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"]


def _phrase_pattern(phrase: str) -> re.Pattern:
    """The phrase with any run of spaces matching any run of white space (lines wrap)."""
    return re.compile(r"\s+".join(re.escape(word) for word in phrase.split()))


def scan(paths: list[Path] | None = None) -> list[Found]:
    """Every number in the markdown of the solution notebooks, with how it is accounted for."""
    found = []
    for path in paths or sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb")):
        prefix = path.name[:2]
        registered_here = [r for r in registered() if r.notebook == prefix]
        for index, source in markdown_cells(path):
            spans: list[tuple[int, int, str]] = []
            for match in CODE_OR_MATH.finditer(source):
                spans.append((match.start(), match.end(), "code or formula"))
            for pattern in STRUCTURAL:
                for match in pattern.finditer(source):
                    spans.append((match.start(), match.end(), "structural"))
            for r in registered_here:
                for match in _phrase_pattern(r.phrase).finditer(source):
                    spans.append((match.start(), match.end(), r.kind))
            for match in NUMBER.finditer(source):
                how = next((h for s, e, h in spans if s <= match.start() and match.end() <= e), "")
                line_start = source.rfind("\n", 0, match.start()) + 1
                line_end = source.find("\n", match.end())
                context = source[line_start : line_end if line_end >= 0 else None].strip()
                found.append(Found(prefix, index, match.group(), context, how))
    return found


REGISTERED_KINDS = ("cited", "definition", "setting", "measured", "time")


def problems(found: list[Found]) -> list[str]:
    out = [f"{f.notebook} cell {f.cell}: {f.number!r} is typed in the prose: print it from the "
           f"cell, or register it in tools/prose_numbers.py ({f.context[:100]!r})"
           for f in found if not f.how]  # fmt: skip
    for r in registered():
        paths = sorted(SOLUTIONS.glob(f"{r.notebook}_*.ipynb"))
        if not any(
            _phrase_pattern(r.phrase).search(s) for p in paths for _, s in markdown_cells(p)
        ):
            out.append(f"{r.notebook}: registered phrase not in the prose any more: {r.phrase!r}")
        if r.kind in ("setting", "measured", "time"):
            if r.check is None:
                out.append(f"{r.notebook}: {r.phrase!r} is {r.kind} but has no check")
            else:
                try:
                    agrees = r.check()
                except Exception as err:  # e.g. a benchmark not run yet
                    out.append(
                        f"{r.notebook}: checking {r.phrase!r} failed: {type(err).__name__}: {err}"
                    )
                    continue
                if not agrees:
                    out.append(f"{r.notebook}: the prose says {r.phrase!r}, the code disagrees")
        elif not r.why:
            out.append(f"{r.notebook}: {r.phrase!r} needs its reason")
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    found = scan()
    if not args.check:
        for f in found:
            print(
                f"{f.notebook} [{f.cell:2d}] {f.how or 'UNACCOUNTED':16s} {f.number!r:9s} {f.context[:110]}"
            )
    counts: dict[str, int] = {}
    for f in found:
        counts[f.how or "unaccounted for"] = counts.get(f.how or "unaccounted for", 0) + 1
    print(", ".join(f"{n} {how}" for how, n in sorted(counts.items())), f"({len(found)} in all)")
    issues = problems(found)
    for line in issues:
        print(line)
    return 1 if args.check and issues else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
