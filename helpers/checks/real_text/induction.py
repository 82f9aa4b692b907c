"""Exercises 6.4, 6.5 and 6.6: the skip-trigram bug searched for in a corpus (crossed
continuations), the share of the repeat's gain an ablation removes, and the ICL score over bands
of positions."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from helpers import evals, phase_change
from helpers.checks._base import CheckFailed, generator, random_models
from helpers.checks._judge import Case, expect_float, read_triple, same
from helpers.checks._registry import Exercise, declare
from helpers.checks.phase_change import icl_describer
from helpers.data import BOS
from helpers.evals import real_text

Triple = tuple[int, int, int]

# ---- 6.4 crossed continuations -------------------------------------------------------------------


def _crossed(
    rules: list[Triple],
    counts: Tensor,
    *,
    support: str = "d, o",
    both_supported: bool = True,
    check: str = "== 0",
    orders: str = "both",
    same_source: bool = True,
    unique: bool = True,
) -> list[Triple]:
    """The crossed continuations of `rules`, or a mistake's: `support` reads each rule's bigram
    as counts[d, o] ("d, o"), counts[o, d] ("o, d") or not at all ("none"), of both rules of a
    pair or (`both_supported=False`) of the first only; `check` keeps a
    crossed bigram counts[d1, o2] that is 0 ("== 0"), one that is not ("> 0"), counts[o2, d1]
    that is 0 ("transposed"), any ("none") or only when the other crossing's, counts[d2, o1], is 0
    too ("both"); `orders` pairs every two rules both ways ("both")
    or only an earlier rule with a later one ("earlier first") or the other way ("later first");
    `same_source=False` crosses rules of different sources; `unique=False` keeps a triple crossed
    from two pairs twice. (Two rules of one source that share a destination or an output cross
    to a bigram of one of them, which the corpus shows: leaving out that condition changes
    nothing, so it is no mistake here.)"""
    counts = counts.tolist()  # lists: indexing a tensor one cell at a time is slow
    kept = {"d, o": [r for r in rules if counts[r[1]][r[2]] > 0],
            "o, d": [r for r in rules if counts[r[2]][r[1]] > 0], "none": list(rules)}[support]  # fmt: skip
    found = []
    for i, (s1, d1, o1) in enumerate(kept):
        for j, (s2, d2, o2) in enumerate(kept if both_supported else rules):
            if (orders == "earlier first" and j <= i) or (orders == "later first" and j >= i):
                continue
            if (same_source and s1 != s2) or d1 == d2 or o1 == o2:
                continue
            keep = {"== 0": counts[d1][o2] == 0, "> 0": counts[d1][o2] > 0,
                    "transposed": counts[o2][d1] == 0, "none": True,
                    "both": counts[d1][o2] == 0 and counts[d2][o1] == 0}[check]  # fmt: skip
            if keep:
                found.append((s1, d1, o2))
    return sorted(set(found)) if unique else sorted(found)


def _in_order_found(rules: list[Triple], counts: Tensor) -> list[Triple]:
    """The right triples in the order the nested loops find them (each once): not sorted."""
    found: list[Triple] = []
    counts = counts.tolist()
    supported = [r for r in rules if counts[r[1]][r[2]] > 0]
    for s1, d1, o1 in supported:
        for s2, d2, o2 in supported:
            crossed = (s1, d1, o2)
            if s1 == s2 and d1 != d2 and o1 != o2 and counts[d1][o2] == 0 and crossed not in found:
                found.append(crossed)
    return found


def _draw_rules(rng: torch.Generator, d_vocab: int, per_source: list[int], pool: int):
    """Distinct rules (source, destination, output), `per_source[i]` of source i, destinations
    and outputs drawn from a pool of `pool` tokens each (a small pool: rules of one source share
    destinations and outputs), in a random order (as a head's ranking gives them, not sorted)."""
    tokens = torch.randperm(d_vocab - 1, generator=rng)[: len(per_source)] + 1  # BOS is no source
    rules: set[Triple] = set()
    for source, n in zip(tokens.tolist(), per_source, strict=True):
        dests = (torch.randperm(d_vocab - 1, generator=rng)[:pool] + 1).tolist()
        outs = (torch.randperm(d_vocab - 1, generator=rng)[:pool] + 1).tolist()
        mine: set[Triple] = set()
        while len(mine) < n:
            d, o = (int(torch.randint(pool, (), generator=rng)) for _ in range(2))
            mine.add((source, dests[d], outs[o]))
        rules |= mine
    order = torch.randperm(len(rules), generator=rng).tolist()
    listed = sorted(rules)
    return [listed[i] for i in order]


def _crossed_mistakes(rules: list[Triple], counts: Tensor, expected: list[Triple]) -> list:
    return [
        ("rules the corpus does not support were kept: cross only the rules whose bigram the "
         "corpus shows, counts[destination, output] > 0.", _crossed(rules, counts, support="none")),
        ("only the first rule of each pair was checked for support: cross two rules only when "
         "the corpus shows both their bigrams.",
         _crossed(rules, counts, support="d, o", both_supported=False)),
        ("the support was read as counts[output, destination]: counts is [current, next], so a "
         "rule's bigram destination → output is counts[destination, output].",
         _crossed(rules, counts, support="o, d")),
        ("the crossed bigram's count was not checked: keep a crossed skip-trigram only when the "
         "corpus never shows its bigram, counts[first destination, second output] == 0.",
         _crossed(rules, counts, check="none")),
        ("the crossed bigrams kept are those the corpus shows; keep those it never shows, "
         "counts[first destination, second output] == 0.", _crossed(rules, counts, check="> 0")),
        ("a crossed skip-trigram was kept only when the pair's other crossed bigram, counts[second "
         "destination, first output], is 0 too: each crossed skip-trigram (source, first "
         "destination, second output) depends on its own bigram only, counts[d1, o2] == 0.",
         _crossed(rules, counts, check="both")),
        ("the crossed bigram was read as counts[second output, first destination]: its bigram is "
         "first destination → second output, counts[d1, o2].",
         _crossed(rules, counts, check="transposed")),
        ("each pair of rules was crossed one way only (each rule with those after it): the pair "
         "(A, B) crosses to A's destination with B's output, and (B, A) to B's destination with "
         "A's output; loop over both orders.", _crossed(rules, counts, orders="earlier first")),
        ("each pair of rules was crossed one way only (each rule with those before it): the pair "
         "(A, B) crosses to A's destination with B's output, and (B, A) to B's destination with "
         "A's output; loop over both orders.", _crossed(rules, counts, orders="later first")),
        ("rules of different sources were crossed: the bug is two rules of one source (the head "
         "attends to the same token for both).", _crossed(rules, counts, same_source=False)),
        ("a crossed skip-trigram found from two pairs of rules is listed twice: return each "
         "once (a set, then sorted).", _crossed(rules, counts, unique=False)),
        ("the triples are (first destination, source, second output): return (source, first "
         "destination, second output).", sorted((d, s, o) for s, d, o in expected)),
        ("the crossed skip-trigrams are not sorted: return sorted(...) of them.",
         _in_order_found(rules, counts)),
    ]  # fmt: skip


def _all_apart(right: list[Triple], mistakes: list[tuple[str, list[Triple]]]) -> bool:
    """Whether every mistake gives another answer than the right one, than every other mistake
    and than nothing (so that a wrong answer here names one mistake only, and [] none)."""
    answers = {}
    for description, value in mistakes:
        if "not sorted" not in description:  # any other order is said to be unsorted anyway
            answers[description] = value
    values = [right, [], *answers.values()]  # and none is empty, as a stub's answer may be
    return all(a != b for i, a in enumerate(values) for b in values[i + 1 :])


def _seen_once_decides(rules: list[Triple], counts: Tensor) -> bool:
    """Whether a rule whose bigram the corpus shows once takes part in a crossed skip-trigram
    (so that reading "supported" as a count above 1 changes the answer)."""
    right = _crossed(rules, counts)
    once = [(s, d, o) for s, d, o in rules if int(counts[d, o]) == 1]
    return any(t[0] == s and (t[1] == d or t[2] == o) for s, d, o in once for t in right)


def _crossed_tags(rules: list[Triple], counts: Tensor, expected: list[Triple]) -> set[str]:
    """The structures a case exercises, read from its data."""
    tags = set()
    sources = [s for s, _, _ in rules]
    if len(set(sources)) > 1:
        tags.add("several sources")
    by_source: dict[int, list[Triple]] = {}
    for rule in rules:
        by_source.setdefault(rule[0], []).append(rule)
    shared = [group for group in by_source.values() if len(group) > 1]
    if shared:
        tags.add("rules sharing a source")
    if any(len({d for _, d, _ in g}) < len(g) for g in shared):
        tags.add("rules with the same destination")
    if any(len({o for _, _, o in g}) < len(g) for g in shared):
        tags.add("rules with the same output")
    if any(int(counts[d, o]) == 0 for _, d, o in rules):
        tags.add("an unsupported rule")
    if any(int(counts[d, o]) == 1 for _, d, o in rules):
        tags.add("a rule seen once")
    if _crossed(rules, counts, check="> 0"):
        tags.add("a crossed bigram the corpus shows")
    if len(_crossed(rules, counts, unique=False)) > len(expected):
        tags.add("a triple crossed from two pairs")
    if not expected:
        tags.add("no crossed continuation")
    return tags


def _crossed_cases(seed: int) -> list[Case]:
    """Random rules (sources of several rules and of one, sharing destinations and outputs) and a
    sparse count table, in int64 or int32: one drawn again until every common mistake changes
    the answer (so that each is seen, a triple crossed from two pairs among them), one until the
    answer has several sources and a bigram seen once decides it, one as it comes, and one whose
    crossed bigrams the corpus all shows (nothing to return)."""
    cases = []
    layouts = (  # d_vocab, rules per source, pool of destinations and outputs, density, dtype
        (14, [5, 4, 1], 3, 0.55, torch.int64),
        (19, [5, 3, 2, 1], 3, 0.45, torch.int32),
        (11, [3, 3], 4, 0.5, torch.int64),
    )
    for i, (d_vocab, per_source, pool, density, dtype) in enumerate(layouts):
        rng = generator(seed + 100 * i)
        for _ in range(500):  # until the draw shows what it is for (most do within a few tries)
            rules = _draw_rules(rng, d_vocab, per_source, pool)
            seen = torch.rand(d_vocab, d_vocab, generator=rng) < density
            # counts from 1 to 5: many bigrams seen once, as in a corpus (so that > 0 is not > 1)
            counts = (torch.randint(1, 6, (d_vocab, d_vocab), generator=rng) * seen).to(dtype)
            right = _crossed(rules, counts)  # the reference's answer, faster to draw again on
            if i == 0 and _all_apart(right, _crossed_mistakes(rules, counts, right)):
                break  # every common mistake shows, each its own way
            if i == 1 and len({s for s, _, _ in right}) > 1 and _seen_once_decides(rules, counts):
                break  # an answer of one source only, or "> 1" for "> 0", shows
            if i == 2:
                break
        expected = real_text.crossed_continuations(rules, counts)
        cases.append(
            _crossed_case(rules, counts, expected, _crossed_mistakes(rules, counts, expected))
        )
    # every crossed bigram seen: the answer is empty, so a list found without the count's check
    # (or with the count read the wrong way) shows
    rng = generator(seed + 300)
    rules = _draw_rules(rng, 12, [3, 2], 3)
    counts = torch.randint(1, 9, (12, 12), generator=rng)
    counts[0] = 0  # BOS is followed by nothing
    expected = real_text.crossed_continuations(rules, counts)
    cases.append(_crossed_case(rules, counts, expected, _crossed_mistakes(rules, counts, expected)))
    return cases


def _crossed_case(rules, counts, expected, mistakes) -> Case:
    n_sources = len({s for s, _, _ in rules})
    where = (f"{len(rules)} rules of {n_sources} sources, a {counts.shape[0]}×{counts.shape[1]} "
             f"count table with {int((counts > 0).sum())} bigrams seen")  # fmt: skip
    return Case((rules, counts), expected, mistakes, where,
                tags=_crossed_tags(rules, counts, expected),
                describe=_crossed_describer(expected))  # fmt: skip


def _crossed_describer(expected: list[Triple]):
    """What to say of a wrong list that no common mistake explains: repeats, the order, or which
    triples are missing and which should not be there."""

    def describe(answer: list[Triple]) -> str:
        if len(set(answer)) < len(answer):
            twice = next(t for t in answer if answer.count(t) > 1)
            return f"{twice} is listed more than once: return each crossed skip-trigram once."
        if sorted(answer) == expected:
            return "the right crossed skip-trigrams, not sorted: return sorted(...) of them."
        missing = [t for t in expected if t not in answer]
        extra = [t for t in answer if t not in expected]
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}" + (" …" if len(missing) > 3 else ""))
        if extra:
            parts.append(f"{extra[:3]} should not be there" + (" …" if len(extra) > 3 else ""))
        return "; ".join(parts) + f" (expected {len(expected)} crossed skip-trigrams)."

    return describe


