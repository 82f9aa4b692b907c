"""Exercises 2.2 and 2.4: how much of an OV circuit lies on its diagonal, and the copying score."""

from __future__ import annotations

import torch
from torch import Tensor

from helpers import circuits
from helpers.checks._base import generator, random_models
from helpers.checks._judge import Case
from helpers.checks._registry import Exercise, declare
from helpers.checks.one_layer._shared import size_tags
from helpers.data import BOS
from helpers.models import AttnOnlyTransformer

# ---- 2.2 the diagonal --------------------------------------------------------------------------


def _top1(M: Tensor, rows: list[int], cols: list[int]) -> float:
    """The share of `rows` whose argmax over `cols` is the row's own index (the first maximum
    wins a tie, as torch.argmax has it)."""
    best = M[rows][:, cols].argmax(-1)
    return float((torch.tensor(cols)[best] == torch.tensor(rows)).float().mean())


def _without_later_ties(M: Tensor, keep: list[int]) -> None:
    """Lower, in place, every kept entry right of the diagonal that ties a row's largest
    diagonal: whether such a tie counts is a convention (argmax takes the first), where "more
    than any other" says nothing; the ties left are those every convention agrees on."""
    for i in keep:
        row_max = M[i, keep].max()
        for j in keep:
            if j > i and M[i, i] == row_max and M[i, j] == row_max:
                M[i, j] -= 1


