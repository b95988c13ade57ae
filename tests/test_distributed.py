"""Training on several processes (torchrun + DDP, gloo on the CPU) gives the single-process result.

The reference is one process with the same global batch (``WORLD_SIZE=1``, as ``torchrun --nproc-per-node 1``
starts it): its DistributedSampler deals the same global batches, so the only difference is floating
point (gloo sums the two shards' gradients, one process reduces its whole batch) carried along by Adam.
Measured on this config: weights 2.4e-7 apart after 135 steps, step losses 7e-7, validation losses 1.2e-7.
The tolerances below (1e-4) leave room for other CPUs' summation orders; the same images in another order
(a plain run's shuffle) end 0.34 apart in the weights and 0.18 in validation loss.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from rich.console import Console

from cnnclinic.config import Config, build_config
from cnnclinic.errors import UserError
from cnnclinic.training.checkpoint import load_weights
from cnnclinic.training.trainer import Callback, Trainer, train

# Digits at their native 8 x 8 px: 1,438 training images, 45 global batches of 32 per epoch, ~0.75 val accuracy.
MATCH = {
    "data.source": "digits",
    "data.image_size": 8,
    "model.depth": 2,
    "model.width": 16,
    "model.head": [32],
    "model.init": "he",
    "train.batch_size": 32,
    "train.lr": 0.003,
    "train.epochs": 3,
}
# The demo's vanishing-gradient case: eight sigmoid conv layers.
SIGMOID_STACK = {**MATCH, "model.depth": 8, "model.activation": "sigmoid", "model.init": "default", "train.epochs": 2}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rank_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    """What torchrun sets for each process."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def quiet() -> Console:
    return Console(file=io.StringIO())


@pytest.fixture
def one_process_group(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This pytest process as a one-process torchrun job; the group is torn down afterwards."""
    for key, value in rank_env(0, 1, free_port()).items():
        monkeypatch.setenv(key, value)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def _train_as_rank(
    rank: int, world_size: int, port: int,
    cfg: Config, run_dir: Path, resume: bool, callbacks: list[Callback], results: Any,
) -> None:
    os.environ.update(rank_env(rank, world_size, port))
    torch.set_num_threads(1)
    try:
        result = train(cfg, run_dir, console=quiet(), resume=resume, callbacks=callbacks, report=False)
    except BaseException as error:
        results.put((rank, f"rank {rank} failed: {error!r}"))
        raise
    results.put((rank, [f.symptom for f in result.findings], result.history, result.stop_reason))


def train_in_processes(
    cfg: Config, run_dir: Path, world_size: int = 2, resume: bool = False, callbacks: list[Callback] | None = None
) -> dict[int, tuple]:
    """``train`` in ``world_size`` processes -> per rank (finding symptoms, history, stop reason).

    Forked from a clean fork server (torch preloaded: little start-up cost), not from this pytest process:
    a plain fork copies whatever locks the suite's other threads hold at that moment and can hang."""
    assert not dist.is_initialized(), "a child process must not inherit this process group"
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "cnnclinic.training.trainer"])
    results = context.Queue()
    port = free_port()
    processes = [
        context.Process(
            target=_train_as_rank, args=(rank, world_size, port, cfg, run_dir, resume, callbacks or [], results)
        )
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    outcome = {}
    for _ in processes:
        rank, *rest = results.get(timeout=120)
        assert len(rest) == 3, rest[0]
        outcome[rank] = tuple(rest)
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    return outcome


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def max_weight_difference(run_a: Path, run_b: Path, name: str = "last") -> float:
    a, _ = load_weights(run_a / "checkpoints" / f"{name}.safetensors")
    b, _ = load_weights(run_b / "checkpoints" / f"{name}.safetensors")
    assert a.keys() == b.keys()
    return max(float((a[key] - b[key]).abs().max()) for key in a)


def test_torchrun_two_processes_match_one_process(tmp_path, one_process_group):
    two = tmp_path / "two"
    overrides = [f"--set={key}={json.dumps(value)}" for key, value in MATCH.items() if key != "data.source"]
    env = {
        k: v for k, v in os.environ.items()
        if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
         "-m", "cnnclinic", "train", "--data", "digits", "--out", str(two), *overrides],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    # Only rank 0 talks: the closing line once, not once per process.
    assert launched.stdout.count("run written to") == 1

    one = tmp_path / "one"
    reference = train(build_config(overrides=MATCH), one, console=quiet(), report=False)
    assert reference.history[-1]["val_acc"] > 0.5  # it learned: the weights moved far from where they started

    two_metrics, one_metrics = read_jsonl(two / "metrics.jsonl"), read_jsonl(one / "metrics.jsonl")
    assert [m["epoch"] for m in two_metrics] == [1, 2, 3]  # written once, by rank 0
    for a, b in zip(two_metrics, one_metrics):
        assert a["step"] == b["step"] == 45 * a["epoch"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)
        assert a["train_acc"] == pytest.approx(b["train_acc"], abs=2 / 1438)  # a borderline image may flip
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=2 / 359)
    two_steps, one_steps = read_jsonl(two / "steps.jsonl"), read_jsonl(one / "steps.jsonl")
    assert [s["step"] for s in two_steps] == list(range(1, 136))
    assert np.allclose([s["loss"] for s in two_steps], [s["loss"] for s in one_steps], atol=1e-4)
    assert max_weight_difference(one, two) < 1e-4

    # Validation predictions cover the whole val set once, in data set order (no padding duplicates).
    two_val, one_val = np.load(two / "val_predictions.npz"), np.load(one / "val_predictions.npz")
    assert list(two_val["paths"]) == list(one_val["paths"]) and len(set(two_val["paths"])) == 359
    assert np.array_equal(two_val["targets"], one_val["targets"])
    assert np.allclose(two_val["probs"], one_val["probs"], atol=1e-4)


