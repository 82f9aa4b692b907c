"""Exercises 0.9-0.10: the residual stream has no privileged basis (a rotated model computes the
same), and the subspace a head writes to."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from helpers import circuits
from helpers.checks._base import (
    CheckFailed,
    generator,
    random_models,
    random_tokens,
)
from helpers.checks._judge import Case, describe, same
from helpers.checks._registry import Exercise, declare
from helpers.models import AttnOnlyTransformer

# ---- 0.9 no privileged basis ---------------------------------------------------------------------
_WRITERS = ("W_E", "W_pos", "W_O", "b_O")  # write the stream: ... @ R
_READERS = ("W_Q", "W_K", "W_V", "W_U")  # read it: Rᵀ @ ...
# the config fields that change what a model computes (not how it was initialised)
_COMPUTING_FIELDS = ("n_layers", "d_model", "n_heads", "d_head", "n_ctx", "d_vocab",
                     "positional_embedding_type", "use_bias", "smeared_keys")  # fmt: skip


def _rotation_mistakes(
    state: dict[str, Tensor], R: Tensor, shortformer: bool
) -> list[tuple[str, dict]]:
    """The common mistakes of Exercise 0.9, as the weights (a state dict) each one gives. W_pos
    left unrotated is a mistake of shortformer models, whose positions seem to stay out of the
    stream: it is not listed for standard positions, so that a learner who rotates W_pos there
    (rightly) and forgets it with shortformer positions is still told so."""
    # every weight times R and times Rᵀ on its side (writers on the right, readers on the left),
    # and as it is; each mistake picks its pieces
    pieces = {}
    for name, value in state.items():
        last = name.split(".")[-1]
        pieces[name] = {None: value}
        if last in _WRITERS:
            pieces[name] |= {"R": value @ R, "Rt": value @ R.T}
        elif last in _READERS:  # broadcasts over heads: [n_heads, d_model, d_head]
            pieces[name] |= {"R": R @ value, "Rt": R.T @ value}
    writers_r = "the stream's new coordinates are x R, so every writer gets … R (W_E R, W_pos R, "
    reads = (
        "W_O R, b_O R) and every reader Rᵀ … (Rᵀ W_Q, Rᵀ W_K, Rᵀ W_V, Rᵀ W_U): (x R) Rᵀ W = x W."
    )
    forgot = "was not rotated: "
    variants = [
        (f"rotated by Rᵀ: {writers_r}{reads} Your model computes the same logits, but in the "
         "stream rotated by Rᵀ, not by R.", {"writer": "Rt", "reader": "R"}),
        (f"the readers were multiplied by R instead of Rᵀ: {writers_r}{reads}",
         {"writer": "R", "reader": "R"}),
        (f"the writers were multiplied by Rᵀ instead of R: {writers_r}{reads}",
         {"writer": "Rt", "reader": "Rt"}),
        ("the model is unchanged: no weight was rotated. Writers (W_E, W_pos, W_O, b_O) get … R, "
         "readers (W_Q, W_K, W_V, W_U) Rᵀ ….", {"writer": None, "reader": None}),
        *[(f"W_pos {forgot}positions are added to the stream's coordinates (with shortformer "
           "positions, at the queries' and keys' input), so they rotate like the embedding: "
           "W_pos R.", {"skip": ("W_pos",)})] * shortformer,
        (f"W_E {forgot}the embedding writes the stream: W_E R.", {"skip": ("W_E",)}),
        (f"W_U {forgot}the unembedding reads the stream: Rᵀ W_U.", {"skip": ("W_U",)}),
        (f"W_V {forgot}values read the stream too, like queries and keys: Rᵀ W_V.",
         {"skip": ("W_V",)}),
        (f"W_O {forgot}every head writes the stream through W_O (and b_O): W_O R, b_O R.",
         {"skip": ("W_O",)}),
        (f"W_O {forgot}every head writes the stream through W_O (and b_O): W_O R, b_O R.",
         {"skip": ("W_O", "b_O")}),
        (f"b_O {forgot}the output bias is written into the stream like W_O's output: b_O R.",
         {"skip": ("b_O",)}),
    ]  # fmt: skip
    mistakes = []
    for description, spec in variants:
        spec = {"writer": "R", "reader": "Rt", "skip": ()} | spec
        weights = {}
        for name, choices in pieces.items():
            last = name.split(".")[-1]
            side = "writer" if last in _WRITERS else "reader"
            kept = last in spec["skip"] or len(choices) == 1  # b_Q, b_K, b_V, b_U stay
            weights[name] = choices[None if kept else spec[side]]
        mistakes.append((description, weights))
    return mistakes


@torch.no_grad()
def _randomise_biases(model: AttnOnlyTransformer, seed: int) -> AttnOnlyTransformer:
    """Non-zero biases (they start at zero), so that a bias left unrotated, or rotated when it
    should not be, changes something."""
    g = generator(seed)
    for name, p in model.named_parameters():
        if name.split(".")[-1].startswith("b_"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def _shared_with(out: AttnOnlyTransformer, given: AttnOnlyTransformer) -> list[str]:
    """Names of `out`'s weights that share memory with a weight of `given`."""
    storages = {p.untyped_storage().data_ptr() for p in given.state_dict().values()}
    return [n for n, p in out.state_dict().items() if p.untyped_storage().data_ptr() in storages]


