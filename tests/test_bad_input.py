"""Bad input from the command line: one clear line on stderr, exit code 2, no traceback, nothing lost.

The end-to-end cases run the installed console command in a subprocess; the cases that stop before
training (or need a monkeypatch, like a full disk) call the same entry point, ``cnnclinic.cli.main``, in
the test process, which is much faster on two cores.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnclinic import cli
from cnnclinic.config import build_config
from cnnclinic.models import build_model
from cnnclinic.training.checkpoint import save_weights

COMMAND = [sys.executable, "-m", "cnnclinic.cli"]
TINY_MODEL = [
    "--set", "model.depth=1", "--set", "model.width=4", "--set", "model.head=[8]", "--set", "data.image_size=16"
]


def assert_one_line_error(code: int | None, stderr: str, *fragments: str) -> str:
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error:")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def run_command(*args: object, timeout: float = 180) -> subprocess.CompletedProcess:
    """The real console command, in its own process."""
    return subprocess.run([*COMMAND, *map(str, args)], capture_output=True, text=True, timeout=timeout)


Outcome = namedtuple("Outcome", "code out err")


@pytest.fixture
def cli_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Call the console entry point in-process; returns (exit code, stdout, stderr)."""

    def invoke(*args: object) -> Outcome:
        monkeypatch.setattr(sys, "argv", ["cnnclinic", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        captured = capsys.readouterr()
        return Outcome(exit_info.value.code, captured.out, captured.err)

    return invoke


def _colour_folder(root: Path, classes: list[str], per_class: int = 6) -> Path:
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (12 + i, 10), (40 * index, 200 - 30 * index, 60 + i)).save(root / name / f"{i}.png")
    return root


def _png_bomb(path: Path, width: int = 20_000, height: int = 20_000) -> None:
    """A tiny PNG whose header claims 400 megapixels: over twice Pillow's limit, so Pillow refuses it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_training_on_a_messy_folder_skips_and_lists_bad_files_and_converts_odd_modes(tmp_path: Path) -> None:
    root = _colour_folder(tmp_path / "mes photos de pêche", ["brown trout", "щука"], per_class=5)
    trout, pike = root / "brown trout", root / "щука"
    noisy = trout / "noisy.png"  # big enough that its first half holds the whole header
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(noisy)
    good = noisy.read_bytes()
    noisy.unlink()
    bad = {
        trout / "truncated.png": good[: len(good) // 2],
        trout / "empty.jpg": b"",
        pike / "notes.jpg": b"shopping list: worms, hooks",
        pike / "garbage.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    }
    for path, content in bad.items():
        path.write_bytes(content)
    _png_bomb(pike / "bomb.png")
    odd_modes = {
        trout / "grey.png": Image.new("L", (14, 14), 90),
        trout / "rgba.png": Image.new("RGBA", (14, 14), (200, 10, 10, 128)),
        pike / "palette.gif": Image.new("P", (14, 14), 7),
        pike / "deep 16 bit.png": Image.fromarray(np.full((14, 14), 40_000, dtype=np.uint16)),
    }
    for path, image in odd_modes.items():
        image.save(path)

    done = run_command("train", "--data", root, "--out", tmp_path / "run ü", "--epochs", "1", *TINY_MODEL)

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    summary = json.loads((tmp_path / "run ü" / "data_summary.json").read_text(encoding="utf-8"))
    reasons = {Path(item["path"]).name: item["reason"] for item in summary["skipped_files"]}
    assert reasons == {
        "truncated.png": "truncated image",
        "empty.jpg": "empty file",
        "notes.jpg": "not an image",
        "garbage.png": reasons["garbage.png"],
        "bomb.png": "too many pixels (decompression-bomb limit)",
    }
    assert reasons["garbage.png"]  # some one-phrase reason
    # 10 plain photos and the 4 odd-mode ones were all used.
    assert sum(sum(counts.values()) for counts in summary["counts"].values()) == 14
    assert "5 files skipped" in done.stdout and "bomb.png" in done.stdout
    assert (tmp_path / "run ü" / "checkpoints" / "best.safetensors").is_file()


def _groups_csv(root: Path, path: Path, rows: list[str], header: str = "image;video") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _all_images(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("empty_class_folder", ["'perch'", "no readable images"]),
        ("only_unreadable_class", ["'perch'", "no readable images"]),
        ("one_class", ["only one class", "bream"]),
        ("no_images", ["no files"]),
        ("groups_missing_images", ["does not cover 2 of 12 images"]),
        ("groups_missing_column", ["no column 'video'", "image, clip"]),
        ("groups_not_utf8", ["not UTF-8"]),
        ("val_dir_other_classes", ["only in", "pike"]),
        ("config_unknown_key", ["unknown key", "model.colour"]),
        ("config_out_of_range", ["train.lr", "less than or equal to 100"]),
        ("config_not_yaml", ["not valid YAML"]),
    ],
)
def test_data_and_config_problems_stop_with_one_line(tmp_path: Path, cli_main, case: str, fragments: list[str]) -> None:
    data = tmp_path / "data"
    args = ["train", "--data", data, "--out", tmp_path / "run", "--epochs", "1", *TINY_MODEL]
    if case == "empty_class_folder":
        _colour_folder(data, ["bream"])
        (data / "perch").mkdir()
        (data / "perch" / "readme.txt").write_text("photos follow")
    elif case == "only_unreadable_class":
        _colour_folder(data, ["bream"])
        (data / "perch").mkdir()
        (data / "perch" / "x.jpg").write_bytes(b"")
    elif case == "one_class":
        _colour_folder(data, ["bream"])
    elif case == "no_images":
        (data / "bream").mkdir(parents=True)
        (data / "perch").mkdir()
    elif case.startswith("groups"):
        _colour_folder(data, ["bream", "perch"])
        images = _all_images(data)
        if case == "groups_missing_images":
            csv_path = _groups_csv(data, tmp_path / "g.csv", [f"{name};v{i % 3}" for i, name in enumerate(images[:-2])])
        elif case == "groups_missing_column":
            csv_path = _groups_csv(data, tmp_path / "g.csv", [f"{name};c1" for name in images], header="image;clip")
        else:
            csv_path = tmp_path / "g.csv"
            csv_path.write_bytes(b"image;video\n" + "".join(f"{n};vidéo\n" for n in images).encode("latin-1"))
        args += ["--groups", csv_path, "--group-column", "video"]
    elif case == "val_dir_other_classes":
        _colour_folder(data, ["bream", "perch"])
        _colour_folder(tmp_path / "val", ["bream", "pike"])
        args += ["--set", f"data.val_dir={tmp_path / 'val'}"]
    else:
        config = tmp_path / "config.yaml"
        config.write_text(
            {
                "config_unknown_key": "model:\n  colour: red\n",
                "config_out_of_range": "train:\n  lr: 1000\n",
                "config_not_yaml": "model: [depth: 3\n",
            }[case]
        )
        args += ["--config", config]
    outcome = cli_main(*args)
    assert_one_line_error(outcome.code, outcome.err, *fragments)
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before any training


def test_an_unwritable_output_directory_is_found_before_any_data_is_read(tmp_path: Path) -> None:
    # Tests run as root, which ignores permission bits: a path below a regular file cannot be created by anyone.
    blocker = tmp_path / "results.txt"
    blocker.write_text("I am a file")
    done = run_command("train", "--data", tmp_path / "no-such-data", "--out", blocker / "run", "--epochs", "1")
    assert_one_line_error(done.returncode, done.stderr, "not writable")
    assert blocker.read_text() == "I am a file"


def test_a_full_disk_is_found_before_training_starts(tmp_path: Path, cli_main, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _colour_folder(tmp_path / "data", ["bream", "perch"])
    real_usage = shutil.disk_usage

    def nearly_full(path):
        return real_usage(path)._replace(free=3 * 2**20)

    monkeypatch.setattr(shutil, "disk_usage", nearly_full)
    outcome = cli_main("train", "--data", data, "--out", tmp_path / "run", "--epochs", "1", *TINY_MODEL)
    line = assert_one_line_error(outcome.code, outcome.err, "not enough free space", "3 MB free")
    assert "MB needed" in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()

    monkeypatch.setattr(shutil, "disk_usage", real_usage)  # space freed: the same command trains
    outcome = cli_main("train", "--data", data, "--out", tmp_path / "run", "--epochs", "1", *TINY_MODEL)
    assert outcome.code in (0, None), outcome.err
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


def _fake_run(run: Path, class_names: list[str], **model) -> Path:
    """A run directory as `train` writes it (config.yaml and best weights), without training."""
    cfg = build_config(
        overrides={"data.image_size": 16, "model.depth": 1, "model.width": 4, "model.head": [8], **model}
    )
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(cfg.to_yaml())
    save_weights(
        build_model(cfg.model, len(class_names), 16), run / "checkpoints" / "best.safetensors", class_names=class_names
    )
    return run


def test_evaluate_with_classes_the_checkpoint_does_not_know(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "run", ["bream", "perch"])
    data = _colour_folder(tmp_path / "data", ["bream", "zander"])
    done = run_command("evaluate", run, "--data", data)
    assert_one_line_error(done.returncode, done.stderr, "zander", "not classes of the run")


def test_predict_with_a_checkpoint_from_another_model(tmp_path: Path, cli_main) -> None:
    run = _fake_run(tmp_path / "run", ["bream", "perch"])
    # Weights copied in from a wider model with three classes: they do not fit the run's config.
    other = build_model(build_config(overrides={"model.depth": 1, "model.width": 8, "model.head": [8]}).model, 3, 16)
    save_weights(other, run / "checkpoints" / "best.safetensors", class_names=["bream", "perch", "pike"])
    image = tmp_path / "fish.png"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(image)
    outcome = cli_main("predict", run, image)
    assert_one_line_error(outcome.code, outcome.err, "does not fit the model")
