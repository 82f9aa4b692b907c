import re
import threading

import pytest
import torch

from helpers.data import BigramLanguage
from helpers.models import next_token_loss
from helpers.train import TrainConfig, TrainingDiverged, train
from tests.conftest import make_model


def _run(seed: int = 0, model_seed: int = 0):
    model = make_model(n_layers=1, d_vocab=7, seed=model_seed, initializer_range=None)
    lang = BigramLanguage(n_states=6, seed=0)
    cfg = TrainConfig(n_steps=30, batch_size=16, lr=1e-2, seed=seed, eval_every=10)
    history = train(model, lang, cfg, {"double": lambda m: 2.0}, progress=False)
    return model, history


def test_training_is_deterministic_from_the_seeds_and_leaves_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    a, ha = _run()
    b, hb = _run()
    assert torch.equal(torch.rand(1), expected)
    assert ha["loss"] == hb["loss"]
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    c, hc = _run(seed=1)
    assert hc["loss"] != ha["loss"]


def test_loss_decreases_and_history_is_recorded():
    _, history = _run()
    assert len(history["loss"]) == 30
    assert sum(history["loss"][-5:]) < sum(history["loss"][:5])
    assert history["eval_step"] == [0, 10, 20, 30] and history["double"] == [2.0] * 4


def test_next_token_loss_by_hand():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = 10.0  # position 0 confidently predicts token 2
    tokens = torch.tensor([[0, 2, 1]])
    per_token = next_token_loss(logits, tokens, per_token=True)
    assert per_token.shape == (1, 2)
    assert per_token[0, 0] < 1e-3 and torch.isclose(per_token[0, 1], torch.log(torch.tensor(4.0)))


def test_bad_training_setups_are_clear_errors():
    with pytest.raises(ValueError, match="n_steps must be a positive int, got 0"):
        TrainConfig(n_steps=0, batch_size=2)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        TrainConfig(n_steps=1, batch_size=2, lr=0)
    model = make_model(d_vocab=7)
    with pytest.raises(ValueError, match="task has d_vocab=9 but the model 7"):
        train(
            model, BigramLanguage(n_states=8), TrainConfig(n_steps=1, batch_size=2), progress=False
        )
    with pytest.raises(ValueError, match="seq_len=20 is longer than the model's n_ctx=10"):
        train(
            model,
            BigramLanguage(n_states=6),
            TrainConfig(n_steps=1, batch_size=2, seq_len=20),
            progress=False,
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seq_len": 1}, "seq_len must be None .* or an int >= 2"),
        ({"seq_len": 0}, r"seq_len must be None .* or an int >= 2 .*, got 0"),
        ({"lr": float("inf")}, "lr must be a finite number > 0, got inf"),
        ({"lr": float("nan")}, "lr must be a finite number > 0"),
        ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0"),
        ({"betas": (0.9, 1.0)}, "betas must be two numbers in"),
        ({"warmup_steps": 1}, r"warmup_steps must be an int in \[0, n_steps=1\), got 1"),
        ({"warmup_steps": -2}, "warmup_steps must be an int in"),
        ({"final_lr": -1e-3}, "final_lr must be None or a finite number >= 0"),
    ],
)
def test_configs_that_would_train_on_garbage_are_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(n_steps=1, batch_size=2, **kwargs)


def test_the_learning_rate_warms_up_then_holds_or_falls():
    constant = TrainConfig(n_steps=10, batch_size=2, lr=1e-2, warmup_steps=4)
    assert [constant.lr_at(s) for s in range(6)] == pytest.approx(
        [2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2]
    )
    falling = TrainConfig(n_steps=10, batch_size=2, lr=1e-2, warmup_steps=4, final_lr=1e-3)
    assert falling.lr_at(4) == pytest.approx(1e-2) and falling.lr_at(9) == pytest.approx(1e-3)
    assert TrainConfig(n_steps=3, batch_size=2).lr_at(2) == 1e-3  # no schedule: the lr


