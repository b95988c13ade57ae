"""Data path: the share of each training step spent waiting for the next batch (goal: <= 5% in epoch 2).

Uses cnnclinic's own data path (decode-once cache, augmentation on the cached uint8 pixels, the Trainer's
loaders with ``data.num_workers`` workers and, on CUDA, pinned memory) and model, in a plain training
loop that times, per step, the wait for the batch (including the host-to-device copy) and the whole
step. Epoch 1 warms up (cache, worker start); epochs 2.. are reported, one row per worker count.

    .venv/bin/python benchmarks/data_path.py [--workers 0 2] [--epochs 2] [--set data.source=PATH ...]
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from cnnclinic.config import Config, build_config
from cnnclinic.data import load_data, make_loaders
from cnnclinic.training.distributed import init_distributed
from cnnclinic.training.trainer import build_training_parts, resolve_device, seed_everything


def data_share(cfg: Config, epochs: int) -> tuple[float, float, int]:
    """(seconds waiting for batches, seconds of whole steps, steps) over epochs 2..``epochs``."""
    seed_everything(cfg.train.seed)
    context = init_distributed(resolve_device(cfg.train.device), cfg.train)
    bundle = load_data(cfg.data)
    model, criterion, optimizer = build_training_parts(cfg, bundle, context.device)
    loaders = context.prepare_loaders(make_loaders(bundle, cfg), cfg)
    synchronize = torch.cuda.synchronize if context.device.type == "cuda" else (lambda: None)
    waiting = total = 0.0
    steps = 0
    for epoch in range(1, epochs + 1):
        model.train()
        previous_end = time.perf_counter()
        for images, targets in loaders.train:
            images = images.to(context.device, non_blocking=True)
            targets = targets.to(context.device, non_blocking=True)
            synchronize()  # the copy belongs to the data path
            loaded = time.perf_counter()
            loss = criterion(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()  # the Trainer reads the loss every step
            end = time.perf_counter()
            if epoch > 1:
                waiting += loaded - previous_end
                total += end - previous_end
                steps += 1
            previous_end = end
    return waiting, total, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="data.num_workers values to compare")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run; epoch 1 is warm-up")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (epoch 1 is warm-up)")
    cfg = build_config(overrides=args.overrides)
    console = Console()
    train_images = len(load_data(cfg.data, console=console).train)  # fills the decode cache before timing
    console.print(
        f"{cfg.model.arch} depth {cfg.model.depth} width {cfg.model.width}, {train_images} training images of "
        f"{cfg.data.image_size} px from {cfg.data.source}, batch {cfg.train.batch_size}, augment policy "
        f"{cfg.data.augment.policy}, device {resolve_device(cfg.train.device)}, {torch.get_num_threads()} threads"
    )
    table = Table("workers", "steps", "wait per step (ms)", "step (ms)", "data share", "goal")
    for workers in args.workers:
        waiting, total, steps = data_share(cfg.with_overrides([f"data.num_workers={workers}"]), args.epochs)
        share = waiting / total
        table.add_row(str(workers), str(steps), f"{1000 * waiting / steps:.2f}", f"{1000 * total / steps:.1f}",
                      f"[bold]{share:.1%}[/]", "<= 5%" + (" ok" if share <= 0.05 else " missed"))
    console.print(table)


if __name__ == "__main__":
    main()
