"""Chapter 06's choice of tokenizer, measured: the course's word-or-characters tokenizer against a
byte-level BPE (Hugging Face `tokenizers`, GPT-2's kind), both with 1,024 tokens on the prose
corpus, each under prose_1l's model and training (same seeds).

    python tools/benchmark.py tokenizers   # installs tokenizers into .venv-tokenizers/, runs this

It reports, for each: how many tokens are readable words (a space and a word of the corpus seen
at least 20 times, the token itself seen at least 100 times), how many of the 20 strongest
skip-trigrams among readable tokens raise their output by more than 1 nat when probed in held-out
contexts (chapter 06's claim 34), the heads' copying scores, tokens per character and the held-out
loss per character. `tokenizers` is not a course dependency: only this measurement needs it.
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from helpers import circuits, recipes  # noqa: E402
from helpers.data import BOS  # noqa: E402
from helpers.data.text import _select, read_documents  # noqa: E402
from helpers.evals import skip_trigram_effect  # noqa: E402
from helpers.models import AttnOnlyTransformer, next_token_loss  # noqa: E402
from helpers.train import train  # noqa: E402

MIN_WORD, MIN_TOKEN, N_STRONGEST = 20, 100, 20


class Windows:
    """Training windows of BOS + n_ctx - 1 tokens from one document at a time, as TextLanguage
    cuts them, for token ids made by any tokenizer."""

    def __init__(self, documents: list[list[int]], d_vocab: int):
        self.d_vocab = d_vocab
        ids = [torch.tensor(d, dtype=torch.int64) for d in documents]
        self.flat = torch.cat(ids)
        self.starts = torch.tensor([0, *map(len, ids)]).cumsum(0)

    def sample(self, batch_size: int, n_ctx: int, generator=None) -> torch.Tensor:
        span = n_ctx - 1
        n_windows = ((self.starts[1:] - self.starts[:-1]) - span + 1).clamp(min=0)
        cumulative = n_windows.cumsum(0)
        pick = torch.randint(int(cumulative[-1]), (batch_size,), generator=generator)
        doc = torch.searchsorted(cumulative, pick, right=True)
        first = self.starts[doc] + pick - (cumulative[doc] - n_windows[doc])
        windows = self.flat[first[:, None] + torch.arange(span)]
        return torch.cat([torch.full((batch_size, 1), BOS), windows], 1)

    def to_dict(self) -> dict:
        return {}


def measure(name, model, train_windows, held, text_of, words) -> None:
    counts = torch.bincount(train_windows.flat, minlength=model.cfg.d_vocab)

    def readable(token: int) -> bool:
        text = text_of(token)
        return text.startswith(" ") and text.strip() in words and counts[token] >= MIN_TOKEN

    ignore = [t for t in range(model.cfg.d_vocab) if t == BOS or not readable(t)]
    strongest = circuits.strongest_skip_trigrams(model, 0, N_STRONGEST, ignore=ignore)
    generator = torch.Generator().manual_seed(0)
    contexts = held.sample(200, 24, generator)[:, 1:]
    where = torch.randint(21, (200,), generator=generator)
    controls = [t for t in counts.argsort(descending=True).tolist() if readable(t)][20:26]
    acting, examples = 0, []
    for _, _, triple in strongest:
        effect = skip_trigram_effect(model, contexts, where, *triple).mean_logit_change
        others = [w for w in controls if w != triple[0]][:5]
        control = sum(skip_trigram_effect(model, contexts, where, w, *triple[1:]).mean_logit_change
                      for w in others) / len(others)  # fmt: skip
        acting += effect > 1 and abs(control) <= 0.3
        if len(examples) < 3 and effect > 1:
            s, d, o = (text_of(t).strip() for t in triple)
            examples.append(f"{s} … {d} → {o} ({effect:+.1f})")
    copying = sorted((circuits.copying_score(model, 0, h) for h in range(model.cfg.n_heads)),
                     reverse=True)  # fmt: skip
    tokens = held.sample(256, model.cfg.n_ctx, torch.Generator().manual_seed(12345))
    with torch.no_grad():
        nats = next_token_loss(model(tokens), tokens, per_token=True)[:, 1:].sum()
    characters = sum(len("".join(text_of(t) for t in row[2:].tolist())) for row in tokens)
    n_tokens = len(train_windows.flat)
    print(
        f"  {name}: {model.cfg.d_vocab - len(ignore)} readable tokens; {acting} of "
        f"{len(strongest)} strongest readable skip-trigrams act (> 1 nat, control within 0.3), "
        f"e.g. {'; '.join(examples)}"
    )
    print(
        f"    copying scores {', '.join(f'{c:.2f}' for c in copying)}; {n_tokens:,} training "
        f"tokens; held-out loss {float(nats) / characters:.3f} nats per character"
    )


def main() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    documents = read_documents("prose")
    train_docs, held_docs = _select(documents, "train"), _select(documents, "held-out")
    counted = Counter(w for t in train_docs for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", t))
    words = {w for w, n in counted.items() if n >= MIN_WORD and len(w) >= 2}
    recipe = recipes.RECIPES["prose_1l"]
    print(
        f"1,024-token tokenizers on the prose corpus, each under {recipe.description.split(':')[0]}"
    )

    ours = recipes.load("prose_1l").language
    tokenizer = ours.tokenizer
    start = time.perf_counter()
    model = recipes.load("prose_1l").model
    measure("word-or-characters (the course's; the shipped prose_1l)", model,
            Windows([tokenizer.encode(t).tolist() for t in train_docs], ours.d_vocab),
            Windows([tokenizer.encode(t).tolist() for t in held_docs], ours.d_vocab),
            lambda t: tokenizer.vocab[t], words)  # fmt: skip

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(train_docs, trainers.BpeTrainer(
        vocab_size=ours.d_vocab - 1, special_tokens=["<BOS>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    d_vocab = bpe.get_vocab_size()
    train_windows = Windows([e.ids for e in bpe.encode_batch(train_docs)], d_vocab)
    held = Windows([e.ids for e in bpe.encode_batch(held_docs)], d_vocab)
    model = AttnOnlyTransformer(replace(recipe.model, d_vocab=d_vocab))
    start = time.perf_counter()
    train(model, train_windows, recipe.training, progress=False)
    print(f"  (the BPE model trained in {time.perf_counter() - start:.0f} s)")
    measure(f"byte-level BPE (tokenizers {sys.modules['tokenizers'].__version__})", model,
            train_windows, held, lambda t: bpe.decode([t]), words)  # fmt: skip


if __name__ == "__main__":
    main()