def test_training_follows_the_schedule():
    seen = []
    model = make_model(d_vocab=7)
    cfg = TrainConfig(n_steps=6, batch_size=2, lr=1e-2, warmup_steps=3, final_lr=0.0)
    optimizer_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return optimizer_step(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.AdamW, "step", spy)
        train(model, BigramLanguage(n_states=6), cfg, progress=False)
    assert seen == pytest.approx([cfg.lr_at(s) for s in range(6)])
    assert seen[-1] == 0.0 and seen[2] == pytest.approx(1e-2)


def test_a_schedule_is_recorded_only_when_there_is_one():
    assert "warmup_steps" not in TrainConfig(n_steps=2, batch_size=2).to_dict()
    scheduled = TrainConfig(n_steps=9, batch_size=2, warmup_steps=2, final_lr=1e-4).to_dict()
    assert scheduled["warmup_steps"] == 2 and scheduled["final_lr"] == 1e-4


def test_a_callback_may_not_overwrite_the_history():
    model = make_model(d_vocab=7)
    with pytest.raises(ValueError, match=r"callback names \['loss'\] are taken"):
        train(model, BigramLanguage(n_states=6), TrainConfig(n_steps=2, batch_size=2),
              {"loss": lambda m: 0.0}, progress=False)  # fmt: skip


def test_a_diverging_run_stops_with_a_clear_error_and_keeps_its_history():
    model = make_model(d_vocab=7, initializer_range=1.0)
    cfg = TrainConfig(n_steps=50, batch_size=8, lr=1e6)
    with pytest.raises(
        TrainingDiverged, match=r"the loss became (nan|inf) at step \d+ .*Lower the"
    ) as info:
        train(model, BigramLanguage(n_states=6), cfg, progress=False)
    assert len(info.value.history["loss"]) >= 1


def test_training_runs_on_one_thread_and_gives_the_callers_threads_back():
    from helpers.train import one_thread

    before = torch.get_num_threads()
    seen = []
    model = make_model(n_layers=1)
    task = BigramLanguage(n_states=model.cfg.d_vocab - 1)
    cfg = TrainConfig(n_steps=2, batch_size=2, eval_every=1)
    train(model, task, cfg, {"threads": lambda m: seen.append(torch.get_num_threads()) or 0.0},
          progress=False)  # fmt: skip
    assert seen and set(seen) == {1} and torch.get_num_threads() == before
    with pytest.raises(RuntimeError), one_thread():
        raise RuntimeError  # an error inside still gives the threads back
    assert torch.get_num_threads() == before


def test_one_thread_keeps_each_python_threads_own_count():
    """Torch's thread count belongs to the Python thread that sets it: a block left first in one
    thread and last in another gives each thread its own count back."""
    from helpers.train import one_thread

    before = torch.get_num_threads()
    seen = {}
    inside, leave = threading.Event(), threading.Event()

    def worker():
        torch.set_num_threads(2)
        with one_thread():
            seen["worker inside"] = torch.get_num_threads()
            inside.set()
            leave.wait()
        seen["worker after"] = torch.get_num_threads()

    try:
        with one_thread():
            other = threading.Thread(target=worker)
            other.start()
            inside.wait()
            with one_thread():  # nested
                seen["main inside"] = torch.get_num_threads()
        seen["main after"] = torch.get_num_threads()  # left first
        leave.set()
        other.join()
    finally:
        torch.set_num_threads(before)  # also the count new threads start from
    assert seen == {"worker inside": 1, "main inside": 1, "main after": before, "worker after": 2}


def test_training_shows_a_bar_with_the_time_left(capsys):
    model = make_model(n_layers=1)
    train(
        model, BigramLanguage(n_states=model.cfg.d_vocab - 1), TrainConfig(n_steps=3, batch_size=2)
    )
    bar = capsys.readouterr().err  # tqdm writes to stderr outside a notebook: [elapsed<remaining]
    assert re.search(r"training: .*\| 0/3 \[00:00<\?", bar)  # total known: a time left
