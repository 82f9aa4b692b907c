"""Exercises 3.7 and 3.9: who reads whom in a model built at random, and the share of a read weight
in a writer's subspace."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
from torch import Tensor

from helpers import circuits, handmade
from helpers.checks._base import CheckFailed, generator, random_models
from helpers.checks._judge import Case
from helpers.checks._registry import Exercise, declare
from helpers.checks.composition._shared import (
    KINDS,
)
from helpers.models import AttnOnlyTransformer


# ---- 3.7 who reads whom? -----------------------------------------------------------------------------
def _ratios(model: AttnOnlyTransformer, baseline: bool = True) -> Tensor:
    """Composition score over the random baseline's mean, `[kind, layer-0 head, layer-1 head]`."""
    return torch.stack([
        circuits.composition_scores(model, k)
        / (circuits.composition_baseline(model, k)[0] if baseline else 1.0)
        for k in KINDS
    ])  # fmt: skip


def _strongest(ratios: Tensor, threshold: float, kinds: str = "QKV") -> dict:
    """The map an answer gives that takes, for every layer-1 head, the largest ratio among
    `kinds` (all three: the right answer)."""
    chosen = [KINDS.index(k) for k in kinds]
    found = {}
    for h1 in range(ratios.shape[-1]):
        k, h0 = divmod(int(ratios[chosen, :, h1].argmax()), ratios.shape[1])
        found[h1] = (kinds[k], h0) if ratios[chosen[k], h0, h1] >= threshold else None
    return found


def _first_kind(ratios: Tensor, threshold: float) -> dict:
    """The map of the first kind, in Q, K, V order, whose best ratio reaches the threshold."""
    found = {}
    for h1 in range(ratios.shape[-1]):
        over = [k for k in range(3) if ratios[k, :, h1].max() >= threshold]
        found[h1] = (KINDS[over[0]], int(ratios[over[0], :, h1].argmax())) if over else None
    return found


def _summed_kind(ratios: Tensor, threshold: float) -> dict:
    """The map of the kind whose ratios, summed over the layer-0 heads, are the largest."""
    found = {}
    for h1 in range(ratios.shape[-1]):
        k = int(ratios[:, :, h1].sum(1).argmax())
        h0 = int(ratios[k, :, h1].argmax())
        found[h1] = (KINDS[k], h0) if ratios[k, h0, h1] >= threshold else None
    return found


_MAP_FORMAT = (
    "composition_map must return a dict with one entry per layer-1 head: head index -> None or "
    "(kind, layer-0 head), kind one of 'Q', 'K', 'V'; e.g. {0: ('K', 1), 1: None}"
)


def _read_map(out: object, case: Case) -> dict:
    """The learner's composition map with ints and kind strings, or a CheckFailed naming the
    expected format."""
    ex, n_heads = _MAP.name, case.args[0].cfg.n_heads
    if not isinstance(out, dict):
        raise CheckFailed(ex, f"{_MAP_FORMAT}; got a {type(out).__name__}.")
    got = {}
    for h, v in out.items():
        try:
            head = operator.index(h)
            entry = None if v is None else (str(v[0]), operator.index(v[1]))
            if entry is not None and len(v) != 2:
                raise ValueError
        except (TypeError, ValueError, IndexError, KeyError):
            raise CheckFailed(ex, f"{_MAP_FORMAT}; got the entry {h!r}: {v!r}.") from None
        if not 0 <= head < n_heads or (entry is not None and not 0 <= entry[1] < n_heads):
            raise CheckFailed(ex, f"{_MAP_FORMAT}; head indices run 0..{n_heads - 1}, got the "
                              f"entry {h!r}: {v!r}.")  # fmt: skip
        if entry is not None and entry[0] not in KINDS:
            raise CheckFailed(ex, f"{_MAP_FORMAT}; got the kind {entry[0]!r}.")
        got[head] = entry
    return got


