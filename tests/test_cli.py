import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from cnnclinic import cli
from cnnclinic.config import build_config
from cnnclinic.training.trainer import train


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the real entry point (with its UserError handling) in-process."""
    monkeypatch.setattr(sys, "argv", ["cnnclinic", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def run_dir(fish_dir, tmp_path_factory) -> Path:
    cfg = build_config(
        overrides={
            "data.source": str(fish_dir), "data.image_size": 32, "model.depth": 2, "model.width": 8,
            "model.head": [32], "model.batchnorm": True, "train.batch_size": 16, "train.lr": 0.01, "train.epochs": 3,
            "doctor.enabled": False,
        }
    )
    out = tmp_path_factory.mktemp("cli") / "run"
    train(cfg, out, console=Console(file=io.StringIO()), report=False)
    return out


def test_config_error_from_the_installed_command_is_one_line_exit_2(tmp_path):
    command = [sys.executable, "-m", "cnnclinic.cli", "train", "--data", "synthetic-fish", "--out", str(tmp_path / "r"),
               "--set", "model.activation=swish"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert_one_line_error(done.returncode, done.stderr, "model.activation", "leaky_relu")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "--data", "synthetic-fish", "--out", "{tmp}/r", "--set", "model.colour=red"],
         ["unknown key", "model.colour"]),
        (["train", "--data", "synthetic-fish", "--out", "{tmp}/r", "--set", "train.lr"], ["key=value"]),
        (["train", "--data", "synthetic-fish", "--out", "{tmp}/r", "--epochs", "0"], ["train.epochs"]),
        (["train", "--data", "synthetic-fish", "--out", "{tmp}/r", "--config", "{tmp}/missing.yaml"], ["not found"]),
        (["train", "--data", "synthetic-fish"], ["--out"]),
        (["train", "--resume", "{tmp}"], ["not a cnnclinic run"]),
        (["train", "--data", "{tmp}/no-such-folder", "--out", "{tmp}/r", "--epochs", "1"], ["not found"]),
        (["evaluate", "{tmp}", "--data", "{tmp}"], ["not a cnnclinic run"]),
        (["predict", "{tmp}", "{tmp}/x.png"], ["not a cnnclinic run"]),
        (["lr-find", "--data", "synthetic-fish", "--out", "{tmp}/plot.txt"], [".png"]),
        # Usage errors found by the argument parser are one line too, with a pointer to --help.
        (["train", "--epochs", "abc"], ["--epochs", "cnnclinic train --help"]),
        (["train", "--no-such-option"], ["--no-such-option"]),
        (["trian"], ["No such command", "train"]),
        (["make-fish"], ["Missing argument"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path, args, fragments):
    code, _, err = run_main(monkeypatch, capsys, *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert_one_line_error(code, err, *fragments)


def test_help_exits_0_and_lists_the_commands(monkeypatch, capsys):
    code, out, _ = run_main(monkeypatch, capsys, "--help")
    assert code == 0
    assert "train" in out and "demo" in out


def test_evaluate_prints_metrics_table_and_confusion_matrix(run_dir, fish_dir):
    result = CliRunner().invoke(cli.app, ["evaluate", str(run_dir), "--data", str(fish_dir)])
    assert result.exit_code == 0, result.output
    classes = sorted(p.name for p in fish_dir.iterdir())
    assert "accuracy" in result.output and "confusion matrix" in result.output
    for name in classes:
        assert result.output.count(name) >= 3  # a row of the per-class table, a row and a column of the matrix
    accuracy = float(result.output.split("accuracy", 1)[1].split()[0])
    assert accuracy > 0.4  # 4 classes: chance is 0.25


def test_evaluate_on_a_subset_of_classes_and_on_unknown_classes(run_dir, fish_dir, tmp_path, monkeypatch, capsys):
    subset = tmp_path / "subset"
    first_two = sorted(p.name for p in fish_dir.iterdir())[:2]
    for name in first_two:
        shutil.copytree(fish_dir / name, subset / name)
    result = CliRunner().invoke(cli.app, ["evaluate", str(run_dir), "--data", str(subset)])
    assert result.exit_code == 0, result.output

    shutil.copytree(fish_dir / first_two[0], subset / "shark")
    code, _, err = run_main(monkeypatch, capsys, "evaluate", run_dir, "--data", subset)
    assert_one_line_error(code, err, "shark")


def test_predict_shows_top_k_and_names_unreadable_images(run_dir, fish_dir, tmp_path, monkeypatch, capsys):
    classes = sorted(p.name for p in fish_dir.iterdir())
    image = sorted((fish_dir / classes[0]).iterdir())[0]
    code, out, err = run_main(monkeypatch, capsys, "predict", run_dir, image, "--top-k", "2")
    assert code in (0, None), err
    line = next(line for line in out.splitlines() if image.name in line)
    ranked = line.split(": ", 1)[1].split(", ")
    assert len(ranked) == 2
    probs = [float(item.split()[-1]) for item in ranked]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-3
    assert all(item.split()[0] in classes for item in ranked)

    broken = tmp_path / "broken.png"
    broken.write_text("not really a png")
    code, out, err = run_main(monkeypatch, capsys, "predict", run_dir, image, broken)
    assert image.name in out  # the readable image is still classified
    assert_one_line_error(code, err, "broken.png", "not an image")


def test_resume_from_the_command_line_adds_epochs(run_dir, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    code, out, err = run_main(
        monkeypatch, capsys, "train", "--resume", copy, "--epochs", "4", "--set", "doctor.enabled=false"
    )
    assert code in (0, None), err
    epochs = [json.loads(line)["epoch"] for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]


def test_lr_find_writes_the_plot_and_prints_the_setting_to_use(fish_dir, tmp_path, monkeypatch, capsys):
    plot = tmp_path / "lr.png"
    code, out, err = run_main(
        monkeypatch, capsys, "lr-find", "--data", fish_dir, "--set", "data.image_size=32", "--set", "model.depth=2",
        "--set", "model.width=8", "--steps", "20", "--out", plot,
    )
    assert code in (0, None), err
    assert plot.stat().st_size > 1000
    suggested = out.split("--set train.lr=", 1)[1].split()[0]
    assert 1e-7 <= float(suggested) <= 10
