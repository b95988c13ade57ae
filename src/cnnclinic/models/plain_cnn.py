"""The plain CNN: every switch of ``ModelConfig`` is a real architectural change the doctor can prescribe."""

from __future__ import annotations

import math

import torch
from torch import nn

from cnnclinic.config import ModelConfig
from cnnclinic.models.init import init_weights
from cnnclinic.models.layers import ConvBlock, ResidualBlock, make_activation
from cnnclinic.models.registry import register_model

# Pooling stops once the feature map would drop below this many pixels.
MIN_FEATURE_SIZE = 4
# Channels double at each pooling stage up to this multiple of ``width``.
MAX_WIDTH_MULTIPLIER = 8


def pooling_positions(depth: int, image_size: int) -> list[int]:
    """Indices of the conv layers followed by a stage boundary (2x downsampling, channels doubling).

    There are as many stages as halvings keep the map at least MIN_FEATURE_SIZE px, at most one
    between each pair of convs, spread evenly through the stack (depth 16 at 32 px: after convs 4, 8, 12).
    """
    halvings = max(0, int(math.log2(max(image_size, 1) / MIN_FEATURE_SIZE)))
    stages = min(depth - 1, halvings)
    return [round((k + 1) * depth / (stages + 1)) - 1 for k in range(stages)]


class PlainCNN(nn.Module):
    """``features`` (conv blocks with pooling) -> global average pool -> ``classifier`` (FC head)."""

    def __init__(self, cfg: ModelConfig, num_classes: int, image_size: int = 64):
        super().__init__()
        stage_ends = set(pooling_positions(cfg.depth, image_size))
        layers: list[nn.Module] = []
        in_channels, channels = 3, cfg.width
        for index in range(cfg.depth):
            block = ConvBlock(in_channels, channels, cfg.kernel_size, cfg.activation, cfg.batchnorm, cfg.attention)
            layers.append(ResidualBlock(block, in_channels, channels, cfg.batchnorm) if cfg.residual else block)
            in_channels = channels
            if index in stage_ends:
                # With pool=none the stages still widen the network; only the downsampling is left out.
                if cfg.pool == "max":
                    layers.append(nn.MaxPool2d(2))
                elif cfg.pool == "avg":
                    layers.append(nn.AvgPool2d(2))
                channels = min(channels * 2, cfg.width * MAX_WIDTH_MULTIPLIER)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = _head(in_channels, cfg, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _head(in_features: int, cfg: ModelConfig, num_classes: int) -> nn.Sequential:
    """[Dropout] Linear [BatchNorm1d] activation per hidden size in ``cfg.head``, then [Dropout] Linear."""
    layers: list[nn.Module] = []
    for hidden in cfg.head:
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        layers.append(nn.Linear(in_features, hidden))
        if cfg.batchnorm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(make_activation(cfg.activation))
        in_features = hidden
    if cfg.dropout > 0:
        layers.append(nn.Dropout(cfg.dropout))
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


@register_model("plain_cnn")
def build_plain_cnn(cfg: ModelConfig, num_classes: int, image_size: int = 64) -> nn.Module:
    return init_weights(PlainCNN(cfg, num_classes, image_size), cfg.init, cfg.activation, cfg.init_std)