def _tied(n: int, ignore: list[int], g: torch.Generator) -> Tensor:
    """Integer entries (counts, say) with ties of three kinds: the diagonal tied with an earlier
    kept column (no token is "more than any other": not on the diagonal), the diagonal tied with
    an ignored column (which must not count: on the diagonal), two other columns tied above the
    diagonal (not on the diagonal)."""
    M = torch.randint(0, 5, (n, n), generator=g).float() + 3 * torch.eye(n)
    keep = [i for i in range(n) if i not in ignore]
    a, b, c = keep[-1], keep[1], keep[len(keep) // 2]
    top = M[a, keep].max() + 1
    M[a, a] = M[a, keep[0]] = top  # ties an earlier kept column
    others = [j for j in keep if j != b]
    M[b, b] = M[b, min(ignore)] = M[b, others].max() + 1  # ties an ignored column only
    j1, j2 = [j for j in keep if j != c][:2]
    M[c, j1] = M[c, j2] = M[c, keep].max() + 1  # two other columns tie above the diagonal
    _without_later_ties(M, keep)
    return M


def _diagonal_cases(seed: int) -> list[Case]:
    """Square matrices and `ignore` lists of every kind: BOS alone; several indices, unsorted; none
    (entries far below 1); one that is not BOS (entries all negative, like log-probabilities);
    several, with ties (integer entries, like counts). The ignored rows and columns are made
    large enough to change the answer if they were kept."""
    cases = []
    specs = ((9, [0], "random"), (12, [9, 0, 5], "random"), (7, [], "tiny"), (8, [3], "negative"),
             (10, [6, 0], "ties"))  # fmt: skip
    for i, (n, ignore, kind) in enumerate(specs):
        g = generator(seed + i)
        if kind == "ties":
            M = _tied(n, ignore, g)
        elif kind == "negative":
            M = (2 * torch.randn(n, n, generator=g) + 2 * torch.eye(n)).log_softmax(-1)
            M[:, ignore] = M[:, ignore] / 20  # nearer 0 than any other entry, still negative
        else:
            M = torch.randn(n, n, generator=g) + 1.5 * torch.eye(n)
            M[ignore, :] += 5.0  # ignored rows and columns would change the answer
            M[:, ignore] += 3.0
            M = M * 1e-8 if kind == "tiny" else M
        keep = [j for j in range(n) if j not in ignore]
        sub = M[keep][:, keep]
        expected = circuits.diagonal_top1_accuracy(M, ignore=ignore)
        zeroed = M.clone()
        zeroed[:, ignore] = 0.0
        diagonal = sub.diagonal()
        mistakes = [
            ("the argmax ran over each column (dim=0): a row's largest entry is over dim=-1.",
             float((sub.argmax(0) == torch.arange(len(keep))).float().mean())),
            ("the rows and columns in `ignore` were kept.", _top1(M, list(range(n)),
                                                                  list(range(n)))),
            ("only the ignored rows were dropped: drop the ignored columns too (a token that is "
             "never predicted must not win a row).", _top1(M, keep, list(range(n)))),
            ("that counts rows whose diagonal entry is positive; the diagonal must be the row's "
             "largest entry.", float((diagonal > 0).float().mean())),
            ("only BOS (index 0) was left out: leave out the indices in `ignore`, whichever they "
             "are.", _top1(M, list(range(1, n)), list(range(1, n)))),
            ("the count was divided by every row of the matrix; divide by the rows kept.",
             _top1(M, keep, keep) * len(keep) / n),
            ("the ignored columns were set to 0 rather than left out: in a row whose entries are "
             "all negative (log-probabilities, say), 0 is the largest. Drop them (M[keep][:, "
             "keep]) or set them to -inf.", _top1(zeroed, keep, list(range(n)))),
            ("the argmax over the kept columns was compared with the original indices "
             "(`keep`): in the submatrix, row r's diagonal is column r, torch.arange(len(keep)).",
             float((sub.argmax(-1) == torch.tensor(keep)).float().mean())),
            ("a tie was counted as on the diagonal: the diagonal must be larger than every other "
             "entry of its row (\"more than any other\"), not merely as large.",
             float((diagonal >= sub.max(-1).values).float().mean())),
        ]  # fmt: skip
        tags = {"no index ignored" if not ignore else
                "one index ignored" if len(ignore) == 1 else "several indices ignored"}  # fmt: skip
        if any(j != BOS for j in ignore):
            tags.add("an ignored index other than BOS")
        if ignore != sorted(ignore):
            tags.add("ignore not sorted")
        if ((sub == sub.max(-1, keepdim=True).values).sum(-1) > 1).any():
            tags.add("ties")
        if (M < 0).all():
            tags.add("entries all negative")
        if M.abs().max() < 1e-3:
            tags.add("entries far below 1")
        cases.append(Case((M, ignore), expected, mistakes, f"a {n}×{n} matrix, ignore={ignore}",
                          tags=tags))  # fmt: skip
    return cases


declare(Exercise(
    number="2.2", title="the diagonal", functions=("diagonal_top1",), cases=_diagonal_cases,
    reference=circuits.diagonal_top1_accuracy, withhold=(circuits.diagonal_top1_accuracy,),
    covers=frozenset({"no index ignored", "one index ignored", "several indices ignored",
                      "an ignored index other than BOS", "ignore not sorted", "ties",
                      "entries all negative", "entries far below 1"}),
    passed="right for five matrices, ignoring no index, BOS, another index or several, with "
    "ties and entries all negative or far below 1.",
))  # fmt: skip


# ---- 2.4 the copying score ---------------------------------------------------------------------


def _with_spectra(seed: int) -> AttnOnlyTransformer:
    """A one-layer model with untied W_E and W_U whose four heads have OV circuits with
    eigenvalues drawn at check time: a mostly copying head (one negative eigenvalue), a mostly
    anti-copying one, one with a complex pair, and a random head. The non-zero eigenvalues of
    W_E W_V W_O W_U are those of M = W_O W_U W_E W_V (d_head × d_head), so
    W_O = M · pinv(W_U W_E W_V) gives the head the spectrum of M."""
    (model,) = random_models(seed, 1, n_heads=4, d_head=4, d_model=16, d_vocab=11, n_ctx=7)
    rng = generator(seed + 1)

    def uniform(lo: float, hi: float, n: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=rng)

    copying = torch.cat([uniform(0.5, 3.0, 3), uniform(-1.0, -0.2, 1)])
    a, b = float(uniform(-1.0, 1.0, 1)), float(uniform(1.0, 2.5, 1))
    rotation = torch.tensor([[a, -b], [b, a]])  # eigenvalues a ± bi
    spectra = [
        torch.diag(copying),
        torch.diag(-copying.flip(0)),
        torch.block_diag(rotation, torch.diag(uniform(-1.0, 1.0, 2))),
    ]
    attn = model.blocks[0].attn
    with torch.no_grad():
        for head, core in enumerate(spectra):
            basis = torch.randn(4, 4, generator=rng) + 2 * torch.eye(4)
            while torch.linalg.cond(basis) > 8:  # an ill-conditioned basis makes the eigenvalues
                # so sensitive that float32 rounding of the weights alone moves the score past the
                # tolerance: a right answer computed in float64 throughout would be refused
                basis = torch.randn(4, 4, generator=rng) + 2 * torch.eye(4)
            M = basis @ core @ torch.linalg.inv(basis)  # same eigenvalues, no visible structure
            B = model.W_U @ model.W_E @ attn.W_V[head]  # [d_model, d_head]
            attn.W_O[head] = M @ torch.linalg.pinv(B)
    return model


def _score_of(matrix: Tensor) -> float:
    e = torch.linalg.eigvals(matrix)
    return float(e.sum().real / e.abs().sum())


def _copying_cases(seed: int) -> list[Case]:
    """Every head of a model whose OV spectra are drawn at check time: mostly positive, mostly
    negative, a complex pair, random."""
    model = _with_spectra(seed)
    same_sums = (
        "a score of exactly ±1 for a head that is not a pure copier means numerator and "
        "denominator are the same sum. The numerator is Σλ (its real part), the denominator Σ|λ|, "
        "the sum of each eigenvalue's absolute value, not |Σλ|."
    )
    near = (
        "Close, but not equal: if you took the eigenvalues of the full d_vocab × d_vocab "
        "circuit, its zero eigenvalues come out as rounding noise that adds to Σ|λ|. Use the "
        "d_head × d_head matrix W_O @ W_U @ W_E @ W_V (or compute in float64)."
    )
    W_E, W_U = model.W_E.detach().double(), model.W_U.detach().double()
    cases = []
    for head in range(model.cfg.n_heads):
        W_V, W_O = model.W_V[0, head].detach().double(), model.W_O[0, head].detach().double()
        small = W_O @ W_U @ W_E @ W_V
        eig = circuits.ov_eigenvalues(model, 0, head)
        symmetric = torch.linalg.eigvalsh(small)  # what eigvalsh reads: the lower triangle
        mistakes = [
            (same_sums, 1.0),
            (same_sums, -1.0),
            ("the numerator is |Σλ|: keep the sign, Σλ is negative for a head that "
             "anti-copies.", float(eig.sum().abs() / eig.abs().sum())),
            ("only the real parts were summed in the denominator: use the absolute value "
             "(modulus) of each complex eigenvalue.", float(eig.sum().real / eig.real.abs().sum())),
            ("the OV part is transposed: the circuit is W_E @ W_V @ W_O @ W_U, so the small "
             "matrix is W_O @ W_U @ W_E @ W_V.", _score_of(W_U @ W_E @ (W_V @ W_O).T)),
            ("W_E.T was used in place of W_U: the unembedding is W_U (not tied to W_E here).",
             _score_of(W_O @ W_E.T @ W_E @ W_V)),
            ("these are the eigenvalues of W_V @ W_O alone; the full OV circuit includes the "
             "embedding and unembedding (W_O @ W_U @ W_E @ W_V).", _score_of(W_V @ W_O)),
            ("torch.linalg.eigvalsh assumes a symmetric matrix (it reads one triangle): the OV "
             "circuit is not symmetric, use torch.linalg.eigvals.",
             float(symmetric.sum() / symmetric.abs().sum())),
            ("the denominator is the sum of the singular values; it is the sum of the "
             "eigenvalues' absolute values, Σ|λ| (they differ for a matrix that is not "
             "symmetric).", float(eig.sum().real / torch.linalg.svdvals(small).sum())),
        ]  # fmt: skip
        expected = circuits.copying_score(model, 0, head)
        tags = size_tags(model)
        if expected > 0.5:
            tags.add("mostly positive eigenvalues")
        if expected < -0.5:
            tags.add("mostly negative eigenvalues")
        if (eig.imag.abs() > 1e-6).any():
            tags.add("complex eigenvalues")
        if (eig.real > 0).any() and (eig.real < 0).any():
            tags.add("eigenvalues of both signs")
        cases.append(Case((model, head), expected, mistakes, f"head {head}", near_miss=near,
                          tags=tags))  # fmt: skip
    return cases


declare(Exercise(
    number="2.4", title="the copying score", functions=("copying_score",), cases=_copying_cases,
    reference=circuits.copying_score,
    withhold=(circuits.copying_score, circuits.ov_eigenvalues), block_forward=True,
    covers=frozenset({"mostly positive eigenvalues", "mostly negative eigenvalues",
                      "complex eigenvalues", "eigenvalues of both signs"}),
    passed="Σλ/Σ|λ| right for a copying head, an anti-copying head, a head with complex "
    "eigenvalues and a random head, with eigenvalues drawn at check time.",
))  # fmt: skip