def _rotated_weights(state: dict[str, Tensor], where: str) -> Callable:
    """Exercise 0.9's `Case.answer`: what must hold of the learner's model before its weights are
    judged (the input left as it was; a new model, with the input's config and weights' names,
    shapes and dtypes, sharing no memory with the input), then its weights, as a dict."""

    def answer(out: object, args: tuple) -> dict[str, Tensor]:
        ex, given = _ROTATE.name, args[0]
        edited = [n for n, v in given.state_dict().items()
                  if n not in state or not torch.equal(v, state[n])]  # fmt: skip
        if edited or set(given.state_dict()) != set(state):
            names = ", ".join(edited[:3]) + (", …" if len(edited) > 3 else "")
            raise CheckFailed(ex, f"{where}: your function edited the model it was given in place "
                              f"({names} changed): the input must stay as it was, since the "
                              "notebook still uses it. Rotate a copy (copy.deepcopy(model)) and "
                              "return that.")  # fmt: skip
        if out is given:
            raise CheckFailed(ex, f"{where}: your function returned the model it was given, "
                              "unchanged: return a new model (copy.deepcopy(model)) with its "
                              "weights rotated.")  # fmt: skip
        if not isinstance(out, AttnOnlyTransformer):
            hint = " (did you forget the return?)" if out is None else ""
            raise CheckFailed(ex, "rotate_residual must return a model (an AttnOnlyTransformer), "
                              f"got {type(out).__name__}{hint}.")  # fmt: skip
        got = out.state_dict()
        if set(got) != set(state):
            missing, extra = sorted(set(state) - set(got)), sorted(set(got) - set(state))
            raise CheckFailed(ex, f"{where}: your model's weights are not the input's: missing "
                              f"{missing}, unexpected {extra}. Build it from the same config "
                              "(copy.deepcopy(model) keeps everything).")  # fmt: skip
        for name, value in state.items():
            if got[name].shape != value.shape:
                raise CheckFailed(ex, f"{where}: your model's {name} has shape "
                                  f"{tuple(got[name].shape)}; the input's is {tuple(value.shape)}. "
                                  "Rotating changes coordinates, not shapes.")  # fmt: skip
            if got[name].dtype != value.dtype:
                raise CheckFailed(ex, f"{where}: your model's {name} is {got[name].dtype}; the "
                                  f"input's is {value.dtype}. Keep the model's dtype.")  # fmt: skip
        theirs, mine = out.cfg, given.cfg
        differ = [f"{k}: {getattr(theirs, k)!r}, the input's {getattr(mine, k)!r}"
                  for k in _COMPUTING_FIELDS if getattr(theirs, k) != getattr(mine, k)]  # fmt: skip
        if differ:
            raise CheckFailed(ex, f"{where}: your model's config is not the input's "
                              f"({'; '.join(differ)}), so it computes something else with the "
                              "same weights. Start from copy.deepcopy(model), which keeps "
                              "it.")  # fmt: skip
        shared = _shared_with(out, given)
        if shared:
            raise CheckFailed(ex, f"{where}: your new model shares {', '.join(shared[:3])} with "
                              "the input model (the same tensor in memory), so editing one "
                              "model would edit the other. Start from "
                              "copy.deepcopy(model).")  # fmt: skip
        return {name: value.detach() for name, value in got.items()}

    return answer


