"""Loading a user's photo folder: every format and mode, bad files skipped, clear errors for bad layouts."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from cnnclinic.config import DataConfig
from cnnclinic.data import SkippedFile, load_data
from cnnclinic.data.folder import decode_image
from cnnclinic.errors import UserError


def _save(path: Path, image: Image.Image, **params) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **params)
    return path


def _colour_folder(root: Path, classes: dict[str, tuple[int, int, int]], per_class: int = 4) -> Path:
    for name, colour in classes.items():
        for index in range(per_class):
            _save(root / name / f"{index}.png", Image.new("RGB", (20 + index, 12), colour))
    return root


def _config(source: Path, **extra) -> DataConfig:
    return DataConfig(source=str(source), image_size=16, **extra)


def test_every_format_and_mode_becomes_rgb_of_the_requested_size(tmp_path: Path) -> None:
    grey = Image.new("L", (40, 30), 100)
    files = {
        "a.png": grey, "b.jpg": grey, "c.bmp": grey, "d.gif": grey, "e.webp": grey, "f.tiff": grey, "g.tif": grey,
        "h.jpeg": Image.new("RGB", (300, 17), (10, 200, 30)),
        "i.jpg": Image.new("CMYK", (9, 9), (0, 0, 0, 0)),
    }
    for name, image in files.items():
        decoded = decode_image(_save(tmp_path / name, image), 24)
        assert isinstance(decoded, torch.Tensor), (name, decoded)
        assert decoded.dtype == torch.uint8 and decoded.shape == (3, 24, 24), name
    grey_pixels = decode_image(tmp_path / "a.png", 24)
    assert torch.equal(grey_pixels[0], grey_pixels[1]) and int(grey_pixels[0, 5, 5]) == 100


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    samples = np.full((8, 8), 32768, dtype=np.uint16)  # half of the 16-bit range
    path = _save(tmp_path / "deep.png", Image.fromarray(samples))
    assert Image.open(path).mode.startswith("I")
    decoded = decode_image(path, 8)
    assert abs(int(decoded[:, 4, 4].float().mean()) - 128) <= 1  # clipping would give 255


def test_transparent_and_palette_images_are_composited_on_white(tmp_path: Path) -> None:
    transparent = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    transparent.paste((0, 0, 255, 255), (0, 0, 5, 10))
    decoded = decode_image(_save(tmp_path / "rgba.png", transparent), 10)
    assert decoded[:, 5, 1].tolist() == [0, 0, 255]
    assert decoded[:, 5, 8].tolist() == [255, 255, 255]  # not the hidden red
    palette = Image.new("P", (10, 10), 3)
    palette.putpalette([0, 0, 0] * 3 + [0, 200, 0] + [0, 0, 0] * 252)
    assert decode_image(_save(tmp_path / "p.png", palette), 10)[:, 5, 5].tolist() == [0, 200, 0]
    palette.info["transparency"] = 3
    assert decode_image(_save(tmp_path / "pt.png", palette, transparency=3), 10)[:, 5, 5].tolist() == [255, 255, 255]


def test_bad_files_are_skipped_with_a_reason_and_loading_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _colour_folder(tmp_path / "my photos", {"brown trout": (150, 90, 40), "чub": (20, 20, 200)}, per_class=5)
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(good, format="PNG")
    (root / "brown trout" / "truncated.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (root / "brown trout" / "empty.jpg").write_bytes(b"")
    (root / "чub" / "notes.txt").write_text("not a fish")
    (root / "чub" / "fake.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage" * 10)
    _save(root / "чub" / "huge.png", Image.new("RGB", (100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 100 x 100 is over the limit, 40 x 40 is not

    output = io.StringIO()
    bundle = load_data(_config(root), console=Console(file=output, width=300))

    reasons = {Path(item.path).name: item.reason for item in bundle.skipped}
    assert set(reasons) == {"truncated.png", "empty.jpg", "notes.txt", "fake.jpg", "huge.png"}
    assert reasons["empty.jpg"] == "empty file"
    assert reasons["truncated.png"] == "truncated image"
    assert reasons["notes.txt"] == "not an image"
    assert "decompression" in reasons["huge.png"]
    assert all(isinstance(item, SkippedFile) for item in bundle.skipped)
    assert bundle.summary["skipped"] == 5
    assert len(bundle.train) + len(bundle.val) == 10
    assert bundle.class_names == ["brown trout", "чub"]
    assert all(Path(path).is_file() for path in bundle.train.paths)
    lines = output.getvalue().strip().splitlines()
    assert len(lines) == 1 and "skipped 5" in lines[0]
    assert load_data(_config(root)).skipped == bundle.skipped  # the reasons survive the disk cache


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "not found"),
        ("no_classes", "no class folders"),
        ("one_class", "only one class"),
        ("no_files", "no files"),
        ("only_bad_files", "no readable images"),
        ("empty_class", "'perch' has no readable images"),
    ],
)
def test_bad_layouts_raise_one_line_user_errors(tmp_path: Path, layout: str, message: str) -> None:
    root = tmp_path / "data"
    if layout == "no_classes":
        _save(root / "loose.png", Image.new("RGB", (4, 4)))
    elif layout == "one_class":
        _colour_folder(root, {"bream": (1, 1, 1)})
    elif layout == "no_files":
        (root / "bream").mkdir(parents=True)
        (root / "perch").mkdir()
    elif layout == "only_bad_files":
        for name in ("bream", "perch"):
            (root / name).mkdir(parents=True)
            (root / name / "x.png").write_bytes(b"nope")
    elif layout == "empty_class":
        _colour_folder(root, {"bream": (1, 1, 1)})
        (root / "perch").mkdir()
        (root / "perch" / "x.jpg").write_bytes(b"")
    with pytest.raises(UserError, match=message) as error:
        load_data(_config(root))
    assert "\n" not in str(error.value)


def test_val_dir_with_other_classes_names_the_differences(tmp_path: Path) -> None:
    train = _colour_folder(tmp_path / "train", {"bream": (9, 9, 9), "perch": (99, 99, 99), "pike": (200, 9, 9)})
    val = _colour_folder(tmp_path / "val", {"bream": (9, 9, 9), "perch": (99, 99, 99), "zander": (9, 200, 9)})
    with pytest.raises(UserError, match=r"only in .*train: pike; only in .*val: zander"):
        load_data(_config(train, val_dir=str(val)))


def test_val_dir_is_used_as_the_validation_split(tmp_path: Path) -> None:
    train = _colour_folder(tmp_path / "train", {"bream": (9, 9, 9), "perch": (99, 99, 99)}, per_class=6)
    val = _colour_folder(tmp_path / "val", {"bream": (9, 9, 9), "perch": (99, 99, 99)}, per_class=2)
    bundle = load_data(_config(train, val_dir=str(val)))
    assert bundle.summary["counts"] == {"train": {"bream": 6, "perch": 6}, "val": {"bream": 2, "perch": 2}}
    assert all(path.startswith(str(val)) for path in bundle.val.paths)


def test_digits_source_is_rgb_at_the_requested_size() -> None:
    bundle = load_data(DataConfig(source="digits", image_size=24))
    assert bundle.class_names == [str(d) for d in range(10)]
    assert bundle.train.images.shape[1:] == (3, 24, 24)
    assert torch.equal(bundle.train.images[:, 0], bundle.train.images[:, 2])  # grey -> RGB
    assert len(bundle.train) + len(bundle.val) == 1797
    assert bundle.train.paths[0].startswith("digits/") and len(bundle.train.paths[0]) == len("digits/00042")


def test_a_read_only_data_folder_is_left_untouched(fish_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(fish_dir, tmp_path / "fish")
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    for path in [copy, *copy.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        bundle = load_data(_config(copy))
    finally:
        for path in [copy, *copy.rglob("*")]:
            path.chmod(0o755)
    assert len(bundle.train) + len(bundle.val) == 160
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before