def test_a_vanishing_gradient_is_found_across_processes(tmp_path):
    outcome = train_in_processes(build_config(overrides=SIGMOID_STACK), tmp_path / "run")
    symptoms, history, _ = outcome[0]
    assert "vanishing_gradient" in symptoms
    assert outcome[1][0] == symptoms  # every process returns rank 0's findings
    assert [m["val_loss"] for m in outcome[1][1]] == [m["val_loss"] for m in history]
    diagnosis = json.loads((tmp_path / "run" / "diagnosis.json").read_text())
    assert "vanishing_gradient" in {finding["symptom"] for finding in diagnosis["findings"]}


def test_resume_across_processes_continues_the_same_run(tmp_path):
    cfg = build_config(overrides={**MATCH, "train.epochs": 2, "data.max_per_class": 40})
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_in_processes(cfg, straight)
    train_in_processes(cfg.with_overrides(["train.epochs=1"]), resumed)
    outcome = train_in_processes(cfg, resumed, resume=True)
    assert [m["epoch"] for m in read_jsonl(resumed / "metrics.jsonl")] == [1, 2]
    assert outcome[0][1][-1]["val_loss"] == pytest.approx(
        read_jsonl(straight / "metrics.jsonl")[-1]["val_loss"], abs=1e-6
    )
    assert max_weight_difference(straight, resumed) < 1e-6


class StopOnSecondProcess(Callback):
    """Asks for a stop on rank 1 only: after the first finding, or after ``epoch``."""

    def __init__(self, epoch: int | None = None):
        self.epoch = epoch

    def on_finding(self, trainer: Trainer, finding: Any) -> None:
        if self.epoch is None and trainer.dist.rank == 1:
            trainer.should_stop = True

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        if metrics["epoch"] == self.epoch and trainer.dist.rank == 1:
            trainer.should_stop = True


def test_a_stop_during_a_step_on_one_process_ends_every_process_in_that_step(tmp_path):
    # Rank 1 stops at its first finding (the sigmoid stack's vanishing gradient, early in epoch 1); without
    # the shared stop, rank 0 would wait forever in the next step's gradient all-reduce.
    outcome = train_in_processes(
        build_config(overrides=SIGMOID_STACK), tmp_path / "run", callbacks=[StopOnSecondProcess()]
    )
    assert outcome[0][2] == "another process of this torchrun job stopped the run"
    assert outcome[0][1] == outcome[1][1] == []  # stopped inside epoch 1
    steps = read_jsonl(tmp_path / "run" / "steps.jsonl")
    assert 0 < len(steps) < 45


def test_a_stop_after_an_epoch_on_one_process_ends_every_process(tmp_path):
    cfg = build_config(overrides={**MATCH, "data.max_per_class": 40})
    outcome = train_in_processes(cfg, tmp_path / "run", callbacks=[StopOnSecondProcess(epoch=1)])
    assert [m["epoch"] for m in outcome[0][1]] == [m["epoch"] for m in outcome[1][1]] == [1]
    # Rank 0 wrote the last checkpoint of the epoch it stopped after.
    assert load_weights(tmp_path / "run" / "checkpoints" / "last.safetensors")[1]["epoch"] == 1


def test_nan_ends_every_process(tmp_path):
    # SGD at lr 100: the loss turns NaN within the first steps; the Doctor's critical finding ends the run.
    cfg = build_config(overrides={**MATCH, "train.lr": 100.0, "train.optimizer": "sgd", "data.max_per_class": 40})
    outcome = train_in_processes(cfg, tmp_path / "run")
    assert "Doctor" in outcome[0][2] and "Doctor" in outcome[1][2]
    assert outcome[0][1] == outcome[1][1] == []


def test_global_batch_must_split_evenly(tmp_path, one_process_group, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(UserError, match="divisible by the 3 processes"):
        train(build_config(overrides={**MATCH, "train.batch_size": 32}), tmp_path, console=quiet())


def test_auto_repair_under_torchrun_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from cnnclinic import cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(
        sys, "argv", ["cnnclinic", "train", "--data", "digits", "--out", str(tmp_path), "--auto-repair"]
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error:") and "without torchrun" in err
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written
