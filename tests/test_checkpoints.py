import os
import pickle

import pytest
import torch

from helpers.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from tests.conftest import make_model, random_tokens


@pytest.fixture
def saved(tmp_path):
    model = make_model()
    task = {"name": "bigram", "transition_matrix": torch.eye(3), "entropy_rate": 0.5}
    history = {"loss": [3.0, 2.0], "eval_step": [0]}
    return save_checkpoint(tmp_path / "m.pt", model, task, history), model


def test_round_trip(saved):
    path, model = saved
    ckpt = load_checkpoint(path)
    tokens = random_tokens(model)
    assert ckpt.cfg == model.cfg
    assert torch.equal(ckpt.model(tokens), model(tokens))
    assert torch.equal(ckpt.task["transition_matrix"], torch.eye(3))
    assert ckpt.history["loss"] == [3.0, 2.0]


def test_missing_file_says_how_to_regenerate(tmp_path):
    with pytest.raises(FileNotFoundError, match="python3 course.py checkpoints"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file(saved):
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a PyTorch checkpoint"):
        load_checkpoint(path)


def test_weights_from_another_config(saved, tmp_path):
    path, _ = saved
    payload = torch.load(path, weights_only=True)
    payload["state_dict"] = make_model(d_model=8).state_dict()
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(
        CheckpointError,
        match=r"do not belong to its config .*embed.W_E has shape \(13, 8\), the config implies \(13, 16\)",
    ):
        load_checkpoint(tmp_path / "other.pt")
    payload["state_dict"] = make_model(n_layers=1).state_dict()
    torch.save(payload, tmp_path / "fewer.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \['blocks.1.attn.W_K'"):
        load_checkpoint(tmp_path / "fewer.pt")


def test_foreign_files(tmp_path):
    torch.save({"model": make_model().state_dict()}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a course checkpoint: expected format"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save(make_model().state_dict(), tmp_path / "bare.pt")  # a bare state dict
    with pytest.raises(CheckpointError, match="not a course checkpoint"):
        load_checkpoint(tmp_path / "bare.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="truncated or not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "text.pt")


def test_bad_config_inside(saved, tmp_path):
    path, _ = saved
    payload = torch.load(path, weights_only=True)
    payload["config"]["n_heads"] = -3
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="invalid config: n_heads must be an int >= 0"):
        load_checkpoint(tmp_path / "bad.pt")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(saved, tmp_path):
    path, _ = saved
    payload = torch.load(path, weights_only=True)
    marker = str(tmp_path / "PWNED")
    payload["task"]["evil"] = _Exploit(marker)
    torch.save(payload, tmp_path / "evil.pt", pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refused to load .*nothing was executed"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not os.path.exists(marker)


def test_saving_is_atomic(saved):
    path, _ = saved
    assert not path.with_suffix(".pt.tmp").exists()


def test_a_directory_is_not_called_missing(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_random_bytes_are_called_corrupt_not_code(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(CheckpointError, match="truncated or not a PyTorch checkpoint") as info:
        load_checkpoint(path)
    assert "run code" not in str(info.value)


def _write(payload, path):
    torch.save(payload, path)
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p.update(state_dict=[1, 2, 3]), "'state_dict' must be a dict, got list"),
        (
            lambda p: p["state_dict"].update({"embed.W_E": [[1.0]]}),
            r"non-tensors under \['embed.W_E'\]",
        ),
        (lambda p: p.update(config="n_layers=2"), "'config' must be a dict, got str"),
        (lambda p: p.update(task=None), "'task' must be a dict, got NoneType"),
        (
            lambda p: p["state_dict"]["unembed.W_U"].fill_(float("nan")),
            "unembed.W_U holds NaN or infinite",
        ),
        (
            lambda p: p["state_dict"]["embed.W_E"].__setitem__((0, 0), float("inf")),
            "embed.W_E holds NaN",
        ),
    ],
)
def test_every_malformed_payload_is_a_checkpoint_error(saved, tmp_path, edit, message):
    path, _ = saved
    payload = torch.load(path, weights_only=True)
    edit(payload)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(_write(payload, tmp_path / "edited.pt"))


def test_sizes_are_checked_before_anything_is_allocated(saved, tmp_path, monkeypatch):
    import helpers.checkpoints as checkpoints

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the checkpoint was validated")

    monkeypatch.setattr(checkpoints, "AttnOnlyTransformer", no_model)
    path, _ = saved
    payload = torch.load(path, weights_only=True)
    payload["config"]["d_vocab"] = 2_000_000  # a small file claiming a huge vocabulary
    with pytest.raises(CheckpointError, match="parameters, more than the 50,000,000"):
        load_checkpoint(_write(payload, tmp_path / "huge.pt"))
    payload["config"]["d_vocab"] = 20_000  # under the cap, but not what the weights hold
    with pytest.raises(
        CheckpointError, match=r"embed.W_E has shape \(13, 16\), the config implies \(20000, 16\)"
    ):
        load_checkpoint(_write(payload, tmp_path / "big.pt"))


def test_a_checkpoint_gives_its_language(tmp_path):
    from helpers.data import BigramLanguage

    language = BigramLanguage(n_states=5, seed=3)
    model = make_model(d_vocab=6)
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "b.pt", model, language.to_dict(), {}))
    assert isinstance(ckpt.language, BigramLanguage)
    assert torch.equal(ckpt.language.transition_matrix, language.transition_matrix)