def _describe_map(expected: dict) -> Callable[[dict], str]:
    def describe(got: dict) -> str:
        wrong = [f"L1H{h}: you found {got.get(h, 'nothing')}, expected {t}"
                 for h, t in expected.items() if got.get(h, "nothing") != t]  # fmt: skip
        return ("; ".join(wrong) + ". Compare each (kind, layer-0 head) by its score divided by "
                "the random baseline's mean; keep the largest if it reaches the threshold.")  # fmt: skip

    return describe


def _map_cases(seed: int) -> list[Case]:
    """Two mystery models (wiring planted by hand, with traps for the first kind over the
    threshold and for the kind that sums highest), at threshold 2 and at a drawn threshold that
    falls between the heads' best ratios."""
    cases = []
    for i in range(2):
        mystery = handmade.mystery_composition(seed + i)
        model = mystery.model
        ratios, scores = _ratios(model), _ratios(model, baseline=False)
        best = ratios.flatten(0, 1).max(0).values  # each layer-1 head's strongest reading
        planted = best[[h for h, w in mystery.wiring.items() if w is not None]]
        # a second threshold, drawn, that no head's best ratio lies near, above the weakest
        # planted reading (so the map must apply it) and below the strongest where they differ
        g = generator(seed + 10 + i)
        lo, hi = float(planted.min()) + 0.1, float(planted.max()) - 0.1
        threshold = round(float(planted.max()) + 0.2, 2)  # all None, where no gap is wide enough
        for _ in range(100):
            candidate = round(lo + (hi - lo) * float(torch.rand((), generator=g)), 2)
            if hi > lo and (best - candidate).abs().min() > 0.1:
                threshold = candidate
                break
        for applied in (2.0, threshold):
            expected = circuits.composition_map(model, applied)
            first, summed = _first_kind(ratios, applied), _summed_kind(ratios, applied)
            mistakes = {
                "the scores were not divided by the random baseline's mean: a score means "
                "something only against what random heads of these shapes give "
                "(circuits.composition_baseline).": _strongest(scores, applied),
                "the first kind (in Q, K, V order) whose ratio reaches the threshold was taken: "
                "the strongest reading over all three kinds and all layer-0 heads counts.": first,
                "the kind was chosen by its ratios summed over the layer-0 heads: the single "
                "strongest (kind, layer-0 head) counts.": summed,
                "only K-composition was considered: a head may read through its queries, keys or "
                "values.": _strongest(ratios, applied, kinds="K"),
            }
            if applied != 2.0:
                mistakes["the threshold passed in was not applied (2, the default, was): a head "
                         "maps to None when its best ratio is below `threshold`."] = (
                    _strongest(ratios, 2.0)
                )  # fmt: skip
            tags = {"a threshold other than 2"} if applied != 2.0 else set()
            if (best >= applied).any() and (best < applied).any():
                tags.add("heads on both sides of the threshold")
            if first != expected:
                tags.add("a trap for the first kind over the threshold")
            if summed != expected:
                tags.add("a trap for the kind that sums highest")
            where = f"a mystery model with {model.cfg.n_heads} heads, threshold {applied}"
            cases.append(Case((model, applied), expected, mistakes, where, tags=tags,
                              describe=_describe_map(expected)))  # fmt: skip
    return cases


_MAP = declare(Exercise(
    number="3.7", title="who reads whom?", functions=("composition_map",), cases=_map_cases,
    reference=circuits.composition_map, read=_read_map, block_forward=True,
    withhold=(circuits.composition_map, handmade.mystery_composition),
    covers=frozenset({"a threshold other than 2", "heads on both sides of the threshold",
                      "a trap for the first kind over the threshold",
                      "a trap for the kind that sums highest"}),
    passed="the planted wiring of two mystery models, at threshold 2 and a drawn one.",
))  # fmt: skip


# ---- 3.9 read shares -------------------------------------------------------------------------------
_SHARE_IS = (
    " The share is ‖P W_read‖_F² / ‖W_read‖_F², P the orthogonal projector onto W_O's row space."
)
_RELATIVE = (
    "count as zero only the singular values that are rounding noise *relative to the largest* "
    "(S > S.max() · max(W_O.shape) · torch.finfo(W_O.dtype).eps, torch.linalg.matrix_rank's "
    "tolerance), or use torch.linalg.pinv(W_O) @ W_O"
)


