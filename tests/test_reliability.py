"""Nothing lost: SIGKILL at random moments, a loss that goes NaN, a disk that fills up, untrusted checkpoints."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console

from cnnclinic.config import build_config
from cnnclinic.errors import UserError
from cnnclinic.training import trainer as trainer_module
from cnnclinic.training.checkpoint import load_state, load_weights
from cnnclinic.training.trainer import Callback, Trainer, load_trained_model, train

COMMAND = [sys.executable, "-m", "cnnclinic.cli"]
# A few seconds per run on two cores; hflip and a cosine schedule make the RNG and scheduler state matter.
CRASH_RUN = {
    "data.image_size": 32,
    "data.augment.hflip": True,
    "model.depth": 2,
    "model.width": 8,
    "model.head": [16],
    "train.batch_size": 16,
    "train.lr": 0.01,
    "train.schedule": "cosine",
    "train.epochs": 8,
    "train.deterministic": True,
}


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def read_records(path: Path) -> list[dict]:
    """Whole JSON lines of a log; a torn last line (a crash mid-append) is ignored."""
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def _kill_during_epoch(process: subprocess.Popen, run: Path, after_epoch: int, fraction: float) -> None:
    """SIGKILL ``process`` ``fraction`` of an epoch after it wrote the metrics of ``after_epoch``."""
    deadline = time.monotonic() + 300
    while len(read_records(run / "metrics.jsonl")) < after_epoch:
        assert process.poll() is None, f"the run ended before epoch {after_epoch}: {process.stderr.read()}"
        assert time.monotonic() < deadline, "the run is too slow"
        time.sleep(0.01)
    time.sleep(fraction * read_records(run / "metrics.jsonl")[-1]["seconds"])
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the kill landed after the run had finished"


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(fish_dir: Path, tmp_path: Path) -> None:
    cfg = build_config(overrides={"data.source": str(fish_dir), **CRASH_RUN})
    uninterrupted = train(cfg, tmp_path / "uninterrupted", console=quiet(), report=False)

    run = tmp_path / "killed"
    settings = [arg for key, value in CRASH_RUN.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    start = [*COMMAND, "train", "--data", str(fish_dir), "--out", str(run), *settings]
    resume = [*COMMAND, "train", "--resume", str(run)]
    rng = random.Random(7)
    for kill in range(3):
        # Epochs already on disk (possibly ahead of the checkpoint) must not trigger this kill.
        after_epoch = len(read_records(run / "metrics.jsonl")) + rng.randint(1, 2)
        process = subprocess.Popen(
            start if kill == 0 else resume, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            _kill_during_epoch(process, run, after_epoch, fraction=rng.random())
        finally:
            process.kill()
            process.stderr.close()
    # Kills 2 and 3 hit `--resume` processes; the last resume runs in-process (no start-up, no report).
    train(cfg, run, console=quiet(), resume=True, report=False)

    expected, _ = load_weights(tmp_path / "uninterrupted" / "checkpoints" / "last.safetensors")
    got, metadata = load_weights(run / "checkpoints" / "last.safetensors")
    assert metadata["epoch"] == 8
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name  # bit for bit
    # Every epoch's metrics line exactly once, with the uninterrupted run's numbers.
    metrics = read_records(run / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == list(range(1, 9))
    assert [{k: v for k, v in m.items() if k != "seconds"} for m in metrics] == [
        {k: v for k, v in m.items() if k != "seconds"} for m in uninterrupted.history
    ]
    assert read_records(run / "steps.jsonl") == read_records(tmp_path / "uninterrupted" / "steps.jsonl")
    assert read_records(run / "layer_stats.jsonl") == read_records(tmp_path / "uninterrupted" / "layer_stats.jsonl")
    leftovers = [p.name for p in [*run.glob(".*.tmp"), *(run / "checkpoints").glob(".*.tmp")]]
    assert leftovers == []


def test_a_torn_metrics_line_is_dropped_on_resume_and_the_epoch_is_trained_again(
    fish_dir: Path, tmp_path: Path
) -> None:
    cfg = build_config(
        overrides={"data.source": str(fish_dir), **CRASH_RUN, "train.epochs": 2, "doctor.enabled": False}
    )
    train(cfg.with_overrides({"train.epochs": 1}), tmp_path, console=quiet(), report=False)
    # A crash in the middle of appending epoch 2's line (after its checkpoint was not yet written).
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"epoch": 2, "step": 16, "train_lo')
    resumed = train(cfg, tmp_path, console=quiet(), resume=True, report=False)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert [m["epoch"] for m in resumed.history] == [1, 2]


class RaiseLearningRate(Callback):
    """After epoch 1 the learning rate jumps a billion-fold: the weights overflow during epoch 2."""

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        if metrics["epoch"] == 1:
            for group in trainer.optimizer.param_groups:
                group["lr"] = 1e9


def test_a_loss_gone_nan_stops_with_exploding_gradient_and_keeps_the_last_good_checkpoint(
    fish_dir: Path, tmp_path: Path
) -> None:
    cfg = build_config(overrides={"data.source": str(fish_dir), **CRASH_RUN, "train.epochs": 4,
                                  "train.optimizer": "sgd", "train.schedule": "constant", "model.batchnorm": False})
    result = train(cfg, tmp_path, console=quiet(), callbacks=[RaiseLearningRate()], report=False)

    assert [m["epoch"] for m in result.history] == [1]
    assert result.stop_reason is not None
    exploding = [f for f in result.findings if f.symptom == "exploding_gradient"]
    assert exploding and exploding[0].severity == "critical" and exploding[0].epoch == 2
    diagnosis = json.loads((tmp_path / "diagnosis.json").read_text())
    assert "exploding_gradient" in [f["symptom"] for f in diagnosis["findings"]]
    for name in ("best", "last"):
        tensors, metadata = load_weights(tmp_path / "checkpoints" / f"{name}.safetensors")
        assert metadata["epoch"] == 1
        assert all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())
    assert load_state(tmp_path / "checkpoints" / "last.state.pt")["epoch"] == 1
    model = load_trained_model(tmp_path, "last").model
    assert bool(torch.isfinite(model(torch.zeros(2, 3, 32, 32))).all())


def test_a_disk_that_fills_up_mid_run_is_one_line_and_resume_finishes(
    fish_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = build_config(overrides={"data.source": str(fish_dir), **CRASH_RUN, "train.epochs": 3})
    uninterrupted = tmp_path / "uninterrupted"
    train(cfg, uninterrupted, console=quiet(), report=False)
    run = tmp_path / "full"
    real_save_state = trainer_module.save_state
    calls = []

    def fills_up_at_epoch_2(state, path):
        calls.append(state["epoch"])
        if state["epoch"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_save_state(state, path)

    monkeypatch.setattr(trainer_module, "save_state", fills_up_at_epoch_2)
    with pytest.raises(UserError, match="is full") as error:
        train(cfg, run, console=quiet(), report=False)
    assert "\n" not in str(error.value) and "--resume" in str(error.value)
    assert load_state(run / "checkpoints" / "last.state.pt")["epoch"] == 1
    # Epoch 2's weights reached last.safetensors before the state failed: the resume must not start from them.
    assert load_weights(run / "checkpoints" / "last.safetensors")[1]["epoch"] == 2

    monkeypatch.setattr(trainer_module, "save_state", real_save_state)  # space freed
    resumed = train(cfg, run, console=quiet(), resume=True, report=False)
    assert [m["epoch"] for m in resumed.history] == [1, 2, 3]
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    expected, _ = load_weights(uninterrupted / "checkpoints" / "last.safetensors")
    got, _ = load_weights(run / "checkpoints" / "last.safetensors")
    assert all(torch.equal(expected[name], got[name]) for name in expected)  # bit for bit
    # Epoch 2's logs were written before its state failed; the resume trims them to what epoch 1's state holds
    # and writes them again: each of the Doctor's sampled steps once.
    assert read_records(run / "layer_stats.jsonl") == read_records(uninterrupted / "layer_stats.jsonl")
    assert read_records(run / "steps.jsonl") == read_records(uninterrupted / "steps.jsonl")


@pytest.fixture(scope="module")
def small_run(fish_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = build_config(
        overrides={"data.source": str(fish_dir), **CRASH_RUN, "train.epochs": 1, "doctor.enabled": False}
    )
    run = tmp_path_factory.mktemp("reliability") / "run"
    train(cfg, run, console=quiet(), report=False)
    return run


class RunsCode:
    """Unpickling this calls os.system: the classic malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_resume_refuses_a_training_state_carrying_a_malicious_pickle(small_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    marker = tmp_path / "payload-ran"
    state = load_state(run / "checkpoints" / "last.state.pt")
    torch.save({**state, "optimizer": RunsCode(marker)}, run / "checkpoints" / "last.state.pt")

    done = subprocess.run(
        [*COMMAND, "train", "--resume", str(run), "--epochs", "2"], capture_output=True, text=True, timeout=300
    )

    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "refusing to load" in lines[0] and "last.state.pt" in lines[0]
    assert not marker.exists()
    assert [m["epoch"] for m in read_records(run / "metrics.jsonl")] == [1]  # nothing trained, nothing lost


def test_resume_of_a_state_without_weights_from_an_older_version_is_one_line(
    small_run: Path, fish_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    state = load_state(run / "checkpoints" / "last.state.pt")
    del state["model"]
    torch.save(state, run / "checkpoints" / "last.state.pt")
    cfg = build_config(overrides={"data.source": str(fish_dir), **CRASH_RUN})
    with pytest.raises(UserError, match="older cnnclinic") as error:
        train(cfg, run, console=quiet(), resume=True, report=False)
    assert "\n" not in str(error.value)
    assert [m["epoch"] for m in read_records(run / "metrics.jsonl")] == [1]  # nothing trained, nothing lost


def test_a_pickle_posing_as_weights_is_refused_without_running_it(small_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    marker = tmp_path / "payload-ran"
    torch.save({"conv.weight": RunsCode(marker)}, run / "checkpoints" / "best.safetensors")
    with pytest.raises(UserError, match="not a safetensors file"):
        load_trained_model(run)
    assert not marker.exists()
