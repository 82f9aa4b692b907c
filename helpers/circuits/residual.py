"""The residual stream as working memory (framework paper, "The Residual Stream", "Virtual Weights
and Convenient Notation", "Subspaces and Residual Stream Bandwidth"): read from the weights alone.

The residual stream is a sum of writes (embedding, then every head) that later heads read with
linear maps. Three consequences, each a function here:

- it has no privileged basis: rotate every weight that reads or writes it and the model computes
  the same logits (`random_rotation`, `rotate_residual`; claim 29);
- each head writes into a small subspace, the row space of its W_O (`write_subspace`), and what a
  later head B reads of an earlier head A's write passes through the virtual weight
  W_O^A W_{Q,K,V}^B (`virtual_weight`; claim 30);
- composition is reading what was written: the share of a read weight lying in a writer's subspace
  (`read_share`, `read_shares`) against the share of a random subspace (`random_share`; claim 31),
  and how much the writers' subspaces overlap, i.e. compete for the stream's bandwidth
  (`write_overlaps`).

Row convention (see `helpers.models`): a write is a row vector `z @ W_O` [d_model], so a head's
write subspace is spanned by the *rows* of W_O [d_head, d_model], and bases are returned as
orthonormal rows `[rank, d_model]`; a read weight W_Q/W_K/W_V [d_model, d_head] multiplies the
stream on the right.
"""

from __future__ import annotations

import torch
from torch import Tensor

from helpers.models import AttnOnlyTransformer
from helpers.references import reference

READ_KINDS = ("q", "k", "v")
ORTHOGONALITY_TOL = 1e-4  # how far RᵀR (or a basis's B Bᵀ) may be from the identity


def _check_kind(kind: object) -> str:
    """`kind` as "q", "k" or "v"; upper case ("Q", as in `COMPOSITION_KINDS`) is accepted too."""
    if isinstance(kind, str) and kind.lower() in READ_KINDS:
        return kind.lower()
    raise ValueError(f"kind must be one of {READ_KINDS} (the input the reader reads), got {kind!r}")


def _check_pair(head: object, name: str) -> tuple:
    if not isinstance(head, (tuple, list)) or len(head) != 2:
        raise ValueError(f"{name} must be a (layer, head) pair, got {head!r}")
    return tuple(head)


def _head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def _read_weight(model: AttnOnlyTransformer, layer: int, head: int, kind: str) -> Tensor:
    """The head's W_Q, W_K or W_V, `[d_model, d_head]`."""
    return getattr(model.blocks[layer].attn, f"W_{kind.upper()}")[head]


def _positions_enter(model: AttnOnlyTransformer, kind: str) -> bool:
    """Whether the positional embedding is part of what a head reads with W_kind: always with
    "standard" positions (they are in the stream), only for queries and keys with "shortformer"."""
    return model.cfg.positional_embedding_type == "standard" or kind in ("q", "k")


