"""Model registry: builders register under a name, ``build_model`` looks ``cfg.arch`` up (timm-style)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from torch import nn

from cnnclinic.config import ModelConfig
from cnnclinic.errors import UserError


class ModelBuilder(Protocol):
    def __call__(self, cfg: ModelConfig, num_classes: int, image_size: int) -> nn.Module: ...


MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: ``@register_model("plain_cnn")`` makes the builder available as ``model.arch``."""

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = builder
        return builder

    return decorator


def build_model(cfg: ModelConfig, num_classes: int, image_size: int = 64) -> nn.Module:
    """The network named by ``cfg.arch`` with ``num_classes`` outputs, for square images of ``image_size``."""
    builder = MODELS.get(cfg.arch)
    if builder is None:
        raise UserError(f"model.arch={cfg.arch!r} is not a known model (allowed: {', '.join(sorted(MODELS))})")
    if num_classes < 2:
        raise UserError(f"a classifier needs at least 2 classes, got {num_classes}")
    return builder(cfg, num_classes, image_size)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (frozen ones are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
