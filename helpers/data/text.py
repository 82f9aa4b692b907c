"""Real text (chapter 06): the pinned corpora, or the learner's own, as a language to train on.

Two corpora ship in `data/text/`, cut from CPython 3.11.7's standard library (`tools/
build_corpora.py` says exactly how, and rebuilds them): "prose", the reference manual and the
docstrings, and "code", the library's own source. Or pass the path of a `.txt` file or a folder of
them: your own text goes through the same path.

A corpus is a list of documents, one per source file. Every training window is cut from one
document, because repetition inside a document (an identifier used again, a phrase quoted twice) is
what rewards induction heads. Every tenth document is held out; the held-out windows measure loss
and make the probes of chapter 06.
"""

from __future__ import annotations

import functools
import json
import lzma
from pathlib import Path

import torch
from torch import Tensor

from helpers.data._common import BOS, Language, _check_positive_int
from helpers.data.tokenizer import WordTokenizer

TEXT_DIR = Path(__file__).resolve().parent.parent.parent / "data" / "text"
CORPORA = ("prose", "code")
HELD_OUT_EVERY = 10  # documents 9, 19, 29, ... are held out
MIN_CHARACTERS = 20_000  # less text than this trains nothing worth taking apart
SPLITS = ("train", "held-out")


class TextError(ValueError):
    """Text that cannot be trained on, with what was wrong and what is accepted."""


@functools.cache
def _shipped(name: str) -> tuple[tuple[str, str], ...]:
    path = TEXT_DIR / f"{name}.json.xz"
    if not path.is_file():
        raise FileNotFoundError(
            f"the corpus {path} is missing; `git checkout data/text` restores it"
        )
    payload = json.loads(lzma.decompress(path.read_bytes()))
    return tuple((doc_name, text) for doc_name, text in payload["documents"])


