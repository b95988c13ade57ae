"""The one Dataset every loader uses: images decoded once into a uint8 tensor, normalised on access."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# An augmentation sees the uint8 image and its label (so some classes can be augmented harder).
Augment = Callable[[torch.Tensor, int], torch.Tensor]



def to_normalised_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 image -> float in [0, 1] -> ImageNet-normalised (the v2 kernels: no per-call dispatch cost)."""
    return TF.normalize(TF.to_dtype(image, torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD)


class CachedImageDataset(Dataset):
    """``images`` (uint8 N x 3 x S x S) with ``targets``; items are ImageNet-normalised float tensors.

    ``paths[i]`` says where image i came from and ``groups[i]`` (when known) which group it belongs to.
    Epochs never touch the files again: augmentation, if any, runs on the cached uint8 pixels.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        paths: list[str],
        groups: list[str] | None = None,
        augment: Augment | None = None,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a uint8 tensor N x 3 x S x S, got {images.dtype} {tuple(images.shape)}")
        if not len(images) == len(targets) == len(paths) or (groups is not None and len(groups) != len(images)):
            raise ValueError("images, targets, paths and groups must have one entry per image")
        self.images = images
        self.targets = targets.to(torch.int64)
        self.paths = paths
        self.groups = groups
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        label = int(self.targets[index])
        if self.augment is not None:
            image = self.augment(image, label)
        return to_normalised_float(image), label

    def subset(self, indices: torch.Tensor | list[int]) -> CachedImageDataset:
        """The images at ``indices`` (in that order), without augmentation."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        picked = index.tolist()
        return CachedImageDataset(
            self.images[index],
            self.targets[index],
            [self.paths[i] for i in picked],
            None if self.groups is None else [self.groups[i] for i in picked],
        )

    def with_augment(self, augment: Augment | None) -> CachedImageDataset:
        """The same images (shared, not copied) served through ``augment``."""
        return CachedImageDataset(self.images, self.targets, self.paths, self.groups, augment)
