"""Loaders: normalised items, reproducible shuffling, augmentation on train only, strong classes, MixUp, balancing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from cnnclinic.config import Config, build_config
from cnnclinic.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CachedImageDataset,
    DataBundle,
    generate_synthetic_fish,
    load_data,
    make_loaders,
)
from cnnclinic.errors import UserError


def _config(fish_dir: Path, *overrides: str) -> Config:
    return build_config(overrides=[f"data.source={fish_dir}", "data.image_size=32", "train.batch_size=16", *overrides])


@pytest.fixture(scope="module")
def bundle(fish_dir: Path):
    return load_data(_config(fish_dir).data)


def _all(loader) -> tuple[torch.Tensor, torch.Tensor]:
    images, targets = zip(*loader)
    return torch.cat(images), torch.cat(targets)


def _plain(dataset: CachedImageDataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def test_items_are_imagenet_normalised_floats() -> None:
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 4, 4).contiguous()
    dataset = CachedImageDataset(images, torch.tensor([0, 1]), ["a", "b"])
    black, label = dataset[0]
    white, _ = dataset[1]
    assert black.dtype == torch.float32 and black.shape == (3, 4, 4) and label == 0
    for channel, (mean, std) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD)):
        assert black[channel, 0, 0].item() == pytest.approx(-mean / std)
        assert white[channel, 0, 0].item() == pytest.approx((1 - mean) / std)


def test_val_and_test_never_augment_nor_shuffle(fish_dir: Path) -> None:
    cfg = _config(fish_dir, "data.test_fraction=0.2", "data.augment.hflip=true", "data.augment.rotation=30",
                  "data.augment.policy=trivialaugment", "data.augment.mixup_alpha=0.4")
    bundle = load_data(cfg.data)
    loaders = make_loaders(bundle, cfg)
    for loader, dataset in ((loaders.val, bundle.val), (loaders.test, bundle.test)):
        images, targets = _all(loader)
        assert torch.equal(targets, dataset.targets)
        assert torch.equal(images, _plain(dataset))


def test_train_order_is_reproducible_from_the_seed(fish_dir: Path, bundle) -> None:
    def first_batch_targets(seed: int) -> list[list[int]]:
        loader = make_loaders(bundle, _config(fish_dir, f"train.seed={seed}")).train
        return [targets.tolist() for _, targets in loader][:3]

    assert first_batch_targets(1) == first_batch_targets(1)
    assert first_batch_targets(1) != first_batch_targets(2)


def test_augmentation_changes_training_images_only(fish_dir: Path, bundle) -> None:
    cfg = _config(
        fish_dir, "data.augment.hflip=true", "data.augment.color_jitter=0.3", "data.augment.random_resized_crop=true"
    )
    loaders = make_loaders(bundle, cfg)
    augmented = loaders.train.dataset
    assert sum(not torch.equal(augmented[i][0], bundle.train[i][0]) for i in range(20)) >= 15
    assert bundle.train.augment is None  # the bundle itself stays plain
    plain = make_loaders(bundle, _config(fish_dir)).train.dataset
    assert all(torch.equal(plain[i][0], bundle.train[i][0]) for i in range(20))


def test_strong_classes_get_augmented_and_the_others_do_not(fish_dir: Path, bundle) -> None:
    cfg = _config(fish_dir, "data.augment.strong_classes=[pike]")
    augmented = make_loaders(bundle, cfg).train.dataset
    pike = bundle.class_names.index("pike")
    changed = Counter()
    for i in range(len(bundle.train)):
        if not torch.equal(augmented[i][0], bundle.train[i][0]):
            changed[int(bundle.train.targets[i])] += 1
    assert set(changed) == {pike}
    assert changed[pike] >= 0.8 * int((bundle.train.targets == pike).sum())


def test_unknown_strong_class_lists_the_classes(fish_dir: Path, bundle) -> None:
    with pytest.raises(UserError, match=r"unknown class 'shark' \(classes: bream, perch, pike, trout\)"):
        make_loaders(bundle, _config(fish_dir, "data.augment.strong_classes=[pike, shark]"))


@pytest.mark.parametrize("alphas", [("0.4", "0"), ("0", "1.0"), ("0.4", "1.0")])
def test_mixup_and_cutmix_give_soft_targets(fish_dir: Path, bundle, alphas: tuple[str, str]) -> None:
    cfg = _config(fish_dir, f"data.augment.mixup_alpha={alphas[0]}", f"data.augment.cutmix_alpha={alphas[1]}")
    images, targets = next(iter(make_loaders(bundle, cfg).train))
    assert images.shape == (16, 3, 32, 32)
    assert targets.shape == (16, 4) and targets.dtype == torch.float32
    assert torch.allclose(targets.sum(dim=1), torch.ones(16))
    assert (targets.max(dim=1).values < 1).any()  # at least one sample really is a mix


def test_balanced_sampling_evens_out_an_imbalanced_set(tmp_path: Path) -> None:
    folder = generate_synthetic_fish(
        tmp_path / "fish", species=3, per_class=1, size=16, seed=0, class_counts=[60, 10, 10]
    )
    cfg = build_config(overrides=[f"data.source={folder}", "data.image_size=16", "train.batch_size=8"])
    bundle = load_data(cfg.data)
    counts = Counter()
    for seed in range(10):
        balanced = make_loaders(bundle, cfg.with_overrides({"data.balanced_sampling": True, "train.seed": seed})).train
        counts.update(torch.cat([targets for _, targets in balanced]).tolist())
    shares = [counts[k] / sum(counts.values()) for k in range(3)]
    assert all(0.25 < share < 0.42 for share in shares), shares
    unbalanced = Counter(torch.cat([t for _, t in make_loaders(bundle, cfg).train]).tolist())
    assert unbalanced[bundle.class_names.index("bream")] == 48


def test_a_last_batch_of_one_is_dropped() -> None:
    images = torch.zeros(17, 3, 4, 4, dtype=torch.uint8)
    dataset = CachedImageDataset(images, torch.arange(17) % 2, [str(i) for i in range(17)])
    bundle = DataBundle(dataset, dataset, None, ["a", "b"])
    loaders = make_loaders(bundle, build_config(overrides=["train.batch_size=8"]))
    assert [len(t) for _, t in loaders.train] == [8, 8]
    assert [len(t) for _, t in loaders.val] == [8, 8, 1] and loaders.test is None