def _share_mistakes(W_read: Tensor, W_O: Tensor, share: float) -> list[tuple[str, float]]:
    W, W_O = W_read.double(), W_O.double()
    P = circuits.projector(circuits.row_space(W_O))
    norm2, o_norm2 = float(W.square().sum()), float(W_O.square().sum())
    inside2 = float((P @ W).square().sum())
    gram = float((W_O.T @ W_O @ W).square().sum())
    same_shape = W.shape == W_O.T.shape  # else the cosine cannot be computed, nor mistaken
    cosine = (
        float(torch.nn.functional.cosine_similarity(W.flatten(), W_O.T.flatten(), dim=0))
        if same_shape
        else math.nan
    )
    product2 = float((W_O @ W).square().sum()) / (o_norm2 * norm2)
    rows = W_O / W_O.norm(dim=1, keepdim=True)
    per_column = (P @ W).square().sum(0) / W.square().sum(0)  # each read direction's share
    cos_text = (
        "that is the cosine between the flattened matrices W_read and W_Oᵀ, which compares them "
        "entry by entry: the share asks how much of W_read lies in the subspace W_O writes "
        "into, whatever the directions within it, ‖P W_read‖² / ‖W_read‖²."
    )
    score_text = (
        "that is a composition-style score ‖W_O W_read‖ / (‖W_O‖ ‖W_read‖): it weighs "
        "directions by W_O's singular values. Project onto W_O's row space with an orthogonal "
        "projector P instead: ‖P W_read‖² / ‖W_read‖²."
    )
    divided = (
        "divided by W_O's norm: the share is of the reader's weight, ‖P W_read‖_F² / ‖W_read‖_F²."
    )
    cosines = [(cos_text, cosine), (cos_text, abs(cosine)), (cos_text, cosine**2)]
    return [*(cosines if same_shape else []),
        ("the norms are not squared (‖P W_read‖ / ‖W_read‖): the share of the squared Frobenius "
         "norm is ‖P W_read‖² / ‖W_read‖², which sums over the reader's directions.",
         math.sqrt(share)),
        ("W_O.T @ W_O was used as the projector: it is one only when W_O's rows are orthonormal, "
         "and they are not. Use the projector onto W_O's row space (an orthonormal basis of its "
         "rows, e.g. from the SVD).", gram / norm2),
        ("W_O's rows were normalised but not made orthogonal, so Wᵀ W is not a projector: use "
         "an orthonormal basis of W_O's rows, e.g. from the SVD.",
         float((rows.T @ rows @ W).square().sum()) / norm2),
        ("the columns' shares were averaged without weights: the share of the squared norm "
         "weighs each read direction by its squared norm, Σ‖P w_i‖² / Σ‖w_i‖² = "
         "‖P W_read‖_F² / ‖W_read‖_F².", float(per_column.mean())),
        ("that is 1 - share, the share outside the writer's subspace: ‖P W_read‖² counts what "
         "lies inside.", 1 - share),
        (divided, inside2 / o_norm2),
        (divided, math.sqrt(inside2 / o_norm2)),
        (score_text, product2),
        (score_text, math.sqrt(product2)),
    ]  # fmt: skip


def _describe_share(expected: float, lead: str, hint: str) -> Callable[[float], str]:
    def describe(out: float) -> str:
        outside = "" if 0 <= out <= 1 else " A share lies in [0, 1]."
        return f"{lead}got {out:.4f}, expected {expected:.4f}.{outside}{hint or _SHARE_IS}"

    return describe


