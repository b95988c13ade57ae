import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console

from cnnclinic.config import Config, build_config
from cnnclinic.errors import UserError
from cnnclinic.training.checkpoint import load_state, load_weights, save_weights
from cnnclinic.training.trainer import Callback, RunResult, Trainer, train

METRIC_KEYS = {
    "epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "val_macro_auc", "lr", "seconds"
}


def tiny_config(fish_dir: Path, **overrides) -> Config:
    """A small CNN on the 4-species 32 px fixture: a few seconds per run on two CPU cores."""
    base = {
        "data.source": str(fish_dir),
        "data.image_size": 32,
        "model.depth": 2,
        "model.width": 8,
        "model.head": [32],
        "model.batchnorm": True,
        "train.batch_size": 16,
        "train.lr": 0.01,
        "train.epochs": 6,
    }
    return build_config(overrides={**base, **overrides})


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


class StopAfterEpoch(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        if metrics["epoch"] == self.epoch:
            trainer.should_stop = True


@pytest.fixture(scope="module")
def finished_run(fish_dir, tmp_path_factory) -> tuple[RunResult, str]:
    console = quiet()
    result = train(tiny_config(fish_dir), tmp_path_factory.mktemp("runs") / "run", console=console)
    return result, console.file.getvalue()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tiny_run_learns_well_above_chance(finished_run):
    result, _ = finished_run
    # 4 balanced species: chance is 0.25.
    assert result.best_val_acc >= 0.5
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    # Best = highest val accuracy, ties going to the lower val loss.
    best = max(result.history, key=lambda m: (m["val_acc"], -m["val_loss"]))
    assert (result.best_epoch, result.best_val_acc) == (best["epoch"], best["val_acc"])


def test_run_directory_holds_every_file_of_the_contract(finished_run, fish_dir):
    result, output = finished_run
    run = result.run_dir
    assert Config.model_validate(yaml.safe_load((run / "config.yaml").read_text())) == tiny_config(fish_dir)

    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["class_names"] == sorted(p.name for p in fish_dir.iterdir())
    assert sum(summary["counts"]["train"].values()) + sum(summary["counts"]["val"].values()) == 160
    assert summary["skipped_files"] == []

    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert all(set(m) == METRIC_KEYS for m in metrics)
    assert set(metrics[0]["val_auc"]) == set(summary["class_names"])
    assert metrics == result.history

    steps = read_jsonl(run / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(1, metrics[-1]["step"] + 1))
    assert {s["epoch"] for s in steps} == {1, 2, 3, 4, 5, 6}
    assert all(set(s) == {"step", "epoch", "loss", "lr"} for s in steps)

    layer_stats = read_jsonl(run / "layer_stats.jsonl")
    assert layer_stats and all("grad_norm" in record for record in layer_stats)
    diagnosis = json.loads((run / "diagnosis.json").read_text())
    assert [f["symptom"] for f in diagnosis["findings"]] == [f.symptom for f in result.findings]

    with np.load(run / "val_predictions.npz", allow_pickle=False) as npz:
        probs, targets, paths = npz["probs"], npz["targets"], npz["paths"]
    assert probs.shape == (len(targets), 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert len(paths) == len(targets) and all(Path(str(p)).suffix == ".png" for p in paths)
    # The saved predictions are the best epoch's: their accuracy is the best val accuracy.
    assert (probs.argmax(axis=1) == targets).mean() == pytest.approx(result.best_val_acc)

    best, metadata = load_weights(run / "checkpoints" / "best.safetensors")
    assert metadata["epoch"] == result.best_epoch
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(best[name], tensor.cpu())
    assert load_state(run / "checkpoints" / "last.state.pt")["epoch"] == 6
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "report.html").is_file()

    assert "parameters" in output and "per training image" in output
    assert "bream" in output  # the per-class data summary table


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(fish_dir, tmp_path):
    cfg = tiny_config(
        fish_dir,
        **{
            "train.epochs": 3,
            "train.deterministic": True,
            "train.schedule": "cosine",
            "data.augment.hflip": True,
            "data.augment.mixup_alpha": 0.2,
        },
    )
    uninterrupted = train(cfg, tmp_path / "a", console=quiet(), report=False)
    interrupted = train(cfg, tmp_path / "b", console=quiet(), callbacks=[StopAfterEpoch(2)], report=False)
    assert len(interrupted.history) == 2
    resumed = train(cfg, tmp_path / "b", console=quiet(), resume=True, report=False)

    a, _ = load_weights(tmp_path / "a" / "checkpoints" / "last.safetensors")
    b, _ = load_weights(tmp_path / "b" / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    without_time = [{k: v for k, v in m.items() if k != "seconds"} for m in resumed.history]
    assert without_time == [{k: v for k, v in m.items() if k != "seconds"} for m in uninterrupted.history]
    assert read_jsonl(tmp_path / "a" / "steps.jsonl") == read_jsonl(tmp_path / "b" / "steps.jsonl")
    # The Doctor counts on from the checkpoint: the same sampled steps, numbered as in the uninterrupted run.
    assert read_jsonl(tmp_path / "a" / "layer_stats.jsonl") == read_jsonl(tmp_path / "b" / "layer_stats.jsonl")


class Poison(Callback):
    """At the end of epoch ``epoch``: NaN outputs from the next step on, or a NaN in the weights right away."""

    def __init__(self, target: str, epoch: int):
        self.target, self.epoch = target, epoch

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        if metrics["epoch"] != self.epoch:
            return
        if self.target == "outputs":
            trainer.model.register_forward_hook(lambda module, inputs, output: output * float("nan"))
        else:
            with torch.no_grad():
                next(trainer.model.parameters()).view(-1)[0] = float("nan")


@pytest.mark.parametrize(
    ("target", "epochs_recorded", "reason"),
    [("outputs", 1, "critical|loss is nan"), ("weights", 2, "NaN/Inf")],
)
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(fish_dir, tmp_path, target, epochs_recorded, reason):
    cfg = tiny_config(fish_dir, **{"train.epochs": 4})
    result = train(cfg, tmp_path, console=quiet(), callbacks=[Poison(target, epoch=epochs_recorded)], report=False)
    assert re.search(reason, result.stop_reason)
    assert len(result.history) == epochs_recorded
    # Epoch 1's checkpoint is the last good one: no checkpoint with NaN is ever written.
    for name in ("last", "best"):
        weights, metadata = load_weights(tmp_path / "checkpoints" / f"{name}.safetensors")
        assert all(bool(torch.isfinite(t).all()) for t in weights.values() if t.is_floating_point())
    assert load_weights(tmp_path / "checkpoints" / "last.safetensors")[1]["epoch"] == 1
    assert load_state(tmp_path / "checkpoints" / "last.state.pt")["epoch"] == 1


def test_warm_start_from_given_weights(finished_run, fish_dir, tmp_path):
    best_run, _ = finished_run
    cfg = tiny_config(fish_dir, **{"train.epochs": 1, "train.lr": 1e-6})
    best_weights = best_run.run_dir / "checkpoints" / "best.safetensors"
    warm = train(cfg, tmp_path / "warm", console=quiet(), init_weights=best_weights, report=False)
    # With an almost-zero LR the warm-started model is still the trained one, far above chance.
    assert warm.history[0]["val_acc"] >= best_run.best_val_acc - 0.1

    foreign = tmp_path / "foreign.safetensors"
    save_weights(best_run.model, foreign, class_names=["a", "b", "c", "d"])
    with pytest.raises(UserError, match="trained on classes"):
        train(cfg, tmp_path / "foreign", console=quiet(), init_weights=foreign, report=False)


def test_unwritable_run_dir_fails_before_loading_any_data(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = build_config(overrides={"data.source": str(tmp_path / "no-such-data")})
    with pytest.raises(UserError, match="run directory"):
        train(cfg, blocker, console=quiet())


def test_resume_of_a_folder_that_is_not_a_run_is_a_user_error(fish_dir, tmp_path):
    with pytest.raises(UserError, match="not a cnnclinic run"):
        train(tiny_config(fish_dir), tmp_path, console=quiet(), resume=True)


def test_resume_of_a_run_killed_before_its_first_checkpoint_says_to_train_again(fish_dir, tmp_path):
    # What a kill inside epoch 1 leaves: the run's config (and maybe epoch 1's metrics), no training state.
    run = tmp_path / "run"
    train(tiny_config(fish_dir, **{"train.epochs": 1}), run, console=quiet(), report=False)
    (run / "checkpoints" / "last.state.pt").unlink()
    with pytest.raises(UserError, match="stopped before its first checkpoint") as error:
        train(tiny_config(fish_dir), run, console=quiet(), resume=True)
    assert "train it again" in str(error.value)


def test_early_stopping_counts_epochs_without_a_lower_val_loss(fish_dir, tmp_path):
    trainer = Trainer(tiny_config(fish_dir, **{"train.early_stopping_patience": 2}), tmp_path)
    for val_loss in (1.0, 0.9, 0.95):
        trainer._update_early_stopping(val_loss)
    assert not trainer.should_stop
    trainer._update_early_stopping(0.9)  # equal is not better
    assert trainer.should_stop and "early stopping" in trainer.stop_reason


def test_a_fresh_run_clears_what_an_earlier_run_left_in_its_folder(fish_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "report.html").write_text("<p>an old run's verdict</p>")
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1}\n' * 9)
    train(tiny_config(fish_dir, **{"train.epochs": 1}), run_dir, console=quiet(), report=False)
    assert not (run_dir / "report.html").exists()  # no stale verdict next to the new run's files
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 1
