"""The "learning rate from a range test" cure: run Smith's LR range test on the attempt's own set-up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from cnnclinic.config import Config
from cnnclinic.data import load_data, make_loaders
from cnnclinic.training.checkpoint import load_weights
from cnnclinic.training.lr_find import lr_range_test, plot_lr_finder
from cnnclinic.training.trainer import build_training_parts, resolve_device

# Short on purpose: the test's steps come out of the repair's epoch budget.
RANGE_TEST_STEPS = 40


@dataclass(frozen=True)
class RangeTestLR:
    lr: float
    reason: str
    # Training epochs the test cost (its steps / steps per epoch), charged to the repair budget.
    epochs_spent: float


def lr_from_range_test(
    cfg: Config, start_weights: Path | None, plot_path: Path, console: Console | None = None
) -> RangeTestLR:
    """The learning rate the range test suggests for ``cfg`` from ``start_weights`` (fresh weights when
    None); the loss-vs-LR plot is saved to ``plot_path``."""
    bundle = load_data(cfg.data, console=console)
    loaders = make_loaders(bundle, cfg)
    model, criterion, optimizer = build_training_parts(cfg, bundle, resolve_device(cfg.train.device))
    if start_weights is not None:
        model.load_state_dict(load_weights(start_weights)[0])
    result = lr_range_test(model, loaders.train, criterion, optimizer, num_steps=RANGE_TEST_STEPS, console=console)
    plot_lr_finder(result, plot_path)
    lr = float(f"{result.suggested_lr:.2g}")
    return RangeTestLR(lr, result.reason, len(result.raw_losses) / max(len(loaders.train), 1))
