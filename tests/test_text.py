"""Real text (chapter 06): the pinned corpora, the word-or-characters tokenizer, windows cut from one
document, and the learner's own text with its errors."""

import json
import lzma

import pytest
import torch

from helpers.checkpoints import load_checkpoint, save_checkpoint
from helpers.data import BOS, TextError, TextLanguage, WordTokenizer, read_documents
from helpers.data import text as text_module
from helpers.data.tokenizer import UNK, pieces, visible
from helpers.models import AttnOnlyTransformer, HookedTransformerConfig

ENGLISH = (
    "The quick brown fox jumps over the lazy dog.\n    Indented line with  two spaces.\n"
    "def f(x):\n\treturn x == 1  # tab\n"
)


def test_pieces_join_back_to_the_text():
    assert "".join(pieces(ENGLISH)) == ENGLISH
    assert pieces("    if x:\n        return") == ["    ", "if", " x", ":", "\n        ", "return"]


@pytest.mark.parametrize("name", ["prose", "code"])
def test_shipped_corpora_decode_exactly(name):
    language = TextLanguage(name, {"prose": 1024, "code": 512}[name])
    documents = read_documents(name)
    assert len(documents) > 100 and all(text for _, text in documents)
    for _, text in documents[::37]:
        assert language.tokenizer.decode(language.tokenizer.encode(text)) == text
    assert UNK not in language.tokens()[0].tolist()[:200_000]  # plain ASCII: nothing unknown


def test_the_shipped_files_are_what_the_build_tool_writes():
    for name in ("prose", "code"):
        payload = json.loads(
            lzma.decompress((text_module.TEXT_DIR / f"{name}.json.xz").read_bytes())
        )
        assert payload["name"] == name and payload["python"] == "3.11.7"
    assert (text_module.TEXT_DIR / "LICENSE-PSF.txt").read_text().startswith("A. HISTORY")


def test_fit_is_deterministic_and_frequency_ordered():
    texts = [ENGLISH * 3, "the the the cat sat on the mat\n" * 5]
    a, b = WordTokenizer.fit(texts, 200), WordTokenizer.fit(list(reversed(texts)), 200)
    assert a.vocab == b.vocab and a.d_vocab <= 200
    assert a.vocab[:2] == ["<BOS>", "<UNK>"]
    words = [t for t in a.vocab[2:] if len(t) > 1]
    assert words[0] == " the"  # the most frequent piece of more than one character
    assert a.decode(a.encode(ENGLISH)) == ENGLISH


def test_characters_outside_the_alphabet_are_unknown_and_shown():
    tokenizer = WordTokenizer.fit(["abc abc abd"], 16)
    ids = tokenizer.encode("abz")
    assert ids.tolist()[-1] == UNK and tokenizer.decode(ids) == "ab\ufffd"
    assert tokenizer.encode("ab", bos=True)[0] == BOS


def test_labels_show_whitespace_and_are_distinct():
    tokenizer = WordTokenizer.fit([ENGLISH * 4], 64)
    labels = tokenizer.token_labels
    assert len(set(labels)) == len(labels)
    assert not any(c in label for label in labels for c in " \n\t")
    assert visible("\n" + " " * 12) == "↵·×12" and visible("\n    if") == "↵····if"
    assert visible(" the") == "·the"


def test_decode_refuses_ids_outside_the_vocabulary():
    tokenizer = WordTokenizer.fit([ENGLISH], 32)
    with pytest.raises(ValueError, match=r"token ids must be ints in \[0, "):
        tokenizer.decode([0, tokenizer.d_vocab])


def test_vocabularies_that_are_not_ours_are_refused():
    with pytest.raises(ValueError, match="starting with"):
        WordTokenizer(["a", "b"])
    with pytest.raises(ValueError, match="distinct"):
        WordTokenizer(["<BOS>", "<UNK>", "a", "a"])


@pytest.fixture(scope="module")
def code() -> TextLanguage:
    return TextLanguage("code", 512)


def test_windows_start_with_bos_and_come_from_one_document(code):
    generator = torch.Generator().manual_seed(1)
    windows = code.sample(16, 64, generator=generator)
    assert windows.shape == (16, 64) and (windows[:, 0] == BOS).all()
    assert (windows[:, 1:] != BOS).all()
    documents = code.documents()
    for window in windows[:4]:
        text = code.decode(window)
        assert any(text in document for document in documents)


