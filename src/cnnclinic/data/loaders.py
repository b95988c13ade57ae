"""DataLoaders for a DataBundle: augmentation, class-balanced sampling and MixUp/CutMix on train only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from cnnclinic.config import Config
from cnnclinic.data.augment import build_mixing_collate, build_train_augment
from cnnclinic.data.dataset import CachedImageDataset

if TYPE_CHECKING:
    from cnnclinic.data.bundle import DataBundle


@dataclass(frozen=True)
class Loaders:
    train: DataLoader
    val: DataLoader
    test: DataLoader | None


def _balanced_sampler(targets: torch.Tensor, num_classes: int, generator: torch.Generator) -> WeightedRandomSampler:
    """Draws every class equally often on average: each image weighs 1 / (images of its class)."""
    counts = torch.bincount(targets, minlength=num_classes).clamp(min=1).to(torch.float64)
    return WeightedRandomSampler(1.0 / counts[targets], num_samples=len(targets), replacement=True, generator=generator)


def _eval_loader(dataset: CachedImageDataset, cfg: Config) -> DataLoader:
    return DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=False, num_workers=cfg.data.num_workers)


def make_loaders(bundle: DataBundle, cfg: Config) -> Loaders:
    """Train loader (augmented, shuffled or class-balanced, seeded by ``train.seed``) and plain val/test loaders."""
    num_classes = len(bundle.class_names)
    image_size = bundle.train.images.shape[-1]
    train_set = bundle.train.with_augment(build_train_augment(cfg.data.augment, bundle.class_names, image_size))
    generator = torch.Generator().manual_seed(cfg.train.seed)
    sampler = _balanced_sampler(train_set.targets, num_classes, generator) if cfg.data.balanced_sampling else None
    batch_size = cfg.train.batch_size
    train = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=cfg.data.num_workers,
        persistent_workers=cfg.data.num_workers > 0,
        collate_fn=build_mixing_collate(cfg.data.augment, num_classes),
        # A last batch of one image breaks batch norm; drop it rather than crash a run.
        drop_last=len(train_set) % batch_size == 1 and len(train_set) > 1,
    )
    return Loaders(
        train=train,
        val=_eval_loader(bundle.val, cfg),
        test=None if bundle.test is None else _eval_loader(bundle.test, cfg),
    )
