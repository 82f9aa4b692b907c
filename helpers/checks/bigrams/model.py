"""Exercises 1.3 and 1.5-1.7: the zero-layer model (its circuit, the loss of a table of logits, the
best rank-k approximation, a model set by hand)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from helpers import attribution, circuits, handmade
from helpers.checks._base import CheckFailed, generator, random_model
from helpers.checks._judge import Case
from helpers.checks._registry import Exercise, declare
from helpers.checks.bigrams._shared import read_nats
from helpers.data import BigramLanguage
from helpers.models import AttnOnlyTransformer

# ---- 1.3 the zero-layer circuit ------------------------------------------------------------------


def _circuit_cases(seed: int) -> list[Case]:
    """Three zero-layer models: d_model above d_vocab (as the notebook's), below it (as its
    rank-4 model's) and equal to it, where W_U @ W_E has the right shape and only its values
    tell it from W_E @ W_U."""
    g = generator(seed)

    def pick(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (), generator=g))

    V1, V2, V3 = pick(9, 12), pick(13, 16), pick(17, 20)  # three vocabularies, never the same
    sizes = ((V1, V1 + pick(4, 8)), (V2, pick(3, 7)), (V3, V3))
    cases = []
    for i, (V, d_model) in enumerate(sizes):
        model = random_model(seed + i, n_layers=0, n_heads=0, d_vocab=V, d_model=d_model)
        W_E, W_U = model.W_E.detach(), model.W_U.detach()
        expected = circuits.direct_path(model)
        swapped = ("that is W_U @ W_E, d_model × d_model; the circuit goes from tokens to logits, "
                   "W_E @ W_U.")  # fmt: skip
        mistakes = [
            ("the matrix is transposed: in the row convention it is W_E @ W_U, with row = current "
             "token and column = next-token logit (the paper writes W_U W_E).", expected.T),
            ("these are probabilities: the circuit is the logits, before any softmax.",
             expected.softmax(-1)),
            ("these are log-probabilities: the circuit is the raw logits, before log_softmax.",
             expected.log_softmax(-1)),
            ("each row was centred: the circuit is the logits as the model outputs them (centring "
             "comes later, to compare them with log-probabilities).",
             expected - expected.mean(-1, keepdim=True)),
            ("W_E @ W_E.T assumes the unembedding is the embedding transposed (tied weights); "
             "these models have their own W_U: W_E @ W_U.", W_E @ W_E.T),
        ]  # fmt: skip
        if d_model == V:
            mistakes.append((swapped, W_U @ W_E))
        relation = "=" if d_model == V else ("<" if d_model < V else ">")
        cases.append(Case(
            (model,), expected, mistakes, f"d_vocab {V}, d_model {d_model}",
            shape_hints={(d_model, d_model): swapped}, tags={f"d_model {relation} d_vocab"},
        ))  # fmt: skip
    return cases


declare(Exercise(
    number="1.3", title="the zero-layer circuit", functions=("zero_layer_circuit",),
    cases=_circuit_cases, reference=circuits.direct_path,
    withhold=(circuits.direct_path, attribution.direct_path_logits,
              attribution.logit_contributions),
    block_forward=True,
    covers=frozenset({"d_model > d_vocab", "d_model < d_vocab", "d_model = d_vocab"}),
    passed="W_E @ W_U, row = current token, for three random zero-layer models (d_model above, "
    "below and equal to d_vocab).",
))  # fmt: skip


# ---- 1.5 the loss of a table of logits ---------------------------------------------------------


def _loss_cases(seed: int) -> list[Case]:
    """Planted chains (not symmetric) with random logit tables: in float64, in float32, and in
    float32 with logits in the hundreds (one at 180), where exponentiating them overflows (to
    inf, and inf / inf is NaN) while log_softmax does not."""
    cases = []
    for i, (n, dtype, scale) in enumerate(((5, torch.float64, 2.0), (8, torch.float32, 2.0),
                                           (6, torch.float32, 60.0))):  # fmt: skip
        lang = BigramLanguage(n_states=n, seed=seed + i)
        P, pi = lang.transition_matrix, lang.stationary  # float64
        logits = torch.randn(n, n, generator=generator(seed + 10 + i), dtype=torch.float64) * scale
        logits[0, 0] = 3 * scale  # one logit far out, whatever the draw
        P, pi, logits = P.to(dtype), pi.to(dtype), logits.to(dtype)
        Pd, pid, L = P.double(), pi.double(), logits.double()
        log_q = L.log_softmax(-1)
        loss = circuits.expected_loss(L, Pd, pid)
        mistakes = [
            ("the logits were used as log-probabilities: apply log_softmax over each row first.",
             float(-(pid[:, None] * Pd * L).sum())),
            ("the softmax ran over the current token (dim=0); each row (a current token) is a "
             "distribution over next tokens.",
             float(-(pid[:, None] * Pd * L.log_softmax(0)).sum())),
            ("the softmax ran over the whole table; each row (a current token) is a distribution "
             "over next tokens of its own: log_softmax(dim=-1).",
             float(-(pid[:, None] * Pd * L.flatten().log_softmax(0).view(n, n)).sum())),
            ("the rows were averaged uniformly: weight row i by π_i, how often the chain is in "
             "state i.", float(-(Pd * log_q).sum(-1).mean())),
            ("the sign is flipped: cross-entropy is -Σ π_i P_ij log q_ij >= 0.",
             float((pid[:, None] * Pd * log_q).sum())),
            ("π lined up with the next state (columns) instead of the current one (rows): "
             "`pi[:, None] * P`.", float(-(pid * Pd * log_q).sum())),
            ("the terms were averaged (.mean()) over the n × n table; sum them.", loss / n**2),
            ("that is the KL divergence, Σ π_i P_ij log(P_ij / q_ij): the loss is the "
             "cross-entropy, -Σ π_i P_ij log q_ij, which does not subtract the chain's own "
             "entropy.", float((pid[:, None] * Pd * (Pd.log() - log_q)).sum())),
        ]  # fmt: skip
        near = "Close: use the `pi` you are given (exact), rather than one you estimated."
        overflow = None
        if float(logits.max()) > math.log(torch.finfo(dtype).max):  # exp(logit) is inf
            overflow = ("The logits here reach the hundreds: exp of them overflows to inf (and "
                        "inf / inf is NaN), and a softmax's smallest probabilities underflow to 0 "
                        "(log 0 = -inf). logits.log_softmax(dim=-1) does neither: it never "
                        "exponentiates a large logit nor takes the log of a "
                        "probability.")  # fmt: skip
        tags = {str(dtype).removeprefix("torch.")}
        if not torch.allclose(P, P.T):
            tags.add("non-symmetric P")
        if overflow:
            tags.add("logits whose exp overflows")
        where = f"{n} states ({dtype}), logits of scale {scale:g}"
        cases.append(Case((logits, P, pi), loss, mistakes, where, near_miss=near,
                          context=overflow, tags=tags))  # fmt: skip
    return cases


_EXPECTED_LOSS = Exercise(
    number="1.5", title="the loss of a table of logits", functions=("expected_loss",),
    cases=_loss_cases, reference=circuits.expected_loss, withhold=(circuits.expected_loss,),
    read=lambda out, case: read_nats(_EXPECTED_LOSS, out, case),
    covers=frozenset({"float32", "float64", "non-symmetric P", "logits whose exp overflows"}),
    passed="right for three random chains and logit tables, in float64 and float32, logits in "
    "the hundreds among them.",
)  # fmt: skip
declare(_EXPECTED_LOSS)


# ---- 1.6 the best rank-k approximation -----------------------------------------------------------


def _rank_k_cases(seed: int) -> list[Case]:
    """Matrices square, tall and wide; k = 1 and k = min(shape) (the matrix itself); one of rank
    2 with k = 4 (its zero singular values must not be divided by); entries of scale 1e-3 (in
    float32) and 1e4 (so that nothing absolute, a threshold or an epsilon, passes)."""
    cases = []
    for i, (shape, k, dtype, scale, rank) in enumerate((
        ((7, 7), 2, torch.float64, 1.0, None),
        ((9, 6), 3, torch.float64, 1.0, None),
        ((6, 10), 4, torch.float64, 1.0, None),
        ((5, 8), 1, torch.float32, 1e-3, None),
        ((8, 5), 5, torch.float64, 1.0, None),
        ((6, 6), 4, torch.float64, 1e4, 2),
    )):  # fmt: skip
        g = generator(seed + i)
        m, n = shape
        if rank is None:
            M = torch.randn(m, n, generator=g, dtype=torch.float64)
        else:
            M = torch.randn(m, rank, generator=g, dtype=torch.float64) @ torch.randn(
                rank, n, generator=g, dtype=torch.float64
            )
        M = (M * scale).to(dtype)
        U, S, Vh = torch.linalg.svd(M.double(), full_matrices=False)
        expected = circuits.best_rank_k(M.double(), k)
        mistakes = [
            ("these are the k *smallest* singular directions; Eckart–Young keeps the largest (the "
             "first k: torch.linalg.svd sorts them in descending order).",
             (U[:, -k:] * S[-k:]) @ Vh[-k:]),
            ("the singular values were applied twice (U S and S Vᵀ): multiply them in once.",
             (U[:, :k] * S[:k] ** 2) @ Vh[:k]),
            ("that keeps k + 1 directions.", (U[:, : k + 1] * S[: k + 1]) @ Vh[: k + 1]),
            ("that keeps k - 1 directions: the first k are [:k].",
             (U[:, : k - 1] * S[: k - 1]) @ Vh[: k - 1]),
            ("the singular values are missing: U_k S_k V_kᵀ.", U[:, :k] @ Vh[:k]),
        ]  # fmt: skip
        v_for_vh = (
            "V was used where Vᵀ belongs: torch.linalg.svd returns Vh, already transposed, so V_kᵀ "
            "is Vh[:k] (torch.svd, by contrast, returns V)."
        )
        hints = {}
        if m >= n:  # V's first k rows have the right length only when n <= m
            mistakes.append((v_for_vh, (U[:, :k] * S[:k]) @ Vh.mT[:k]))
        else:
            hints[(m, m)] = v_for_vh
        tags = {
            "square" if m == n else ("tall" if m > n else "wide"),
            str(dtype).removeprefix("torch."),
        }
        if k == 1:
            tags.add("k = 1")
        if k == min(shape):
            tags.add("k = min(shape)")
        size = float(M.abs().max())
        if size < 1e-2 or size > 1e2:
            tags.add("scale far from 1")
        if int(torch.linalg.matrix_rank(M.double())) < k:
            tags.add("M of rank below k")
        where = f"a {m}×{n} matrix ({dtype}, entries up to {size:.2g}), k = {k}"
        cases.append(Case((M, k), expected, mistakes, where, shape_hints=hints, tags=tags))
    return cases


declare(Exercise(
    number="1.6", title="the best rank-k approximation", functions=("best_rank_k",),
    cases=_rank_k_cases, reference=circuits.best_rank_k,
    withhold=(circuits.best_rank_k, circuits.row_space),  # M @ projector(row_space(M)[:k])
    covers=frozenset({"square", "tall", "wide", "k = 1", "k = min(shape)", "scale far from 1",
                      "M of rank below k", "float32", "float64"}),
    passed="the truncated SVD for six random matrices: square, tall and wide, k from 1 to the "
    "full rank, one of rank below k, scales from 1e-3 to 1e4.",
))  # fmt: skip


# ---- 1.7 a zero-layer model built by hand --------------------------------------------------------


def _set_weights_cases(seed: int) -> list[Case]:
    """Zero-layer models of four widths: d_model below d_vocab, d_model = 1 and d_model = d_vocab
    (the table itself fits), with random tables, one in float64 (the model stays float32). The
    model's positions and head size are the vocabulary's and 1, so that every size a correct
    answer meets is d_vocab or d_model: an error naming another size comes from a size built
    into the code. The learner edits the model itself (no clone); the case keeps the model's
    config and every parameter as they were, for `_read_model`."""
    cases = []
    for i, (V, k, dtype) in enumerate(((9, 3, torch.float32), (12, 5, torch.float32),
                                       (7, 1, torch.float64), (6, 6, torch.float32))):  # fmt: skip
        model = random_model(seed + i, n_layers=0, n_heads=0, d_vocab=V, d_model=k, d_head=1,
                             n_ctx=V)  # fmt: skip
        table = torch.randn(V, V, generator=generator(seed + 10 + i), dtype=torch.float64)
        table = table.to(dtype)
        T = table.double()
        U, S, Vh = torch.linalg.svd(T)
        expected = circuits.best_rank_k(T, k)
        centred = T - T.mean(-1, keepdim=True)
        mistakes = [
            ("W_E @ W_U keeps the k smallest singular directions; Eckart–Young keeps the largest.",
             (U[:, -k:] * S[-k:]) @ Vh[-k:]),
            ("the singular values went in twice (W_E = U S and W_U = S Vᵀ): split them, e.g. √S "
             "into each, or S into one of the two.", (U[:, :k] * S[:k] ** 2) @ Vh[:k]),
            ("the singular values are missing (W_E = U_k, W_U = V_kᵀ): put S_k into W_E or W_U, "
             "or √S_k into each.", U[:, :k] @ Vh[:k]),
            ("W_E @ W_U is the transpose of the approximation: row = current token (W_E), "
             "column = next token (W_U).", expected.T),
            ("W_U was set to W_Eᵀ: the table is not symmetric, its right singular vectors (Vh) "
             "go into W_U.", (U[:, :k] * S[:k]) @ U[:, :k].T),
            ("each row of the table was centred first: approximate the table as it is given.",
             circuits.best_rank_k(centred, k)),
            ("W_E @ W_U did not change: set the weights of the model you are given, in place "
             "(`model.embed.W_E.copy_(...)`), not of a copy or a new model.",
             (model.W_E @ model.W_U).detach().double()),
        ]  # fmt: skip
        before = {name: (p, p.detach().clone()) for name, p in model.named_parameters()}
        tags = {str(dtype).removeprefix("torch.") + " table"}
        tags.add("d_model = d_vocab" if k == V else "d_model < d_vocab")
        if k == 1:
            tags.add("d_model = 1")
        where = f"d_vocab {V}, d_model {k} ({dtype} table)"
        cases.append(Case(
            (model, table.clone()), expected, mistakes, where, tags=tags,
            answer=lambda out, args: args[0],  # the model as the learner's code left it
            context={"cfg": model.cfg, "before": before},
        ))  # fmt: skip
    return cases


def _read_model(model: AttnOnlyTransformer, case: Case) -> Tensor:
    """W_E @ W_U of the model as the learner's code left it, or a CheckFailed saying what else
    changed: its config, another parameter, W_E's or W_U's shape, dtype or very Parameter."""
    ex = _SET_WEIGHTS.name
    prefix = f"{case.where}: "
    if model.cfg != case.context["cfg"]:
        raise CheckFailed(
            ex, prefix + "the model's config changed; set the weights, keep its sizes."
        )
    now = dict(model.named_parameters())
    V, k = model.cfg.d_vocab, model.cfg.d_model
    for name, (param, value) in case.context["before"].items():
        short = name.split(".")[-1]
        if short not in ("W_E", "W_U"):
            if name not in now or not torch.equal(now[name].detach(), value):
                raise CheckFailed(ex, prefix + f"only W_E and W_U are yours to set; {short} "
                                  "changed.")  # fmt: skip
            continue
        got = now.get(name)
        shape = (V, k) if short == "W_E" else (k, V)
        if got is None or tuple(got.shape) != shape:
            have = "is gone" if got is None else f"now has shape {tuple(got.shape)}"
            raise CheckFailed(
                ex,
                prefix + f"{short} {have}; it must keep its shape {shape} "
                f"(d_model = {k} is the rank the model can hold: copy the factors into it, e.g. "
                f"model.{'embed' if short == 'W_E' else 'unembed'}.{short}.copy_(...)).",
            )
        if got.dtype != value.dtype:
            raise CheckFailed(ex, prefix + f"{short} is now {got.dtype}; the model's weights are "
                              f"{value.dtype}. Copy the factors into the weights, "
                              f"`model.{name}.copy_(...)`, which converts them, rather than "
                              "replacing `.data`.")  # fmt: skip
        if got is not param:
            raise CheckFailed(ex, prefix + f"{short} was replaced by a new Parameter; set the "
                              f"model's own, in place: `model.{name}.copy_(...)` (the notebook's "
                              "optimiser, hooks and anything else holding the old one would not "
                              "see a new one).")  # fmt: skip
    if extra := sorted(set(now) - set(case.context["before"])):
        raise CheckFailed(
            ex, prefix + f"the model gained parameters {extra}; set W_E and W_U only."
        )
    return (model.W_E @ model.W_U).detach()


def _run_without_grad(exercise: Exercise, functions: Sequence[Callable], case: Case) -> object:
    """The learner's code edits parameters in place, which autograd allows only without grad."""
    with torch.no_grad():
        return exercise.call(functions[0], case)


_SET_WEIGHTS = Exercise(
    number="1.7", title="a zero-layer model built by hand", functions=("set_zero_layer_weights",),
    cases=_set_weights_cases, reference=handmade.set_zero_layer_weights,
    withhold=(handmade.set_zero_layer_weights, circuits.best_rank_k, circuits.row_space),
    clone=False,
    run=_run_without_grad, read=_read_model,
    on_error={
        "AttributeError": "If it is model.W_E or model.W_U that cannot be set: they are read-only "
        "views of the parameters; write into those, in place: model.embed.W_E.copy_(...), "
        "model.unembed.W_U.copy_(...).",
        "TypeError": "If a tensor cannot be assigned as a parameter: write into the parameter, in "
        "place, model.embed.W_E.copy_(...) and model.unembed.W_U.copy_(...).",
    },
    covers=frozenset({"d_model < d_vocab", "d_model = 1", "d_model = d_vocab", "float32 table",
                      "float64 table"}),
    passed="W_E @ W_U is the truncated SVD and nothing else changed, for four random tables and "
    "widths (d_model from 1 to d_vocab).",
)  # fmt: skip
declare(_SET_WEIGHTS)
