"""A word-or-characters tokenizer for real text (chapter 06): tokens that read as words.

Text is cut into pieces: a word or identifier with the space before it (" return"), a run of
punctuation with the space before it (" ==", "):"), a newline with the indentation after it, or a
run of spaces. The most frequent pieces of the training text are tokens; any other piece is
spelled in characters, each of which is a token too. So every token is a word, an identifier, a
piece of punctuation, an indentation or a character, and a skip-trigram read off a model reads as
text ("Return … True → if"), which byte-pair merges of word fragments would not.

Decoding is exact for text whose characters are all in the tokenizer's alphabet (the characters of
the text it was fitted on; the course's corpora are plain ASCII): `decode(encode(text)) == text`.
A character outside the alphabet becomes UNK, shown as "\ufffd".

Token 0 is BOS and token 1 is UNK, as everywhere in the course (`helpers.data.BOS`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import torch
from torch import Tensor

BOS, UNK = 0, 1
SPECIAL = ["<BOS>", "<UNK>"]
# a newline and the indentation after it | a word with its space | punctuation with its space |
# spaces | any other character (a lone newline inside a run of blank lines, a form feed, ...)
PIECES = re.compile(r"\n[ \t]*| ?\w+| ?[^\s\w]+|[ \t]+|\s")
# How whitespace is shown in labels: visible, so "·if" (a space then "if") differs from "if".
VISIBLE = str.maketrans({" ": "·", "\n": "↵", "\t": "→"})


def pieces(text: str) -> list[str]:
    """The pieces `text` is cut into before they are looked up; they join back to `text`."""
    return PIECES.findall(text)


def visible(text: str) -> str:
    """`text` with its whitespace made visible: "\\n    if" → "↵····if". Long indentation is
    counted ("↵·×12"), so that labels stay short."""
    if text.startswith("\n") and len(text) > 5 and set(text[1:]) == {" "}:
        return f"↵·×{len(text) - 1}"
    return text.translate(VISIBLE)


class WordTokenizer:
    """Tokens 0 and 1 are BOS and UNK; then the alphabet's characters; then the most frequent
    pieces of more than one character. Build one with `WordTokenizer.fit(texts, d_vocab)`, or
    from a stored vocabulary with `WordTokenizer(vocab)` (what a checkpoint keeps)."""

    def __init__(self, vocab: list[str]):
        if not isinstance(vocab, (list, tuple)) or list(vocab[:2]) != SPECIAL:
            raise ValueError(f"a vocabulary is a list of strings starting with {SPECIAL}")
        if len(set(vocab)) != len(vocab) or not all(isinstance(t, str) and t for t in vocab):
            raise ValueError("a vocabulary's tokens must be distinct non-empty strings")
        self.vocab = list(vocab)
        self.index = {token: i for i, token in enumerate(self.vocab)}
        self.alphabet = frozenset(t for t in self.vocab[2:] if len(t) == 1)
        self._spelled: dict[str, tuple[int, ...]] = {}

    @classmethod
    def fit(cls, texts: Iterable[str], d_vocab: int, max_alphabet: int | None = None):
        """The tokenizer with `d_vocab` tokens for `texts`: every character they use (at most
        `max_alphabet`, the most frequent; by default a quarter of the vocabulary) and then their
        most frequent pieces. Ties are broken by the piece itself, so fitting is deterministic."""
        if not isinstance(d_vocab, int) or isinstance(d_vocab, bool) or d_vocab < 8:
            raise ValueError(f"d_vocab must be an int >= 8, got {d_vocab!r}")
        max_alphabet = d_vocab // 4 if max_alphabet is None else max_alphabet
        chars, counts = Counter(), Counter()
        for text in texts:
            chars.update(text)
            counts.update(pieces(text))
        if not chars:
            raise ValueError("cannot fit a tokenizer on empty text")
        alphabet = sorted(c for c, _ in sorted(chars.items(), key=_by_count)[:max_alphabet])
        room = d_vocab - len(SPECIAL) - len(alphabet)
        words = [p for p, n in sorted(counts.items(), key=_by_count) if len(p) > 1 and n > 1]
        return cls([*SPECIAL, *alphabet, *words[:room]])

    @property
    def d_vocab(self) -> int:
        return len(self.vocab)

    def _ids(self, piece: str) -> tuple[int, ...]:
        ids = self._spelled.get(piece)
        if ids is None:
            token = self.index.get(piece)
            if token is not None:
                ids = (token,)
            else:  # spelled in characters
                ids = tuple(self.index.get(c, UNK) if c in self.alphabet else UNK for c in piece)
            self._spelled[piece] = ids
        return ids

    def encode(self, text: str, bos: bool = False) -> Tensor:
        """Token ids of `text` (`[pos]`, int64), with BOS first if `bos`."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        ids = [BOS] if bos else []
        for piece in pieces(text):
            ids.extend(self._ids(piece))
        return torch.tensor(ids, dtype=torch.int64)

    def decode(self, tokens: Tensor | Iterable[int]) -> str:
        """The text of token ids: BOS is dropped, UNK is "\ufffd"."""
        ids = tokens.tolist() if isinstance(tokens, Tensor) else list(tokens)
        bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < self.d_vocab]
        if bad:
            raise ValueError(f"token ids must be ints in [0, {self.d_vocab}), got {bad[:5]}")
        return "".join("" if t == BOS else "\ufffd" if t == UNK else self.vocab[t] for t in ids)

    @property
    def token_labels(self) -> list[str]:
        """One label per token, whitespace visible ("↵····", "·return"), for plots and views."""
        return [*SPECIAL, *(visible(t) for t in self.vocab[len(SPECIAL) :])]

    def is_word(self, token: int) -> bool:
        """Whether the token is a whole word or identifier (with or without its space), not a
        character of the alphabet that spells the rest."""
        text = self.vocab[token]
        return len(text) > 1 and token >= len(SPECIAL) and text.lstrip(" ").isidentifier()


def _by_count(item: tuple[str, int]) -> tuple[int, str]:
    return -item[1], item[0]