def _read_crossed(out: object, case: Case) -> list[Triple]:
    """The learner's list of (source, destination, output) triples, as ints, or a CheckFailed."""
    ex = _CROSSED.name
    _, counts = case.args
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    if isinstance(out, Tensor) and out.numel() == 0:
        out = []  # no crossed skip-trigram: np.array([]) is 1-d, and float64, torch.tensor([]) float32
    if isinstance(out, Tensor) and out.ndim == 2 and out.shape[1] == 3:
        if out.dtype.is_floating_point:
            raise CheckFailed(ex, f"the triples must hold token ids (integers), got {out.dtype}.")
        out = out.tolist()
    if isinstance(out, (set, frozenset)):
        raise CheckFailed(ex, "return a sorted list of the crossed skip-trigrams, got a set: "
                          "sorted(...) of it.")  # fmt: skip
    if not isinstance(out, (list, tuple)):
        hint = " (did you forget the return?)" if out is None else ""
        raise CheckFailed(ex, "return a sorted list of (source, destination, output) triples, "
                          f"got {type(out).__name__}{hint}.")  # fmt: skip
    return [read_triple(ex, item, counts.shape[0], "crossed skip-trigram") for item in out]


_CROSSED = declare(Exercise(
    number="6.4", title="crossed continuations", functions=("crossed_continuations",),
    cases=_crossed_cases, read=_read_crossed, reference=real_text.crossed_continuations,
    withhold=(real_text.crossed_continuations,),
    covers=frozenset({"several sources", "rules sharing a source", "rules with the same "
                      "destination", "rules with the same output", "an unsupported rule",
                      "a crossed bigram the corpus shows", "a triple crossed from two pairs",
                      "a rule seen once",
                      "no crossed continuation"}),
    passed="the crossed continuations of random rules on random sparse corpora, each once and "
    "sorted, and none where the corpus shows every crossed bigram.",
))  # fmt: skip