def _share_case(
    W_read: Tensor, W_O: Tensor, where: str, hint: str = "", lead: str = "", tiny: bool = False
) -> Case:
    """A case of Exercise 3.9, tagged from its weights; `lead` and `hint` say what is special
    about its W_O to a wrong answer, where this case is the first one wrong."""
    share = circuits.read_share(W_read, circuits.row_space(W_O))
    mistakes = _share_mistakes(W_read, W_O, share)
    if tiny:
        mistakes.append((
            "every singular value of a tiny W_O was counted as zero: it is small (scaled by "
            f"1e-9) but of full rank. An absolute threshold cannot tell; {_RELATIVE}.", 0.0,
        ))  # fmt: skip
    S = torch.linalg.svdvals(W_O.double())
    rank, d, D = circuits.row_space(W_O).shape[0], *W_O.shape
    tags = {"share above 1/2"} if share > 0.5 else set()
    tags |= {"share below the random share"} if share < d / D else set()
    if W_read.shape[1] != d:
        tags.add("W_read and W_O of other widths")
    if float(S.max()) < 1e-3 or float(S.max()) > 1e3:
        tags.add("W_O far smaller than 1" if float(S.max()) < 1e-3 else "W_O far larger than 1")
    if rank == d and float(S.min() / S.max()) < 1e-3:
        tags.add("a small but real singular value")
    if W_O.dtype == torch.float64:
        tags.add("float64")
    if rank < d:
        tags.add("rank-deficient W_O")
        if int(torch.linalg.matrix_rank(W_O[:rank].double())) < rank:
            tags.add("a dependent row before the last")
        if rank < d - 1:
            tags.add("rank d_head - 2")
    return Case(
        (W_read, W_O),
        share,
        mistakes,
        where,
        tags=tags,
        describe=_describe_share(share, lead, hint),
    )


def _dependent(
    W_O: Tensor, rows: list[int], g: torch.Generator, sources: list[int] | None = None
) -> tuple[Tensor, str]:
    """W_O with each of `rows` replaced by a power-of-two multiple of another row that is kept
    (one of `sources`, by default any), exact in float32 so that the rank drops exactly; and
    how it was made."""
    W_O = W_O.clone()
    kept = [r for r in sources or range(W_O.shape[0]) if r not in rows]
    made = []
    for row in rows:
        source = kept[int(torch.randint(len(kept), (), generator=g))]
        factor = (2.0, -2.0, 0.5, -0.5)[int(torch.randint(4, (), generator=g))]
        W_O[row] = factor * W_O[source]
        made.append(f"row {row} = {factor:g} × row {source}")
    return W_O, ", ".join(made)


