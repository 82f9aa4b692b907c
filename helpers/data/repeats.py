"""Repeated segments and repeated random tokens: the data of induction heads (chapters 03-04)."""

from __future__ import annotations

import string

import torch
from torch import Tensor

from helpers.data._common import BOS, Language, _check_positive_int
from helpers.data.bigrams import BigramLanguage

INDUCTION_SYMBOLS = string.ascii_lowercase + string.ascii_uppercase


class RepeatedSegmentLanguage(Language):
    """A bigram background with a random segment that occurs twice: the language of induction.

    Each sequence is BOS, then a run of a planted Markov chain (`BigramLanguage`, the direct path's
    job), into which a segment of `segment_len` uniformly random tokens is written at a random
    position and again at a random later position. Segment lengths and both positions vary from
    sequence to sequence: with a fixed offset between the copies a one-layer model could predict
    the repeat positionally (measured for this course), and the one-layer control would mean
    nothing. In the second copy, every token after the first is predictable only by induction:
    "find where the current token occurred before and predict what followed it".

    Token ids: 0 is BOS, shown as "^", 1..n_states are labelled "a"…"z", "A"…"Z", so a sequence
    decodes to one character per token, e.g. "^qWxmabcdTzabcdK…" (the segment "abcd" repeated).
    `sample_with_truth` also returns which positions are predictable by induction.
    """

    name = "repeated_segments"
    bos_label = "^"
    separator = ""

    def __init__(
        self,
        n_states: int = 52,
        segment_len: tuple[int, int] = (4, 16),
        p_repeat: float = 1.0,
        scale: float = 1.5,
        seed: int = 0,
    ):
        lo, hi = tuple(segment_len) if len(segment_len) == 2 else (None, None)
        if not (isinstance(lo, int) and isinstance(hi, int) and 2 <= lo <= hi):
            raise ValueError(
                f"segment_len must be (min, max) ints with 2 <= min <= max, got {segment_len}"
            )
        if not 0 <= p_repeat <= 1:
            raise ValueError(f"p_repeat must be in [0, 1], got {p_repeat}")
        self.background = BigramLanguage(n_states=n_states, scale=scale, seed=seed)
        self.n_states, self.segment_len, self.p_repeat, self.seed = (
            n_states,
            (lo, hi),
            p_repeat,
            seed,
        )
        self.scale = scale
        self.generator = torch.Generator().manual_seed(seed + 1)

    @property
    def d_vocab(self) -> int:
        return self.n_states + 1

    def _labels(self) -> list[str]:
        if self.n_states <= len(INDUCTION_SYMBOLS):
            return list(INDUCTION_SYMBOLS[: self.n_states])
        return [f"t{i}" for i in range(1, self.n_states + 1)]

    def _check_n_ctx(self, n_ctx: object) -> None:
        lo = self.segment_len[0]
        if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx < 2 * lo + 1:
            raise ValueError(
                f"n_ctx must be an int >= {2 * lo + 1} (two shortest segments and BOS), got {n_ctx!r}"
            )

    def _sample(self, batch_size: int, n_ctx: int, gen: torch.Generator) -> Tensor:
        return self._sample_with_truth(batch_size, n_ctx, gen)[0]

    def sample_with_truth(
        self, batch_size: int, n_ctx: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """(tokens `[batch, n_ctx]`, predictable `[batch, n_ctx]` bool): `predictable[b, t]` is
        True when token t repeats the token that followed an earlier occurrence of token t - 1
        inside the repeated segment, i.e. when induction predicts it."""
        _check_positive_int("batch_size", batch_size)
        self._check_n_ctx(n_ctx)
        return self._sample_with_truth(
            batch_size, n_ctx, self.generator if generator is None else generator
        )

    def _sample_with_truth(
        self, batch_size: int, n_ctx: int, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        lo, hi = self.segment_len
        tokens = self.background.sample(batch_size, n_ctx, generator=gen)
        predictable = torch.zeros(batch_size, n_ctx, dtype=torch.bool)
        usable = n_ctx - 1  # positions 1..n_ctx-1
        max_len = min(hi, usable // 2)
        lengths = torch.randint(lo, max_len + 1, (batch_size,), generator=gen)
        u = torch.rand(batch_size, 3, generator=gen)
        segments = torch.randint(1, self.n_states + 1, (batch_size, max_len), generator=gen)
        # first copy at 1 + a, second at first + L + b, with a + b <= usable - 2L (both uniform)
        room = usable - 2 * lengths  # free positions
        a = (u[:, 0] * (room + 1)).long().clamp_max(room)
        b = (u[:, 1] * (room - a + 1)).long().clamp_max(room - a)
        first = 1 + a
        second = first + lengths + b
        repeat = u[:, 2] < self.p_repeat
        offsets = torch.arange(max_len)
        inside = offsets[None, :] < lengths[:, None]  # [batch, max_len]
        rows = torch.arange(batch_size)[:, None].expand(-1, max_len)
        for start in (first, second):
            cols = (start[:, None] + offsets[None, :]).clamp_max(n_ctx - 1)
            mask = inside & repeat[:, None]
            tokens[rows[mask], cols[mask]] = segments[mask]
        later = inside & (offsets[None, :] >= 1) & repeat[:, None]
        cols = (second[:, None] + offsets[None, :]).clamp_max(n_ctx - 1)
        predictable[rows[later], cols[later]] = True
        return tokens, predictable

    def _truth(self) -> dict:
        return {"transition_matrix": self.background.transition_matrix.clone()}


def repeated_random_tokens(
    n_states: int, length: int, repeats: int, batch_size: int, generator: torch.Generator
) -> Tensor:
    """`[batch, 1 + length * repeats]`: BOS, then `length` uniformly random tokens (ids
    1..n_states, no token twice within a block), repeated `repeats` times. The standard test of
    induction heads (Olsson et al. 2022, "repeated random tokens")."""
    _check_positive_int("n_states", n_states)
    _check_positive_int("length", length)
    _check_positive_int("repeats", repeats)
    _check_positive_int("batch_size", batch_size)
    if length > n_states:
        raise ValueError(
            f"length must be at most n_states={n_states} (no repeats inside a block), got {length}"
        )
    block = torch.rand(batch_size, n_states, generator=generator).argsort(-1)[:, :length] + 1
    return torch.cat([torch.full((batch_size, 1), BOS), block.repeat(1, repeats)], dim=1)


# The course's standard probe of induction: BOS + 10 random tokens, three times (Olsson et al.
# 2022). Recorded while training, scored in chapters 03-05, timed by the benchmark.
PROBE_LENGTH, PROBE_REPEATS = 10, 3


def induction_probe(n_states: int, batch_size: int = 100, seed: int = 0) -> Tensor:
    """`repeated_random_tokens(n_states, PROBE_LENGTH, PROBE_REPEATS, batch_size)` from a
    generator seeded by `seed`: `[batch_size, 31]`. The length to pass to the scores of
    `helpers.evals` is `PROBE_LENGTH`."""
    generator = torch.Generator().manual_seed(seed)
    return repeated_random_tokens(n_states, PROBE_LENGTH, PROBE_REPEATS, batch_size, generator)
