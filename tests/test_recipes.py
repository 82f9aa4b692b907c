"""The stored checkpoints load, and retraining from the seeds reproduces the claims; chapter 05's
recording loads, is what training gives, and stands in for training where that is too slow."""

import math

import pytest
import torch

from helpers import circuits, evals, recipes
from helpers.checkpoints import load_checkpoint
from helpers.data import (
    BOS,
    PROBE_LENGTH,
    BigramLanguage,
    CopyingLanguage,
    SkipTrigramLanguage,
    induction_probe,
)
from helpers.evals import continuation_effect
from helpers.models import AttnOnlyTransformer, next_token_loss


@pytest.mark.parametrize("name", list(recipes.RECIPES))
def test_every_stored_checkpoint_loads_and_matches_its_recipe(name):
    ckpt = recipes.load(name)
    assert ckpt.cfg == recipes.RECIPES[name].model
    assert ckpt.history["training"] == recipes.RECIPES[name].training.to_dict()
    assert ckpt.language.d_vocab == ckpt.cfg.d_vocab  # the planted truth is there
    assert ckpt.language.to_dict().keys() == ckpt.task.keys()
    assert len(ckpt.history["loss"]) == recipes.RECIPES[name].training.n_steps


def _bigram_claims(ckpt) -> tuple[float, float]:
    lang = BigramLanguage.from_dict(ckpt.task)
    W = circuits.row_centred(circuits.direct_path(ckpt.model)[1:, 1:])
    r = circuits.pearson(W, circuits.row_centred(lang.log_probs()[1:, 1:]))
    test = lang.sample(1000, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        loss = next_token_loss(ckpt.model(test), test, per_token=True)[:, 1:].mean().item()
    return r, loss - lang.entropy_rate()


@pytest.mark.slow  # retrains a model: run by .ci/run (course.py test -m slow)
def test_retraining_bigram_model_reproduces_chapter_01_claims_deterministically():
    a = recipes.load("bigram_0l", retrain=True, progress=False)
    b = recipes.train_recipe("bigram_0l", progress=False)
    assert torch.equal(a.model.W_E, b.model.W_E) and a.history["loss"] == b.history["loss"]
    r, gap = _bigram_claims(a)
    assert r >= 0.95 and abs(gap) <= 0.05
    stored_r, stored_gap = _bigram_claims(recipes.load("bigram_0l"))
    assert math.isclose(r, stored_r, abs_tol=0.01) and math.isclose(gap, stored_gap, abs_tol=0.01)


@pytest.mark.slow  # retrains a model: run by .ci/run (course.py test -m slow)
def test_retraining_copying_model_learns_to_copy():
    ckpt = recipes.train_recipe("copying_2l", progress=False)
    lang = CopyingLanguage.from_dict(ckpt.task)
    test = lang.sample(500, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        late = next_token_loss(ckpt.model(test), test, per_token=True)[:, 16:].mean().item()
    assert late < math.log(26) - 1.0  # far better than ignoring the context


@pytest.mark.slow  # retrains a model: run by .ci/run (course.py test -m slow)
def test_build_writes_loadable_files(tmp_path, monkeypatch):
    monkeypatch.setattr(recipes, "DATA_DIR", tmp_path)
    (path,) = recipes.build(["bigram_0l_rank4"], progress=False)
    assert path == tmp_path / "bigram_0l_rank4.pt"
    assert load_checkpoint(path).cfg.d_model == 4


def test_unknown_recipe_names_the_choices():
    with pytest.raises(
        ValueError, match="no recipe named 'bigram'; available: copying_2l, bigram_0l"
    ):
        recipes.load("bigram")


@pytest.mark.slow  # retrains a model: run by .ci/run (course.py test -m slow)
def test_retraining_skip_trigram_model_reproduces_chapter_02_claims():
    ckpt = recipes.train_recipe("skip_trigrams_1l", progress=False)
    model, language = ckpt.model, SkipTrigramLanguage.from_dict(ckpt.task)
    recovered = 0
    for source, dest, out in language.rule_ids:
        recovered += any(
            dest in d and out in o
            for d, o in (
                circuits.skip_trigrams(model, 0, h, source, 3, ignore=[BOS]) for h in range(4)
            )
        )
    assert recovered / len(language.rule_ids) >= 0.9
    assert max(circuits.copying_score(model, 0, h) for h in range(4)) >= 0.7
    assert continuation_effect(model, language, "in", "bay").mean_change > 0


@pytest.mark.slow  # retrains a model: run by .ci/run (course.py test -m slow)
def test_retraining_induction_models_reproduces_chapter_04_claims():
    two = recipes.train_recipe("induction_2l", progress=False).model
    one = recipes.train_recipe("induction_1l", progress=False).model
    tokens = induction_probe(52)
    assert evals.repeated_tokens_loss(two, tokens, PROBE_LENGTH).ratio <= 0.25
    assert evals.repeated_tokens_loss(one, tokens, PROBE_LENGTH).ratio >= 0.6
    assert evals.previous_token_scores(two, tokens)[0].max() >= 0.8
    assert evals.induction_scores(two, tokens, PROBE_LENGTH)[1].max() >= 0.6


# Real text (chapter 06)


def test_a_model_of_your_own_text_trains_on_its_vocabulary(tmp_path):
    from helpers.data import TextLanguage

    for i in range(3):
        (tmp_path / f"part{i}.txt").write_text("the cat sat on the mat. " * 400 + f"part {i}\n")
    language = TextLanguage(tmp_path, 64)
    for n_layers in (0, 1):
        model = recipes.train_text_model(language, n_layers, n_steps=3, progress=False)
        assert model.cfg.d_vocab == language.d_vocab and model.cfg.n_layers == n_layers
    with pytest.raises(ValueError, match="n_layers must be 0 or 1"):
        recipes.train_text_model(language, 2)


@pytest.mark.slow  # trains the first 100 steps of a model that took half an hour
def test_retraining_the_code_model_reproduces_its_first_steps():
    """code_2l is too long to retrain in the suite: its first 100 steps are retrained and compared
    with the checkpoint's history (same seeds, same machine type: equal to float rounding)."""
    from helpers.train import train

    recipe = recipes.RECIPES["code_2l"]
    stored = recipes.load("code_2l").history
    model = AttnOnlyTransformer(recipe.model)
    history = train(model, recipe.make_task(), recipe.training, stop_when=lambda h: True,
                    progress=False)  # fmt: skip
    steps = len(history["loss"])
    assert steps == recipe.training.eval_every
    assert history["loss"] == pytest.approx(stored["loss"][:steps], rel=1e-4)
