"""A tiny two-layer model whose weights are set by hand: a previous-token head and an induction
head, built from the recipe of the framework paper ("How Induction Heads Work") and Anthropic's
pen-and-paper exercises, made runnable.

The residual stream is split into named subspaces, so every weight has a readable job:

    token    [0, V)          the current token, one-hot (written by W_E)
    previous [V, 2V)         the previous token, one-hot (written by the previous-token head)
    output   [2V, 3V)        the predicted next token (written by the induction head, read by W_U)
    position [3V, 3V + n)    the position, one-hot (W_pos; shortformer: seen by queries and keys only)

`blank_model()` sets W_E, W_pos and W_U and leaves both heads at zero; the learner fills in
layer 0 (attend to the previous position, copy its token into `previous`) and layer 1 (attend to
the position whose `previous` token equals the current token, copy that position's token into
`output`). `set_reference_weights` is the course's solution (withheld from the exercise's checker
run), and `reference_model()` a blank model with it applied.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

from helpers.circuits.residual import rotate_residual
from helpers.circuits.two_layer import composition_baseline, composition_scores
from helpers.models import AttnOnlyTransformer, HookedTransformerConfig
from helpers.references import reference

# The attention score of a matching query and key direction, before the 1/sqrt(d_head): large
# enough that the softmax puts almost all its weight on the one matching position.
STRENGTH = 50.0


@dataclass(frozen=True)
class Layout:
    d_vocab: int = 12
    n_ctx: int = 25
    logit_scale: float = 10.0

    def __post_init__(self) -> None:
        for name, low in (("d_vocab", 2), ("n_ctx", 3)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")

    @property
    def token(self) -> slice:
        return slice(0, self.d_vocab)

    @property
    def previous(self) -> slice:
        return slice(self.d_vocab, 2 * self.d_vocab)

    @property
    def output(self) -> slice:
        return slice(2 * self.d_vocab, 3 * self.d_vocab)

    @property
    def position(self) -> slice:
        return slice(3 * self.d_vocab, 3 * self.d_vocab + self.n_ctx)

    @property
    def d_model(self) -> int:
        return 3 * self.d_vocab + self.n_ctx

    @property
    def d_head(self) -> int:
        return max(self.d_vocab, self.n_ctx)


@torch.no_grad()
def blank_model(layout: Layout = Layout()) -> AttnOnlyTransformer:
    """Two layers of one head each, all head weights zero; embeddings and unembedding set."""
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=layout.d_model,
        n_heads=1,
        d_head=layout.d_head,
        n_ctx=layout.n_ctx,
        d_vocab=layout.d_vocab,
    )
    model = AttnOnlyTransformer(cfg)
    for p in model.parameters():
        p.zero_()
    V, n = layout.d_vocab, layout.n_ctx
    model.embed.W_E[:, layout.token] = torch.eye(V)
    model.pos_embed.W_pos[:, layout.position] = torch.eye(n)
    model.unembed.W_U[layout.output, :] = layout.logit_scale * torch.eye(V)
    return model


@reference
@torch.no_grad()
def set_reference_weights(model: AttnOnlyTransformer, layout: Layout) -> None:
    """The course's solution: a previous-token head in layer 0 and an induction head in layer 1.

    Layer 0: query at position i points at head direction i, key at position j at direction j + 1,
    so the score is large exactly when j = i - 1; it copies the attended token (token subspace)
    into `previous`. Layer 1: the query reads the current token, the key the previous token, so a
    key matches when the token before it equals the current token; it copies the attended
    position's token into `output`, which W_U reads.
    """
    n, V = layout.n_ctx, layout.d_vocab
    position = torch.arange(layout.position.start, layout.position.stop)
    prev, ind = model.blocks[0].attn, model.blocks[1].attn
    prev.W_Q[0, position, torch.arange(n)] = STRENGTH
    prev.W_K[0, position[:-1], torch.arange(1, n)] = STRENGTH
    prev.W_V[0, layout.token, :V] = torch.eye(V)
    prev.W_O[0, :V, layout.previous] = torch.eye(V)
    ind.W_Q[0, layout.token, :V] = STRENGTH * torch.eye(V)
    ind.W_K[0, layout.previous, :V] = STRENGTH * torch.eye(V)
    ind.W_V[0, layout.token, :V] = torch.eye(V)
    ind.W_O[0, :V, layout.output] = torch.eye(V)


def reference_model(layout: Layout = Layout()) -> AttnOnlyTransformer:
    """`blank_model(layout)` with `set_reference_weights` applied."""
    model = blank_model(layout)
    set_reference_weights(model, layout)
    return model


@reference
@torch.no_grad()
def set_zero_layer_weights(model: AttnOnlyTransformer, table: Tensor) -> None:
    """Make a zero-layer model compute `table` `[d_vocab, d_vocab]` as well as its d_model allows:
    W_E @ W_U becomes the table's best rank-d_model approximation (Eckart–Young: the truncated
    SVD U_k S_k V_kᵀ), split as W_E = U_k √S_k, W_U = √S_k V_kᵀ."""
    V, k = model.cfg.d_vocab, model.cfg.d_model
    if model.cfg.n_layers != 0:
        raise ValueError(f"needs a zero-layer model, got {model.cfg.n_layers} layers")
    if table.shape != (V, V) or k > V:
        raise ValueError(
            f"needs a [{V}, {V}] table and d_model <= d_vocab, got {tuple(table.shape)}"
        )
    U, S, Vh = torch.linalg.svd(table.double())
    root = S[:k].sqrt()
    model.embed.W_E.copy_(U[:, :k] * root)
    model.unembed.W_U.copy_(root[:, None] * Vh[:k])


# ---- mystery models: hand-set circuits to reverse-engineer (chapters 02-04) ----------------------
BOS_TOKEN = 0
# Each is drawn from a seed, so a checker can build a new one at check time, and returns the truth
# that was planted, so the reverse-engineering can be checked against it.


def _random(shape: tuple[int, ...], rng: torch.Generator, scale: float = 0.1) -> Tensor:
    return scale * torch.randn(*shape, generator=rng)


def _orthonormal(n: int, rng: torch.Generator) -> Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=rng, dtype=torch.float64))
    return q.float()


@dataclass(frozen=True)
class MysteryHeads:
    """A one-layer model whose heads were set by hand, and what was planted in each."""

    model: AttnOnlyTransformer
    kinds: tuple[str, ...]  # per head: "previous token", "copying", "anti-copying", "skip-trigrams"
    rules: frozenset[tuple[int, int, int]]  # the skip-trigram head's (source, destination, output)
    strengths: tuple[
        float, ...
    ]  # each rule's QK and OV strength, in the same order as sorted(rules)


def _hidden(seed: int) -> int:
    """The seed a mystery model's config carries: not the one it was drawn from (which would
    let `mystery_*(model.cfg.seed)` rebuild the planted truth), but a one-way hash of it."""
    return int.from_bytes(hashlib.sha256(f"mystery {seed}".encode()).digest()[:4], "big") >> 1


@reference  # withheld in the exercise that reverse-engineers its models
@torch.no_grad()
def mystery_heads(seed: int) -> MysteryHeads:
    """A one-layer model with four heads in a random order: a previous-token head (positions
    only), a copying head, an anti-copying head, and a head carrying 2-4 skip-trigram rules of
    different strengths (and two half-rules: a strong destination with a weak output, a strong
    output with weak destinations). W_E and W_pos write orthogonal subspaces and W_U is untied; everything
    not planted is small noise."""
    rng = torch.Generator().manual_seed(seed)
    V = int(torch.randint(12, 17, (), generator=rng))
    n = int(torch.randint(8, 13, (), generator=rng))
    d_head, d_model = 16, 64
    cfg = HookedTransformerConfig(
        n_layers=1,
        d_model=d_model,
        n_heads=4,
        d_head=d_head,
        n_ctx=n,
        d_vocab=V,
        seed=_hidden(seed),
    )
    model = AttnOnlyTransformer(cfg)
    basis = _orthonormal(d_model, rng)
    model.embed.W_E.copy_((torch.randn(V, V, generator=rng) + 3 * torch.eye(V)) @ basis[:V])
    model.pos_embed.W_pos.copy_(torch.eye(n) @ basis[V : V + n] * 2.0)
    model.unembed.W_U.copy_(torch.randn(d_model, V, generator=rng))
    attn = model.blocks[0].attn
    for p in (attn.W_Q, attn.W_K, attn.W_V, attn.W_O):
        p.copy_(_random(p.shape, rng))
    kinds = ["previous token", "copying", "anti-copying", "skip-trigrams"]
    order = torch.randperm(4, generator=rng).tolist()
    kinds = tuple(kinds[i] for i in order)
    E_inv, P_inv, U_inv = (torch.linalg.pinv(model.W_E), torch.linalg.pinv(model.W_pos),
                           torch.linalg.pinv(model.W_U))  # fmt: skip
    scale = d_head**0.5  # undo the 1/sqrt(d_head) of the attention scores
    rules, strengths = frozenset(), ()
    for head, kind in enumerate(kinds):
        if kind == "previous token":  # score(i, j) large when j = i - 1, from positions alone
            A = torch.zeros(n, d_head)
            A[torch.arange(n), torch.arange(n)] = 1.0
            B = torch.zeros(n, d_head)
            B[torch.arange(n - 1), torch.arange(1, n)] = 1.0
            attn.W_Q[head] = P_inv @ A * 12.0 * scale**0.5
            attn.W_K[head] = P_inv @ B * 12.0 * scale**0.5
        elif kind in ("copying", "anti-copying"):  # OV eigenvalues all positive (negative)
            sign = 1.0 if kind == "copying" else -1.0
            # the full OV circuit itself gets these eigenvalues: T = Q · core · Qᵀ (Q a random
            # rotation), and W_O = pinv(W_E W_V) T pinv(W_U) gives W_E W_V W_O W_U = T (both
            # have rank V <= d_head)
            core = torch.diag(sign * (1.0 + 2.0 * torch.rand(V, generator=rng)))
            Q = _orthonormal(V, rng)
            T = Q @ core @ Q.T
            attn.W_O[head] = torch.linalg.pinv(model.W_E @ attn.W_V[head]) @ T @ U_inv
        else:  # skip-trigram rules: destination d attends to source s, which raises output o
            count = int(torch.randint(2, min(4, (V - 4) // 3) + 1, (), generator=rng))
            tokens = (torch.randperm(V - 1, generator=rng) + 1).tolist()
            sources, dests, outputs = (
                tokens[:count],
                tokens[count : 2 * count],
                tokens[2 * count : 3 * count],
            )
            strengths = tuple(float(x) for x in 5.0 + 5.0 * torch.rand(count, generator=rng))
            A, B, C, D = (torch.zeros(V, d_head), torch.zeros(V, d_head), torch.zeros(V, d_head),
                          torch.zeros(d_head, V))  # fmt: skip
            for r, (s, d, o) in enumerate(zip(sources, dests, outputs, strict=True)):
                A[d, r], B[s, r] = strengths[r] * scale, 1.0
                C[s, r], D[r, o] = 1.0, strengths[r]
            # What the reading must see through: a different constant added to each destination's
            # QK row and to each source's OV row (softmax ignores both; only centring removes
            # them), and BOS outranking a planted destination and a planted output. One
            # destination that is no rule's gets a row constant above every planted score (so an
            # uncentred QK makes it every source's top destination), and the first rule's source
            # an OV row constant that pulls its raw output score below any threshold.
            spare = iter(range(count, d_head))
            qk_offsets = (8.0 * torch.rand(V, generator=rng) - 4.0) * scale
            loud = tokens[3 * count] if len(tokens) > 3 * count else outputs[0]
            qk_offsets[loud] = (max(strengths) + 10.0) * scale
            r = next(spare)
            A[:, r], B[:, r] = qk_offsets, 1.0
            ov_offsets = 8.0 * torch.rand(V, generator=rng) - 4.0
            ov_offsets[sources[0]] = -(strengths[0] + 2.0)
            r_offset = r = next(spare)
            C[:, r], D[r, :] = ov_offsets, 1.0
            r = next(spare)
            A[BOS_TOKEN, r], B[sources[0], r] = (strengths[0] + 3.0) * scale, 1.0
            r = next(spare)
            C[sources[-1], r], D[r, BOS_TOKEN] = 1.0, strengths[-1] + 3.0
            # Two half-rules, which a reading must test on both circuits: a source with a strong
            # destination but a weak output, and one with a strong output but no strong
            # destination (12 against thresholds of 3-6, and 1.5).
            half_qk, half_ov = tokens[3 * count + 1], tokens[3 * count + 2]
            for source, qk_strength, ov_strength in ((half_qk, 12.0, 1.5), (half_ov, 1.5, 12.0)):
                r = next(spare)
                A[dests[0] if source == half_qk else dests[-1], r] = qk_strength * scale
                B[source, r] = C[source, r] = 1.0
                D[r, outputs[-1] if source == half_qk else outputs[0]] = ov_strength
            attn.W_Q[head], attn.W_K[head] = E_inv @ A, E_inv @ B
            attn.W_V[head], attn.W_O[head] = E_inv @ C, D @ U_inv
            noise = _random((d_head, d_model), rng, 0.02)
            noise[r_offset] = 0.0  # the offsets are large: noise there would blur the rules
            attn.W_O[head] += noise  # so that the OV circuit is not exactly rank-deficient
            rules = frozenset(zip(sources, dests, outputs, strict=True))
            order = sorted(range(count), key=lambda r: (sources[r], dests[r], outputs[r]))
            strengths = tuple(strengths[r] for r in order)
    model.eval()
    return MysteryHeads(model, kinds, rules, strengths)


@dataclass(frozen=True)
class MysteryComposition:
    """A two-layer model with planted composition: `wiring[h1]` is the (kind, layer-0 head) that
    layer-1 head h1 reads, or None where it reads nothing in particular."""

    model: AttnOnlyTransformer
    wiring: dict[int, tuple[str, int] | None]


@reference  # withheld in the exercise that reverse-engineers its models
@torch.no_grad()
def mystery_composition(seed: int) -> MysteryComposition:
    """Two layers of 3-4 heads with random weights, in which each layer-1 head but one reads one
    layer-0 head's output through its queries, keys or values (`wiring`): its W_Q (W_K, W_V) is
    turned towards the directions that the layer-0 head writes most, until its composition score
    is 2.3-4 times the random baseline. Most planted heads also read one or two other layer-0
    heads less strongly (0.55-0.85 of the planted ratio, often above 2) through another input,
    so the strongest reading has to be found among all kinds and heads: in every model one
    head is a trap for taking the first kind (in Q, K, V order) that reaches 2, and one for
    taking the kind whose ratios sum highest."""
    return copy.deepcopy(_mystery_composition(seed))  # a copy: the caller may change it


@functools.lru_cache(maxsize=32)  # tuning the readings is the slow part; checkers reuse seeds
def _mystery_composition(seed: int) -> MysteryComposition:
    rng = torch.Generator().manual_seed(seed)
    for _ in range(50):  # a draw whose planted readings are not clear enough is drawn again
        drawn = _draw_mystery_composition(seed, rng)
        if drawn is not None:
            return drawn
    raise RuntimeError("no mystery model found")  # not reached: about two in three draws pass


def _draw_mystery_composition(seed: int, rng: torch.Generator) -> MysteryComposition | None:
    uniform = lambda lo, hi: lo + (hi - lo) * float(torch.rand((), generator=rng))  # noqa: E731
    n_heads = int(torch.randint(3, 5, (), generator=rng))
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=48,
        n_heads=n_heads,
        d_head=8,
        n_ctx=8,
        d_vocab=11,
        seed=_hidden(seed),
    )
    model = AttnOnlyTransformer(cfg)
    a0, a1 = model.blocks[0].attn, model.blocks[1].attn
    weights = {"Q": a1.W_Q, "K": a1.W_K, "V": a1.W_V}
    baseline = {k: composition_baseline(model, k)[0] for k in weights}

    def ratios(kind: str, h1: int) -> Tensor:  # [layer-0 head]
        return composition_scores(model, kind)[:, h1] / baseline[kind]

    def reader(h0: int) -> Tensor:  # [d_model, d_head], in the directions L0H{h0} writes most
        _, S, Vh = torch.linalg.svd(a0.W_V[h0] @ a0.W_O[h0])
        mix = torch.randn(cfg.d_head, cfg.d_head, generator=rng)
        towards = Vh[: cfg.d_head].T @ (S[: cfg.d_head, None] ** 4 * mix)
        return towards / towards.norm()

    def turn(kind: str, h1: int, sources: list[int], target: float) -> None:
        """Mix W_kind[h1] with readers of `sources` (same norm) until the weakest of their
        ratios is `target` (bisection: the ratios grow with the readers' share)."""
        weight, original = weights[kind], weights[kind][h1].clone()
        readers = [reader(h0) for h0 in sources]
        balance = [1.0] * len(sources)
        for _ in range(3):  # reweigh the readers until their ratios are about equal

            def set_share(t: float, balance: list[float] = balance) -> float:
                b = sum(w * r for w, r in zip(balance, readers, strict=True))
                w = t * b / b.norm() + (1 - t) * original / original.norm()
                weight[h1] = w * original.norm() / w.norm()
                return float(ratios(kind, h1)[sources].min())

            lo, hi = 0.0, 1.0
            for _ in range(24):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if set_share(mid) < target else (lo, mid)
            set_share(hi)
            got = ratios(kind, h1)[sources]
            balance = [b * float(target / g) ** 2 for b, g in zip(balance, got, strict=True)]

    plain = int(torch.randint(n_heads, (), generator=rng))  # this one reads nothing in particular
    wiring: dict[int, tuple[str, int] | None] = {plain: None}
    traps = {}
    for i, h1 in enumerate(h for h in range(n_heads) if h != plain):
        kinds = ["QKV"[int(k)] for k in torch.randperm(3, generator=rng)]
        decoys = int(torch.randint(3, (), generator=rng))  # none, one or two other heads
        planted, share = uniform(2.3, 4.0), uniform(0.55, 0.85)
        if i == 0:  # the trap for "the first kind that reaches 2": an earlier kind reads
            kinds = ["KV"[int(torch.randint(2, (), generator=rng))]]  # another head above 2
            kinds.append("QK"[int(torch.randint("QKV".index(kinds[0]), (), generator=rng))])
            decoys, planted, share = 1, uniform(3.0, 4.0), uniform(0.72, 0.82)
        elif i == 1:  # the trap for "the kind that sums highest": another kind reads two heads
            decoys, planted, share = 2, uniform(3.0, 4.0), uniform(0.72, 0.82)
        h0 = int(torch.randint(n_heads, (), generator=rng))
        turn(kinds[0], h1, [h0], planted)
        wiring[h1] = (kinds[0], h0)
        if decoys:
            others = [h for h in torch.randperm(n_heads, generator=rng).tolist() if h != h0]
            turn(kinds[1], h1, others[:decoys], planted * share)
            traps[h1] = kinds[1]
    # Turning one input changes the others' scores a little (Q and K share W_Q W_Kᵀ): keep the
    # draw only if every planted reading is clearly the strongest and the traps hold.
    for h1, planted_at in wiring.items():
        every = torch.stack([ratios(kind, h1) for kind in "QKV"])  # [kind, layer-0 head]
        ranked = every.flatten().sort(descending=True).values
        if planted_at is None:
            if ranked[0] > 1.5:
                return None
            continue
        kind, h0 = planted_at
        if every["QKV".index(kind), h0] != ranked[0] or not 2.2 < ranked[0] < 4.1:
            return None
        if ranked[1] > 0.88 * ranked[0]:
            return None
    heads = [h for h in range(n_heads) if h != plain]
    first, second = heads[0], heads[1]
    first_decoy = torch.stack([ratios(kind, first) for kind in "QKV"])["QKV".index(traps[first])]
    if first_decoy.max() < 2.1:
        return None
    sums = torch.stack([ratios(kind, second) for kind in "QKV"]).sum(1)
    if sums["QKV".index(traps[second])] < sums["QKV".index(wiring[second][0])] + 0.3:
        return None
    model.eval()
    return MysteryComposition(model, {h: wiring[h] for h in range(n_heads)})


@dataclass(frozen=True)
class MysteryInduction:
    """A two-layer induction circuit hidden among other heads, in a rotated residual stream."""

    model: AttnOnlyTransformer
    previous_token_head: tuple[int, int]
    induction_heads: list[tuple[int, int]]


@reference  # withheld in the exercise that reverse-engineers its models
@torch.no_grad()
def mystery_induction(seed: int, every_head: bool = False) -> MysteryInduction:
    """The hand-made induction circuit (`set_reference_weights`), its previous-token head and one
    or two copies of its induction head (with `every_head`, one in every layer-1 head) placed at
    random head indices of a model with 3-4 heads per layer, among distractor heads that attend
    by content. The residual
    stream is then rotated by a random orthogonal matrix, applied to every weight that reads or
    writes it: the behaviour is unchanged (no privileged basis), but no weight can be read by eye.
    The distractor heads' weights have the same sizes (Frobenius norms) as the planted heads';
    those of layer 0 write into the position subspace, which nothing after layer 0 reads, and
    those of layer 1 have the induction head's own OV circuit (they copy whatever they attend
    to), so neither the sizes nor the OV circuits tell the heads apart: where they attend does.
    """
    rng = torch.Generator().manual_seed(seed)
    layout = Layout(d_vocab=int(torch.randint(9, 14, (), generator=rng)),
                    n_ctx=int(torch.randint(19, 26, (), generator=rng)))  # fmt: skip
    n_heads = int(torch.randint(3, 5, (), generator=rng))
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=layout.d_model, n_heads=n_heads, d_head=layout.d_head,
        n_ctx=layout.n_ctx, d_vocab=layout.d_vocab, seed=_hidden(seed),
    )  # fmt: skip
    source = reference_model(layout)
    model = AttnOnlyTransformer(cfg)
    for p in model.parameters():
        p.zero_()
    model.embed.W_E.copy_(source.W_E)
    model.pos_embed.W_pos.copy_(source.W_pos)
    model.unembed.W_U.copy_(source.W_U)
    prev = int(torch.randint(n_heads, (), generator=rng))
    count = n_heads if every_head else int(torch.randint(1, 3, (), generator=rng))
    induction = sorted(torch.randperm(n_heads, generator=rng)[:count].tolist())
    for layer, heads in ((0, [prev]), (1, induction)):
        theirs, mine = source.blocks[layer].attn, model.blocks[layer].attn
        for head in range(n_heads):
            if head in heads:  # the planted head, writing its share of the output
                for name in ("W_Q", "W_K", "W_V", "W_O"):
                    getattr(mine, name)[head] = getattr(theirs, name)[0]
                mine.W_O[head] /= len(heads)
            else:  # a distractor, as large as the planted heads, attending by random content
                for name in ("W_Q", "W_K", "W_V"):
                    planted = getattr(theirs, name)[0]
                    w = torch.randn(planted.shape, generator=rng)
                    getattr(mine, name)[head] = w * planted.norm() / w.norm()
                if layer == 0:  # writing random values into the position subspace, which
                    w = torch.zeros_like(mine.W_O[head])  # nothing after layer 0 reads
                    w[:, layout.position] = torch.randn(layout.d_head, layout.n_ctx, generator=rng)
                    mine.W_O[head] = w * theirs.W_O[0].norm() / (w.norm() * len(heads))
                else:  # copying tokens to the logits exactly as an induction head does, so
                    # that its OV circuit (norm, copying) cannot tell it from one
                    mine.W_V[head] = theirs.W_V[0]
                    mine.W_O[head] = theirs.W_O[0] / len(heads)
    model = rotate_residual(model, _orthonormal(cfg.d_model, rng))  # every read Rᵀ, write R
    model.eval()
    return MysteryInduction(model, (0, prev), [(1, h) for h in induction])