def _read_share_cases(seed: int) -> list[Case]:
    """Readers mostly inside, mostly outside and at random to a writer's subspace, of several
    shapes; W_Os of full rank far from scale 1 (1e-9) and with a small but real singular value;
    last, W_Os of rank below d_head (a row anywhere but last depending on another; two rows
    anywhere, scaled by 1e8): if the first wrong case is one of those, every full-rank one was
    right."""
    g = generator(seed + 1)
    cases, writers = [], []
    for model in random_models(seed, 2, n_layers=2):
        d, D = model.cfg.d_head, model.cfg.d_model
        ha, hb = (int(h) for h in torch.randperm(model.cfg.n_heads, generator=g)[:2])
        # a writer of another scale than the reader (the share does not depend on W_O's scale;
        # W_O and W_Q of the same initialisation would have about the same norm, hiding a
        # division by the wrong one)
        scale = 1.5 + 1.5 * float(torch.rand((), generator=g))
        W_O = model.blocks[0].attn.W_O[ha].detach() * scale
        P = circuits.projector(circuits.row_space(W_O))
        outside = torch.eye(D) - P
        for kind in ("Q", "K"):
            W_read = getattr(model.blocks[1].attn, f"W_{kind}")[hb].detach().clone()
            cases.append(_share_case(W_read, W_O, f"W_{kind} of a random head, d_model {D}, "
                                     f"d_head {d}"))  # fmt: skip
        writers.append((cases[-1].args[0], W_O))
        W = torch.randn(D, d, generator=g)
        cases.append(_share_case(P @ W + 0.3 * outside @ W, W_O,
                                 f"a W_read mostly inside, d_model {D}"))  # fmt: skip
        cases.append(_share_case(outside @ W + 0.4 * P @ W, W_O,
                                 f"a W_read mostly outside, d_model {D}"))  # fmt: skip
        # a writer and a reader of other widths: the answer must not assume d_head
        k = d + 2
        cases.append(_share_case(torch.randn(D, k - 1, generator=g) * 2,
                                 torch.randn(k, D, generator=g) * 0.3,
                                 f"W_read [{D}, {k - 1}], W_O [{k}, {D}]"))  # fmt: skip
    (W_read0, W_O0), (W_read1, W_O1) = writers
    cases.append(_share_case(
        W_read0, W_O0 * 1e-9, "a W_O of full rank scaled by 1e-9 (a head that writes almost "
        "nothing)", tiny=True,
        hint=f" All its singular values are tiny, but none is zero: {_RELATIVE}, never below a "
        "fixed number.",
    ))  # fmt: skip
    # in float64, where a singular value a millionth of the largest is far above rounding noise
    # (in float32 its direction could not be told accurately enough to judge the answer)
    U, S, Vh = torch.linalg.svd(W_O1.double(), full_matrices=False)
    S[int(torch.randint(len(S), (), generator=g))] = 1e-6 * S.max()
    cases.append(_share_case(
        W_read1.double(), (U * S) @ Vh, "a float64 W_O whose smallest singular value is 1e-6 of "
        "its largest",
        hint=" That singular value is small but real (rounding noise in float64 is about 1e-16 of "
        f"the largest): {_RELATIVE}.",
    ))  # fmt: skip
    rank_hint = (
        " W_O writes into rank(W_O) dimensions, here fewer than d_head: project onto its row "
        f"space; {_RELATIVE}. (A QR of W_O.T, cut to the rank or not, spans W_O's first rows, "
        "not its row space, where one of them depends on others.)"
    )
    # a row before the last, a multiple of another row before the last: the first rank(W_O)
    # rows then span less than the row space
    d0, d1 = W_O0.shape[0], W_O1.shape[0]
    W_O, made = _dependent(W_O0, [int(torch.randint(d0 - 1, (), generator=g))], g,
                           sources=list(range(d0 - 1)))  # fmt: skip
    cases.append(_share_case(
        W_read0, W_O, f"W_O [{d0}, {W_O.shape[1]}] with {made}", hint=rank_hint,
        lead=f"right for every W_O of full rank, but not for a W_O of rank {d0 - 1} < d_head: ",
    ))  # fmt: skip
    W_O, made = _dependent(W_O1 * 1e8, torch.randperm(d1, generator=g)[:2].tolist(), g)
    cases.append(_share_case(
        W_read1, W_O, f"W_O [{d1}, {W_O.shape[1]}] scaled by 1e8, with {made}",
        lead=f"right for every W_O of full rank, but not for a W_O of rank {d1 - 2} < d_head "
        "(its zero singular values come out of an SVD as rounding noise, large at this scale): ",
        hint=rank_hint,
    ))  # fmt: skip
    return cases


declare(Exercise(
    number="3.9", title="read shares", functions=("read_share",), cases=_read_share_cases,
    reference=circuits.read_share, block_forward=True,
    withhold=(circuits.read_share, circuits.read_shares, circuits.row_space, circuits.projector,
              circuits.write_subspace),
    on_error={"_LinAlgError": "W_O @ W_O.T is singular where W_O is rank-deficient: project "
              "with the SVD's right singular vectors (or torch.linalg.pinv), not an inverse."},
    covers=frozenset({"share above 1/2", "share below the random share",
                      "W_read and W_O of other widths", "W_O far smaller than 1",
                      "W_O far larger than 1", "a small but real singular value",
                      "rank-deficient W_O", "a dependent row before the last", "rank d_head - 2",
                      "float64"}),
    passed="the share of the squared norm inside a writer's subspace, for readers mostly inside, "
    "mostly outside and at random, several shapes, W_Os far from scale 1 and W_Os of rank below "
    "d_head.",
))  # fmt: skip
