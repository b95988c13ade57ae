"""Smith's learning-rate range test ("LR finder", Smith 2017; popularised by fastai).

The model trains for up to ``num_steps`` mini-batches while the learning rate grows exponentially
from ``start_lr`` to ``end_lr``. The loss is smoothed with an exponential moving average (bias
corrected, weight ``smoothing`` on each new loss) and the test stops early once the smoothed loss
exceeds ``diverge_factor`` x its best value (or is not finite). The model and optimizer are put back
exactly as they were: the test only looks, it does not train.

Suggestion rule: the learning rate where the smoothed loss falls fastest per decade of LR (steepest
negative slope of smoothed loss vs log10 LR), searched between the first 10% of the recorded points
(noisy: the moving average is still warming up and nothing is learnt yet) and the minimum of the
smoothed loss (beyond it the loss is climbing towards divergence). When the loss never falls, the
fallback is the classic "a tenth of the LR at the minimum loss".
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.optim import Optimizer

from cnnclinic.errors import UserError

# Fraction of the recorded points skipped at the start when looking for the steepest descent.
SKIP_START_FRACTION = 0.1


@dataclass(frozen=True)
class LRFinderResult:
    lrs: list[float]
    losses: list[float]  # smoothed
    raw_losses: list[float]
    suggested_lr: float
    reason: str


def _endless(loader: Iterable) -> Iterator:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise UserError("lr-find: the training data yields no batches")


def suggest_lr(lrs: list[float], losses: list[float]) -> tuple[float, str]:
    """The steepest descent of the smoothed loss (see module docstring) and a one-line reason."""
    lowest = int(np.argmin(losses))
    start = int(len(losses) * SKIP_START_FRACTION)
    if lowest - start >= 2:
        slopes = np.gradient(np.asarray(losses), np.log10(lrs))[start : lowest + 1]
        steepest = start + int(np.argmin(slopes))
        if slopes[steepest - start] < 0:
            return lrs[steepest], (
                f"steepest descent of the smoothed loss at lr={lrs[steepest]:.2g} "
                f"({slopes[steepest - start]:.3g} loss per decade); lowest loss at lr={lrs[lowest]:.2g}"
            )
    return lrs[lowest] / 10, f"the loss never fell steadily; a tenth of the lr of the lowest loss ({lrs[lowest]:.2g})"


def lr_range_test(
    model: nn.Module,
    loader: Iterable,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: Optimizer,
    start_lr: float = 1e-7,
    end_lr: float = 10,
    num_steps: int = 100,
    smoothing: float = 0.05,
    diverge_factor: float = 5.0,
    console: Console | None = None,
) -> LRFinderResult:
    """Run the LR range test on batches ``(inputs, targets)`` from ``loader`` (cycled if short)."""
    if not 0 < start_lr < end_lr:
        raise UserError(f"lr-find: start_lr ({start_lr:g}) must be positive and below end_lr ({end_lr:g})")
    if num_steps < 2:
        raise UserError(f"lr-find: num_steps must be at least 2, got {num_steps}")
    if not 0 < smoothing <= 1 or diverge_factor <= 1:
        raise UserError("lr-find: smoothing must be in (0, 1] and diverge_factor above 1")

    device = next(model.parameters()).device
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    was_training = model.training
    growth = (end_lr / start_lr) ** (1 / (num_steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    raw_losses: list[float] = []
    average, best = 0.0, math.inf
    stop_note = f"reached end_lr={end_lr:g}"
    progress = Progress(
        TextColumn("lr-find"), BarColumn(), TextColumn("lr {task.fields[lr]:.1e} loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(), console=console, disable=console is None, transient=True,
    )
    model.train()
    try:
        with progress:
            task = progress.add_task("lr-find", total=num_steps, lr=start_lr, loss=math.nan)
            for step, batch in zip(range(num_steps), _endless(loader)):
                lr = start_lr * growth**step
                for group in optimizer.param_groups:
                    group["lr"] = lr
                inputs, targets = batch[0].to(device), batch[1].to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(inputs), targets)
                loss.backward()
                optimizer.step()
                raw = loss.item()
                if not math.isfinite(raw):
                    stop_note = f"stopped at lr={lr:.2g}: the loss became {raw}"
                    break
                average = (1 - smoothing) * average + smoothing * raw
                smoothed = average / (1 - (1 - smoothing) ** (step + 1))
                lrs.append(lr)
                raw_losses.append(raw)
                losses.append(smoothed)
                best = min(best, smoothed)
                progress.update(task, advance=1, lr=lr, loss=smoothed)
                if smoothed > diverge_factor * best:
                    stop_note = f"stopped at lr={lr:.2g}: the loss exceeded {diverge_factor:g}x its best"
                    break
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)

    if len(lrs) < 2:
        raise UserError(f"lr-find: too few finite losses to suggest a learning rate ({stop_note})")
    suggested, reason = suggest_lr(lrs, losses)
    return LRFinderResult(lrs, losses, raw_losses, suggested, f"{reason}; {stop_note}")


def plot_lr_finder(result: LRFinderResult, path: str | Path) -> Path:
    """Save loss vs learning rate (log x) with the suggestion marked; returns the path."""
    from matplotlib.figure import Figure  # Figure (not pyplot) draws with Agg and keeps no global state

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    axes.plot(result.lrs, result.raw_losses, color="0.75", linewidth=1, label="loss")
    axes.plot(result.lrs, result.losses, color="tab:blue", linewidth=2, label="smoothed loss")
    axes.axvline(result.suggested_lr, color="tab:red", linestyle="--", label=f"suggested lr {result.suggested_lr:.2g}")
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss")
    axes.set_title("LR range test")
    # The divergence tail can dwarf the useful part of the curve.
    top = max(result.losses[0], min(result.losses)) * 1.5
    axes.set_ylim(min(min(result.raw_losses), min(result.losses)) * 0.9, top)
    axes.legend()
    figure.savefig(path, dpi=100)
    return path
