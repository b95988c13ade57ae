"""torchvision backbones, built with ``weights=None`` (nothing is ever downloaded).

``model.pretrained`` may name a local file (safetensors, or a torch state dict readable with
``torch.load(weights_only=True)``) holding torchvision's ImageNet weights; it is loaded into the
1000-class network before the classifier is replaced for ``num_classes``. ``model.dropout`` sets the
classifier dropout of efficientnet_b0 and mobilenet_v3_small (resnet18 has none). The plain-CNN switches
(depth, width, kernel_size, pool, activation, batchnorm, residual, attention, head, init) do not apply:
a backbone keeps torchvision's own architecture and initialisation.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torchvision import models

from cnnclinic.config import ModelConfig
from cnnclinic.errors import UserError
from cnnclinic.models.registry import register_model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file or a weights-only torch file; UserError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model.pretrained: file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise UserError(f"model.pretrained: cannot read {path} ({reason})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"model.pretrained: {path} does not hold a state dict of tensors")
    return state


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Load every weight of ``model`` from ``path``; missing, unexpected or misshapen keys -> UserError."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or misshapen:
        problems = [
            f"{label} {len(keys)} (e.g. {keys[0]})"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen))
            if keys
        ]
        raise UserError(
            f"model.pretrained: {path} does not fit {type(model).__name__} with 1000 classes: {', '.join(problems)}"
        )
    model.load_state_dict(state)


def _torchvision_model(factory: Callable[..., nn.Module], cfg: ModelConfig, **kwargs: Any) -> nn.Module:
    model = factory(weights=None, **kwargs)
    if cfg.pretrained:
        load_pretrained(model, cfg.pretrained)
    return model


def _new_classifier(layer: nn.Module, num_classes: int) -> nn.Linear:
    assert isinstance(layer, nn.Linear)
    return nn.Linear(layer.in_features, num_classes)


@register_model("resnet18")
def build_resnet18(cfg: ModelConfig, num_classes: int, image_size: int = 64) -> nn.Module:
    model = _torchvision_model(models.resnet18, cfg)
    model.fc = _new_classifier(model.fc, num_classes)
    return model


@register_model("efficientnet_b0")
def build_efficientnet_b0(cfg: ModelConfig, num_classes: int, image_size: int = 64) -> nn.Module:
    model = _torchvision_model(models.efficientnet_b0, cfg, dropout=cfg.dropout)
    model.classifier[-1] = _new_classifier(model.classifier[-1], num_classes)
    return model


@register_model("mobilenet_v3_small")
def build_mobilenet_v3_small(cfg: ModelConfig, num_classes: int, image_size: int = 64) -> nn.Module:
    model = _torchvision_model(models.mobilenet_v3_small, cfg, dropout=cfg.dropout)
    model.classifier[-1] = _new_classifier(model.classifier[-1], num_classes)
    return model