def _explain_rotation(expected: dict[str, Tensor], cfg, tokens: Tensor, logits: Tensor) -> Callable:
    """What is wrong with weights no common mistake explains: which weights differ, and whether
    the model still computes the input's logits (another rotation, say) or not."""

    def explain(weights: dict[str, Tensor]) -> str:
        differ = [n for n, value in expected.items() if not same(weights[n], value)]
        names = ", ".join(differ[:4]) + (", …" if len(differ) > 4 else "")
        verb = "is not what it" if len(differ) == 1 else "are not what they"
        model = AttnOnlyTransformer(cfg)  # the learner's config is the input's (checked)
        model.load_state_dict(weights)
        with torch.no_grad():
            error = float((model(tokens) - logits).abs().max())
        if error <= 1e-4 * max(1.0, float(logits.abs().max())):
            what = "your model computes the same logits as the original, but"
        else:
            what = f"your model's logits differ from the original's by up to {error:.3g}, and"
        return (f"{what} its weights are not the input's rotated by R: {names} {verb} should be. "
                "The stream's new coordinates are x R: every weight that writes it (W_E, W_pos, "
                "W_O, b_O) gets … @ R, every weight that reads it (W_Q, W_K, W_V, W_U) R.T @ …; "
                "the other biases stay.")  # fmt: skip

    return explain


def _rotation_cases(seed: int) -> list[Case]:
    """Two rotations each of three random models: shortformer positions, two layers, biases;
    standard positions, three layers, biases, d_vocab = d_model (so that no weight's side can be
    told by an axis of size d_model); and, as the course's models are, no biases, with one head
    per layer whose d_head is d_model (as in chapter 05's sweep)."""
    per_model = [
        {"positional_embedding_type": "shortformer", "n_layers": 2, "use_bias": True},
        {"positional_embedding_type": "standard", "n_layers": 3, "use_bias": True},
        {"positional_embedding_type": "shortformer", "n_layers": 2, "use_bias": False},
    ]
    drawn = random_models(seed, 3, per_model=per_model)
    changes = [{}, {"d_vocab": drawn[1].cfg.d_model},
               {"n_heads": 1, "d_head": drawn[2].cfg.d_model}]  # fmt: skip
    cases = []
    for i, (model, change) in enumerate(zip(drawn, changes, strict=True)):
        model = AttnOnlyTransformer(dataclasses.replace(model.cfg, **change))
        if model.cfg.use_bias:
            _randomise_biases(model, seed + 30 + i)
        cfg = model.cfg
        tokens = random_tokens(model, seed + 10 + i)
        with torch.no_grad():
            logits = model(tokens)
        state = {name: value.clone() for name, value in model.state_dict().items()}
        heads = "several heads of one layer" if cfg.n_heads > 1 else "one head per layer"
        tags = {"biases" if cfg.use_bias else "no biases", heads,
                f"{cfg.positional_embedding_type} positions", f"{cfg.n_layers} layers"}  # fmt: skip
        tags |= {"d_head = d_model"} if cfg.d_head == cfg.d_model else set()
        tags |= {"d_vocab = d_model"} if cfg.d_vocab == cfg.d_model else set()
        described = (f"a {cfg.n_layers}-layer model with {cfg.positional_embedding_type} "
                     f"positions, {'biases' if cfg.use_bias else 'no biases'}, {cfg.n_heads} "
                     f"head{'s' * (cfg.n_heads > 1)} of d_head {cfg.d_head} in d_model "
                     f"{cfg.d_model}, d_vocab {cfg.d_vocab}")  # fmt: skip
        for j in range(2):  # two rotations per model
            R = circuits.random_rotation(cfg.d_model, seed + 100 + 10 * i + j)
            expected = {name: value.detach() for name, value in
                        circuits.rotate_residual(model, R).state_dict().items()}  # fmt: skip
            where = f"rotation {j + 1} of {described}"
            shortformer = cfg.positional_embedding_type == "shortformer"
            cases.append(Case(
                (copy.deepcopy(model), R.clone()), expected,
                _rotation_mistakes(state, R, shortformer), where,
                answer=_rotated_weights(state, where),
                describe=_explain_rotation(expected, cfg, tokens, logits), tags=tags,
            ))  # fmt: skip
    return cases


