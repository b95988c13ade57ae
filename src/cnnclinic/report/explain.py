"""Validation images for the report: reload them by path and show where the model looks (Grad-CAM)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn
from torchvision.transforms.v2 import functional as TF

from cnnclinic.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from cnnclinic.data.folder import decode_image


def resolve_image_path(path: str, data_source: str | None) -> Path | None:
    """The file behind a val_predictions path: as given, or relative to the data folder; None if gone."""
    candidates = [Path(path)]
    if data_source:
        candidates.append(Path(data_source) / path)
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def load_val_images(paths: list[str], data_source: str | None, image_size: int) -> list[torch.Tensor | None]:
    """Each image as uint8 3 x S x S, decoded exactly as for training; None where it is missing or unreadable."""
    images: list[torch.Tensor | None] = []
    for path in paths:
        resolved = resolve_image_path(path, data_source)
        decoded = decode_image(resolved, image_size) if resolved is not None else None
        images.append(decoded if isinstance(decoded, torch.Tensor) else None)
    return images


def last_conv_layer(model: nn.Module) -> nn.Conv2d | None:
    convs = [module for module in model.modules() if isinstance(module, nn.Conv2d)]
    return convs[-1] if convs else None


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x S x S -> the float, ImageNet-normalised batch the model was trained on."""
    return TF.normalize(TF.to_dtype(images, torch.float32, scale=True), list(IMAGENET_MEAN), list(IMAGENET_STD))


def gradcam_maps(model: nn.Module, images: torch.Tensor, target_class: int) -> np.ndarray | None:
    """Grad-CAM of ``target_class`` on the last conv layer, upsampled to the images: N x S x S in 0..1.

    None when the model has no convolution to explain.
    """
    layer = last_conv_layer(model)
    if layer is None:
        return None
    for module in model.modules():
        # Grad-CAM reads the layer's output after the forward pass; an in-place activation would overwrite it.
        if getattr(module, "inplace", False):
            module.inplace = False
    inputs = to_model_input(images)
    attributions = LayerGradCam(model, layer).attribute(inputs, target=target_class, relu_attributions=True)
    upsampled = LayerAttribution.interpolate(attributions, tuple(images.shape[-2:]), interpolate_mode="bilinear")
    maps = upsampled.detach()[:, 0].clamp_min(0).numpy()
    peaks = maps.reshape(len(maps), -1).max(axis=1)
    # Each map is scaled to its own peak; an all-zero map (the class finds no evidence) stays zero.
    return maps / np.where(peaks > 0, peaks, 1.0)[:, None, None]


def to_display(image: torch.Tensor) -> np.ndarray:
    """uint8 3 x S x S tensor -> S x S x 3 array for matplotlib."""
    return image.permute(1, 2, 0).numpy()
