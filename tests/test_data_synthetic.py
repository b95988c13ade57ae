"""Synthetic fish: reproducible bytes, the requested species and counts, a hard twin species, the CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from cnnclinic.cli import app
from cnnclinic.config import DataConfig, SyntheticFishConfig
from cnnclinic.data import generate_synthetic_fish, load_data
from cnnclinic.errors import UserError


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.png"))
    }


def _pixels(folder: Path, species: str) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p), dtype=np.float64) for p in sorted((folder / species).glob("*.png"))])


def test_fish_dir_is_an_image_folder_of_readable_species(fish_dir: Path) -> None:
    assert sorted(p.name for p in fish_dir.iterdir()) == ["bream", "perch", "pike", "trout"]
    for species in fish_dir.iterdir():
        photos = sorted(species.glob("*.png"))
        assert len(photos) == 40
        assert Image.open(photos[0]).size == (32, 32) and Image.open(photos[0]).mode == "RGB"


def test_same_seed_gives_the_same_bytes_and_another_seed_other_photos(tmp_path: Path) -> None:
    kwargs = dict(species=3, per_class=4, size=24)
    first = _digests(generate_synthetic_fish(tmp_path / "a", seed=7, **kwargs))
    assert _digests(generate_synthetic_fish(tmp_path / "b", seed=7, **kwargs)) == first
    other = _digests(generate_synthetic_fish(tmp_path / "c", seed=8, **kwargs))
    assert other.keys() == first.keys()
    assert not set(other.values()) & set(first.values())


def test_photos_within_a_species_vary(fish_dir: Path) -> None:
    photos = _pixels(fish_dir, "pike")
    assert len({hashlib.sha256(p.tobytes()).hexdigest() for p in photos}) == len(photos)
    assert photos.std(axis=0).mean() > 15  # pose, scale, water and lighting all change


def test_mean_colour_alone_does_not_separate_the_species(fish_dir: Path) -> None:
    names = sorted(p.name for p in fish_dir.iterdir())
    features = np.concatenate([_pixels(fish_dir, name).mean(axis=(1, 2)) for name in names])
    labels = np.repeat(np.arange(len(names)), 40)
    accuracy = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression()), features, labels, cv=4).mean()
    assert accuracy < 0.55  # chance is 0.25; a CNN has to look at shape and pattern


def test_class_counts_and_the_hard_species(tmp_path: Path) -> None:
    out = generate_synthetic_fish(
        tmp_path / "fish", species=3, per_class=1, size=32, seed=1, class_counts=[6, 2, 6], hard_species=2
    )
    assert {p.name: len(list(p.glob("*.png"))) for p in out.iterdir()} == {"bream": 6, "perch": 2, "species_x": 6}
    # Species X is bream with other fins: overall colour and the spread of photos stay alike.
    bream, twin, perch = (_pixels(out, name) for name in ("bream", "species_x", "perch"))
    assert abs(bream.mean() - twin.mean()) < abs(bream.mean() - perch.mean()) + 10


def test_hard_blur_blurs_only_the_hard_species(tmp_path: Path) -> None:
    def sharpness(images: np.ndarray) -> float:
        return float(np.abs(np.diff(images, axis=2)).mean())

    kwargs = dict(species=3, per_class=5, size=48, seed=2, hard_species=1)
    sharp = generate_synthetic_fish(tmp_path / "sharp", **kwargs)
    blurred = generate_synthetic_fish(tmp_path / "blurred", hard_blur=2.0, **kwargs)
    # Both folders share the same sensor noise (drawn after the blur), so the drop is the blur's alone.
    assert sharpness(_pixels(blurred, "species_x")) < 0.9 * sharpness(_pixels(sharp, "species_x"))
    assert _digests(blurred / "bream") == _digests(sharp / "bream")


def test_mislabelled_photos_are_filed_under_another_species_unchanged(tmp_path: Path) -> None:
    kwargs = dict(species=3, per_class=40, size=16, seed=5)
    clean = _digests(generate_synthetic_fish(tmp_path / "clean", **kwargs))
    noisy = _digests(generate_synthetic_fish(tmp_path / "noisy", mislabelled=0.25, **kwargs))
    # The same photos (by name and bytes), some of them in another species' folder.
    by_name = {path.split("/")[1]: digest for path, digest in noisy.items()}
    assert by_name == {path.split("/")[1]: digest for path, digest in clean.items()}
    moved = [path for path in noisy if not path.split("/")[1].startswith(path.split("/")[0] + "_")]
    assert 0.1 * 120 < len(moved) < 0.4 * 120
    assert generate_synthetic_fish(tmp_path / "again", mislabelled=0.25, **kwargs).is_dir()
    assert _digests(tmp_path / "again") == noisy


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(species=1), "species must be between 2 and 12"),
        (dict(species=13), "species must be between 2 and 12"),
        (dict(size=8), "size must be between 16 and 512"),
        (dict(class_counts=[5, 5]), "needs 3 positive counts"),
        (dict(hard_species=0), "hard_species must be between 1 and 2"),
        (dict(seed=-1), "seed must be >= 0"),
        (dict(mislabelled=1.0), "mislabelled must be a share"),
    ],
)
def test_bad_arguments_are_user_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    arguments = dict(species=3, per_class=2, size=16, seed=0) | kwargs
    with pytest.raises(UserError, match=message):
        generate_synthetic_fish(tmp_path / "fish", **arguments)
    assert not (tmp_path / "fish").exists()


def test_a_non_empty_output_folder_is_refused(fish_dir: Path) -> None:
    with pytest.raises(UserError, match="not an empty folder"):
        generate_synthetic_fish(fish_dir, species=2, per_class=1, size=16, seed=0)


def test_synthetic_fish_source_is_generated_once_into_the_cache(isolated_cache_dir: Path) -> None:
    cfg = DataConfig(
        source="synthetic-fish", image_size=16, synthetic=SyntheticFishConfig(species=3, per_class=6, size=16, seed=5)
    )
    bundle = load_data(cfg)
    assert bundle.summary["source"] == "synthetic-fish"
    assert bundle.class_names == ["bream", "perch", "pike"]
    (folder,) = {Path(p).parents[1] for p in bundle.train.paths}
    assert folder.parent == isolated_cache_dir / "synthetic-fish"
    stamp = folder.stat().st_mtime_ns
    assert load_data(cfg).train.paths == bundle.train.paths
    assert folder.stat().st_mtime_ns == stamp
    other = load_data(
        cfg.model_copy(update={"synthetic": SyntheticFishConfig(species=3, per_class=6, size=16, seed=6)})
    )
    assert Path(other.train.paths[0]).parents[1] != folder


def test_make_fish_command(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "my fish"
    result = runner.invoke(
        app,
        ["make-fish", str(out), "--class-counts", "4,2,3", "--size", "20", "--seed", "1",
         "--hard-species", "1", "--hard-blur", "0.5"],
    )
    assert result.exit_code == 0, result.output
    assert {p.name: len(list(p.glob("*.png"))) for p in out.iterdir()} == {"bream": 4, "species_x": 2, "pike": 3}
    assert "wrote 9 fish photos" in result.output and "species_x 2" in result.output
    bad = runner.invoke(app, ["make-fish", str(tmp_path / "other"), "--class-counts", "4,two"])
    assert isinstance(bad.exception, UserError) and "--class-counts" in str(bad.exception)
