"""The course's trained models: how each file in `data/` is made, and loading them.

Each recipe names a model config, a language and a training config, all seeded, so
`python3 course.py checkpoints` rebuilds every checkpoint in `data/` from scratch (with chapter
05's recorded runs, `helpers.recordings`), and a notebook can retrain a model instead of loading
it (`retrain=True`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from helpers import evals
from helpers.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from helpers.data import (
    PROBE_LENGTH,
    BigramLanguage,
    CopyingLanguage,
    RepeatedSegmentLanguage,
    SkipTrigramLanguage,
    TextLanguage,
    induction_probe,
)
from helpers.models import AttnOnlyTransformer, HookedTransformerConfig, next_token_loss
from helpers.phase_change import icl_band_score, icl_positions
from helpers.train import Task, TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "data"


@dataclass(frozen=True)
class Recipe:
    description: str
    model: HookedTransformerConfig
    make_task: Callable[[], Task]
    training: TrainConfig
    # extra scores to record during training, besides the held-out loss
    evaluations: Callable[[], dict[str, Callable[[AttnOnlyTransformer], float]]] | None = None
    # False: too long to train in a notebook (chapter 06's two-layer model): rebuilt only by
    # `python3 course.py checkpoints NAME`; the tests retrain its first steps and compare
    live: bool = True


def _bigram_language() -> BigramLanguage:
    return BigramLanguage(n_states=26, scale=2.0, decay=0.75, seed=0)


def _bigram_model(d_model: int) -> HookedTransformerConfig:
    return HookedTransformerConfig(
        n_layers=0, d_model=d_model, n_heads=0, d_head=1, n_ctx=64, d_vocab=27, seed=0
    )


def _induction_language() -> RepeatedSegmentLanguage:
    return RepeatedSegmentLanguage(n_states=52, segment_len=(4, 12), seed=0)


def _induction_model(n_layers: int) -> HookedTransformerConfig:
    return HookedTransformerConfig(
        n_layers=n_layers, d_model=64, n_heads=4, d_head=16, n_ctx=32, d_vocab=53, seed=0
    )


# Loss on repeats falls to 0.25 x the loss on fresh tokens by step ~500 (BENCHMARKS.md times it);
# lr 3e-3 took ~700 steps, init std 0.02 sat on the plateau past 1500.
# The extra steps sharpen the heads (previous-token score 0.83 at step 1000, 0.98 at 1500).
_INDUCTION_TRAINING = TrainConfig(n_steps=1500, batch_size=64, lr=5e-3, seed=0, eval_every=50)


def _induction_evaluations() -> dict[str, Callable[[AttnOnlyTransformer], float]]:
    """Scores on the induction probe (50 sequences), recorded while training."""
    tokens = induction_probe(52, batch_size=50, seed=0)
    return {
        "repeat_loss_ratio": lambda m: evals.repeated_tokens_loss(m, tokens, PROBE_LENGTH).ratio,
        "max_previous_token_score": lambda m: float(
            evals.previous_token_scores(m, tokens)[0].max()
        ),
        "max_induction_score": lambda m: float(
            evals.induction_scores(m, tokens, PROBE_LENGTH)[-1].max()
        ),
    }


# Real text (chapter 06): the corpora and tokenizers of helpers.data.text
def _prose() -> TextLanguage:
    return TextLanguage("prose", d_vocab=1024, seed=0)


def _code() -> TextLanguage:
    return TextLanguage("code", d_vocab=512, seed=0)


REAL_TEXT_REPEAT = 30  # tokens of held-out text in each span of the natural-repeat probe


def _code_evaluations() -> dict[str, Callable[[AttnOnlyTransformer], float]]:
    """The two-layer code model's scores while training: induction on repeated held-out code
    (`TextLanguage.repeat_probe`) and on repeated uniformly random tokens, and the ICL score over
    bands of positions of held-out code (the single-position score is noisy on real text)."""
    language = _code()
    natural = language.repeat_probe(batch_size=50, length=REAL_TEXT_REPEAT, seed=0)
    uniform = induction_probe(language.d_vocab - 1, batch_size=50, seed=0)
    heldout = language.held_out().sample(64, 256, generator=torch.Generator().manual_seed(12345))
    early, late = icl_positions(heldout.shape[1])
    half_width = round(0.05 * heldout.shape[1])

    def icl_band(m: AttnOnlyTransformer) -> float:
        losses = next_token_loss(m(heldout), heldout, per_token=True)
        return icl_band_score(losses, early, late, half_width)

    return {
        "natural_repeat_ratio": lambda m: (
            evals.repeated_tokens_loss(m, natural, REAL_TEXT_REPEAT).ratio
        ),
        "max_natural_previous_token_score": lambda m: float(
            evals.previous_token_scores(m, natural)[0].max()
        ),
        "max_natural_prefix_matching": lambda m: float(
            evals.induction_scores(m, natural, REAL_TEXT_REPEAT)[-1].max()
        ),
        "uniform_repeat_ratio": lambda m: (
            evals.repeated_tokens_loss(m, uniform, PROBE_LENGTH).ratio
        ),
        "max_uniform_prefix_matching": lambda m: float(
            evals.induction_scores(m, uniform, PROBE_LENGTH)[-1].max()
        ),
        "icl_band": icl_band,
    }


_BIGRAM_TRAINING = TrainConfig(n_steps=1000, batch_size=128, lr=3e-2, seq_len=64, seed=0)

RECIPES: dict[str, Recipe] = {
    "copying_2l": Recipe(
        "two layers of two heads on the copying language: heads that copy earlier tokens (chapter 00)",
        HookedTransformerConfig(
            n_layers=2, d_model=32, n_heads=2, d_head=8, n_ctx=32, d_vocab=27, seed=0
        ),
        lambda: CopyingLanguage(n_states=26, k=4, seed=0),
        TrainConfig(n_steps=1000, batch_size=64, lr=1e-2, seed=0),
    ),
    "bigram_0l": Recipe(
        "zero-layer model, d_model=32 >= d_vocab=27, on the planted bigram language (chapter 01)",
        _bigram_model(32),
        _bigram_language,
        _BIGRAM_TRAINING,
    ),
    "bigram_0l_rank4": Recipe(
        "zero-layer model with d_model=4 < d_vocab: W_E @ W_U has rank at most 4 (chapter 01)",
        _bigram_model(4),
        _bigram_language,
        _BIGRAM_TRAINING,
    ),
    "skip_trigrams_1l": Recipe(
        "one layer of four heads on the planted skip-trigram language (chapter 02)",
        HookedTransformerConfig(
            n_layers=1, d_model=64, n_heads=4, d_head=16, n_ctx=24, d_vocab=43, seed=0
        ),
        lambda: SkipTrigramLanguage(seed=0),
        TrainConfig(n_steps=2000, batch_size=64, lr=3e-3, seed=0),
    ),
    "induction_2l": Recipe(
        "two layers of four heads on repeated segments over a bigram background: induction "
        "heads form (chapters 03-05)",
        _induction_model(n_layers=2),
        _induction_language,
        _INDUCTION_TRAINING,
        _induction_evaluations,
    ),
    "induction_1l": Recipe(
        "the one-layer control, same data and training as induction_2l (chapters 04-05)",
        _induction_model(n_layers=1),
        _induction_language,
        _INDUCTION_TRAINING,
        _induction_evaluations,
    ),
    "prose_0l": Recipe(
        "zero-layer model of the reference manual's prose and the docstrings (chapter 06)",
        HookedTransformerConfig(
            n_layers=0, d_model=128, n_heads=0, d_head=1, n_ctx=64, d_vocab=1024, seed=0
        ),
        _prose,
        TrainConfig(n_steps=1000, batch_size=32, lr=1e-2, seed=0),
    ),
    "prose_1l": Recipe(
        "one layer of eight heads on the same prose: copying heads and skip-trigrams (chapter 06)",
        HookedTransformerConfig(
            n_layers=1, d_model=128, n_heads=8, d_head=16, n_ctx=64, d_vocab=1024, seed=0
        ),
        _prose,
        TrainConfig(n_steps=1000, batch_size=32, lr=5e-3, warmup_steps=100, seed=0),
    ),
    # Two heads of 32 per layer in d_model 64: one head per layer, or d_model 32 (chapter 05's
    # fast recipe), never formed a previous-token head on code; the learning-rate warm-up keeps
    # the first large steps from wrecking the wide initialisation
    "code_2l": Recipe(
        "two layers of two heads on the standard library's code: induction heads on real "
        "text (chapter 06)",
        HookedTransformerConfig(
            n_layers=2,
            d_model=64,
            n_heads=2,
            d_head=32,
            n_ctx=256,
            d_vocab=512,
            initializer_range=0.15,
            seed=0,
        ),  # fmt: skip
        _code,
        TrainConfig(
            n_steps=8000,
            batch_size=32,
            lr=1e-2,
            warmup_steps=200,
            final_lr=1e-3,
            seed=0,
            eval_every=100,
        ),  # fmt: skip
        _code_evaluations,
        live=False,
    ),
}


def _check_name(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"no recipe named {name!r}; available: {', '.join(RECIPES)}")
    return RECIPES[name]


def _eval_loss(task: Task, n_ctx: int) -> Callable[[AttnOnlyTransformer], float]:
    """Loss on a fixed held-out batch, over transitions only (positions >= 1 predicting the next):
    fresh draws of a planted language, or windows of real text's held-out documents."""
    source = task.held_out() if isinstance(task, TextLanguage) else task
    tokens = source.sample(256, n_ctx, generator=torch.Generator().manual_seed(12345))

    def fn(model: AttnOnlyTransformer) -> float:
        return float(next_token_loss(model(tokens), tokens, per_token=True)[:, 1:].mean())

    return fn


