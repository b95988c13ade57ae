"""Training-time augmentation on the cached uint8 images (torchvision.transforms.v2), per ``data.augment``."""

from __future__ import annotations

import torch
from torch.utils.data import default_collate
from torchvision.transforms import v2

from cnnclinic.config import AugmentConfig
from cnnclinic.errors import UserError


def _standard_transforms(cfg: AugmentConfig, image_size: int) -> list[v2.Transform]:
    steps: list[v2.Transform] = []
    if cfg.random_resized_crop:
        steps.append(v2.RandomResizedCrop(image_size, scale=(0.6, 1.0), antialias=True))
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.rotation > 0:
        steps.append(v2.RandomRotation(cfg.rotation))
    if cfg.color_jitter > 0:
        strength = cfg.color_jitter
        steps.append(
            v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength, hue=min(strength / 4, 0.5))
        )
    if cfg.policy == "trivialaugment":
        steps.append(v2.TrivialAugmentWide())
    elif cfg.policy == "randaugment":
        steps.append(v2.RandAugment())
    return steps


def strong_transform(image_size: int) -> v2.Transform:
    """The harder pipeline for ``strong_classes``: a mild crop-and-zoom and a flip, nothing else.

    Colour is left alone on purpose: a lagging class is often told from its look-alike by colour alone
    (a fin's tint), and colour jitter or TrivialAugment's colour ops erase that very cue. Rotation and
    shear are left out too: only this class would show their black corners, and the network learns the
    corners as the class (measured on the demo's case 4: the twin's AUC fell from 0.97 to 0.82).
    """
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(0.75, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    )


class ClassAwareAugment:
    """Augments a uint8 image by its label: the strong pipeline for ``strong_labels``, the standard one otherwise."""

    def __init__(self, standard: v2.Transform | None, strong: v2.Transform | None, strong_labels: frozenset[int]):
        self.standard = standard
        self.strong = strong
        self.strong_labels = strong_labels

    def __call__(self, image: torch.Tensor, label: int) -> torch.Tensor:
        transform = self.strong if label in self.strong_labels else self.standard
        return image if transform is None else transform(image)


def build_train_augment(cfg: AugmentConfig, class_names: list[str], image_size: int) -> ClassAwareAugment | None:
    """The training augmentation described by ``cfg``, or None when it asks for none."""
    unknown = [name for name in cfg.strong_classes if name not in class_names]
    if unknown:
        raise UserError(
            f"data.augment.strong_classes: unknown class {', '.join(map(repr, unknown))} "
            f"(classes: {', '.join(class_names)})"
        )
    steps = _standard_transforms(cfg, image_size)
    standard = v2.Compose(steps) if steps else None
    strong_labels = frozenset(class_names.index(name) for name in cfg.strong_classes)
    if standard is None and not strong_labels:
        return None
    return ClassAwareAugment(standard, strong_transform(image_size) if strong_labels else None, strong_labels)


class MixingCollate:
    """Collates a batch, then mixes it with MixUp/CutMix: targets become soft, N x K."""

    def __init__(self, mix: v2.Transform):
        self.mix = mix

    def __call__(self, batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mix(*default_collate(batch))


def build_mixing_collate(cfg: AugmentConfig, num_classes: int) -> MixingCollate | None:
    """MixUp and/or CutMix (one picked at random per batch when both alphas are set), or None."""
    mixers: list[v2.Transform] = []
    if cfg.mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes))
    if cfg.cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes))
    if not mixers:
        return None
    return MixingCollate(mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers))
