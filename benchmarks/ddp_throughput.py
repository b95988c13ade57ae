"""DDP throughput: the Trainer under torchrun with N processes against 1 process, same global batch.

Each configuration is one ``torchrun --standalone --nproc-per-node N`` launch of this script, which
trains with cnnclinic's Trainer (Doctor on, everything rank 0 writes) and reports images per second of
whole epochs, measured between the ends of consecutive epochs (start-up left out). Launches alternate
(1, N, 1, N, ...) and the medians are compared. On the CPU (gloo) each process gets cores / N intra-op
threads, so 1 process and N processes use the same cores; on GPUs (nccl) run it unchanged on a
machine with N GPUs: ``train.device=auto`` gives each process its own GPU.

    .venv/bin/python benchmarks/ddp_throughput.py [--procs 1 2] [--epochs 4] [--repeats 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from cnnclinic.config import build_config
from cnnclinic.training.trainer import Callback, Trainer


class EpochClock(Callback):
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        self.ends.append(time.perf_counter())


def worker(args: argparse.Namespace) -> None:
    """One process of a torchrun launch: train, and on rank 0 write images/s to ``args.result``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = build_config(overrides=[f"train.epochs={args.epochs}", *args.overrides])
    clock = EpochClock()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir, console=Console(file=io.StringIO()), callbacks=[clock], report=False)
        trainer.fit()
    if trainer.dist.is_main:
        images = (len(clock.ends) - 1) * len(trainer.bundle.train)
        record = {"images_per_s": images / (clock.ends[-1] - clock.ends[0]), "device": str(trainer.device),
                  "world_size": trainer.dist.world_size, "train_images": len(trainer.bundle.train)}
        Path(args.result).write_text(json.dumps(record))


def launch(procs: int, args: argparse.Namespace, result: Path) -> dict:
    threads = args.threads or max(1, (os.cpu_count() or 1) // procs)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
        __file__, "--worker", "--result", str(result), "--epochs", str(args.epochs), "--threads", str(threads),
        *(f"--set={override}" for override in args.overrides),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    finished = subprocess.run(command, capture_output=True, text=True, env=env)
    if finished.returncode != 0:
        sys.exit(f"torchrun with {procs} processes failed:\n{finished.stderr[-3000:]}")
    return {**json.loads(result.read_text()), "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--procs", type=int, nargs="+", default=[1, 2], help="process counts; the first is the baseline"
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads per process (default: cores / N)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (speed is measured between epoch ends)")
    cfg = build_config(overrides=args.overrides)
    console = Console()
    console.print(
        f"{cfg.model.arch} depth {cfg.model.depth} width {cfg.model.width}, {cfg.data.image_size} px from "
        f"{cfg.data.source}, global batch {cfg.train.batch_size}, {args.epochs} epochs, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} (other jobs on the machine skew wall-clock rates)"
    )
    speeds: dict[int, list[float]] = {procs: [] for procs in args.procs}
    records: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for procs in args.procs:
                records[procs] = launch(procs, args, Path(scratch) / f"{procs}-{repeat}.json")
                speeds[procs].append(records[procs]["images_per_s"])
                console.print(f"round {repeat + 1}: {procs} process(es) {speeds[procs][-1]:,.0f} img/s")
    baseline = statistics.median(speeds[args.procs[0]])
    table = Table("processes", "device", "threads each", "median img/s", "rounds", f"vs {args.procs[0]} process(es)")
    for procs, values in speeds.items():
        median = statistics.median(values)
        table.add_row(str(procs), records[procs]["device"], str(records[procs]["threads"]), f"{median:,.1f}",
                      ", ".join(f"{v:,.0f}" for v in values), f"[bold]{median / baseline:.2f}x[/]")
    console.print(table)


if __name__ == "__main__":
    main()
