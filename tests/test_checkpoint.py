import os
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from cnnclinic.errors import UserError
from cnnclinic.training import checkpoint
from cnnclinic.training.checkpoint import (
    NonFiniteWeightsError,
    capture_rng_state,
    load_state,
    load_weights,
    restore_rng_state,
    save_state,
    save_weights,
)

CLASSES = ["cod", "eel"]


def test_weights_round_trip_with_class_names(tmp_path):
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    path = tmp_path / "best.safetensors"
    save_weights(model, path, class_names=CLASSES, extra={"epoch": 3})
    tensors, metadata = load_weights(path)
    assert metadata == {"class_names": CLASSES, "epoch": 3}
    assert set(tensors) == set(model.state_dict())
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensors[name], tensor)


def test_non_finite_weights_are_refused_and_last_good_file_is_kept(tmp_path):
    model = nn.Linear(3, 2)
    path = tmp_path / "last.safetensors"
    save_weights(model, path, class_names=CLASSES)
    good = path.read_bytes()
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="weight"):
        save_weights(model, path, class_names=CLASSES)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteWeightsError):
        save_weights(model, path, class_names=CLASSES)
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["last.safetensors"]


def test_a_crash_during_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "last.state.pt"
    save_state({"epoch": 1}, path)
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_state({"epoch": 2}, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last.state.pt"]
    monkeypatch.undo()
    assert load_state(path)["epoch"] == 1


def test_state_round_trip_with_optimizer_and_rng(tmp_path):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=10)
    path = tmp_path / "last.state.pt"
    save_state(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": 2,
         "best_val_loss": float("inf"), "rng": capture_rng_state()},
        path,
    )
    state = load_state(path)
    assert state["epoch"] == 2 and state["best_val_loss"] == float("inf")
    restored = torch.optim.Adam(nn.Linear(3, 2).parameters(), lr=0.1)
    restored.load_state_dict(state["optimizer"])
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_rng_state_restores_python_numpy_and_torch_streams():
    saved = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.random(), np.random.rand(), torch.rand(1)
    restore_rng_state(saved)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "last.state.pt"
    torch.save({"format": "cnnclinic-state", "payload": Evil()}, path)
    with pytest.raises(UserError, match="code"):
        load_state(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"hello world", b"PK\x03\x04 not really a zip"])
def test_garbage_state_file_is_a_user_error(tmp_path, content):
    path = tmp_path / "last.state.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="not a cnnclinic training state"):
        load_state(path)


def test_foreign_files_are_not_cnnclinic_checkpoints(tmp_path):
    foreign_state = tmp_path / "other.pt"
    torch.save({"epoch": 1}, foreign_state)
    with pytest.raises(UserError, match="not a cnnclinic training state"):
        load_state(foreign_state)

    foreign_weights = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, foreign_weights)
    with pytest.raises(UserError, match="not a cnnclinic checkpoint"):
        load_weights(foreign_weights)

    text = tmp_path / "notes.safetensors"
    text.write_text("just some text, long enough to have eight bytes")
    with pytest.raises(UserError, match="not a safetensors file"):
        load_weights(text)

    with pytest.raises(UserError, match="not found"):
        load_weights(tmp_path / "missing.safetensors")