_NO_BIAS = (
    "If it is about a bias that is None: the checker's models include one without biases, as the "
    "course's models are; there b_O is None, so rotate b_O only if it is not None."
)

_ROTATE = declare(Exercise(
    number="0.9", title="rotate the residual stream", functions=("rotate_residual",),
    cases=_rotation_cases, reference=circuits.rotate_residual,
    withhold=(circuits.rotate_residual,), clone=False,
    on_error={
        "AttributeError": f"{_NO_BIAS} If it is about setting an attribute: model.W_E, model.W_Q, "
        "… are read-only views of the weights; write into the parameters themselves, e.g. "
        "new.embed.W_E.copy_(model.W_E @ R), inside `with torch.no_grad():`.",
        "TypeError": f"{_NO_BIAS} If it is about assigning a tensor as a parameter: copy into the "
        "parameter instead, e.g. new.embed.W_E.copy_(model.W_E @ R).",
        "RuntimeError": "If it is about an in-place operation on a tensor that requires grad: do "
        "the copies inside `with torch.no_grad():`.",
    },
    covers=frozenset({"biases", "no biases", "shortformer positions", "standard positions",
                      "3 layers", "several heads of one layer", "one head per layer",
                      "d_head = d_model", "d_vocab = d_model"}),
    passed="every weight rotated (writers … R, readers Rᵀ …), the logits unchanged and the input "
    "left as it was, for two rotations each of random 2- and 3-layer models with and without "
    "biases (shortformer and standard positions, d_head and d_vocab equal to d_model).",
))  # fmt: skip


# ---- 0.10 a head's write subspace ----------------------------------------------------------------
_BASIS = (
    "the right singular vectors whose singular values are above a tolerance, or "
    "torch.linalg.pinv(W_O) @ W_O"
)
_RELATIVE = (
    "keep only the directions whose singular values are not rounding noise, above "
    "max(W_O.shape) · eps · the largest (as torch.linalg.matrix_rank counts), or use "
    "torch.linalg.pinv(W_O) @ W_O"
)


def _write_projector_mistakes(W_O: Tensor, P: Tensor, rank: int) -> list[tuple[str, Tensor]]:
    W = W_O.double()
    rows = W / W.norm(dim=1, keepdim=True)
    _, S, Vh = torch.linalg.svd(W, full_matrices=False)
    top = Vh[: rank - 1]
    short = (
        "the projector is one direction short: the row space of W_O has rank(W_O) dimensions "
        "(d_head when its rows are independent); use all of them."
    )
    return [
        ("W_O.T @ W_O is a projector only when W_O's rows are orthonormal, and these are not: "
         f"build it from an orthonormal basis of W_O's rows ({_BASIS}).", W.T @ W),
        ("that is I - P, the projector onto the complement: P keeps what lies in W_O's row "
         "space.", torch.eye(W.shape[1], dtype=W.dtype) - P.double()),
        ("that is the identity, the projector onto the whole stream (Q Qᵀ from a 'complete' QR, "
         "or Vhᵀ Vh from a full SVD): the write subspace has only rank(W_O) ≤ d_head dimensions, "
         "so keep that many basis vectors.", torch.eye(W.shape[1], dtype=W.dtype)),
        ("W_O's rows were normalised but not made orthogonal: Wᵀ W is a projector only for "
         f"orthonormal rows ({_BASIS}).", rows.T @ rows),
        ("the singular values were kept (Vᵀ S V): a projector has eigenvalue 1 on the whole "
         "subspace, so use Vᵀ V with the right singular vectors alone.",
         Vh[:rank].T @ torch.diag(S[:rank]) @ Vh[:rank]),
        ("the projector covers only W_O's first row: the head writes into the span of all its "
         "rows.", rows[:1].T @ rows[:1]),
        (short, top.T @ top),
    ]  # fmt: skip