# ---- 6.5 what an ablation removes ----------------------------------------------------------------


def _repeat_probe(d_vocab: int, batch: int, length: int, repeats: int, seed: int) -> Tensor:
    """`[batch, 1 + length * repeats]`: BOS, then a span of random tokens repeated (the shape of
    `TextLanguage.repeat_probe`, without a corpus)."""
    spans = torch.randint(1, d_vocab, (batch, length), generator=generator(seed))
    return torch.cat([torch.full((batch, 1), BOS), spans.repeat(1, repeats)], dim=1)


@torch.no_grad()
def _gains(model, probe: Tensor, length: int, heads, kind: str = "mean") -> tuple:
    """(the repeat's losses without an ablation, with `heads` ablated `kind`): `RepeatLoss`es."""
    plain = evals.repeat_loss(model(probe), probe, length)
    ablated = evals.run_with_ablation(model, probe, heads, kind=kind)
    return plain, evals.repeat_loss(ablated, probe, length)


def _gain(loss) -> float:
    return loss.fresh - loss.repeated


def _ablated_gain_mistakes(model, probe: Tensor, length: int, heads) -> list[tuple[str, float]]:
    plain, ablated = _gains(model, probe, length, heads)
    _, zeroed = _gains(model, probe, length, heads, kind="zero")
    share = 1 - _gain(ablated) / _gain(plain)
    mistakes = [
        ("the heads were zero-ablated; mean-ablate them (kind=\"mean\"): a head that writes "
         "nothing moves the residual stream off its usual range, which removes more than the "
         "head's information.", 1 - _gain(zeroed) / _gain(plain)),
        ("that is the gain of the ablated model (its fresh loss minus its repeated loss); the "
         "share divides it by the gain without the ablation: 1 - gain ablated / gain without.",
         _gain(ablated)),
        ("that is the share the ablation keeps, gain ablated / gain without; the share it "
         "removes is 1 minus that.", 1 - share),
        ("the gain was measured as a ratio of losses (repeated / fresh); it is a difference, "
         "fresh - repeated.", 1 - ablated.ratio / plain.ratio),
        ("the gain was measured as a ratio of losses (fresh / repeated); it is a difference, "
         "fresh - repeated.", 1 - plain.ratio / ablated.ratio),
        ("that is the gain removed in nats (gain without - gain ablated); the share divides it "
         "by the gain without: 1 - gain ablated / gain without.", _gain(plain) - _gain(ablated)),
        ("the fractions are upside down: 1 - gain without / gain ablated; the share removed is "
         "1 - gain ablated / gain without.", 1 - _gain(plain) / _gain(ablated)),
        ("repeated and fresh were swapped in one of the two gains (a gain is fresh - repeated, "
         "both times).", 1 + _gain(ablated) / _gain(plain)),
        ("the gains were taken as absolute values: a gain below 0 (the ablated model finds the "
         "repeat harder than the first copy) is what makes the share above 1; keep its sign.",
         1 - abs(_gain(ablated)) / abs(_gain(plain))),
    ]  # fmt: skip
    if len(heads) > 1:
        one_at_a_time = [_gains(model, probe, length, [head])[1] for head in heads]
        mistakes += [
            ("only the last head of the list was ablated: pass the whole list to "
             "run_with_ablation, which removes every head in it at once.",
             1 - _gain(one_at_a_time[-1]) / _gain(plain)),
            ("the heads were ablated one at a time and their shares added; ablate them together "
             "(the whole list in one run_with_ablation).",
             sum(1 - _gain(a) / _gain(plain) for a in one_at_a_time)),
        ]  # fmt: skip
    return mistakes


