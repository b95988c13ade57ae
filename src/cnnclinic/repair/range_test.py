"""The "learning rate from a range test" cure: run Smith's LR range test on the attempt's own set-up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from cnnclinic.config import Config
from cnnclinic.data import load_data, make_loaders
from cnnclinic.models import build_model
from cnnclinic.training.checkpoint import load_weights
from cnnclinic.training.losses import build_loss
from cnnclinic.training.lr_find import lr_range_test
from cnnclinic.training.optim import build_optimizer
from cnnclinic.training.trainer import resolve_device

# Short on purpose: the test's steps come out of the repair's epoch budget.
RANGE_TEST_STEPS = 40


@dataclass(frozen=True)
class RangeTestLR:
    lr: float
    reason: str
    # Training epochs the test cost (its steps / steps per epoch), charged to the repair budget.
    epochs_spent: float


def lr_from_range_test(cfg: Config, start_weights: Path | None, console: Console | None = None) -> RangeTestLR:
    """The learning rate the range test suggests for ``cfg``, starting from ``start_weights`` when given."""
    bundle = load_data(cfg.data, console=console)
    loaders = make_loaders(bundle, cfg)
    device = resolve_device(cfg.train.device)
    model = build_model(cfg.model, len(bundle.class_names), cfg.data.image_size)
    if start_weights is not None:
        model.load_state_dict(load_weights(start_weights)[0])
    model.to(device)
    counts = [int((bundle.train.targets == k).sum()) for k in range(len(bundle.class_names))]
    criterion = build_loss(cfg.train, counts).to(device)
    result = lr_range_test(
        model, loaders.train, criterion, build_optimizer(model, cfg.train), num_steps=RANGE_TEST_STEPS,
        console=console,
    )
    lr = float(f"{result.suggested_lr:.2g}")
    return RangeTestLR(lr, result.reason, len(result.raw_losses) / max(len(loaders.train), 1))
