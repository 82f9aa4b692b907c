"""Chapter 06's checkers of exercises 6.4 to 6.6 accept right answers in several forms and reject
plausible wrong answers with the right diagnosis."""

import numpy as np
import pytest
import torch

from helpers import checks, evals, phase_change
from helpers.evals import real_text
from tests.checks.conftest import assert_accepts, assert_rejects

# ---- 6.4 crossed continuations -------------------------------------------------------------------


def crossed_reference(rules, counts, support=True, check="== 0", both=True, same_source=True,
                      unique=True, order="sd o"):  # fmt: skip
    """The answer, or a mistake: each keyword left at its default is the right choice."""
    kept = [r for r in rules if counts[r[1], r[2]] > 0] if support else list(rules)
    found = []
    for i, (s1, d1, o1) in enumerate(kept):
        for j, (s2, d2, o2) in enumerate(kept):
            if (not both and j <= i) or (same_source and s1 != s2) or d1 == d2 or o1 == o2:
                continue
            seen = {"== 0": counts[d1, o2] == 0, "> 0": counts[d1, o2] > 0,
                    "o2, d1": counts[o2, d1] == 0, "none": True}[check]  # fmt: skip
            if seen:
                found.append((s1, d1, o2) if order == "sd o" else (d1, s1, o2))
    return sorted(set(found)) if unique else sorted(found)


def test_crossed_continuations_accepts_the_reference():
    assert_accepts(checks.check_crossed_continuations, crossed_reference)


def test_crossed_continuations_accepts_lists_and_numpy_counts():
    def as_lists(rules, counts):
        table = counts.numpy()
        by_source = {}
        for s, d, o in rules:
            if table[d, o] > 0:
                by_source.setdefault(s, []).append((d, o))
        crossed = set()
        for s, pairs in by_source.items():
            for d1, o1 in pairs:
                for d2, o2 in pairs:
                    if d1 != d2 and o1 != o2 and table[d1, o2] == 0:
                        crossed.add((s, d1, o2))
        return [list(t) for t in sorted(crossed)]

    assert_accepts(checks.check_crossed_continuations, as_lists)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda r, c: crossed_reference(r, c, support=False), "does not support"),
        (lambda r, c: crossed_reference(r, c, check="none"), "count was not checked"),
        (lambda r, c: crossed_reference(r, c, check="> 0"), "keep those it never shows"),
        (lambda r, c: crossed_reference(r, c, check="o2, d1"), "counts[second output, first"),
        (lambda r, c: crossed_reference(r, c, both=False), "one way only"),
        (lambda r, c: crossed_reference(r, c, same_source=False), "different sources"),
        (lambda r, c: crossed_reference(r, c, unique=False), "listed twice"),
        (lambda r, c: crossed_reference(r, c, order="d s o"), "(first destination, source"),
        (lambda r, c: crossed_reference(r, c)[::-1], "not sorted"),
        (lambda r, c: set(crossed_reference(r, c)), "got a set"),
        (lambda r, c: [], "missing"),
        (lambda r, c: None, "forget the return"),
        (lambda r, c: real_text.crossed_continuations(r, c), "withholds"),
    ],
)
def test_crossed_continuations_rejects(wrong, diagnosis):
    assert_rejects(checks.check_crossed_continuations, wrong, diagnosis=diagnosis)


def test_crossed_continuations_accepts_arrays_empty_ones_included():
    # a case has no crossed continuation: np.array([]) is 1-d float64, torch.tensor([]) float32
    for to_array in (np.array, torch.tensor,
                     lambda found: np.array(found, dtype=np.int64),
                     lambda found: torch.tensor(found, dtype=torch.long)):  # fmt: skip
        assert_accepts(checks.check_crossed_continuations,
                       lambda r, c, to_array=to_array: to_array(crossed_reference(r, c)))  # fmt: skip


def test_crossed_continuations_names_a_check_of_both_crossed_bigrams():
    def both_unseen(rules, counts):  # kept only when the other crossing's bigram is unseen too
        kept = [r for r in rules if counts[r[1], r[2]] > 0]
        return sorted({(s1, d1, o2) for s1, d1, o1 in kept for s2, d2, o2 in kept
                       if s1 == s2 and d1 != d2 and o1 != o2
                       and counts[d1, o2] == 0 and counts[d2, o1] == 0})  # fmt: skip

    assert_rejects(checks.check_crossed_continuations, both_unseen,
                   diagnosis="the pair's other crossed bigram", seeds=range(20))  # fmt: skip