# ---- no privileged basis --------------------------------------------------------------------------
@reference
def random_rotation(d: int, seed: int = 0) -> Tensor:
    """A random orthogonal matrix `[d, d]`, uniformly distributed (Haar measure): the Q of the QR
    decomposition of a Gaussian matrix, each column's sign fixed so that R's diagonal is positive
    (without the fix, QR's sign convention biases the distribution). Drawn in float64 from a
    generator seeded with `seed` (the global RNG is untouched), returned as float32."""
    if not isinstance(d, int) or isinstance(d, bool) or d < 1:
        raise ValueError(f"d must be a positive int, got {d!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    gen = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(d, d, generator=gen, dtype=torch.float64)
    Q, R = torch.linalg.qr(gaussian)
    signs = torch.where(R.diagonal() < 0, -1.0, 1.0).to(Q)
    return (Q * signs).float()  # scales column j by the sign of R[j, j]


def _check_rotation(R: object, d_model: int) -> Tensor:
    if not isinstance(R, Tensor) or R.ndim != 2 or R.shape[0] != R.shape[1]:
        got = tuple(R.shape) if isinstance(R, Tensor) else type(R).__name__
        raise ValueError(f"R must be a square matrix [d_model, d_model], got {got}")
    if R.shape[0] != d_model:
        raise ValueError(
            f"R must be [{d_model}, {d_model}] (the model's d_model), got {tuple(R.shape)}"
        )
    if not torch.isfinite(R).all():
        raise ValueError("R holds NaN or infinite values")
    R64 = R.double()
    eye = torch.eye(d_model, dtype=torch.float64, device=R.device)
    error = float((R64.T @ R64 - eye).abs().max())
    if error > ORTHOGONALITY_TOL:
        raise ValueError(
            f"R must be orthogonal (RᵀR = I within {ORTHOGONALITY_TOL}), but RᵀR is off the "
            f"identity by up to {error:.2g}; use random_rotation(d_model, seed)"
        )
    return R


@reference
@torch.no_grad()
def rotate_residual(model: AttnOnlyTransformer, R: Tensor) -> AttnOnlyTransformer:
    """A new model whose residual stream is the old one's rotated by the orthogonal `R`
    `[d_model, d_model]`: every stream vector x becomes x R. The input model is not changed.

    Framework paper, "The Residual Stream" (no privileged basis, claim 29): every weight that
    writes the stream is multiplied by R on the right (W_E R, W_pos R, W_O^h R, b_O R) and every
    weight that reads it by Rᵀ on the left (Rᵀ W_Q^h, Rᵀ W_K^h, Rᵀ W_V^h, Rᵀ W_U), so each
    read sees (x R) Rᵀ W = x W: queries, keys, values, patterns and logits are unchanged while
    every coordinate of the stream changes. W_pos is rotated with "shortformer" positions too:
    they are added to the stream's coordinates at the queries' and keys' input. Biases b_Q, b_K,
    b_V (head space) and b_U (logit space) stay; smeared keys (`smear_logit`) mix keys in head
    space, after W_K, so they stay too.
    """
    _check_rotation(R, model.cfg.d_model)
    R = R.to(model.W_E)
    state = {}
    for name, value in model.state_dict().items():
        last = name.split(".")[-1]
        if last in ("W_E", "W_pos", "W_O", "b_O"):  # writers: ... @ R
            value = value @ R
        elif last in ("W_Q", "W_K", "W_V", "W_U"):  # readers: Rᵀ @ ...
            value = R.T @ value  # broadcasts over heads: [n_heads, d_model, d_head]
        state[name] = value
    rotated = AttnOnlyTransformer(model.cfg).to(model.W_E)  # same device and dtype
    rotated.load_state_dict(state)
    rotated.train(model.training)
    return rotated


# ---- subspaces ------------------------------------------------------------------------------------
@reference
@torch.no_grad()
def row_space(W: Tensor, rtol: float | None = None) -> Tensor:
    """An orthonormal basis of the row space of `W` `[n, d_model]`, as rows `[rank, d_model]`.

    From the SVD W = U S Vᵀ: the right singular vectors whose singular value exceeds
    `rtol * S.max()`. The default `rtol` is `max(W.shape) * eps` of W's dtype (numpy's and
    `torch.linalg.matrix_rank`'s rule), which counts as zero only what float rounding could have
    made of an exact zero. The SVD runs in float64; the basis has W's dtype."""
    if not isinstance(W, Tensor) or W.ndim != 2:
        got = tuple(W.shape) if isinstance(W, Tensor) else type(W).__name__
        raise ValueError(f"W must be a matrix [n, d_model], got {got}")
    if not torch.isfinite(W).all():
        raise ValueError("W holds NaN or infinite values")
    if rtol is None:
        rtol = max(W.shape) * torch.finfo(W.dtype).eps
    _, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    rank = int((S > rtol * S.max()).sum()) if S.numel() and S.max() > 0 else 0
    return Vh[:rank].to(W.dtype)  # [rank, d_model]


@reference
def write_subspace(model: AttnOnlyTransformer, layer: int, head: int) -> Tensor:
    """Orthonormal basis `[rank, d_model]` (rows) of the subspace head (layer, head) writes into:
    the row space of its W_O `[d_head, d_model]`, since every write is z @ W_O (framework paper,
    "Subspaces and Residual Stream Bandwidth"). rank = d_head unless W_O is rank-deficient; the
    rank is counted by `row_space`'s tolerance (singular values above d_model * float32 eps times
    the largest)."""
    layer, head = model.check_head(layer, head)
    return row_space(model.blocks[layer].attn.W_O[head])


@reference
def projector(basis: Tensor) -> Tensor:
    """The orthogonal projector `[d_model, d_model]` onto the span of an orthonormal `basis`
    `[rank, d_model]` (rows): P = basisᵀ basis. x @ P is the part of a row vector x inside the
    subspace; P is symmetric and idempotent (P P = P)."""
    _check_basis(basis)
    return basis.T @ basis


def _check_basis(basis: object, d_model: int | None = None) -> Tensor:
    if not isinstance(basis, Tensor) or basis.ndim != 2:
        got = tuple(basis.shape) if isinstance(basis, Tensor) else type(basis).__name__
        raise ValueError(f"basis must be a matrix [rank, d_model] of orthonormal rows, got {got}")
    if d_model is not None and basis.shape[1] != d_model:
        raise ValueError(
            f"basis must have d_model={d_model} columns, like the weight it is compared with, got "
            f"{tuple(basis.shape)}"
        )
    B = basis.double()
    gram = B @ B.T - torch.eye(B.shape[0], dtype=torch.float64, device=B.device)
    error = float(gram.abs().max()) if gram.numel() else 0.0
    if error > ORTHOGONALITY_TOL:
        raise ValueError(
            f"basis rows must be orthonormal (basis @ basis.T = I within {ORTHOGONALITY_TOL}), off "
            f"by up to {error:.2g}; pass row_space(W) (or write_subspace), not W itself"
        )
    return basis


# ---- virtual weights ------------------------------------------------------------------------------
@reference
def virtual_weight(
    model: AttnOnlyTransformer, writer: tuple[int, int], reader: tuple[int, int], kind: str
) -> Tensor:
    """The virtual weight W_O^A @ W_kind^B `[d_head of A, d_head of B]` from head A (`writer`)
    to the query, key or value input (`kind` "q", "k", "v") of head B (`reader`), A in an earlier
    layer than B (framework paper, "Virtual Weights and Convenient Notation").

    It is the whole channel from A to B: if z_A `[..., d_head]` is A's output before W_O (hook
    `blocks.{l}.attn.hook_z`), A writes z_A @ W_O^A into the stream, and B's W_kind reads
    (z_A @ W_O^A) @ W_kind^B = z_A @ virtual_weight, the part of B's queries, keys or values
    that comes from A (claim 30). Everything else in the stream reaches B through other terms."""
    kind = _check_kind(kind)
    (la, ha), (lb, hb) = _writer_reader(model, writer, reader)
    return model.blocks[la].attn.W_O[ha] @ _read_weight(model, lb, hb, kind)


def _writer_reader(model: AttnOnlyTransformer, writer: object, reader: object):
    """((layer, head), (layer, head)) of a writer and a reader in a later layer, validated."""
    la, ha = model.check_head(*_check_pair(writer, "writer"))
    lb, hb = model.check_head(*_check_pair(reader, "reader"))
    if lb == 0:
        raise ValueError(
            f"a reader in layer 0 reads no head's write, only the embeddings: the reader must be "
            f"in layers 1..{model.cfg.n_layers - 1}, got reader {(lb, hb)}"
        )
    if not la < lb:
        raise ValueError(
            f"the writer must be in an earlier layer than the reader (a head reads only what "
            f"earlier layers wrote): for a reader in layer {lb} the writer's layer must be in "
            f"0..{lb - 1}, got writer {(la, ha)} and reader {(lb, hb)}"
        )
    return (la, ha), (lb, hb)


# ---- reading what was written ---------------------------------------------------------------------
@reference
@torch.no_grad()
def read_share(W_read: Tensor, basis: Tensor) -> float:
    """The share of a read weight `W_read` `[d_model, d_head]` (a head's W_Q, W_K or W_V) that
    lies inside the subspace with orthonormal `basis` `[rank, d_model]`:
    ‖P W_read‖_F² / ‖W_read‖_F² with P = `projector(basis)`, in [0, 1].

    1 when the head reads only that subspace, 0 when it is blind to it. Since ‖P W‖_F² =
    Σ_i ‖P w_i‖² over the columns w_i, it is the mean over the head's read directions, weighted
    by their squared norms. For a random subspace of dimension k it is k / d_model on average
    (`random_share`), whatever W_read is: "Subspaces and Residual Stream Bandwidth"."""
    if not isinstance(W_read, Tensor) or W_read.ndim != 2:
        got = tuple(W_read.shape) if isinstance(W_read, Tensor) else type(W_read).__name__
        raise ValueError(f"W_read must be a matrix [d_model, d_head], got {got}")
    _check_basis(basis, W_read.shape[0])
    W = W_read.double()
    total = W.square().sum()
    if total == 0:
        raise ValueError("W_read is zero: a head that reads nothing has no share to measure")
    # ‖P W‖_F² = ‖basis W‖_F², because the basis rows are orthonormal
    return float((basis.double() @ W).square().sum() / total)


@reference
def random_share(model: AttnOnlyTransformer) -> float:
    """d_head / d_model: the expected `read_share` of any read weight in a random
    d_head-dimensional subspace (a random head's write subspace). The projector onto a uniformly
    random k-dimensional subspace averages to (k / d_model) I, so E‖P W‖_F² = k / d_model ‖W‖_F²."""
    return model.cfg.d_head / model.cfg.d_model


@reference
def read_shares(model: AttnOnlyTransformer, layer: int, head: int, kind: str) -> dict[str, float]:
    """`read_share` of head (layer, head)'s W_Q, W_K or W_V (`kind` "q", "k", "v") in the write
    subspace of everything it can read (claim 31: composition is reading what was written):

    - "L{l}H{h}" for every head of an earlier layer (`write_subspace`);
    - "embed": the row space of W_E, the token embedding's subspace. When d_vocab >= d_model it
      is usually the whole stream, so the share is 1.0 and says nothing;
    - "pos": the row space of W_pos, only where positions enter this input: queries and keys
      with "shortformer" positions, all three with "standard".

    Compare with `random_share` (d_head / d_model) for a head's subspace; a subspace of dimension
    k has a random share of k / d_model."""
    layer, head = model.check_head(layer, head)
    kind = _check_kind(kind)
    W_read = _read_weight(model, layer, head, kind)
    shares = {
        _head_name(lw, hw): read_share(W_read, write_subspace(model, lw, hw))
        for lw in range(layer)
        for hw in range(model.cfg.n_heads)
    }
    shares["embed"] = read_share(W_read, row_space(model.W_E))
    if _positions_enter(model, kind):
        shares["pos"] = read_share(W_read, row_space(model.W_pos))
    return shares


def random_shares(model: AttnOnlyTransformer, layer: int) -> dict[str, float]:
    """The baselines of `read_shares` for a reader in `layer`: for each writer it could read
    ("L{l}H{h}" of earlier layers, "embed", "pos"), the expected share of a random read weight
    in that writer's subspace, its dimension / d_model (d_head / d_model for a head, the rank of
    W_E or W_pos for the embeddings)."""
    layer, _ = model.check_head(layer, 0)
    d_model = model.cfg.d_model
    shares = {_head_name(lw, hw): write_subspace(model, lw, hw).shape[0] / d_model
              for lw in range(layer) for hw in range(model.cfg.n_heads)}  # fmt: skip
    shares["embed"] = row_space(model.W_E).shape[0] / d_model
    shares["pos"] = row_space(model.W_pos).shape[0] / d_model
    return shares


# ---- bandwidth ------------------------------------------------------------------------------------
@reference
@torch.no_grad()
def subspace_overlap(basis_a: Tensor, basis_b: Tensor) -> float:
    """Mean squared cosine of the principal angles between two subspaces with orthonormal bases
    (rows): ‖P_A P_B‖_F² / min(dim A, dim B) = ‖basis_a basis_bᵀ‖_F² / min(...), in [0, 1].

    1 when the smaller subspace lies inside the larger, 0 when they are orthogonal. For uniformly
    random subspaces the expectation is max(dim A, dim B) / d_model (`random_overlap`)."""
    _check_basis(basis_a)
    _check_basis(basis_b, basis_a.shape[1])
    smaller = min(basis_a.shape[0], basis_b.shape[0])
    if smaller == 0:
        raise ValueError("an empty subspace (rank 0) has no principal angles")
    cosines = basis_a.double() @ basis_b.double().T  # [dim A, dim B]
    return float(cosines.square().sum() / smaller)


def random_overlap(dim_a: int, dim_b: int, d_model: int) -> float:
    """max(dim_a, dim_b) / d_model: the expected `subspace_overlap` of two uniformly random
    subspaces (E P_B = dim_b / d_model I, so E‖P_A P_B‖_F² = dim_a dim_b / d_model). For two heads'
    write subspaces, d_head / d_model, the same as `random_share`."""
    for name, value in (("dim_a", dim_a), ("dim_b", dim_b), ("d_model", d_model)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if max(dim_a, dim_b) > d_model:
        raise ValueError(f"subspace dimensions must be at most d_model={d_model}")
    return max(dim_a, dim_b) / d_model


@reference
def write_overlaps(model: AttnOnlyTransformer) -> tuple[Tensor, list[str]]:
    """Residual stream bandwidth (framework paper, "Subspaces and Residual Stream Bandwidth"):
    `subspace_overlap` between the write subspaces of every pair of writers, `[writer, writer]`
    (symmetric, ones on the diagonal), and the writers' names: every head ("L0H0", …) and then
    "pos" (row space of W_pos).

    High overlap means two writers share directions, so a reader cannot tell their writes apart
    there. The token embedding is left out: its subspace is usually the whole stream (d_vocab >=
    d_model). With "shortformer" positions, "pos" is not in the stream but is added to the
    queries' and keys' input, so its overlap says which heads' writes queries and keys confuse
    with positions. Random baseline: `random_overlap`, d_head / d_model for two heads."""
    if model.cfg.n_layers == 0:
        raise ValueError("a zero-layer model has no attention heads, so no writers to compare")
    names, bases = [], []
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            names.append(_head_name(layer, head))
            bases.append(write_subspace(model, layer, head))
    names.append("pos")
    bases.append(row_space(model.W_pos))
    n = len(names)
    overlaps = torch.ones(n, n)
    for i in range(n):
        for j in range(i + 1, n):
            overlaps[i, j] = overlaps[j, i] = subspace_overlap(bases[i], bases[j])
    return overlaps, names


@reference
@torch.no_grad()
def erasure(model: AttnOnlyTransformer, writer: tuple[int, int], eraser: tuple[int, int]) -> float:
    """Whether a later head (`eraser`, B) removes what an earlier head (`writer`, A) wrote, from
    the weights: the fraction of A's write that B subtracts when B attends to a position holding
    it, averaged over A's outputs z_A taken isotropic in A's d_head dimensions:

        -E⟨x W_V^B W_O^B, x⟩ / E‖x‖²  with x = z_A W_O^A,  = -tr(W_O^A W_OV^B W_O^Aᵀ) / ‖W_O^A‖_F²

    (W_OV^B = W_V^B W_O^B in our row convention). 1: B writes back exactly -x, erasing A's write;
    0: B ignores it or writes elsewhere; negative: B copies it (amplifies). Framework paper,
    "Subspaces and Residual Stream Bandwidth": some heads appear to delete information, freeing
    bandwidth. A weights-only proxy: it does not say whether B attends to where A wrote (that
    needs the attention patterns on data)."""
    (la, ha), (lb, hb) = _writer_reader(model, writer, eraser)
    W_O_A = model.blocks[la].attn.W_O[ha].double()  # [d_head, d_model]
    attn_b = model.blocks[lb].attn
    W_OV_B = attn_b.W_V[hb].double() @ attn_b.W_O[hb].double()  # [d_model, d_model]
    norm = W_O_A.square().sum()
    if norm == 0:
        raise ValueError(f"writer {(la, ha)} writes nothing (its W_O is zero)")
    return float(-torch.trace(W_O_A @ W_OV_B @ W_O_A.T) / norm)