def _ablated_gain_cases(seed: int) -> list[Case]:
    """Two random two-layer models and repeat probes of random spans (lengths 3 to 6, repeated
    twice or three times): one head, two heads of one layer, a head of each layer. A probe is
    drawn again until the repeat is easier than the first copy by at least half a nat (a random
    model has no induction heads, so its gain is luck) and the share is not near 0 (so that the
    judge's tolerance, relative to it, is not finer than float32's rounding)."""
    models = random_models(seed, 2, n_layers=2, per_model=[{"n_ctx": 13}, {"n_ctx": 19}])
    rng = generator(seed + 1)
    cases = []
    layouts = ((0, 4, 3, "one head"), (0, 6, 2, "two heads of one layer"),
               (1, 3, 3, "heads of both layers"), (1, 5, 2, "one head"))  # fmt: skip
    wanted = ["below 0", "above 1"]  # shares the text names, each in some case
    for i, (m, length, repeats, kind) in enumerate(layouts):
        model = models[m]
        H = model.cfg.n_heads
        first, second = (int(h) for h in torch.randperm(H, generator=rng)[:2])
        layer = int(torch.randint(2, (), generator=rng))
        heads = {"one head": [(1 - m, first)], "two heads of one layer": [(layer, first),
                 (layer, second)], "heads of both layers": [(0, first), (1, second)]}[kind]  # fmt: skip
        # each case looks first for a share still wanted (the first case below 0, the second
        # above 1: an ablated gain below 0, so that abs() of a gain shows), a later case for what
        # an earlier one did not find; failing that, the first probe of a clear gain
        want = wanted[:1] if i == 0 else wanted[:2]
        probe = None
        for attempt in range(200):
            if probe is not None and attempt >= 60:
                break  # a clear gain found, the share wanted not: leave it to a later case
            drawn = _repeat_probe(model.cfg.d_vocab, 6, length, repeats, seed + 1000 * i + attempt)
            plain, ablated = _gains(model, drawn, length, heads)
            share = 1 - _gain(ablated) / _gain(plain)
            if _gain(plain) < 0.5 or abs(share) < 0.05:
                continue
            probe = drawn if probe is None else probe
            found = "below 0" if share < -0.05 else "above 1" if share > 1.05 else None
            if not want or found in want:
                probe = drawn
                if found in wanted:
                    wanted.remove(found)
                break
        probe = drawn if probe is None else probe  # (not reached: a clear gain comes soon)
        expected = real_text.ablated_gain(model, probe, length, heads)
        where = (f"L{', L'.join(f'{a}H{b}' for a, b in heads)} mean-ablated in a two-layer model, "
                 f"a span of {length} tokens × {repeats}")  # fmt: skip
        tags = {kind, f"{repeats} repeats"}
        if expected < 0:
            tags.add("a share below 0")
        if expected > 1:
            tags.add("a share above 1")
        cases.append(Case((model, probe, length, heads), expected,
                          _ablated_gain_mistakes(model, probe, length, heads), where, tags=tags))  # fmt: skip
    return cases


