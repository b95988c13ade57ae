"""The doctor on a suite of faulty and healthy training set-ups (sklearn digits, real 8x8 images; seconds each).

Each faulty set-up must yield its symptom (and not a mere echo of it); each healthy one must yield nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
        "cnn_adam": lambda: train(small_cnn(), adam(3e-3), 4, image=True),
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


def imbalanced_digits() -> dict[str, torch.Tensor]:
    """Class 0 cut to 10 training images (the others keep ~145)."""
    data = digits()
    keep = torch.ones(len(data["y_train"]), dtype=torch.bool)
    keep[(data["y_train"] == 0).nonzero().flatten()[10:]] = False
    return subset(data, keep)


def digits_with_lagging_three() -> dict[str, torch.Tensor]:
    """Class 3's images replaced by images of 8 (70%) or of random classes (30%), in train and val:
    3 can no longer be told apart, and 8 is its main confusion partner."""
    data = digits()
    generator = torch.Generator().manual_seed(1)
    for split in ("train", "val"):
        x, y = data[f"x_{split}"].clone(), data[f"y_{split}"]
        threes, eights = (y == 3).nonzero().flatten(), (y == 8).nonzero().flatten()
        from_eight = eights[torch.randint(len(eights), (len(threes),), generator=generator)]
        from_any = torch.randint(len(y), (len(threes),), generator=generator)
        x[threes] = x[torch.where(torch.rand(len(threes), generator=generator) < 0.7, from_eight, from_any)]
        data[f"x_{split}"] = x
    return data


def faulty_setups() -> dict[str, tuple[str, Callable[[], Run]]]:
    """name -> (the symptom it must yield, set-up)."""
    return {
        "deep_sigmoid_stack": ("vanishing_gradient", lambda: train(mlp([32] * 8, nn.Sigmoid), sgd(0.1), 2)),
        "adam_lr_1e-6": ("loss_stagnation", lambda: train(mlp([64, 64], nn.ReLU), adam(1e-6), 3)),
        "negative_bias_relu": (
            "dying_relu",
            lambda: train(init_(mlp([64, 64, 64], nn.ReLU), bias=-3.0), sgd(0.05), 2),
        ),
        "relu_lr_burst": ("dying_relu", lambda: train(mlp([64, 64], nn.ReLU), sgd(1.0, momentum=0.9), 2)),
        "tanh_loss_blows_up": (
            "exploding_gradient",
            lambda: train(mlp([64, 64], nn.Tanh), sgd(3.0, momentum=0.9), 2),
        ),
        "tanh_large_init": (
            "saturated_activation",
            lambda: train(init_(mlp([64, 64], nn.Tanh), std=1.0), sgd(0.05), 2),
        ),
        "sgd_lr_50": ("exploding_gradient", lambda: train(mlp([64, 64], nn.ReLU), sgd(50.0), 2)),
        "adam_lr_0.05": ("oscillating_loss", lambda: train(mlp([64, 64], nn.ReLU), adam(0.05), 3)),
        "big_mlp_80_images": (
            "overfitting",
            lambda: train(mlp([512, 512], nn.ReLU), adam(3e-3), 12, data=subset(digits(), torch.arange(80))),
        ),
        "class_3_looks_like_8": (
            "lagging_class",
            lambda: train(mlp([64, 64], nn.ReLU), adam(1e-3), 4, data=digits_with_lagging_three()),
        ),
        "ten_zeros": (
            "class_imbalance",
            lambda: train(mlp([64, 64], nn.ReLU), adam(1e-3), 1, data=imbalanced_digits()),
        ),
    }


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine: more threads only add contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(healthy_setups()))
def test_healthy_run_has_no_findings(name: str) -> None:
    run = healthy_setups()[name]()
    assert run.val_acc > 0.85, "the healthy set-up must really train well"
    assert run.doctor.findings() == [], [f.to_dict() for f in run.doctor.findings()]


@pytest.mark.parametrize("name", list(faulty_setups()))
def test_faulty_run_yields_its_symptom(name: str) -> None:
    symptom, setup = faulty_setups()[name]
    run = setup()
    assert symptom in run.symptoms, [f.to_dict() for f in run.doctor.findings()]
    finding = run.get(symptom)
    assert finding.explanation and finding.prescriptions and finding.evidence


def test_root_cause_not_echo_dead_relus() -> None:
    run = faulty_setups()["negative_bias_relu"][1]()
    assert run.symptoms == ["dying_relu"]
    assert run.get("dying_relu").evidence["dead_unit_fraction"] >= 0.9
    # Units killed by a bias, not by the steps: the activation swap comes first.
    assert not run.get("dying_relu").evidence["learning_rate_too_high"]
    assert run.get("dying_relu").prescriptions[0].config == ["model.activation=leaky_relu"]
    burst = faulty_setups()["relu_lr_burst"][1]()  # a too-large LR kills the units, the loss goes flat
    assert burst.symptoms == ["dying_relu"]
    # Steps that move a layer by a large share of its weights name the learning rate as the root cause.
    assert burst.get("dying_relu").evidence["peak_update_ratio"] > 0.15
    assert burst.get("dying_relu").prescriptions[0].config == ["train.lr=0.1", "model.activation=leaky_relu"]


def test_loss_blow_up_without_nan_is_exploding_warning() -> None:
    run = faulty_setups()["tanh_loss_blows_up"][1]()
    finding = run.get("exploding_gradient")
    assert finding.severity == "warning" and not run.doctor.should_stop
    assert finding.evidence["loss_growth"] >= 5


def test_root_cause_not_echo_vanishing_in_sigmoid_stack() -> None:
    run = train(mlp([32] * 8, nn.Sigmoid), sgd(0.1), 3)  # long enough for the loss to count as flat
    assert run.symptoms == ["vanishing_gradient"]
    finding = run.get("vanishing_gradient")
    assert finding.evidence["gradient_spread"] < 1e-3
    assert finding.evidence["also_seen"]["loss_stagnation"]["recent_loss"] > 2.0
    assert finding.prescriptions[0].config == ["model.activation=relu", "model.init=he"]


def test_stagnation_cause_and_lr_prescription() -> None:
    run = faulty_setups()["adam_lr_1e-6"][1]()
    finding = run.get("loss_stagnation")
    assert finding.evidence["cause"] == "learning_rate_too_small"
    assert finding.evidence["update_ratio"] < 1e-4
    new_lr = float(finding.prescriptions[0].config[0].split("=")[1])
    assert new_lr >= 1e-5  # raised by the factor the update ratio asks for (at least 10x)


def test_stagnation_from_collapsed_signal_is_bad_initialization() -> None:
    model = mlp([64, 64, 64, 64], nn.ReLU)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=1e-3)
            nn.init.zeros_(module.bias)
    run = train(model, adam(1e-5), 3)
    # The tiny weights make the gradients vanish (the root cause); the flat loss is folded into it.
    assert run.symptoms == ["vanishing_gradient"]
    stagnation = run.get("vanishing_gradient").evidence["also_seen"]["loss_stagnation"]
    assert stagnation["cause"] == "bad_initialization" and stagnation["logit_spread"] < 1e-3


def test_nan_is_immediate_critical_and_stops() -> None:
    data = digits()
    data["x_train"] = data["x_train"].clone()
    data["x_train"][5] = float("nan")  # poisons the first batch that holds it
    run = train(mlp([64, 64], nn.ReLU), adam(1e-3), 2, data=data)
    finding = run.get("exploding_gradient")
    assert finding.severity == "critical" and run.doctor.should_stop
    assert finding.step == run.doctor.history.step - 1  # reported at the very step it happened


def test_gradient_and_activation_symptoms_named_in_first_epoch() -> None:
    for name in ("deep_sigmoid_stack", "negative_bias_relu", "tanh_large_init"):
        symptom, setup = faulty_setups()[name]
        assert setup().get(symptom).epoch == 1, name


def test_lagging_class_names_class_and_partner() -> None:
    run = faulty_setups()["class_3_looks_like_8"][1]()
    lagging = {f.subject: f for f in run.doctor.findings() if f.symptom == "lagging_class"}
    assert "3" in lagging
    evidence = lagging["3"].evidence
    assert evidence["confused_with"][0] == "8"
    assert evidence["auc"] < evidence["others_median_auc"] - 0.05
    assert lagging["3"].prescriptions[0].config == ['data.augment.strong_classes=["3"]']


def test_imbalance_names_rare_class() -> None:
    finding = faulty_setups()["ten_zeros"][1]().get("class_imbalance")
    assert finding.evidence["rarest_class"] == "0" and finding.evidence["ratio"] >= 10


def test_overfitting_evidence() -> None:
    finding = faulty_setups()["big_mlp_80_images"][1]().get("overfitting")
    assert finding.evidence["accuracy_gap"] >= 0.1
    assert finding.evidence["val_loss"] > finding.evidence["best_val_loss"]