def _read_text_file(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data:
        raise TextError(f"{path} is binary (it holds NUL bytes); give a UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TextError(
            f"{path} is not UTF-8 text (byte {err.start} cannot be decoded); "
            "save it as UTF-8, or give another .txt file"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _split_long(documents: list[tuple[str, str]], at_least: int) -> list[tuple[str, str]]:
    """Too few documents for a held-out tenth: cut each at line ends into about equal parts."""
    total = sum(len(t) for _, t in documents)
    size = max(1, total // at_least)
    parts = []
    for name, text in documents:
        start, k = 0, 0
        while start < len(text):
            end = text.find("\n", start + size)
            end = len(text) if end < 0 else end + 1
            parts.append((f"{name}#{k}", text[start:end]))
            start, k = end, k + 1
    return parts


def read_documents(source: str | Path) -> tuple[tuple[str, str], ...]:
    """The documents of a shipped corpus ("prose" or "code"), or of your own text: a `.txt` file
    or a folder (searched recursively) of `.txt` files, one document per file. Too few documents
    for a held-out tenth (fewer than 20) are cut at line ends into about 20 parts."""
    if isinstance(source, str) and source in CORPORA:
        return _shipped(source)
    if not isinstance(source, (str, Path)):
        raise TypeError(f"a corpus is one of {CORPORA} or a path, got {type(source).__name__}")
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{source!r} is neither a shipped corpus ({', '.join(CORPORA)}) nor an existing "
            "path; give a .txt file or a folder of .txt files"
        )
    files = [path] if path.is_file() else sorted(path.rglob("*.txt"))
    if not files:
        raise TextError(f"the folder {path} holds no .txt files (searched recursively)")
    documents = [(str(f.relative_to(path) if path.is_dir() else f.name), _read_text_file(f))
                 for f in files]  # fmt: skip
    documents = [(name, text) for name, text in documents if text.strip()]
    total = sum(len(text) for _, text in documents)
    if total == 0:
        raise TextError(f"{path} holds no text (only empty files or whitespace)")
    if total < MIN_CHARACTERS:
        raise TextError(
            f"{path} holds {total:,} characters of text; a model needs at least "
            f"{MIN_CHARACTERS:,} (a few pages) to learn anything worth taking apart"
        )
    if len(documents) < 2 * HELD_OUT_EVERY:
        documents = _split_long(documents, 2 * HELD_OUT_EVERY)
    return tuple(documents)


@functools.cache
def _fitted(source: str, d_vocab: int) -> WordTokenizer:
    documents = read_documents(source)
    return WordTokenizer.fit(_select(documents, "train"), d_vocab)


def _select(documents, split: str) -> list[str]:
    held = split == "held-out"
    return [t for i, (_, t) in enumerate(documents) if (i % HELD_OUT_EVERY == 9) == held]


@functools.cache
def _encoded(source: str, vocab: tuple[str, ...], split: str) -> tuple[Tensor, Tensor]:
    """All of a split's documents' tokens end to end (int32), and where each document starts."""
    tokenizer = WordTokenizer(list(vocab))
    encoded = [tokenizer.encode(t) for t in _select(read_documents(source), split)]
    lengths = torch.tensor([0, *map(len, encoded)])
    return torch.cat(encoded).to(torch.int32), lengths.cumsum(0)


class TextLanguage(Language):
    """Windows of real text: BOS, then n_ctx - 1 consecutive tokens of one document.

    `corpus` is "prose", "code", or the path of your own text (see `read_documents`). The
    tokenizer is fitted on the training documents with `d_vocab` tokens, or given as `vocab` (a
    checkpoint stores it, so a model is always read with its own tokens). A small text may offer
    fewer than `d_vocab` tokens (pieces seen once are spelled): `language.d_vocab` says how many. `split` picks the
    training documents or the held-out tenth. A window is drawn uniformly from all the windows of
    the split, so a long document gives more windows than a short one; documents shorter than a
    window give none."""

    name = "text"

    def __init__(
        self,
        corpus: str = "code",
        d_vocab: int = 512,
        seed: int = 0,
        vocab: list[str] | None = None,
        split: str = "train",
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        _check_positive_int("d_vocab", d_vocab)
        self.corpus = str(corpus) if isinstance(corpus, Path) else corpus
        self.seed, self.split = seed, split
        self.tokenizer = _fitted(self.corpus, d_vocab) if vocab is None else WordTokenizer(vocab)
        if vocab is not None and self.tokenizer.d_vocab != d_vocab:
            raise ValueError(
                f"the vocabulary has {self.tokenizer.d_vocab} tokens, not d_vocab={d_vocab}"
            )
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def vocab(self) -> list[str]:
        return self.tokenizer.vocab

    @property
    def d_vocab(self) -> int:
        return self.tokenizer.d_vocab

    @property
    def token_labels(self) -> list[str]:
        return self.tokenizer.token_labels

    def _labels(self) -> list[str]:
        return self.tokenizer.token_labels[1:]

    def decode(self, tokens: Tensor) -> str:
        """The text of one sequence of token ids (BOS dropped)."""
        if not isinstance(tokens, Tensor) or tokens.ndim != 1:
            raise ValueError("decode takes one sequence of token ids, a tensor of shape [pos]")
        return self.tokenizer.decode(tokens)

    def encode(self, text: str, bos: bool = True) -> Tensor:
        """Token ids of `text` (`[pos]`), BOS first unless `bos=False`."""
        return self.tokenizer.encode(text, bos=bos)

    def documents(self) -> list[str]:
        """The texts of the split's documents."""
        return _select(read_documents(self.corpus), self.split)

    def tokens(self) -> tuple[Tensor, Tensor]:
        """The split's tokens end to end (`[n_tokens]`, int32) and the offsets where each
        document starts (`[n_documents + 1]`; document i is `tokens[starts[i]:starts[i+1]]`)."""
        return _encoded(self.corpus, tuple(self.vocab), self.split)

    def held_out(self) -> TextLanguage:
        """The same language on the held-out documents (its own generator, same seed)."""
        return TextLanguage(self.corpus, self.d_vocab, self.seed, self.vocab, "held-out")

    def repeat_probe(
        self, batch_size: int = 50, length: int = 30, repeats: int = 2, seed: int = 0
    ) -> Tensor:
        """`[batch_size, 1 + length * repeats]`: BOS, then a span of `length` tokens of held-out
        text, repeated. The induction probe for real-text models: its first copy is text the
        model has learned to read (uniformly random tokens are mostly rare tokens whose
        embeddings barely trained), and its repeat is what an induction head predicts. The
        scores of `helpers.evals` take it with `length`."""
        _check_positive_int("length", length)
        _check_positive_int("repeats", repeats)
        generator = torch.Generator().manual_seed(seed)
        spans = self.held_out()._sample(batch_size, length + 1, generator)[:, 1:]
        return torch.cat([torch.full((batch_size, 1), BOS), spans.repeat(1, repeats)], dim=1)

    def _sample(self, batch_size: int, n_ctx: int, generator: torch.Generator) -> Tensor:
        flat, starts = self.tokens()
        span = n_ctx - 1
        n_windows = ((starts[1:] - starts[:-1]) - span + 1).clamp(min=0)
        total = int(n_windows.sum())
        if total == 0:
            raise TextError(
                f"no document of the {self.split} split has the {span} tokens a window of "
                f"n_ctx={n_ctx} needs; use a shorter n_ctx"
            )
        cumulative = n_windows.cumsum(0)
        pick = torch.randint(total, (batch_size,), generator=generator)
        document = torch.searchsorted(cumulative, pick, right=True)
        first = starts[document] + pick - (cumulative[document] - n_windows[document])
        windows = flat[first[:, None] + torch.arange(span)].long()
        return torch.cat([torch.full((batch_size, 1), BOS), windows], dim=1)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "corpus": self.corpus, "d_vocab": self.d_vocab,
            "seed": self.seed, "vocab": list(self.vocab), "split": self.split, "bos_token": BOS,
        }  # fmt: skip
