"""Splits: stratified, reproducible, capped, and group-aware (no video in two splits)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from cnnclinic.config import DataConfig
from cnnclinic.data import load_data
from cnnclinic.errors import UserError

_REPO = Path(__file__).resolve().parents[1]
REAL_FISH = next(
    (p for p in (_REPO.parent / "shared", _REPO / "shared", Path("/work/shared"))
     if (p / "data/fish-egu2017").is_dir()),
    Path("/work/shared"),
) / "data" / "fish-egu2017"


def _split_classes(bundle, split: str) -> set[str]:
    return {name for name, n in bundle.summary["counts"][split].items() if n > 0}


def _groups_csv(fish_dir: Path, path: Path, delimiter: str, per_group: int = 5) -> Path:
    """Every photo of the fixture in a 'clip' of ``per_group`` consecutive photos of one species."""
    rows = [f"image{delimiter}clip{delimiter}note"]
    for photo in sorted(fish_dir.glob("*/*.png")):
        number = int(photo.stem.rsplit("_", 1)[1])
        rows.append(f"{photo.parent.name}/{photo.name}{delimiter}{photo.parent.name}-{number // per_group}{delimiter}x")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_stratified_split_keeps_class_proportions_and_is_reproducible(fish_dir: Path) -> None:
    cfg = DataConfig(source=str(fish_dir), image_size=16, val_fraction=0.25, test_fraction=0.25, split_seed=3)
    bundle = load_data(cfg)
    for split, expected in (("train", 20), ("val", 10), ("test", 10)):
        assert set(bundle.summary["counts"][split].values()) == {expected}, split
    paths = [set(bundle.train.paths), set(bundle.val.paths), set(bundle.test.paths)]
    assert sum(map(len, paths)) == len(set.union(*paths)) == 160
    assert load_data(cfg).val.paths == bundle.val.paths
    assert load_data(cfg.model_copy(update={"split_seed": 4})).val.paths != bundle.val.paths


def test_max_per_class_caps_every_class_deterministically(fish_dir: Path) -> None:
    cfg = DataConfig(source=str(fish_dir), image_size=16, max_per_class=10)
    bundle = load_data(cfg)
    totals = Counter()
    for split in ("train", "val"):
        totals.update(bundle.summary["counts"][split])
    assert set(totals.values()) == {10}
    assert load_data(cfg).train.paths == bundle.train.paths


@pytest.mark.parametrize("delimiter", [",", ";"])
def test_groups_never_straddle_splits(fish_dir: Path, tmp_path: Path, delimiter: str) -> None:
    csv_path = _groups_csv(fish_dir, tmp_path / "clips.csv", delimiter)
    cfg = DataConfig(
        source=str(fish_dir), image_size=16, groups_csv=str(csv_path), group_column="clip", test_fraction=0.2
    )
    bundle = load_data(cfg)
    train, val, test = set(bundle.train.groups), set(bundle.val.groups), set(bundle.test.groups)
    assert not (train & val) and not (train & test) and not (val & test)
    assert bundle.summary["groups"] == {"train": len(train), "val": len(val), "test": len(test)}
    assert _split_classes(bundle, "train") == _split_classes(bundle, "val") == set(bundle.class_names)


def test_real_fish_videos_never_straddle_train_and_val() -> None:
    if not (REAL_FISH / "test-sample.csv").is_file():
        pytest.skip("the real fish data set (shared/data/fish-egu2017) is not available")
    cfg = DataConfig(source=str(REAL_FISH), image_size=16, groups_csv="test-sample.csv", group_column="video_name")
    bundle = load_data(cfg)
    assert not set(bundle.train.groups) & set(bundle.val.groups)
    assert len(bundle.train) + len(bundle.val) == 1053
    # Every species has several videos here, so every species is seen in training and in validation.
    assert _split_classes(bundle, "train") == _split_classes(bundle, "val") == set(bundle.class_names)
    assert 0.1 < len(bundle.val) / 1053 < 0.3
    assert bundle.summary["groups"]["train"] + bundle.summary["groups"]["val"] == 104


def test_a_class_with_two_groups_lands_in_train_and_val(fish_dir: Path, tmp_path: Path) -> None:
    csv_path = _groups_csv(fish_dir, tmp_path / "clips.csv", ",", per_group=20)  # two clips per species
    bundle = load_data(
        DataConfig(source=str(fish_dir), image_size=16, groups_csv=str(csv_path), group_column="clip", val_fraction=0.1)
    )
    assert _split_classes(bundle, "train") == _split_classes(bundle, "val") == set(bundle.class_names)
    assert not set(bundle.train.groups) & set(bundle.val.groups)


def test_groups_csv_problems_are_named(fish_dir: Path, tmp_path: Path) -> None:
    def load(csv_path: Path, column: str = "clip") -> None:
        load_data(DataConfig(source=str(fish_dir), image_size=16, groups_csv=str(csv_path), group_column=column))

    with pytest.raises(UserError, match="groups CSV not found"):
        load(tmp_path / "nowhere.csv")
    csv_path = _groups_csv(fish_dir, tmp_path / "clips.csv", ";")
    with pytest.raises(UserError, match=r"no column 'video'.*columns are: image, clip, note"):
        load(csv_path, "video")
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(lines[:-7]) + "\n")
    with pytest.raises(UserError, match=r"does not cover 7 of 160 images \(e\.g\. \w+/\w+\.png"):
        load(csv_path)