def test_crossed_continuations_rejects_support_read_the_wrong_way():
    def transposed(rules, counts):  # the support read [o, d], the crossed bigram read right
        return crossed_reference(rules, counts.T.contiguous(), check="o2, d1")

    assert_rejects(
        checks.check_crossed_continuations, transposed, diagnosis="counts[output, destination]"
    )


# ---- 6.5 what an ablation removes ----------------------------------------------------------------


def gain_reference(model, probe, length, heads, kind="mean"):
    with torch.no_grad():
        plain = evals.repeat_loss(model(probe), probe, length)
        ablated = evals.run_with_ablation(model, probe, heads, kind=kind)
        ablated = evals.repeat_loss(ablated, probe, length)
    return 1 - (ablated.fresh - ablated.repeated) / (plain.fresh - plain.repeated)


def _gain_by_hand(logits, probe, length):
    """fresh - repeated, the losses computed here in float64 rather than by repeat_loss."""
    losses = -logits.double().log_softmax(-1)[:, :-1].gather(-1, probe[:, 1:, None])[..., 0]
    offset = torch.arange(probe.shape[1] - 1) % length  # of the token predicted, in its copy
    block = torch.arange(probe.shape[1] - 1) // length
    fresh = losses[:, (block == 0) & (offset >= 1)].mean()
    repeated = losses[:, (block >= 1) & (offset >= 1)].mean()
    return fresh - repeated


def test_ablated_gain_accepts_the_reference():
    assert_accepts(checks.check_ablated_gain, gain_reference)


def test_ablated_gain_accepts_losses_by_hand_in_float64_and_swapped_in_both_gains():
    def by_hand(model, probe, length, heads):
        with torch.no_grad():
            plain = _gain_by_hand(model(probe), probe, length)
            ablated = evals.run_with_ablation(model, probe, heads, kind="mean")
            return torch.tensor(1.0) - _gain_by_hand(ablated, probe, length) / plain  # 0-d

    def both_swapped(model, probe, length, heads):  # repeated - fresh twice: the same share
        with torch.no_grad():
            plain = evals.repeat_loss(model(probe), probe, length)
            ablated = evals.repeat_loss(
                evals.run_with_ablation(model, probe, heads, kind="mean"), probe, length
            )
        return 1 - (ablated.repeated - ablated.fresh) / (plain.repeated - plain.fresh)

    assert_accepts(checks.check_ablated_gain, by_hand)
    assert_accepts(checks.check_ablated_gain, both_swapped)


def _losses(model, probe, length, heads):
    with torch.no_grad():
        plain = evals.repeat_loss(model(probe), probe, length)
        ablated = evals.run_with_ablation(model, probe, heads, kind="mean")
        return plain, evals.repeat_loss(ablated, probe, length)


def _from_losses(formula):
    return lambda m, p, n, h: formula(*_losses(m, p, n, h))


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda m, p, n, h: gain_reference(m, p, n, h, kind="zero"), "zero-ablated"),
        (_from_losses(lambda p, a: a.fresh - a.repeated), "gain of the ablated model"),
        (_from_losses(lambda p, a: (a.fresh - a.repeated) / (p.fresh - p.repeated)), "keeps"),
        (_from_losses(lambda p, a: 1 - a.ratio / p.ratio), "ratio of losses"),
        (_from_losses(lambda p, a: (p.fresh - p.repeated) - (a.fresh - a.repeated)), "in nats"),
        (_from_losses(lambda p, a: 1 - (p.fresh - p.repeated) / (a.fresh - a.repeated)),
         "upside down"),
        (_from_losses(lambda p, a: 1 - (a.repeated - a.fresh) / (p.fresh - p.repeated)),
         "swapped in one"),
        (_from_losses(lambda p, a: 1 - abs(a.fresh - a.repeated) / abs(p.fresh - p.repeated)),
         "absolute values"),  # a case's share is above 1: its ablated gain is below 0
        (lambda m, p, n, h: gain_reference(m, p, n, h[-1:]), "only the last head"),
        (lambda m, p, n, h: sum(gain_reference(m, p, n, [x]) for x in h), "one at a time"),
        (lambda m, p, n, h: 0.5, None),
        (lambda m, p, n, h: real_text.ablated_gain(m, p, n, h), "withholds"),
    ],
)  # fmt: skip
def test_ablated_gain_rejects(wrong, diagnosis):
    assert_rejects(checks.check_ablated_gain, wrong, diagnosis=diagnosis or "")


# ---- 6.6 the ICL score over bands ----------------------------------------------------------------