def test_sampling_is_seeded(code):
    a = code.sample(4, 32, generator=torch.Generator().manual_seed(5))
    b = code.sample(4, 32, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_held_out_documents_are_every_tenth_and_disjoint(code):
    held = code.held_out()
    train_docs, held_docs = code.documents(), held.documents()
    every = read_documents("code")
    assert len(train_docs) + len(held_docs) == len(every)
    assert held_docs == [text for i, (_, text) in enumerate(every) if i % 10 == 9]
    assert held.vocab == code.vocab  # held-out text is read with the training tokens


def test_a_checkpoint_keeps_the_tokenizer(tmp_path, code):
    cfg = HookedTransformerConfig(n_layers=0, d_model=8, n_heads=0, d_head=1, n_ctx=16,
                                  d_vocab=code.d_vocab)  # fmt: skip
    path = save_checkpoint(tmp_path / "m.pt", AttnOnlyTransformer(cfg), code.to_dict(), {})
    loaded = load_checkpoint(path).language
    assert isinstance(loaded, TextLanguage) and loaded.vocab == code.vocab
    assert loaded.corpus == "code"


def test_windows_longer_than_every_document_are_refused_clearly(tmp_path):
    (tmp_path / "a.txt").write_text(("short line\n" * 3 + "\n") * 700)
    language = TextLanguage(tmp_path, 64)
    with pytest.raises(TextError, match="no document of the train split has the 4999 tokens"):
        language.sample(2, 5000)


# Your own text


def test_your_own_text_goes_through_the_same_path(tmp_path):
    (tmp_path / "book").mkdir()
    for i in range(3):
        (tmp_path / "book" / f"ch{i}.txt").write_text(f"Chapter {i}.\n" + ENGLISH * 120)
    (tmp_path / "book" / "notes.rst").write_text("not a .txt file")
    language = TextLanguage(tmp_path / "book", 128)
    documents = read_documents(tmp_path / "book")
    assert len(documents) >= 20  # three files cut at line ends, so that a tenth can be held out
    assert "".join(text for _, text in documents) == "".join(
        (tmp_path / "book" / f"ch{i}.txt").read_text() for i in range(3)
    )
    assert language.sample(2, 32).shape == (2, 32)
    assert language.held_out().sample(2, 32).shape == (2, 32)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda p: p / "missing.txt", FileNotFoundError, "neither a shipped corpus"),
        (lambda p: (p / "d").mkdir() or p / "d", TextError, "holds no .txt files"),
        (lambda p: (p / "e.txt").write_text("  \n\n") and p / "e.txt", TextError, "holds no text"),
        (
            lambda p: (p / "b.txt").write_bytes(b"PK\x03\x04\x00\x00" * 9000) and p / "b.txt",
            TextError,
            "is binary",
        ),  # fmt: skip
        (
            lambda p: (p / "l.txt").write_bytes("é".encode("latin-1") * 30000) and p / "l.txt",
            TextError,
            "is not UTF-8 text",
        ),  # fmt: skip
        (
            lambda p: (p / "s.txt").write_text("a few words\n" * 10) and p / "s.txt",
            TextError,
            "holds 120 characters of text; a model needs at least 20,000",
        ),  # fmt: skip
    ],
)
def test_text_that_cannot_be_trained_on_is_refused_clearly(tmp_path, make, error, message):
    with pytest.raises(error, match=message):
        read_documents(make(tmp_path))


def test_a_corpus_that_is_not_a_name_or_path_is_refused():
    with pytest.raises(TypeError, match="a corpus is one of"):
        read_documents(42)
    with pytest.raises(ValueError, match="split must be one of"):
        TextLanguage("code", 512, split="test")


# The authors' command that rebuilds the corpora


def test_build_corpora_selects_documents_as_documented(tmp_path):
    from tools import build_corpora

    lib = tmp_path / "Lib"
    for relative, source in {
        "pydoc_data/topics.py": "topics = {'b': 'Second  topic\\u2019s text', 'a': 'First\\n topic'}",
        "mod.py": '"""Module doc."""\ndef f():\n    """Function\n    doc."""\n',
        "pkg/__init__.py": "",
        "pkg/uni.py": '"""caf\u00e9"""\n',
        "test/test_mod.py": '"""A test."""\n',
        "encodings/cp1.py": '"""Codec doc."""\n',
        "bad.py": "def (:\n",
    }.items():
        (lib / relative).parent.mkdir(parents=True, exist_ok=True)
        (lib / relative).write_text(source, encoding="utf-8")
    corpora, left_out = build_corpora.build(lib)
    assert corpora["prose"] == [
        ["pydoc_data/topics.py#a", "First topic"],
        ["pydoc_data/topics.py#b", "Second topic's text"],
        ["encodings/cp1.py", "Codec doc."],
        ["mod.py", "Module doc. Function doc."],
    ]
    assert [name for name, _ in corpora["code"]] == ["mod.py"]
    assert left_out == {"prose": 1, "code": 2}  # uni.py's docstring; bad.py and uni.py


def test_the_repeat_probe_repeats_held_out_text(code):
    probe = code.repeat_probe(batch_size=6, length=30, repeats=2, seed=3)
    assert probe.shape == (6, 61) and (probe[:, 0] == BOS).all()
    assert torch.equal(probe[:, 1:31], probe[:, 31:])
    held = code.held_out().documents()
    assert all(any(code.decode(span) in d for d in held) for span in probe[:, 1:31])
    assert torch.equal(probe, code.repeat_probe(batch_size=6, length=30, repeats=2, seed=3))