def _explain_projector(W_O: Tensor, rank: int, expected: Tensor, structure: str) -> Callable:
    """What is wrong with a projector no common mistake explains, for one W_O: a projector onto
    too many or too few dimensions (a rank miscounted: rounding noise kept, or a threshold fixed
    in advance that this W_O's scale defeats) or onto the wrong ones."""
    d = W_O.shape[0]
    entries = float(W_O.abs().max())
    if entries > 1e2:
        scale = (f" A W_O with entries this large (up to {entries:.0e}) has rounding noise far "
                 "above a threshold fixed in advance (S > 1e-6, say): compare the singular values "
                 "with the largest.")  # fmt: skip
    elif entries < 1e-2:
        scale = (f" This W_O's entries are all small (up to {entries:.0e}), so are its singular "
                 "values, yet none is zero: a threshold fixed in advance (S > 1e-6, say) drops "
                 "real directions; compare the singular values with the largest.")  # fmt: skip
    else:
        scale = ""

    def explain(answer: Tensor) -> str:
        if torch.isnan(answer).any():
            return ("your matrix holds NaN (a division by the norm of a row that is, up to "
                    f"rounding, zero?).{scale} Build the projector from {_BASIS}.")  # fmt: skip
        A = answer.double()
        dims = float(torch.trace(A))
        projector = same(A @ A, A, widen=100) and same(A, A.T, widen=100)
        if not projector or abs(dims - round(dims)) > 1e-2:
            return describe(answer, expected)
        # the cases of full rank come first: a rank-deficient one is the first wrong only when
        # every W_O of full rank was answered right
        before = "right for every W_O of full rank, but not here: " if rank < d else ""
        if round(dims) == rank:
            return (f"{before}your matrix projects onto {rank} dimensions, as many as W_O writes "
                    f"into, yet not onto W_O's row space.{structure} Build it from "
                    f"{_BASIS}.")  # fmt: skip
        return (f"{before}your matrix has trace {dims:.3g} (for a projector, the dimension it "
                f"projects onto), where W_O writes into {rank} dimensions.{structure}{scale} "
                f"To count the rank, {_RELATIVE}.")  # fmt: skip

    return explain


def _dependent(W: Tensor, g: torch.Generator, n: int, rows: int) -> tuple[Tensor, str]:
    """W with `n` of its rows made multiples (by ±2 or ±1/2, exact in float32) of another row, the
    rows drawn among its first `rows`; and a phrase saying which."""
    W = W.clone()
    order = torch.randperm(rows, generator=g).tolist()
    source, said = order[0], []
    for row in order[1 : n + 1]:
        factor = [-2.0, -0.5, 0.5, 2.0][int(torch.randint(4, (), generator=g))]
        W[row] = factor * W[source]
        said.append(f"row {row} is {factor:g} × row {source}")
    return W, " and ".join(said)


# the weak direction's singular value, relative to the largest: far above float32 rounding
# (max(W_O.shape) · eps ≈ 4e-6), far below a tolerance of 1e-2 or 1e-1
_WEAK = 3e-3


