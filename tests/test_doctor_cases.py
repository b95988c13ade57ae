"""The doctor on a suite of faulty and healthy training set-ups (sklearn digits, real 8x8 images; seconds each).

Each faulty set-up must yield its symptom (and not a mere echo of it); each healthy one must yield nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from cnnclinic import Doctor

_DIGITS: dict[str, torch.Tensor] = {}


def digits() -> dict[str, torch.Tensor]:
    """Standardised digits: 1,437 train / 360 val images, 10 classes, fixed split."""
    if not _DIGITS:
        data = load_digits()
        x = torch.tensor(data.data, dtype=torch.float32) / 16.0
        y = torch.tensor(data.target, dtype=torch.long)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        x, y = x[order], y[order]
        mean, std = x[:1437].mean(0), x[:1437].std(0) + 0.1
        x = (x - mean) / std
        _DIGITS.update(x_train=x[:1437], y_train=y[:1437], x_val=x[1437:], y_val=y[1437:])
    return dict(_DIGITS)


@dataclass
class Run:
    doctor: Doctor
    val_acc: float

    @property
    def symptoms(self) -> list[str]:
        return [f.symptom for f in self.doctor.findings()]

    def get(self, symptom: str):
        return next(f for f in self.doctor.findings() if f.symptom == symptom)


def train(
    model: nn.Module,
    optimizer_fn: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    epochs: int,
    *,
    data: dict[str, torch.Tensor] | None = None,
    image: bool = False,
    batch_size: int = 32,
    seed: int = 0,
    doctor_kwargs: dict | None = None,
    pass_logits: bool = True,
) -> Run:
    """Plain PyTorch loop exactly as in the issue, with the Doctor attached."""
    torch.manual_seed(seed)
    data = data or digits()
    shape = (-1, 1, 8, 8) if image else (-1, 64)
    x_train, y_train = data["x_train"].reshape(shape), data["y_train"]
    x_val, y_val = data["x_val"].reshape(shape), data["y_val"]
    optimizer = optimizer_fn(list(model.parameters()))
    doctor = Doctor(model, optimizer, num_classes=10, **(doctor_kwargs or {}))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y_train), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            optimizer.zero_grad()
            logits = model(x_train[index])
            loss = F.cross_entropy(logits, y_train[index])
            loss.backward()
            if pass_logits:
                doctor.after_backward(loss, logits=logits, targets=y_train[index])
            else:
                doctor.after_backward(loss)
            optimizer.step()
            if doctor.should_stop:
                break
        model.eval()
        with torch.no_grad():
            val_logits = model(x_val)
        doctor.end_epoch(val_logits=val_logits, val_targets=y_val)
        if doctor.should_stop:
            break
    with torch.no_grad():
        val_acc = float((model(x_val).argmax(1) == y_val).float().mean())
    doctor.close()
    return Run(doctor, val_acc)


# ------------------------------------------------------------------------------------------------ models
def mlp(hidden: list[int], activation: Callable[[], nn.Module], dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = 64
    for size in hidden:
        layers += [nn.Linear(width, size), activation()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def small_cnn(batchnorm: bool = False) -> nn.Sequential:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1)] + ([nn.BatchNorm2d(cout)] if batchnorm else []) + [nn.ReLU()]

    return nn.Sequential(
        *block(1, 16), *block(16, 16), nn.MaxPool2d(2), *block(16, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, 10),
    )


class ResidualNet(nn.Module):
    """Not a Sequential: conv stem, two residual blocks with BatchNorm, functional ReLUs."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                          nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))
            for _ in range(2)
        )
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        for block in self.blocks:
            x = F.relu(x + block(x))
        return self.head(x.mean(dim=(2, 3)))


def init_(model: nn.Module, std: float | None = None, bias: float | None = None) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Linear):
            if std is not None:
                nn.init.normal_(module.weight, std=std)
            if bias is not None:
                nn.init.constant_(module.bias, bias)
    return model


def sgd(lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def adam(lr: float, weight_decay: float = 0.0):
    return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def subset(data: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    return dict(data, x_train=data["x_train"][keep], y_train=data["y_train"][keep])


# ------------------------------------------------------------------------------------------- set-ups
def healthy_setups() -> dict[str, Callable[[], Run]]:
    torch.manual_seed(0)
    return {
        "cnn_adam": lambda: train(small_cnn(), adam(1e-3), 5, image=True),
        "cnn_bn_sgd_momentum": lambda: train(small_cnn(batchnorm=True), sgd(0.05, momentum=0.9), 5, image=True),
        "residual_adamw": lambda: train(ResidualNet(), adam(3e-3, weight_decay=1e-4), 4, image=True),
        "mlp_sgd": lambda: train(mlp([64, 64], nn.ReLU), sgd(0.1), 6),
        "mlp_regularized_long": lambda: train(
            mlp([128, 64], nn.ReLU, dropout=0.3), adam(1e-3, weight_decay=5e-4), 16
        ),
        "tanh_mlp_adam": lambda: train(mlp([64, 64], nn.Tanh), adam(1e-3), 6),
        "elu_mlp_sgd_momentum": lambda: train(mlp([64, 64, 64], nn.ELU), sgd(0.02, momentum=0.9), 6),
        "sigmoid_mlp_shallow_adam": lambda: train(mlp([64], nn.Sigmoid), adam(3e-3), 6),
    }