def train_recipe(name: str, progress: bool = True) -> Checkpoint:
    """Train the named model from its seeds (BENCHMARKS.md times each recipe)."""
    recipe = _check_name(name)
    task = recipe.make_task()
    model = AttnOnlyTransformer(recipe.model)
    callbacks = {"eval_loss": _eval_loss(task, recipe.training.sequence_length(recipe.model))}
    if recipe.evaluations is not None:
        callbacks |= recipe.evaluations()
    history = train(model, task, recipe.training, callbacks, progress=progress)
    history["training"] = recipe.training.to_dict()
    return Checkpoint(model=model, task=task.to_dict(), history=history)


def train_text_model(
    language: TextLanguage, n_layers: int, n_steps: int | None = None, progress: bool = True
) -> AttnOnlyTransformer:
    """A zero- or one-layer model trained on your own text (`TextLanguage` of a file or a folder),
    with the shape and training of `prose_0l` or `prose_1l` (`n_steps` of them, by default as
    many) and the text's own vocabulary."""
    if n_layers not in (0, 1):
        raise ValueError(
            f"n_layers must be 0 or 1 (the shapes of prose_0l and prose_1l), got {n_layers!r}"
        )
    recipe = RECIPES[f"prose_{n_layers}l"]
    training = recipe.training
    if n_steps is not None:  # a shorter run warms up over the same share of its steps
        share = training.warmup_steps / training.n_steps
        training = replace(training, n_steps=n_steps, warmup_steps=int(share * n_steps))
    model = AttnOnlyTransformer(replace(recipe.model, d_vocab=language.d_vocab))
    train(model, language, training, progress=progress)
    return model


def checkpoint_path(name: str) -> Path:
    _check_name(name)
    return DATA_DIR / f"{name}.pt"


def load(name: str, retrain: bool = False, progress: bool = True) -> Checkpoint:
    """The named model: from `data/{name}.pt`, or trained afresh when `retrain=True`."""
    if retrain:
        return train_recipe(name, progress=progress)
    return load_checkpoint(checkpoint_path(name))


def build(names: list[str] | None = None, progress: bool = True) -> list[Path]:
    """Retrain and save the named checkpoints (all when `names` is None). `python -m
    helpers.recordings` (what `course.py checkpoints` runs) calls it for every file of `data/`
    that is a checkpoint."""
    paths = []
    for name in names or list(RECIPES):
        ckpt = train_recipe(name, progress=progress)
        path = save_checkpoint(checkpoint_path(name), ckpt.model, ckpt.task, ckpt.history)
        final = ckpt.history["eval_loss"][-1]
        print(f"{path.name}: eval loss {final:.4f} in {ckpt.history['seconds'][0]:.1f} s")
        paths.append(path)
    return paths
