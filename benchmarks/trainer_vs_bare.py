"""Throughput of cnnclinic's Trainer against a minimal hand-written PyTorch loop (goal: ratio >= 0.95).

Both train the same model (same data, loaders, loss and optimizer) for the same epochs; each epoch is a
pass over the training set plus a forward pass over the validation set. Images/s counts training
images per second of whole epochs, measured between the ends of consecutive epochs, so one-off
set-up (data loading, the data doctor, building the model) is left out and everything the Trainer
does every epoch (metrics, logs, TensorBoard, checkpoints) is counted. Runs alternate
(trainer, bare, trainer, bare, ...) so background load hits both alike; the medians are compared.
Both wall-clock and CPU-time rates are printed: on a machine shared with other jobs the CPU-time
rate (images per second of this process's CPU time) is the steadier measure of the loop's overhead.

    .venv/bin/python benchmarks/trainer_vs_bare.py [--epochs 4] [--repeats 3] [--threads 1] [--doctor]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from cnnclinic.config import Config, build_config
from cnnclinic.data import load_data, make_loaders
from cnnclinic.training.trainer import Callback, Trainer, build_training_parts, resolve_device, seed_everything, train


def now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


class EpochClock(Callback):
    def __init__(self) -> None:
        self.ends: list[tuple[float, float]] = []

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        self.ends.append(now())


def images_per_second(ends: list[tuple[float, float]], train_images: int) -> tuple[float, float]:
    """(per wall-clock second, per CPU second) between the first and the last epoch end."""
    images = (len(ends) - 1) * train_images
    return images / (ends[-1][0] - ends[0][0]), images / (ends[-1][1] - ends[0][1])


def trainer_run(cfg: Config, train_images: int) -> tuple[float, float]:
    clock = EpochClock()
    with tempfile.TemporaryDirectory() as run_dir:
        train(cfg, Path(run_dir), console=Console(file=io.StringIO()), callbacks=[clock], report=False)
    return images_per_second(clock.ends, train_images)


def bare_run(cfg: Config) -> tuple[float, float]:
    seed_everything(cfg.train.seed)
    bundle = load_data(cfg.data)
    device = resolve_device(cfg.train.device)
    model, criterion, optimizer = build_training_parts(cfg, bundle, device)
    loaders = make_loaders(bundle, cfg)
    ends = []
    for _ in range(cfg.train.epochs):
        model.train()
        for images, targets in loaders.train:
            images, targets = images.to(device), targets.to(device)
            optimizer.zero_grad()
            loss = criterion(model(images), targets)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for images, _ in loaders.val:
                model(images.to(device))
        ends.append(now())
    return images_per_second(ends, len(bundle.train))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--doctor", action="store_true", help="keep the Doctor on in the Trainer (off by default)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (speed is measured between epoch ends)")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = build_config(overrides=[f"train.epochs={args.epochs}", f"doctor.enabled={args.doctor}", *args.overrides])
    console = Console()
    train_images = len(load_data(cfg.data, console=console).train)  # also warms the decode cache
    console.print(
        f"{cfg.model.arch} depth {cfg.model.depth} width {cfg.model.width}, {train_images} training images of "
        f"{cfg.data.image_size} px, batch {cfg.train.batch_size}, {args.epochs} epochs, device "
        f"{resolve_device(cfg.train.device)}, {torch.get_num_threads()} threads, "
        f"doctor {'on' if args.doctor else 'off'}"
    )
    speeds: dict[str, list[tuple[float, float]]] = {"trainer": [], "bare": []}
    for repeat in range(args.repeats):
        speeds["trainer"].append(trainer_run(cfg, train_images))
        speeds["bare"].append(bare_run(cfg))
        console.print(
            f"round {repeat + 1}: trainer {speeds['trainer'][-1][0]:,.0f} img/s "
            f"({speeds['trainer'][-1][1]:,.0f} per CPU s),"
            f" bare {speeds['bare'][-1][0]:,.0f} img/s ({speeds['bare'][-1][1]:,.0f} per CPU s)"
        )
    table = Table("loop", "median img/s (wall)", "median img/CPU-s", "rounds (wall)")
    medians = {}
    for name, values in speeds.items():
        medians[name] = (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values))
        table.add_row(
            name, f"{medians[name][0]:,.1f}", f"{medians[name][1]:,.1f}", ", ".join(f"{v[0]:,.0f}" for v in values)
        )
    console.print(table)
    wall_ratio = medians["trainer"][0] / medians["bare"][0]
    cpu_ratio = medians["trainer"][1] / medians["bare"][1]
    console.print(
        f"trainer / bare: wall-clock [bold]{wall_ratio:.3f}[/], CPU time [bold]{cpu_ratio:.3f}[/] (goal >= 0.95)"
    )


if __name__ == "__main__":
    main()