declare(Exercise(
    number="6.5", title="what an ablation removes", functions=("ablated_gain",),
    cases=_ablated_gain_cases, reference=real_text.ablated_gain,
    withhold=(real_text.ablated_gain,),
    covers=frozenset({"one head", "two heads of one layer", "heads of both layers",
                      "2 repeats", "3 repeats", "a share below 0", "a share above 1"}),
    on_error={"ValueError": "evals.repeat_loss takes the probe's `length` (the span's, not the "
              "probe's), and run_with_ablation a list of (layer, head) pairs."},
    passed="the share of the repeat's gain removed, for one head, two heads of one layer and a "
    "head of each layer of random two-layer models, on spans repeated twice and three times.",
))  # fmt: skip


# ---- 6.6 the ICL score over bands ----------------------------------------------------------------


def _band(losses: Tensor, position: int, offsets: Tensor) -> float:
    """Mean loss of the tokens at `position + offsets` (entry p - 1 predicts token p)."""
    return float(losses[:, position - 1 + offsets].double().mean())


def _band_mistakes(losses: Tensor, early: int, late: int, half_width: int, expected: float):
    n = losses.shape[1] + 1
    band = torch.arange(-half_width, half_width + 1)

    def score(offsets: Tensor, shift: int = 0) -> float:
        return _band(losses, late + shift, offsets) - _band(losses, early + shift, offsets)

    mistakes = [
        ("the sign is flipped: the score is late minus early, negative when later tokens are "
         "easier.", -expected),
        ("the losses were summed; take their means.",
         float(losses[:, late - 1 + band].double().sum() - losses[:, early - 1 + band].double().sum())),
        ("a ratio was taken; the score is a difference of mean losses, in nats.",
         _band(losses, late, band) / _band(losses, early, band)),
        # entry p - 2 of position 1 is entry -1, the last: a tensor's index wraps round, as here
        ("one position off the other way: the token at position p is entry p - 1.",
         score(band, shift=-1)),
    ]  # fmt: skip
    if late + half_width < n - 1:  # entry p is there (beyond it, the learner's code raises)
        mistakes.append(("one position off: entry i of the losses predicts token i + 1, so the "
                         "token at position p is entry p - 1.", score(band, shift=1)))  # fmt: skip
    if half_width > 0:  # with half_width 0 these are all the right answer
        mistakes += [
            ("half_width was ignored: average the band late - half_width .. late + half_width "
             "(both included), not the single position.",
             score(torch.zeros(1, dtype=torch.long))),
            ("the bands were summed over their positions; take their mean.",
             (2 * half_width + 1) * expected),
            ("the band reached from the position to position + half_width only; it runs from "
             "position - half_width to position + half_width.",
             score(torch.arange(half_width + 1))),
            ("the band left out its ends: it runs from position - half_width to position + "
             "half_width, both included (torch.arange(-half_width, half_width + 1)).",
             score(torch.arange(-half_width + 1, half_width))),
            ("the band left out its last position: torch.arange stops before its end, so the "
             "offsets are torch.arange(-half_width, half_width + 1).",
             score(torch.arange(-half_width, half_width))),
        ]  # fmt: skip
    return mistakes


