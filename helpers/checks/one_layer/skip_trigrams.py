"""Exercises 2.7-2.9: a head's skip-trigrams from one source, its strongest ones, and the
skip-trigram bug quantified."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor

from helpers import circuits, evals
from helpers.checks._base import CheckFailed, generator, random_models
from helpers.checks._judge import Case, read_token_ids, read_triple
from helpers.checks._registry import Exercise, declare
from helpers.checks.one_layer._shared import head_name, size_tags
from helpers.circuits import one_layer
from helpers.data import BOS, SkipTrigramLanguage
from helpers.models import AttnOnlyTransformer

# ---- 2.7 skip-trigrams of a source ---------------------------------------------------------------


def _top(scores: Tensor, k: int, largest: bool = True) -> frozenset[int]:
    return frozenset(scores.topk(k, largest=largest).indices.tolist())


def _without_bos(scores: Tensor) -> Tensor:
    scores = scores.clone()
    scores[BOS] = float("-inf")
    return scores


def _skip_trigram_cases(seed: int) -> list[Case]:
    """Each head of a random model with two heads, whose embeddings share a direction (so that
    each query's row of the QK circuit has an offset of its own), sources drawn at check time, k
    from 1 to 4, and for each head one source whose top k holds BOS (so that leaving BOS out is
    seen)."""
    (model,) = random_models(seed, 1, n_heads=2)
    V = model.cfg.d_vocab
    rng = generator(seed + 1)
    with torch.no_grad():  # a direction every embedding shares, as trained ones do: it adds a
        # constant of its own to each query's row of the QK circuit, which only centring removes
        model.embed.W_E += 2 * model.W_E.std() * torch.randn(model.cfg.d_model, generator=rng)
    qks = [circuits.full_qk_circuit(model, 0, h) for h in range(2)]
    raw_qks = [circuits.full_qk_circuit(model, 0, h, normalise=False) for h in range(2)]
    ovs = [circuits.full_ov_circuit(model, 0, h) for h in range(2)]

    def bos_rank(head: int, source: int) -> int:
        """Where BOS ranks (0 = first) among the destinations or outputs of `source`."""
        return min(int((qks[head][:, source] > qks[head][BOS, source]).sum()),
                   int((ovs[head][source] > ovs[head][source, BOS]).sum()))  # fmt: skip

    draws = []
    for head in range(2):
        for k in (2, 4, 1, 3):
            draws.append((head, int(torch.randint(1, V, (), generator=rng)), k))
        source = min(range(1, V), key=lambda s: bos_rank(head, s))
        draws.append((head, source, max(2, bos_rank(head, source) + 1)))
    cases = []
    for head, source, k in draws:
        qk, ov = qks[head][:, source], ovs[head][source]
        dests, outs = _top(qk, k), _top(ov, k)
        other = 1 - head
        mistakes = [
            ("the destinations were read from the source's row of the QK circuit: that is where "
             "the source token, as a query, looks. A source is a key: read its column, "
             "QK[:, source].", (_top(qks[head][source], k), outs)),
            ("the destinations come from the QK circuit before each query's row was centred; "
             "scores are comparable only within a query, so centre first.",
             (_top(raw_qks[head][:, source], k), outs)),
            ("the outputs were read from the source's column of the OV circuit; its row, "
             "OV[source], is what attending to the source writes to the logits.",
             (dests, _top(ovs[head][:, source], k))),
            ("these are the outputs pushed down most; take the largest.",
             (dests, _top(ov, k, largest=False))),
            ("BOS (token 0) was left out: this exercise ranks all tokens, BOS included.",
             (_top(_without_bos(qk), k), _top(_without_bos(ov), k))),
            ("destinations and outputs are swapped: return (destinations, outputs), the "
             "destinations from the QK circuit.", (outs, dests)),
            ("this is the other head's reading: use the circuits of the head asked for.",
             (_top(qks[other][:, source], k), _top(ovs[other][source], k))),
        ]  # fmt: skip

        def describe(answer, expected=(dests, outs)) -> str:
            for what, got, right in zip(("destinations", "outputs"), answer, expected,
                                        strict=True):  # fmt: skip
                if got != right:
                    return f"the {what} {sorted(got)}, expected {sorted(right)}."
            return ""  # not reached: a wrong answer differs in one of them

        tags = size_tags(model) | {"k = 1" if k == 1 else "k above 1"}
        tags.add("BOS among the top k" if BOS in dests | outs else "BOS not among the top k")
        if _top(raw_qks[head][:, source], k) != dests:
            tags.add("centring the QK rows changes the destinations")
        cases.append(Case((model, head, source, k), (dests, outs), mistakes,
                          f"head {head}, source {source}, k = {k}", describe=describe,
                          tags=tags))  # fmt: skip
    return cases


def _read_skip_trigrams(out: object, case: Case) -> tuple[frozenset[int], frozenset[int]]:
    """The learner's (destinations, outputs) as two sets of token ids (their order is free), or a
    CheckFailed on their form."""
    ex = _SKIP_TRIGRAMS.name
    model, _, _, k = case.args
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise CheckFailed(ex, "skip_trigrams must return a pair (destinations, outputs).")
    return tuple(  # type: ignore[return-value]
        frozenset(read_token_ids(ex, f"the {what}", ids, k, model.cfg.d_vocab))
        for what, ids in zip(("destinations", "outputs"), out, strict=True)
    )


_SKIP_TRIGRAMS = declare(Exercise(
    number="2.7", title="skip-trigrams of a source", functions=("skip_trigrams",),
    cases=_skip_trigram_cases, read=_read_skip_trigrams, reference=circuits.skip_trigrams,
    withhold=(circuits.skip_trigrams,), block_forward=True,
    covers=frozenset({"several heads of one layer", "k = 1", "k above 1", "BOS among the top k",
                      "BOS not among the top k", "centring the QK rows changes the destinations"}),
    passed="top-k destinations (QK column) and outputs (OV row) for k = 1 to 4, BOS included.",
))  # fmt: skip


# ---- 2.8 ranking a head's skip-trigrams ------------------------------------------------------------


def _ranked(qk_sd: Tensor, ov: Tensor, n: int, centre: bool, clamp: bool, drop_bos: bool = True):
    """A (possibly mistaken) ranking of skip-trigrams from a `[source, destination]` QK."""
    V = ov.shape[0]
    if centre:
        ov = ov - ov.mean(-1, keepdim=True)
    a, b = (qk_sd.clamp_min(0), ov.clamp_min(0)) if clamp else (qk_sd, ov)
    strength = a[:, :, None] * b[:, None, :]
    if drop_bos:
        strength[BOS] = strength[:, BOS] = strength[:, :, BOS] = 0.0
    if not clamp:
        strength = strength.clamp_min(0)
    values, flat = strength.flatten().topk(n)
    return [
        (i // (V * V), i // V % V, i % V)
        for i, v in zip(flat.tolist(), values.tolist(), strict=True)
        if v > 0
    ]


def _top_skip_trigram_cases(seed: int) -> list[Case]:
    """Each head of two random models with two heads, n = 1, 3 and 6; BOS's unembedding is made
    large in the first model and its embedding in the second, so that BOS would take the first
    places if it took part, as an output or as a source or destination."""
    cases = []
    for i, model in enumerate(random_models(seed, n_heads=2)):
        with torch.no_grad():
            if i == 0:  # BOS a strong output
                model.unembed.W_U[:, BOS] *= 3.0
            else:  # BOS a strong source and destination
                model.embed.W_E[BOS] *= 3.0
        for head in range(model.cfg.n_heads):
            qk = circuits.full_qk_circuit(model, 0, head)  # [destination, source]
            raw_qk = circuits.full_qk_circuit(model, 0, head, normalise=False)
            ov = circuits.full_ov_circuit(model, 0, head)
            for n in (3, 6, 1):
                expected = circuits.top_skip_trigrams(model, 0, head, n, ignore=[BOS])
                with_bos = _ranked(qk.T, ov, n, centre=True, clamp=True, drop_bos=False)
                mistakes = [
                    ("the QK circuit was read as [source, destination]: its rows are "
                     "destinations (queries), its columns sources (keys), so the strength uses "
                     "QK[d, s].", _ranked(qk, ov, n, centre=True, clamp=True)),
                    ("the OV rows were not centred: softmax ignores a constant added to all "
                     "logits, so subtract each row's mean first.",
                     _ranked(qk.T, ov, n, centre=False, clamp=True)),
                    ("negative × negative was counted as strong: keep only pairs where both QK "
                     "and OV' are positive.", _ranked(qk.T, ov, n, centre=True, clamp=False)),
                    ("BOS (token 0) took part: it is never a real source, destination or "
                     "output.", with_bos),
                    ("the QK rows were not centred: scores compare only within a destination "
                     "(query), so subtract each row's mean first.",
                     _ranked(raw_qk.T, ov, n, centre=True, clamp=True)),
                    ("the triples are (destination, source, output): return (source, "
                     "destination, output).", [(d, s, o) for s, d, o in expected]),
                    ("the triples are (source, output, destination): return (source, "
                     "destination, output); with strength[s, d, o], flat index i is s = i // V², "
                     "d = i // V % V, o = i % V.", [(s, o, d) for s, d, o in expected]),
                ]  # fmt: skip

                def describe(answer, expected=expected) -> str:
                    with_bos_in = [t for t in answer if BOS in t]
                    if with_bos_in:
                        return (f"BOS (token 0) takes part in {with_bos_in[0]}: it is never a "
                                "real source, destination or output, so zero its slice along "
                                "all three axes of the strength.")  # fmt: skip
                    if sorted(answer) == sorted(expected):
                        return ("the right skip-trigrams in the wrong order. Rank them by the "
                                "product QK[d, s] · OV'[s, o], largest first: is your strength "
                                "exactly this product (no extra scaling, no sum over anything), "
                                "with QK row-centred and OV row-centred?")  # fmt: skip
                    return f"got {list(answer)}, expected {expected}."

                tags = size_tags(model) | {"n = 1" if n == 1 else "n above 1"}
                if with_bos != expected:
                    tags.add("BOS would rank among the strongest")
                if _ranked(qk.T, ov, n, centre=True, clamp=False) != expected:
                    tags.add("negative × negative would rank among the strongest")
                cases.append(Case((model, head, n), expected, mistakes,
                                  f"{head_name(model, head)}, n = {n}", describe=describe,
                                  tags=tags))  # fmt: skip
    return cases


def _read_triples(out: object, case: Case) -> list[tuple[int, int, int]]:
    """The learner's list of (source, destination, output) triples, as ints, or a CheckFailed."""
    ex = _TOP_SKIP_TRIGRAMS.name
    model, _, n = case.args
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    if isinstance(out, Tensor) and out.ndim == 2 and out.shape[1] == 3:
        if out.dtype.is_floating_point:
            raise CheckFailed(ex, f"the triples must hold token ids (integers), got {out.dtype}.")
        out = out.tolist()
    if not isinstance(out, (list, tuple)):
        raise CheckFailed(
            ex, f"return a list of (source, destination, output) triples, got {type(out).__name__}."
        )
    triples = [read_triple(ex, item, model.cfg.d_vocab, "skip-trigram") for item in out]
    if len(triples) != n:
        raise CheckFailed(ex, f"return n = {n} skip-trigrams, got {len(triples)}.")
    return triples


_TOP_SKIP_TRIGRAMS = declare(Exercise(
    number="2.8", title="ranking a head's skip-trigrams", functions=("top_skip_trigrams",),
    cases=_top_skip_trigram_cases, read=_read_triples, reference=circuits.top_skip_trigrams,
    withhold=(circuits.top_skip_trigrams, circuits.strongest_skip_trigrams, one_layer._strongest,
              one_layer._skip_trigram_strength, circuits.strongest_products),
    block_forward=True,
    covers=frozenset({"several heads of one layer", "n = 1", "n above 1",
                      "BOS would rank among the strongest",
                      "negative × negative would rank among the strongest"}),
    passed="the strongest skip-trigrams, in order, for every head of two random models.",
))  # fmt: skip


# ---- 2.9 quantify the bug ----------------------------------------------------------------------


def _crossed_cases(seed: int, model: object, language: object) -> list[Case]:
    """The notebook's own model on its two crossed rules and a random triple of words, and a random
    model of the same vocabulary, on filler contexts of 6 to 8 words drawn at check time (the
    source written at a different position in each context, right after BOS in some)."""
    if not isinstance(model, AttnOnlyTransformer) or not isinstance(language, SkipTrigramLanguage):
        raise TypeError("call check_crossed_effect(crossed_effect, model, language)")
    rng = generator(seed)
    model = copy.deepcopy(model)  # the checker's own copy: nothing done later can change it
    (random_model,) = random_models(seed, 1, d_vocab=language.d_vocab, n_ctx=model.cfg.n_ctx)
    ids = language.token_to_id

    def measurable(rule: tuple[int, int, int]) -> bool:
        """Whether the rule moves its output by far more than float rounding on both models (a
        change of 1e-6 nats would leave the tolerance, relative to it, below the rounding)."""
        contexts, where = evals.filler_contexts(language, 60, 8, seed=seed + 3)  # case 2's
        return all(abs(evals.skip_trigram_effect(m, contexts, where, *rule).mean_change) >= 1e-3
                   for m in (model, random_model))  # fmt: skip

    for _ in range(50):
        random_rule = tuple(int(t) for t in torch.randint(1, language.d_vocab, (3,), generator=rng))
        if measurable(random_rule):
            break
    runs = [(model, (ids["keep"], ids["in"], ids["bay"])), (model, (ids["keep"], ids["at"], ids["mind"])),
            (model, random_rule), (random_model, random_rule)]  # fmt: skip
    cases = []
    for i, (m, (source, dest, output)) in enumerate(runs):
        n, length = 40 + 10 * i, 6 + i % 3
        contexts, where = evals.filler_contexts(language, n, length, seed=seed + 1 + i)
        which = "the notebook's model" if m is model else "a random model of its vocabulary"
        case = _crossed_case(m, language, contexts, where, source, dest, output, which)
        case.tags = {"the notebook's model" if m is model else "a random model"}
        if (where == 0).any():
            case.tags.add("the source right after BOS")
        cases.append(case)
    return cases


def _crossed_case(model, language, contexts, where, source, dest, output, which: str) -> Case:
    """The reference and the common mistakes of Exercise 2.9 for one set of contexts."""
    n = contexts.shape[0]
    ref = evals.skip_trigram_effect(model, contexts, where, source, dest, output)
    rows = torch.arange(n)
    bos, end = torch.zeros(n, 1, dtype=torch.long), torch.full((n, 1), dest)
    with_source = contexts.clone()
    with_source[rows, where] = source
    everywhere = contexts.clone()  # [:, where]: every position of `where` in every context
    everywhere[:, where] = source
    at_first = contexts.clone()  # the source at where[0] in every context
    at_first[:, int(where[0])] = source
    shifted = torch.cat([bos, contexts, end], 1)  # the source written at `where` of the
    shifted[rows, where] = source  # sequence with BOS: one position early

    def last(tokens: Tensor) -> Tensor:
        with torch.no_grad():
            return model(tokens).double()[:, -1]

    def change(with_: Tensor, without: Tensor) -> float:
        return float((with_.log_softmax(-1)[:, output] - without.log_softmax(-1)[:, output]).mean())

    logits = {"with": last(torch.cat([bos, with_source, end], 1)),
              "without": last(torch.cat([bos, contexts, end], 1))}  # fmt: skip
    lp = {name: x.log_softmax(-1)[:, output] for name, x in logits.items()}
    mistakes = [
        ("the sign is flipped: take log P with the source minus log P without it.",
         -ref.mean_change),
        ("that is a change in probability; take the change in log-probability (nats).",
         ref.mean_p_with - ref.mean_p_without),
        ("that is the log of the ratio of mean probabilities; average the per-context "
         "changes of log-probability instead.",
         float(lp["with"].exp().mean().log() - lp["without"].exp().mean().log())),
        ("that is the change of the raw logit; take log-probabilities (log_softmax) first.",
         float((logits["with"][:, output] - logits["without"][:, output]).mean())),
        ("that was read one position too early (or without `dest` appended, which gives the "
         "same): the prediction after `dest` is at the last position of BOS + context + dest, "
         "[:, -1].",
         float((_second_last(model, bos, with_source, end, output)
                - _second_last(model, bos, contexts, end, output)).mean())),
        ("the runs with and without the source were the same (a change of 0): was the source "
         "written into `contexts` itself? Write it into a copy, `contexts.clone()`.", 0.0),
        ("the source went in one position early: `where` indexes the contexts, so in the "
         "sequence with BOS in front it is position where + 1.",
         change(last(shifted), logits["without"])),
        ("with_source[:, where] wrote the source at every position of `where` into every "
         "context; write one position per context, with_source[torch.arange(n), where].",
         change(last(torch.cat([bos, everywhere, end], 1)), logits["without"])),
        ("the changes were summed over the contexts; take their mean.", n * ref.mean_change),
        ("the source was written at the same position, where[0], in every context: each context "
         "has its own, where[i].", change(last(torch.cat([bos, at_first, end], 1)),
                                          logits["without"])),
    ]  # fmt: skip
    labels = language.token_labels
    where_text = (f"{which}, {labels[source]} … {labels[dest]} → {labels[output]} on {n} "
                  f"contexts of {contexts.shape[1]} words")  # fmt: skip
    near = ("Close, but not exact: does every sequence start with BOS (token 0), as in "
            "training, with the source written at `where` of the contexts?")  # fmt: skip
    return Case((model, contexts, where, source, dest, output), ref.mean_change, mistakes,
                where_text, near_miss=near)  # fmt: skip


def _second_last(model, bos: Tensor, contexts: Tensor, end: Tensor, output: int) -> Tensor:
    with torch.no_grad():
        logits = model(torch.cat([bos, contexts, end], 1)).double()
    return logits[:, -2].log_softmax(-1)[:, output]


declare(Exercise(
    number="2.9", title="quantify the bug", functions=("crossed_effect",),
    given=("model", "language"), cases=_crossed_cases, reference=evals.skip_trigram_effect,
    withhold=(evals.skip_trigram_effect, evals.continuation_effect),
    covers=frozenset({"the notebook's model", "a random model", "the source right after BOS"}),
    passed="exact on the notebook's model (keep … in → bay, keep … at → mind, a random triple of "
    "words) and on a random model.",
))  # fmt: skip
