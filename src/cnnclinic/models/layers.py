"""Building blocks of the plain CNN. Every activation is a fresh module so the doctor's hooks see each one."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.ops import SqueezeExcitation

from cnnclinic.errors import UserError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "prelu": nn.PReLU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
}


def make_activation(name: str) -> nn.Module:
    """A new activation module (never shared, never in-place: hooks must see its own output)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise UserError(f"model.activation={name!r} is not known (allowed: {', '.join(ACTIVATIONS)})") from None


class ChannelGate(nn.Module):
    """CBAM channel attention: a shared MLP over average- and max-pooled features, sigmoid gate."""

    def __init__(self, channels: int, hidden: int, activation: str):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), make_activation(activation), nn.Conv2d(hidden, channels, 1)
        )
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        peak = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * self.gate(avg + peak)


class SpatialGate(nn.Module):
    """CBAM spatial attention: a 7x7 conv over the channel-wise mean and max maps, sigmoid gate."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        summary = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * self.gate(self.conv(summary))


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., 2018): channel gate, then spatial gate."""

    def __init__(self, channels: int, hidden: int, activation: str):
        super().__init__()
        self.channel = ChannelGate(channels, hidden, activation)
        self.spatial = SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


def make_attention(kind: str, channels: int, activation: str, reduction: int = 8) -> nn.Module | None:
    """Squeeze-and-excitation or CBAM over ``channels``; the bottleneck uses the model's activation."""
    hidden = max(1, channels // reduction)
    if kind == "se":
        return SqueezeExcitation(channels, hidden, activation=partial(make_activation, activation))
    if kind == "cbam":
        return CBAM(channels, hidden, activation)
    if kind == "none":
        return None
    raise UserError(f"model.attention={kind!r} is not known (allowed: none, se, cbam)")


class ConvBlock(nn.Sequential):
    """conv -> [BatchNorm2d] -> activation -> [attention]. 'same' padding keeps the spatial size."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        activation: str,
        batchnorm: bool,
        attention: str = "none",
    ):
        # BatchNorm's shift makes a conv bias redundant.
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, padding="same", bias=not batchnorm)
        ]
        if batchnorm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(make_activation(activation))
        gate = make_attention(attention, out_channels, activation)
        if gate is not None:
            layers.append(gate)
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """``shortcut(x) + block(x)``: the sum is not passed through another activation, so the identity
    path carries the gradient unchanged even when the block's activation saturates (sigmoid, tanh).
    The shortcut is the identity, or a 1x1 projection (plus BatchNorm) when the channel count changes."""

    def __init__(self, block: ConvBlock, in_channels: int, out_channels: int, batchnorm: bool):
        super().__init__()
        self.block = block
        self.shortcut: nn.Module
        if in_channels == out_channels:
            self.shortcut = nn.Identity()
        else:
            projection: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 1, bias=not batchnorm)]
            if batchnorm:
                projection.append(nn.BatchNorm2d(out_channels))
            self.shortcut = nn.Sequential(*projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)
