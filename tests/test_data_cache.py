"""Decode once: a second load of the same folder reads the disk cache and opens no image."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnnclinic.config import DataConfig
from cnnclinic.data import load_data


@pytest.fixture
def count_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    opened: list[str] = []
    real_open = Image.open

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    return opened


@pytest.fixture
def fish_copy(fish_dir: Path, tmp_path: Path) -> Path:
    return shutil.copytree(fish_dir, tmp_path / "fish")


def test_second_load_decodes_nothing_and_gives_the_same_pixels(
    fish_copy: Path, count_opens: list[str], isolated_cache_dir: Path
) -> None:
    cfg = DataConfig(source=str(fish_copy), image_size=24)
    first = load_data(cfg)
    assert len(count_opens) == 160
    count_opens.clear()
    second = load_data(cfg)
    assert count_opens == []
    assert torch.equal(first.train.images, second.train.images)
    assert first.train.paths == second.train.paths and first.summary == second.summary
    assert first.train.images.dtype == torch.uint8 and first.train.images.shape[1:] == (3, 24, 24)
    entries = list((isolated_cache_dir / "decoded").glob("*.pt"))
    assert entries and not list((isolated_cache_dir / "decoded").glob("*.tmp"))
    assert set(torch.load(entries[0], weights_only=True)) == {"images", "kept", "skipped"}


def test_changing_a_photo_or_the_image_size_decodes_again(fish_copy: Path, count_opens: list[str]) -> None:
    load_data(DataConfig(source=str(fish_copy), image_size=20))
    count_opens.clear()
    load_data(DataConfig(source=str(fish_copy), image_size=28))
    assert len(count_opens) == 160

    photo = next((fish_copy / "bream").glob("*.png"))
    Image.new("RGB", (32, 32), (255, 0, 0)).save(photo)
    os.utime(photo, ns=(1, 1))
    count_opens.clear()
    reloaded = load_data(DataConfig(source=str(fish_copy), image_size=20))
    assert len(count_opens) == 160
    everything = torch.cat([reloaded.train.images, reloaded.val.images])
    assert (everything.flatten(1) == torch.tensor([255, 0, 0]).repeat_interleave(400)).all(dim=1).any()


def test_an_unwritable_cache_still_loads(fish_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("CNNCLINIC_CACHE_DIR", str(blocker))
    bundle = load_data(DataConfig(source=str(fish_copy), image_size=16))
    assert len(bundle.train) + len(bundle.val) == 160


def test_a_damaged_cache_entry_is_decoded_again(
    fish_copy: Path, isolated_cache_dir: Path, count_opens: list[str]
) -> None:
    cfg = DataConfig(source=str(fish_copy), image_size=12)
    before = set((isolated_cache_dir / "decoded").glob("*.pt"))
    expected = load_data(cfg)
    (entry,) = set((isolated_cache_dir / "decoded").glob("*.pt")) - before
    entry.write_bytes(b"damaged")
    count_opens.clear()
    again = load_data(cfg)
    assert len(count_opens) == 160
    assert torch.equal(expected.train.images, again.train.images)
