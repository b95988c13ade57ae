"""The ``digits`` source: scikit-learn's 8 x 8 handwritten digits (shipped with it, no download), as RGB."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits


def load_digit_images(image_size: int) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """(uint8 images N x 3 x S x S, int64 targets, paths like ``digits/00042``, class names "0".."9")."""
    digits = load_digits()
    grey = torch.from_numpy(digits.images).float().unsqueeze(1) * (255.0 / 16.0)  # pixel values run 0..16
    upscaled = F.interpolate(grey, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = upscaled.clamp(0, 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    targets = torch.from_numpy(digits.target).to(torch.int64)
    paths = [f"digits/{index:05d}" for index in range(len(targets))]
    return images, targets, paths, [str(name) for name in digits.target_names]