def _band_cases(seed: int) -> list[Case]:
    """Random per-token losses of four lengths with a trend down or up (scores of both signs, as
    a model before and after in-context learning): bands at the recorder's positions (a tenth and
    nine tenths, half_width 5 % of the length) and moved off them, one with half_width 0 (the
    single-position score of Exercise 5.1), one whose bands touch the first and the last
    position a loss exists for, in float32 and float64. Drawn again until the score has the
    trend's sign and every common mistake changes it by far more than the tolerance."""
    cases = []
    layouts = ((6, 60, "default", -1.0, torch.float32), (4, 43, "ends", 1.0, torch.float64),
               (5, 23, "single", -1.0, torch.float32), (3, 77, "moved", 1.0, torch.float64))  # fmt: skip
    for i, (batch, n, kind, trend, dtype) in enumerate(layouts):
        early, late = phase_change.icl_positions(n)
        half_width = {"ends": 3, "single": 0}.get(kind, max(1, round(0.05 * n)))
        if kind == "ends":
            early, late = 1 + half_width, n - 1 - half_width  # bands at the first and last token
        if kind == "moved":
            early, late = early + 1, late - 2  # not always the default positions
        for attempt in range(100):  # until the score has the trend's sign and every mistake shows
            g = generator(seed + 100 * i + attempt)
            ramp = trend * torch.linspace(0, 1, n - 1, dtype=torch.float64)
            # each position its own difficulty, shared by the batch (as a position's token is on
            # real text), so that a band one position off or a position short has another mean
            hard = 2 * torch.rand(n - 1, generator=g, dtype=torch.float64)
            noise = torch.rand(batch, n - 1, generator=g, dtype=torch.float64)
            losses = (2 + ramp + hard + noise).to(dtype)
            expected = phase_change.icl_band_score(losses, early, late, half_width)
            mistakes = _band_mistakes(losses, early, late, half_width, expected)
            if expected * trend > 0 and not any(same(v, expected, widen=10) for _, v in mistakes):
                break
        tags = {str(dtype).removeprefix("torch.")}
        tags.add("half_width 0" if half_width == 0 else "half_width above 0")
        if early - half_width == 1 and late + half_width == n - 1:
            tags.add("bands at the ends")
        tags.add("a negative score" if expected < 0 else "a positive score")
        where = (f"{batch} sequences of {n} tokens ({dtype}), early={early}, late={late}, "
                 f"half_width={half_width}")  # fmt: skip
        cases.append(Case((losses, early, late, half_width), expected, mistakes, where,
                          tags=tags, describe=icl_describer(expected)))  # fmt: skip
    return cases


