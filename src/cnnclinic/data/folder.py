"""Scan an ImageFolder tree and decode any image file into a uint8 3 x S x S tensor.

Decoding is defensive: every file that Pillow cannot turn into pixels (corrupt, truncated, empty,
not an image, beyond the decompression-bomb limit) becomes a ``SkippedFile`` instead of an error,
so one bad photo never stops a training run.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnclinic.errors import UserError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Modes whose samples are 16 or 32 bit integers: scaled to 8 bit instead of being clipped at 255.
_WIDE_INT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


@dataclass(frozen=True)
class SkippedFile:
    """A file that was left out of the data set, and why (one short phrase)."""

    path: str
    reason: str


@dataclass(frozen=True)
class FolderScan:
    """The files of an ImageFolder tree: ``files[i]`` is relative to ``root`` and belongs to ``labels[i]``."""

    root: Path
    class_names: list[str]
    files: list[str]
    labels: list[int]


def scan_folder(root: Path, what: str = "data folder") -> FolderScan:
    """List the class sub-folders of ``root`` and every visible file in them (sorted, so runs agree)."""
    if not root.exists():
        raise UserError(f"{what} not found: {root}")
    if not root.is_dir():
        raise UserError(f"{what} is not a folder: {root}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise UserError(f"{what} {root} has no class folders (expected one sub-folder per class)")
    files: list[str] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        for path in sorted(class_dir.rglob("*")):
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(class_dir).parts):
                files.append(path.relative_to(root).as_posix())
                labels.append(label)
    return FolderScan(root, [d.name for d in class_dirs], files, labels)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha is composited on white, 16-bit samples are scaled (not clipped)."""
    if image.mode in _WIDE_INT_MODES:
        samples = np.asarray(image).astype(np.float64)
        image = Image.fromarray(np.clip(samples / 257.0, 0, 255).round().astype(np.uint8))
    elif image.mode == "F":
        samples = np.asarray(image, dtype=np.float64)
        scale = 255.0 if samples.max(initial=0.0) <= 1.0 else 1.0
        image = Image.fromarray(np.clip(samples * scale, 0, 255).round().astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in {"RGBA", "LA", "PA", "La", "RGBa"} or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(path: Path, image_size: int) -> torch.Tensor | str:
    """The image at ``path`` as a uint8 tensor 3 x S x S, or a short reason why it cannot be used."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its pixel limit; treat both as a decompression bomb.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.format == "JPEG":
                    image.draft("RGB", (image_size, image_size))  # DCT downscaling: big photos decode fast
                image.load()
                image = ImageOps.exif_transpose(image)
                rgb = _to_rgb(image).resize((image_size, image_size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "too many pixels (decompression-bomb limit)"
    except UnidentifiedImageError:
        return "not an image"
    except OSError as error:
        text = str(error).lower()
        return "truncated image" if "truncated" in text else f"unreadable ({str(error)[:60]})"
    except Exception as error:  # noqa: BLE001 - decoders of damaged files raise anything (zlib, struct, ...)
        return f"corrupt image ({type(error).__name__})"
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
