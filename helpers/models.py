"""The attention-only transformer of "A Mathematical Framework for Transformer Circuits".

Elhage et al. (2021), section "Transformer Overview": token embedding, a stack of attention-only
layers that each add their heads' outputs to the residual stream, and an unembedding. No MLPs, no
LayerNorm and (by default) no biases, so that the logits are exactly the sum of the paths of the
path expansion ("Zero-Layer Transformers", "One-Layer Attention-Only Transformers").

Conventions, stated once. Activations are row vectors and weights multiply on the right
(`x @ W`), as in PyTorch and TransformerLens. The paper uses column vectors, so its
W_OV = W_O W_V is `W_V @ W_O` here (transposed), while its W_QK = W_Q^T W_K is `W_Q @ W_K.T`.
Parameter names, shapes and hook names are TransformerLens's, so a state dict saved here loads into
its `HookedTransformer` (attn_only=True, normalization_type=None).

Positions are "shortformer" by default: the positional embedding is added to the input of the
queries and keys only and never enters the residual stream, as in the paper's models (footnote on
positional embeddings; Press et al. 2021). With "standard" it is added to the residual stream.

One documented extension beyond the framework paper: smeared keys (`smeared_keys=True`), from
Olsson et al. (2022), "In-context Learning and Induction Heads", "Argument 2: architectural
requirements". Each head h blends every key with the previous position's,
k'_j = sigmoid(alpha^h) k_j + (1 - sigmoid(alpha^h)) k_{j-1} (and k'_0 = k_0), with alpha^h a
trainable scalar, the parameter `blocks.{l}.attn.smear_logit`. A key then carries the previous
token, so a single layer can form induction heads. TransformerLens has no such parameter.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from helpers.references import reference

PositionalEmbeddingType = Literal["shortformer", "standard"]
HookFn = Callable[[Tensor, "HookPoint"], Tensor | None]


@dataclass(frozen=True)
class HookedTransformerConfig:
    """Shape and initialisation of a model. Field names follow TransformerLens's config.

    `d_vocab` counts every token, the BOS token included. `initializer_range` is the standard
    deviation of the weights at initialisation; None means TransformerLens's default,
    0.8 / sqrt(d_model). `seed` seeds the initialisation (through a private generator: the global
    RNG is never touched). `smeared_keys` switches on Olsson et al.'s smeared keys (module
    docstring, `Attention.smear_keys`); off, the model is exactly the framework paper's.
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    n_ctx: int
    d_vocab: int
    positional_embedding_type: PositionalEmbeddingType = "shortformer"
    use_bias: bool = False
    initializer_range: float | None = None
    seed: int = 0
    device: str = "cpu"
    attn_only: bool = True
    normalization_type: None = None
    smeared_keys: bool = False

    def __post_init__(self) -> None:
        for name in ("d_model", "d_head", "n_ctx", "d_vocab"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("n_layers", "n_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.n_layers > 0 and self.n_heads < 1:
            raise ValueError(f"a model with layers needs n_heads >= 1, got {self.n_heads}")
        if self.positional_embedding_type not in ("shortformer", "standard"):
            raise ValueError(
                "positional_embedding_type must be 'shortformer' or 'standard', "
                f"got {self.positional_embedding_type!r}"
            )
        if self.initializer_range is not None and not (
            isinstance(self.initializer_range, (int, float))
            and 0 < self.initializer_range < math.inf
        ):
            raise ValueError(
                f"initializer_range must be a finite number > 0, or None, got "
                f"{self.initializer_range!r}"
            )
        if not isinstance(self.use_bias, bool):
            raise ValueError(f"use_bias must be True or False, got {self.use_bias!r}")
        if not isinstance(self.smeared_keys, bool):
            raise ValueError(f"smeared_keys must be True or False, got {self.smeared_keys!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if self.attn_only is not True or self.normalization_type is not None:
            raise ValueError("this course's models are attention-only with no normalisation")

    @property
    def init_std(self) -> float:
        if self.initializer_range is not None:
            return self.initializer_range
        return 0.8 / math.sqrt(self.d_model)

    def to_dict(self) -> dict:
        """The fields as a plain dict. `smeared_keys` appears only when on, so a plain model's
        dict (and checkpoint) is exactly what it was before the extension existed."""
        d = asdict(self)
        if not self.smeared_keys:
            del d["smeared_keys"]
        return d

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """The state dict's keys and shapes for this config, computed without allocating it."""
        H, D, d, V = self.n_heads, self.d_model, self.d_head, self.d_vocab
        shapes = {"embed.W_E": (V, D), "pos_embed.W_pos": (self.n_ctx, D)}
        for layer in range(self.n_layers):
            prefix = f"blocks.{layer}.attn."
            shapes |= {prefix + n: (H, D, d) for n in ("W_Q", "W_K", "W_V")}
            shapes[prefix + "W_O"] = (H, d, D)
            if self.use_bias:
                shapes |= {prefix + n: (H, d) for n in ("b_Q", "b_K", "b_V")}
                shapes[prefix + "b_O"] = (D,)
            if self.smeared_keys:
                shapes[prefix + "smear_logit"] = (H,)
        shapes["unembed.W_U"] = (D, V)
        if self.use_bias:
            shapes["unembed.b_U"] = (V,)
        return shapes

    @classmethod
    def from_dict(cls, d: dict) -> HookedTransformerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config fields {unknown}; allowed: {sorted(known)}")
        return cls(**d)


def as_index(name: str, value: object, size: int) -> int:
    """`value` as an int in 0..size-1, or a ValueError naming the range. Accepts what `argmax`
    returns (a 0-d integer tensor, a numpy integer) as well as a Python int."""
    if isinstance(value, bool) or (isinstance(value, Tensor) and value.ndim != 0):
        index = None
    else:
        try:
            index = operator.index(value)
        except TypeError:
            index = None
    if index is None or not 0 <= index < size:
        raise ValueError(f"{name} must be an int in 0..{size - 1}, got {value!r}")
    return index


def next_token_loss(logits: Tensor, tokens: Tensor, per_token: bool = False) -> Tensor:
    """Cross-entropy of predicting tokens[:, i + 1] from logits[:, i], in nats.

    `logits` is `[batch, pos, d_vocab]` and `tokens` `[batch, pos]`, with pos >= 2 (one position
    has nothing to predict). Returns the mean, or `[batch, pos - 1]` losses with `per_token=True`.
    """
    if logits.ndim != 3 or tokens.shape != logits.shape[:2]:
        raise ValueError(
            f"need logits [batch, pos, d_vocab] and tokens [batch, pos] of the same batch and pos, "
            f"got {tuple(logits.shape)} and {tuple(tokens.shape)}"
        )
    if tokens.shape[1] < 2:
        raise ValueError("need at least 2 positions: the last token has no next token to predict")
    log_probs = logits[:, :-1].log_softmax(dim=-1)  # [batch, pos - 1, d_vocab]
    losses = -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]
    return losses if per_token else losses.mean()


class HookPoint(nn.Module):
    """An identity on the forward pass where hooks can read or replace an activation.

    A hook is `fn(activation, hook) -> new_activation | None`; returning None keeps the activation.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name = ""
        self.fns: list[HookFn] = []

    def forward(self, x: Tensor) -> Tensor:
        for fn in self.fns:
            out = fn(x, self)
            if out is not None:
                if not isinstance(out, Tensor) or out.shape != x.shape:
                    got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise ValueError(
                        f"hook on {self.name} must return None or a tensor of shape "
                        f"{tuple(x.shape)}, got {got}"
                    )
                x = out
        return x


class Embed(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))

    def forward(self, tokens: Tensor) -> Tensor:
        # F.embedding rather than W_E[tokens]: its backward is deterministic on CPU (indexing's
        # accumulating backward is not, with several threads), so a seed fixes the model.
        return F.embedding(tokens, self.W_E)  # [batch, pos, d_model]


class PosEmbed(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))

    def forward(self, tokens: Tensor) -> Tensor:
        batch, pos = tokens.shape
        return self.W_pos[:pos].expand(batch, pos, -1)  # [batch, pos, d_model]


class Unembed(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        if cfg.use_bias:
            self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))
        else:
            self.b_U = None

    def forward(self, resid: Tensor) -> Tensor:
        logits = resid @ self.W_U
        return logits if self.b_U is None else logits + self.b_U


@reference
def smear_keys(k: Tensor, smear_logit: Tensor) -> Tensor:
    """Smeared keys, Olsson et al. (2022), "Argument 2: architectural requirements":
    k'_j = sigmoid(alpha^h) k_j + (1 - sigmoid(alpha^h)) k_{j-1} for j >= 1, and k'_0 = k_0.

    `k` is [batch, pos, head_index, d_head], `smear_logit` (alpha) [head_index]; the result has
    the shape of `k`. Queries and values are not smeared."""
    keep = torch.sigmoid(smear_logit)[:, None]  # [head_index, 1], broadcasts over d_head
    prev = torch.cat((k[:, :1], k[:, :-1]), dim=1)  # k_{j-1}; at j = 0, k_0 itself
    # lerp(prev, k, keep) = keep * k + (1 - keep) * prev, and exactly k_0 at j = 0
    return torch.lerp(prev, k, keep)


class Attention(nn.Module):
    """One layer of attention heads, computed head by head in parallel.

    Framework paper, "Attention Heads are Independent and Additive": each head reads the residual
    stream, moves information between positions with its pattern A^h, and writes through its own
    W_O^h; the layer's output is the sum of the heads' outputs.

    With `cfg.smeared_keys`, `smear_logit` [n_heads] holds each head's alpha^h and the keys are
    smeared (`smear_keys`) before `hook_k`, in both forward paths.
    """

    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        H, D, d = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(H, D, d))
        self.W_K = nn.Parameter(torch.empty(H, D, d))
        self.W_V = nn.Parameter(torch.empty(H, D, d))
        self.W_O = nn.Parameter(torch.empty(H, d, D))
        if cfg.use_bias:
            self.b_Q = nn.Parameter(torch.zeros(H, d))
            self.b_K = nn.Parameter(torch.zeros(H, d))
            self.b_V = nn.Parameter(torch.zeros(H, d))
            self.b_O = nn.Parameter(torch.zeros(D))
        else:
            self.b_Q = self.b_K = self.b_V = self.b_O = None
        # Olsson et al.'s alpha^h; not a TransformerLens parameter, hence a name of its own
        self.smear_logit = nn.Parameter(torch.zeros(H)) if cfg.smeared_keys else None
        self.hook_q = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_k = HookPoint()  # the keys the scores use: smeared, with smeared_keys
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()  # [batch, head_index, query_pos, key_pos], masked
        self.hook_pattern = HookPoint()  # [batch, head_index, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_result = HookPoint()  # [batch, pos, head_index, d_model]

    def smear_keys(self, k: Tensor) -> Tensor:
        """`smear_keys(k, self.smear_logit)`. alpha^h (`smear_logit`) starts at 0, an even mix.
        The paper does not give its initialisation; 0 is where the sigmoid is steepest (a
        saturated start, such as sigmoid ~ 1 for "no smearing", would give alpha almost no
        gradient, so training could not discover smearing), training can move from it either way
        (towards k_j or k_{j-1}), and it is where AdamW's weight decay pulls alpha anyway."""
        return smear_keys(k, self.smear_logit)

    def forward(self, qk_input: Tensor, v_input: Tensor, want_result: bool = False) -> Tensor:
        cfg = self.cfg
        H, D, d = cfg.n_heads, cfg.d_model, cfg.d_head
        batch, n_pos, _ = v_input.shape
        # one matrix multiply per projection, all heads at once: [H, D, d] -> [D, H * d]
        q = (qk_input @ heads_side_by_side(self.W_Q)).view(batch, n_pos, H, d)
        k = (qk_input @ heads_side_by_side(self.W_K)).view(batch, n_pos, H, d)
        v = (v_input @ heads_side_by_side(self.W_V)).view(batch, n_pos, H, d)
        if self.b_Q is not None:
            q, k, v = q + self.b_Q, k + self.b_K, v + self.b_V
        if self.smear_logit is not None:
            # before hook_k, so caches, hooks and pattern analyses see the keys the model uses
            k = self.smear_keys(k)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)

        # q k^T / sqrt(d_head), -inf where the key comes after the query ("bqhd,bkhd->bhqk")
        scores = causal_scores(q.transpose(1, 2), k.transpose(1, 2))
        scores = self.hook_attn_scores(scores)  # [batch, head_index, query_pos, key_pos]
        pattern = self.hook_pattern(scores.softmax(dim=-1))  # softmax over key positions

        z = self.hook_z((pattern @ v.transpose(1, 2)).transpose(1, 2))  # [batch, pos, H, d]
        if want_result or self.hook_result.fns:
            # Per-head outputs, each in the residual stream's basis: the terms of the sum.
            result = self.hook_result(torch.einsum("bqhd,hdm->bqhm", z, self.W_O))
            out = result.sum(dim=2)
        else:
            # Same sum, without materialising [batch, pos, head, d_model] (faster training).
            out = z.reshape(batch, n_pos, H * d) @ self.W_O.reshape(H * d, D)
        return out if self.b_O is None else out + self.b_O

    def forward_fused(self, qk_input: Tensor, v_input: Tensor) -> Tensor:
        """The same output as `forward`, with no hook points and fewer, larger kernels: one
        projection for the queries and keys (one for all three when they read the same input),
        and the attention of all heads at once. The model uses it when no hook is attached and
        nothing is cached (training, plain `model(tokens)`).

        The attention kernel depends on torch's thread count, as measured on the course's shapes:
        on one thread (training, `helpers.train.one_thread`) `F.scaled_dot_product_attention`
        was the faster, but its CPU kernel does not use a second thread, and on two the explicit
        scores-softmax-mix was faster for forward passes and training steps alike
        (`tools/benchmark.py peers` measures both paths; BENCHMARKS.md has the figures).
        """
        cfg = self.cfg
        H, D, d = cfg.n_heads, cfg.d_model, cfg.d_head
        batch, n_pos, _ = v_input.shape
        if qk_input is v_input:
            W = torch.cat((self.W_Q, self.W_K, self.W_V))  # [3H, D, d]
            qkv = v_input @ heads_side_by_side(W)
            if self.b_Q is not None:
                qkv = qkv + torch.cat((self.b_Q, self.b_K, self.b_V)).flatten()
            q, k, v = qkv.view(batch, n_pos, 3 * H, d).transpose(1, 2).split(H, dim=1)
        else:
            qk = qk_input @ heads_side_by_side(torch.cat((self.W_Q, self.W_K)))
            v = v_input @ heads_side_by_side(self.W_V)
            if self.b_Q is not None:
                qk = qk + torch.cat((self.b_Q, self.b_K)).flatten()
                v = v + self.b_V.flatten()
            q, k = qk.view(batch, n_pos, 2 * H, d).transpose(1, 2).split(H, dim=1)
            v = v.view(batch, n_pos, H, d).transpose(1, 2)
        if self.smear_logit is not None:
            k = self.smear_keys(k.transpose(1, 2)).transpose(1, 2)  # smears along pos
        if torch.get_num_threads() == 1:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [batch, H, pos, d]
        else:
            z = causal_scores(q, k).softmax(dim=-1) @ v
        out = z.transpose(1, 2).reshape(batch, n_pos, H * d) @ self.W_O.reshape(H * d, D)
        return out if self.b_O is None else out + self.b_O


def heads_side_by_side(W: Tensor) -> Tensor:
    """`[H, D, d]` -> `[D, H * d]`: each head's columns side by side, so that one matrix multiply
    projects every head (`x @ heads_side_by_side(W_Q)` is `einsum("bpm,hmd->bphd")`, flattened)."""
    H, D, d = W.shape
    return W.transpose(0, 1).reshape(D, H * d)


def causal_scores(q: Tensor, k: Tensor) -> Tensor:
    """Attention scores `[batch, H, query_pos, key_pos]` from queries and keys `[batch, H, pos, d]`:
    q k^T / sqrt(d_head), with -inf where the key comes after the query (the causal mask). One
    batched multiply-add onto a mask of 0 and -inf. It multiplies by 1/sqrt(d_head) where the
    formula divides by sqrt(d_head): the same to float rounding, and bit for bit when d_head is
    a power of 4 (then 1/sqrt(d_head) is a power of 2)."""
    batch, H, n_pos, d = q.shape
    mask = torch.full((n_pos, n_pos), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
    scores = torch.baddbmm(
        mask,
        q.reshape(batch * H, n_pos, d),
        k.transpose(2, 3).reshape(batch * H, d, n_pos),
        alpha=1 / math.sqrt(d),
    )
    return scores.view(batch, H, n_pos, n_pos)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        self.attn = Attention(cfg)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid: Tensor, pos_embed: Tensor | None, want_result: bool) -> Tensor:
        resid = self.hook_resid_pre(resid)
        qk_input = resid if pos_embed is None else resid + pos_embed
        attn_out = self.hook_attn_out(self.attn(qk_input, resid, want_result))
        return self.hook_resid_post(resid + attn_out)


class AttnOnlyTransformer(nn.Module):
    """An attention-only transformer with 0, 1, 2 … layers (`cfg.n_layers`).

    `model(tokens)` takes token ids `[batch, pos]` (or `[pos]`) and returns logits
    `[batch, pos, d_vocab]`; the logits at position i predict the token at position i + 1.
    """

    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()
        self.pos_embed = PosEmbed(cfg)
        self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.unembed = Unembed(cfg)
        self.hook_dict: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module
        self.init_weights()
        self.to(cfg.device)

    # -- parameters ---------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, cfg.init_std) weights and zero biases, from a generator seeded by cfg.seed.

        `smear_logit` starts at 0 (see `Attention.smear_keys`) and draws nothing from the
        generator, so a smeared model's other weights are those of the plain model of its seed.
        """
        gen = torch.Generator().manual_seed(self.cfg.seed)
        for name, p in self.named_parameters():
            last = name.split(".")[-1]
            if last.startswith("b_") or last == "smear_logit":
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * self.cfg.init_std)

    @property
    def W_E(self) -> Tensor:
        return self.embed.W_E

    @property
    def W_pos(self) -> Tensor:
        return self.pos_embed.W_pos

    @property
    def W_U(self) -> Tensor:
        return self.unembed.W_U

    def _stack(self, name: str) -> Tensor:
        if self.cfg.n_layers == 0:
            raise ValueError("a zero-layer model has no attention heads")
        return torch.stack([getattr(block.attn, name) for block in self.blocks])

    @property
    def W_Q(self) -> Tensor:
        """[n_layers, n_heads, d_model, d_head]"""
        return self._stack("W_Q")

    @property
    def W_K(self) -> Tensor:
        return self._stack("W_K")

    @property
    def W_V(self) -> Tensor:
        return self._stack("W_V")

    @property
    def W_O(self) -> Tensor:
        """[n_layers, n_heads, d_head, d_model]"""
        return self._stack("W_O")

    def check_head(self, layer: int, head: int) -> tuple[int, int]:
        """(layer, head) as ints, or a ValueError naming the allowed range if the head is not in
        this model. Integer tensors and numpy integers (what `argmax` returns) are accepted."""
        if self.cfg.n_layers == 0:
            raise ValueError("a zero-layer model has no attention heads")
        return as_index("layer", layer, self.cfg.n_layers), as_index("head", head, self.cfg.n_heads)

    def check_finite(self) -> None:
        """Raise a ValueError naming the first weight that holds NaN or infinite values.

        Eigenvalue routines crash the process on NaN and hang on inf, so analyses call this first.
        """
        for name, p in self.named_parameters():
            if not torch.isfinite(p).all():
                bad = "NaN" if torch.isnan(p).any() else "infinite"
                raise ValueError(
                    f"the model's weight {name} holds {bad} values (a diverged training run, or "
                    "an edit that divided by zero?); rebuild or reload the model"
                )

    # -- forward ------------------------------------------------------------------------------
    def validate_tokens(self, tokens: Tensor) -> Tensor:
        """Return tokens as a `[batch, pos]` int64 tensor on the model's device, or raise."""
        if not isinstance(tokens, Tensor):
            raise TypeError(
                f"tokens must be a torch.Tensor of token ids, got {type(tokens).__name__}"
            )
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise TypeError(
                f"tokens must have an integer dtype (torch.long), got {tokens.dtype}; "
                "pass token ids, not embeddings or probabilities"
            )
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2:
            raise ValueError(
                f"tokens must have shape [batch, pos] or [pos], got {tuple(tokens.shape)}"
            )
        if tokens.shape[1] == 0:
            raise ValueError("tokens must hold at least one position")
        if tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(
                f"sequence of length {tokens.shape[1]} is longer than n_ctx={self.cfg.n_ctx}"
            )
        if tokens.numel():
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.cfg.d_vocab:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"token id {bad} is outside the vocabulary: ids must be in "
                    f"0..{self.cfg.d_vocab - 1} (d_vocab={self.cfg.d_vocab})"
                )
        return tokens.to(device=self.W_E.device, dtype=torch.long)

    def hooks_attached(self) -> bool:
        """Whether any hook point has a hook (a cache, an ablation, a frozen pattern)."""
        return any(point.fns for point in self.hook_dict.values())

    def forward(self, tokens: Tensor, want_result: bool = False) -> Tensor:
        tokens = self.validate_tokens(tokens)
        if not want_result and not self.hooks_attached():
            return self.forward_fused(tokens)
        resid = self.hook_embed(self.embed(tokens))
        pos = self.hook_pos_embed(self.pos_embed(tokens))
        if self.cfg.positional_embedding_type == "standard":
            resid, qk_pos = resid + pos, None
        else:
            qk_pos = pos  # shortformer: positions reach queries and keys only
        for block in self.blocks:
            resid = block(resid, qk_pos, want_result)
        return self.unembed(resid)  # [batch, pos, d_vocab]

    def forward_fused(self, tokens: Tensor) -> Tensor:
        """The forward pass without hook points, each layer through `Attention.forward_fused`:
        the same logits (to float rounding), about 1.5x as fast on small models (induction_2l's
        shape, one thread), whose time goes to per-operation overhead more than arithmetic.
        `forward` takes this path when no hook is attached; the hooked path stays the definition
        (and what the tests compare with)."""
        tokens = self.validate_tokens(tokens)
        resid = self.embed(tokens)
        pos = self.W_pos[: tokens.shape[1]]  # broadcasts over the batch
        standard = self.cfg.positional_embedding_type == "standard"
        if standard:
            resid = resid + pos
        for block in self.blocks:
            qk_input = resid if standard else resid + pos
            resid = resid + block.attn.forward_fused(qk_input, resid)
        return self.unembed(resid)

    # -- hooks --------------------------------------------------------------------------------
    def _hook_point(self, name: str) -> HookPoint:
        if name not in self.hook_dict:
            raise ValueError(f"no hook named {name!r}; available: {', '.join(self.hook_dict)}")
        return self.hook_dict[name]

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[str | Callable[[str], bool], HookFn]]) -> Iterator:
        """Attach hooks for the duration of a `with` block; they are removed whatever happens.

        Each entry is (hook name, or a predicate on hook names, fn).
        """
        added: list[tuple[HookPoint, HookFn]] = []
        try:
            for name, fn in fwd_hooks:
                points = (
                    [p for n, p in self.hook_dict.items() if name(n)]
                    if callable(name)
                    else [self._hook_point(name)]
                )
                for point in points:
                    point.fns.append(fn)
                    added.append((point, fn))
            yield self
        finally:
            for point, fn in added:
                point.fns.remove(fn)

    def run_with_hooks(self, tokens: Tensor, fwd_hooks=(), want_result: bool = False) -> Tensor:
        """Forward pass with hooks that may read or replace any activation (ablations, frozen
        attention patterns); see `hooks`."""
        with self.hooks(fwd_hooks):
            return self(tokens, want_result=want_result)

    def run_with_cache(
        self,
        tokens: Tensor,
        names_filter: str | Iterable[str] | Callable[[str], bool] | None = None,
        fwd_hooks=(),
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Forward pass that also returns activations keyed by TransformerLens hook names.

        The cache includes `blocks.{l}.attn.hook_result` (per-head outputs). Cached tensors are
        detached. Extra `fwd_hooks` run before caching, so the cache records what they wrote.
        """
        if names_filter is None:
            wanted = lambda n: True  # noqa: E731
        elif isinstance(names_filter, str):
            self._hook_point(names_filter)
            wanted = lambda n: n == names_filter  # noqa: E731
        elif callable(names_filter):
            wanted = names_filter
        else:
            names = set(names_filter)
            for n in names:
                self._hook_point(n)
            wanted = names.__contains__
        cache: dict[str, Tensor] = {}

        def save(x: Tensor, hook: HookPoint) -> None:
            cache[hook.name] = x.detach()

        with self.hooks(list(fwd_hooks)):
            with self.hooks([(n, save) for n in self.hook_dict if wanted(n)]):
                logits = self(tokens, want_result=True)
        return logits, cache