def _read_band_score(out: object, case: Case) -> float:
    """The learner's score as a float; a NaN (the mean of no losses) is said to come from an
    empty band."""
    value = out.item() if isinstance(out, (Tensor, np.ndarray)) and out.ndim == 0 else out
    if isinstance(value, float) and value != value:  # NaN
        raise CheckFailed(_BAND.name, "icl_band_score returned NaN, the mean of no losses (is a "
                          "band empty?) or a sum divided by a count of 0: with half_width 0 the "
                          "band is the one position; a band holds 2 * half_width + 1 positions, "
                          "offsets torch.arange(-half_width, half_width + 1).")  # fmt: skip
    return expect_float(_BAND.name, "icl_band_score", out)


_BAND = declare(Exercise(
    number="6.6", title="the ICL score over bands", functions=("icl_band_score",),
    cases=_band_cases, read=_read_band_score, reference=phase_change.icl_band_score,
    withhold=(phase_change.icl_band_score, phase_change.icl_score_from_losses),
    covers=frozenset({"float32", "float64", "half_width 0", "half_width above 0",
                      "bands at the ends", "a negative score", "a positive score"}),
    on_error={"IndexError": "an index past the last loss: entry i of the losses predicts the "
              "token at position i + 1, so the band of the token at position p is entries "
              "p - 1 - half_width to p - 1 + half_width.",
              "ZeroDivisionError": "a band holds 2 * half_width + 1 positions, so its mean divides "
              "by 2 * half_width + 1 per sequence (1 with half_width 0), never by 0."},
    passed="right on random losses of four lengths, bands at the recorder's positions, at the "
    "ends and of a single position, scores of both signs.",
))  # fmt: skip
