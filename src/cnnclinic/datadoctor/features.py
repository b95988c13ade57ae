"""Per-image measurements taken once from the decoded uint8 tensors (no re-decoding, batched in torch).

Near-twin signature. A 64-bit perceptual hash (DCT of a 32 x 32 grey thumbnail) was the first try, and it
does not separate the frames of one video from other videos on the real fish photos: those photos are
rotated crops with black corners, so every hash is dominated by the same corner pattern (nearest
same-video hash at median 8 bits, nearest other-video hash at median 10). What does separate them is
cheap: the layout (a 4 x 4 colour thumbnail, centred on the data set's mean, compared by cosine) plus the
colour statistics of the content pixels (mean and std per channel, ignoring near-black padding, compared
by Euclidean distance). Each distance is divided by its median over random pairs of the data set, so
``twin_distance`` is scale-free: 1.0 is a typical pair, and ``NEAR_TWIN_DISTANCE`` is the calibrated cut.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Calibrated on the real fish (fish-egu2017, 64 px): at 0.12, 46-56 % of validation images of a random
# split have a near-twin in train, and 0-1 % of a video-grouped split (see the README, "The data doctor").
NEAR_TWIN_DISTANCE = 0.12
# A pixel whose channels sum below this (of 3 x 255) is padding (letterbox, rotation corners), not content.
_PADDING_LEVEL = 15
_BATCH = 1024
_GREY_WEIGHTS = torch.tensor([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class ImageFeatures:
    """One row per image. Grey-level statistics are on the 0-255 scale of the cached pixels."""

    layout: torch.Tensor  # N x 48: 4 x 4 RGB thumbnail
    colour: torch.Tensor  # N x 6: mean and std per channel of the content pixels, 0-1
    blur: torch.Tensor  # N: variance of the Laplacian over content pixels (low = blurry)
    brightness: torch.Tensor  # N: mean grey level
    contrast: torch.Tensor  # N: std of the grey level
    grayscale: torch.Tensor  # N bool: the three channels are (almost) equal
    digests: list[str]  # exact-content hash of the cached pixels

    def __len__(self) -> int:
        return len(self.digests)


def _masked_mean_var(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance over the last two dims where ``mask`` (float 0/1, broadcastable) is 1."""
    count = mask.sum((-2, -1)).clamp(min=1)
    mean = (values * mask).sum((-2, -1)) / count
    return mean, ((values**2 * mask).sum((-2, -1)) / count - mean**2).clamp(min=0)


def _batch_features(images: torch.Tensor) -> dict[str, torch.Tensor]:
    pixels = images.float()
    content = pixels.sum(1) > _PADDING_LEVEL
    # Images that are (almost) all dark have no padding to ignore: use every pixel.
    content |= (content.float().mean((1, 2)) < 0.05).view(-1, 1, 1)
    mean, var = _masked_mean_var(pixels, content.unsqueeze(1).float())
    grey = (pixels * _GREY_WEIGHTS.view(1, 3, 1, 1)).sum(1)
    laplacian = (
        grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:] + grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] - 4 * grey[:, 1:-1, 1:-1]
    )
    # Only where the Laplacian's whole cross is content: the edge of the padding is not image sharpness.
    inner = (
        content[:, 1:-1, 1:-1]
        & content[:, 1:-1, :-2] & content[:, 1:-1, 2:] & content[:, :-2, 1:-1] & content[:, 2:, 1:-1]
    )
    inner |= (inner.sum((1, 2)) < 9).view(-1, 1, 1)
    _, blur = _masked_mean_var(laplacian, inner.float())
    return {
        "layout": F.adaptive_avg_pool2d(pixels, 4).flatten(1) / 255.0,
        "colour": torch.cat([mean, var.sqrt()], 1) / 255.0,
        "blur": blur,
        "brightness": grey.mean((1, 2)),
        "contrast": grey.std((1, 2)),
        "grayscale": (images.amax(1) - images.amin(1)).float().mean((1, 2)) < 2.0,
    }


def compute_features(images: torch.Tensor) -> ImageFeatures:
    """Measure every image of a non-empty uint8 N x 3 x S x S tensor."""
    parts = [_batch_features(images[start : start + _BATCH]) for start in range(0, len(images), _BATCH)]
    columns = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
    digests = [hashlib.blake2b(image.numpy().tobytes(), digest_size=12).hexdigest() for image in images]
    return ImageFeatures(digests=digests, **columns)


class TwinMetric:
    """The scale-free near-twin distance between images of one data set (see the module docstring)."""

    def __init__(self, features: ImageFeatures, *, seed: int = 0, sample_pairs: int = 20000):
        self._layout = F.normalize(features.layout - features.layout.mean(0), dim=1)
        self._colour = features.colour
        generator = torch.Generator().manual_seed(seed)
        n = len(features)
        first = torch.randint(n, (sample_pairs,), generator=generator)
        second = torch.randint(n, (sample_pairs,), generator=generator)
        distinct = first != second
        first, second = first[distinct], second[distinct]
        layout = 1 - (self._layout[first] * self._layout[second]).sum(1)
        colour = (self._colour[first] - self._colour[second]).norm(dim=1)
        # A median of 0 (a data set of identical images, or a single image) falls back to the raw scale.
        self._layout_scale = float(layout.median()) if len(layout) and layout.median() > 0 else 1.0
        self._colour_scale = float(colour.median()) if len(colour) and colour.median() > 0 else 1.0

    def nearest(self, queries: torch.Tensor, references: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For each query index, the closest reference index and its distance (chunked, N x M never held)."""
        if len(references) == 0:
            return torch.full((len(queries),), -1), torch.full((len(queries),), float("inf"))
        distances, indices = [], []
        ref_layout, ref_colour = self._layout[references], self._colour[references]
        for start in range(0, len(queries), 512):
            chunk = queries[start : start + 512]
            distance = (1 - self._layout[chunk] @ ref_layout.T).clamp(min=0) / self._layout_scale
            distance += torch.cdist(self._colour[chunk], ref_colour) / self._colour_scale
            best = distance.min(1)
            distances.append(best.values)
            indices.append(references[best.indices])
        return torch.cat(indices), torch.cat(distances)