def _projector_cases(seed: int) -> list[Case]:
    """Every head's W_O of two random models, a W_O of tiny entries and one with a weak (but
    real) direction, all of full rank; then
    W_Os whose rows are dependent (dependent rows drawn: before the last, so that the first
    rank(W_O) rows do not span the row space; anywhere, in a square W_O as in a model whose one
    head has d_head = d_model; anywhere, two of them, in a W_O of huge entries). The tiny and
    huge scales defeat a rank counted against a fixed threshold, from either side. The cases of
    full rank come first (`_explain_projector` relies on it)."""
    models = random_models(seed, 2)
    g = generator(seed + 50)
    drawn = []  # (W_O, where, which rows depend on which)
    for model in models:
        D, d = model.cfg.d_model, model.cfg.d_head
        for head in range(model.cfg.n_heads):
            W_O = model.W_O[0, head].detach().clone()
            drawn.append((W_O, f"head {head} of a model with d_model {D}, d_head {d}", ""))
    (d0, D0), (d1, D1) = (m.W_O.shape[-2:] for m in models)
    tiny = torch.randn(d0, D0, generator=g) * 1e-8  # a head that weight decay has all but erased
    drawn.append((tiny, f"a W_O [{d0}, {D0}] with entries about 1e-8, of full rank", ""))
    full_rank = len(drawn)
    W, which = _dependent(torch.randn(d1, D1, generator=g) * 0.75, g, 1, d1 - 1)
    drawn.append((W, f"a W_O [{d1}, {D1}] of rank {d1 - 1} < d_head ({which})", which))
    n = int(torch.randint(5, 9, (), generator=g))
    W, which = _dependent(torch.randn(n, n, generator=g) * 0.5, g, 1, n)
    drawn.append((W, f"a square W_O [{n}, {n}] (d_head = d_model) of rank {n - 1} < d_head "
                     f"({which})", which))  # fmt: skip
    W, which = _dependent(torch.randn(d0, D0, generator=g) * 1e4, g, 2, d0)
    drawn.append((W, f"a W_O [{d0}, {D0}] with entries about 1e4, of rank {d0 - 2} < d_head "
                     f"({which})", which))  # fmt: skip
    # a direction far weaker than the others, yet real: a tolerance relative to the largest
    # singular value, but far above rounding (0.1 · S.max(), say), drops it. Drawn last, among
    # the cases of full rank
    U, S, Vh = torch.linalg.svd(torch.randn(d1, D1, generator=g).double() * 0.5,
                                full_matrices=False)  # fmt: skip
    S[-1] = S[0] * _WEAK
    drawn.insert(full_rank, (((U * S) @ Vh).float(), f"a W_O [{d1}, {D1}] of full rank, one of "
                             f"whose singular values is {_WEAK:g} × the largest", ""))  # fmt: skip

    cases = []
    for W_O, where, which in drawn:
        basis = circuits.row_space(W_O)
        P, (d, D), rank = circuits.projector(basis), W_O.shape, basis.shape[0]
        first_rows = circuits.row_space(W_O[:rank]).shape[0] < rank
        structure = ""
        if rank < d:
            structure = f" Its rows are dependent here ({which})"
            structure += (", so its first rank(W_O) rows do not span its row space (a QR of "
                          "W_O.T cut to that many columns assumes they do)." if first_rows
                          else ".")  # fmt: skip
        hints = {} if d == D else {
            (d, d): "a d_head × d_head matrix, like W_O @ W_O.T, U Uᵀ from the SVD, or Q Qᵀ from "
            "the QR of W_O (rather than of W_O.T), acts on the head's d_head space. The write "
            "subspace lies in the residual stream: the projector is [d_model, d_model], Q Qᵀ with "
            "Q [d_model, rank] orthonormal columns spanning W_O's rows.",
        }  # fmt: skip
        entries = float(W_O.abs().max())
        tags = {"full rank" if rank == d else "rank-deficient"}
        tags |= {"the first rank(W_O) rows are dependent"} if first_rows else set()
        tags |= {"d_head = d_model"} if d == D else set()
        tags |= {"entries far below 1"} if entries < 1e-2 else set()
        tags |= {"entries far above 1"} if entries > 1e2 else set()
        S = torch.linalg.svdvals(W_O.double())
        tags |= {"a weak direction"} if rank == d and float(S[-1] / S[0]) < 1e-2 else set()
        explain = _explain_projector(W_O, rank, P, structure)
        cases.append(Case((W_O,), P, _write_projector_mistakes(W_O, P, rank), where, hints,
                          describe=explain, tags=tags))  # fmt: skip
    return cases


declare(Exercise(
    number="0.10", title="a head's write subspace", functions=("write_projector",),
    cases=_projector_cases, reference=circuits.projector,
    withhold=(circuits.projector, circuits.row_space, circuits.write_subspace),
    block_forward=True,
    covers=frozenset({"full rank", "rank-deficient", "the first rank(W_O) rows are dependent",
                      "d_head = d_model", "entries far below 1", "entries far above 1",
                      "a weak direction"}),
    on_error={
        name: "W_O W_Oᵀ is singular when W_O's rows are dependent, so it has no inverse; build the "
        "projector from an orthonormal basis of W_O's rows instead (the SVD, keeping the "
        "singular values above a tolerance relative to the largest, or "
        "torch.linalg.pinv(W_O) @ W_O)."
        for name in ("_LinAlgError", "LinAlgError")
    },
    passed="the projector onto W_O's row space for every head of two random models, for W_Os of "
    "tiny and huge entries, and for W_Os whose rows are dependent (rank < d_head), one of them "
    "square (d_head = d_model).",
))  # fmt: skip
