"""What every language shares: the BOS token, labels, the sampling preamble, (de)serialisation."""

from __future__ import annotations

import inspect
import math
import string
from typing import ClassVar

import torch
from torch import Tensor

from helpers.references import reference

BOS = 0


def _check_positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class Language:
    """The base of every language in `helpers.data`.

    A language knows its vocabulary (`d_vocab`, token 0 is always BOS), labels its tokens, samples
    `[batch, n_ctx]` token ids from a seeded generator it owns, and stores its parameters and its
    planted truth in a checkpoint's `task` (`to_dict`), from which `from_dict` rebuilds it.
    Subclasses set `name`, implement `d_vocab`, `_labels` and `_sample`, and may add entries of
    planted truth with `_truth`.
    """

    name: ClassVar[str]  # the task's "name" in a checkpoint
    bos_label: ClassVar[str] = "<BOS>"  # how BOS is shown; one character where tokens are letters
    separator: ClassVar[str] = " "  # between tokens in `decode`
    generator: torch.Generator
    seed: int

    @property
    def d_vocab(self) -> int:
        raise NotImplementedError

    def _labels(self) -> list[str]:
        """Labels of tokens 1..d_vocab-1."""
        raise NotImplementedError

    @property
    def token_labels(self) -> list[str]:
        """One label per token id, BOS first."""
        return [self.bos_label, *self._labels()]

    def decode(self, tokens: Tensor) -> str:
        """A sequence of token ids `[pos]` as text, e.g. "<BOS> keep the in mind"."""
        if not isinstance(tokens, Tensor) or tokens.ndim != 1:
            raise ValueError("decode takes one sequence of token ids, a tensor of shape [pos]")
        labels = self.token_labels
        return self.separator.join(labels[int(t)] for t in tokens)

    def _check_n_ctx(self, n_ctx: object) -> None:
        _check_positive_int("n_ctx", n_ctx)

    def sample(
        self, batch_size: int, n_ctx: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """`[batch_size, n_ctx]` int64 token ids, BOS at position 0, drawn from `generator` (by
        default the language's own, seeded by `seed`)."""
        _check_positive_int("batch_size", batch_size)
        self._check_n_ctx(n_ctx)
        return self._sample(batch_size, n_ctx, self.generator if generator is None else generator)

    def _sample(self, batch_size: int, n_ctx: int, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def _truth(self) -> dict:
        """Planted truth stored beside the parameters (checked again by `from_dict`)."""
        return {}

    def to_dict(self) -> dict:
        """The language's parameters and planted truth, in checkpoint-safe types."""
        params = {name: getattr(self, name) for name in inspect.signature(type(self)).parameters}
        return {"name": self.name, **_plain(params), "bos_token": BOS, **self._truth()}

    @classmethod
    def from_dict(cls, d: dict) -> Language:
        """Rebuild the language stored by `to_dict`, checking that its stored truth matches."""
        if not isinstance(d, dict) or d.get("name") != cls.name:
            got = d.get("name") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"not a {cls.name} language: name={got!r}")
        names = list(inspect.signature(cls).parameters)
        missing = [n for n in names if n not in d]
        if missing:
            raise ValueError(f"the stored {cls.name} language lacks {missing}")
        language = cls(**{n: d[n] for n in names})
        for key, value in language._truth().items():
            stored = d.get(key)
            if isinstance(value, Tensor):
                same = (
                    isinstance(stored, Tensor)
                    and stored.shape == value.shape
                    and torch.allclose(stored.double(), value.double())
                )
            elif isinstance(value, float):
                same = isinstance(stored, float) and math.isclose(stored, value, rel_tol=1e-9)
            else:
                same = stored == value
            if not same:
                raise ValueError(f"the stored {key} does not match its seed")
        return language


def _plain(value: object) -> object:
    """Tuples as lists, recursively: what a checkpoint stores."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def bigram_state_labels(n: int) -> list[str]:
    letters = string.ascii_lowercase
    if n <= len(letters):
        return list(letters[:n])
    return [f"t{i}" for i in range(1, n + 1)]


@reference
def stationary_distribution(P: Tensor) -> Tensor:
    """π with π P = π and Σπ = 1, for a row-stochastic matrix P with all entries > 0."""
    if not torch.isfinite(P).all():  # eig crashes the process on NaN and hangs on inf
        raise ValueError("the transition matrix holds NaN or infinite values")
    evals, evecs = torch.linalg.eig(P.T)
    i = int(torch.argmin((evals - 1).abs()))
    pi = evecs[:, i].real
    return pi / pi.sum()


@reference
def entropy_rate(P: Tensor) -> float:
    """The entropy rate of a Markov chain with row-stochastic transition matrix P (all entries
    > 0): H = -Σ_i π_i Σ_j P_ij log P_ij in nats per step, with π its stationary distribution.
    The lowest average loss any model can reach on predicting the chain's next state."""
    P = P.double()
    pi = stationary_distribution(P)
    return float(-(pi[:, None] * P * P.log()).sum())


@reference
def next_token_counts(tokens: Tensor, d_vocab: int) -> Tensor:
    """Counts of (current, next) pairs of consecutive tokens: `[d_vocab, d_vocab]`, row = current."""
    cur, nxt = tokens[..., :-1].reshape(-1), tokens[..., 1:].reshape(-1)
    return torch.bincount(cur * d_vocab + nxt, minlength=d_vocab * d_vocab).view(d_vocab, d_vocab)