def band_reference(losses, early, late, half_width, shift=0, low=None, high=None):
    """The answer, or a mistake: positions shifted by `shift`, offsets low..high - 1."""
    low = -half_width if low is None else low
    high = half_width + 1 if high is None else high
    band = torch.arange(low, high)
    late_loss = losses[:, late - 1 + shift + band].mean()
    return float(late_loss - losses[:, early - 1 + shift + band].mean())


def test_icl_band_score_accepts_the_reference():
    assert_accepts(checks.check_icl_band_score, band_reference)


def test_icl_band_score_accepts_loops_row_means_and_float64():
    def by_loop(losses, early, late, half_width):
        def band(p):
            cells = [losses[b, q - 1].item() for b in range(losses.shape[0])
                     for q in range(p - half_width, p + half_width + 1)]  # fmt: skip
            return sum(cells) / len(cells)

        return band(late) - band(early)

    def row_means(losses, early, late, half_width):  # each row's band mean, then their mean
        x = losses.double()
        late_rows = x[:, late - 1 - half_width : late + half_width].mean(1)
        early_rows = x[:, early - 1 - half_width : early + half_width].mean(1)
        return (late_rows - early_rows).mean()  # a 0-d tensor

    assert_accepts(checks.check_icl_band_score, by_loop)
    assert_accepts(checks.check_icl_band_score, row_means)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda x, e, t, w: band_reference(x, t, e, w), "sign is flipped"),
        (lambda x, e, t, w: band_reference(x, e, t, w, shift=1), "entry i of the losses"),
        (lambda x, e, t, w: band_reference(x, e, t, w, shift=-1), "one position off"),
        (lambda x, e, t, w: band_reference(x, e, t, w, low=-w + 1, high=w), "left out its ends"),
        (lambda x, e, t, w: band_reference(x, e, t, w, high=w), "is a band empty?"),
        (lambda x, e, t, w: band_reference(x, e, t, 0), "half_width was ignored"),
        (lambda x, e, t, w: band_reference(x, e, t, w, low=0), "position + half_width only"),
        (lambda x, e, t, w: (2 * w + 1) * band_reference(x, e, t, w), "summed over their"),
        (
            lambda x, e, t, w: float(x[:, t - 1 - w : t + w].sum() - x[:, e - 1 - w : e + w].sum()),
            "losses were summed",
        ),
        (lambda x, e, t, w: band_reference(x, 6, 54, 3), None),  # the notebook's sizes
        (lambda x, e, t, w: -0.4, None),
        (lambda x, e, t, w: phase_change.icl_band_score(x, e, t, w), "withholds"),
        (lambda x, e, t, w: phase_change.icl_score_from_losses(x, e, t), "withholds"),
    ],
)
def test_icl_band_score_rejects(wrong, diagnosis):
    assert_rejects(checks.check_icl_band_score, wrong, diagnosis=diagnosis or "")


def band_over_2w(losses, early, late, half_width):
    """Sums divided by 2 * half_width per sequence, not 2 * half_width + 1: 0 / 0 at width 0."""
    band = torch.arange(-half_width, half_width + 1)
    count = losses.shape[0] * 2 * half_width
    return float(
        losses[:, late - 1 + band].sum() / count - losses[:, early - 1 + band].sum() / count
    )


def band_over_2w_python(losses, early, late, half_width):
    band = torch.arange(-half_width, half_width + 1)
    count = losses.shape[0] * 2 * half_width
    late_sum, early_sum = (
        float(losses[:, late - 1 + band].sum()),
        float(losses[:, early - 1 + band].sum()),
    )
    return late_sum / count - early_sum / count


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [(band_over_2w, "a sum divided by a count of 0"),
     (band_over_2w_python, "2 * half_width + 1 positions")],
)  # fmt: skip
def test_icl_band_score_says_a_band_holds_2w_plus_1_positions(wrong, diagnosis):
    assert_rejects(checks.check_icl_band_score, wrong, diagnosis=diagnosis)


def test_icl_band_score_says_when_only_the_sign_is_wrong():
    # the cases' scores have both signs, so an absolute value is wrong in some only, and said
    assert_rejects(
        checks.check_icl_band_score,
        lambda x, e, t, w: abs(band_reference(x, e, t, w)),
        diagnosis="The right size, the other sign",
    )


def test_icl_band_score_names_a_band_short_of_its_last_position():
    def short(losses, early, late, half_width):  # right for half_width 0, where it is special
        if half_width == 0:
            return band_reference(losses, early, late, 0)
        return band_reference(losses, early, late, half_width, high=half_width)

    assert_rejects(checks.check_icl_band_score, short, diagnosis="left out its last position")
