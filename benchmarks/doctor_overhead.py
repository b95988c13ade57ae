"""Overhead of the Doctor: two copies of the same small CNN trained side by side, one watched by the Doctor.

    .venv/bin/python benchmarks/doctor_overhead.py [--steps 200] [--repeats 5] [--threads 1]

Whole runs timed one after the other differ by +-10% on this machine whatever they do (CPU clock, caches,
other processes), several times what the Doctor costs. So the two copies take turns step by step on the same
batches (which one goes first alternates), and each step is timed on its own: a slow second hits both alike.
Prints, per repeat and as the median over repeats, the time with the Doctor over the time without (goal
<= 1.03), wall-clock and CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from cnnclinic import Doctor


def small_cnn(num_classes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, num_classes),
    )


class Learner:
    """One copy of the CNN with its optimizer, optionally watched by a Doctor; ``step`` times one training step."""

    def __init__(self, state: dict, num_classes: int, device: str, with_doctor: bool):
        self.model = small_cnn(num_classes).to(device)
        self.model.load_state_dict(state)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.doctor = Doctor(self.model, self.optimizer, num_classes=num_classes) if with_doctor else None
        self.wall = self.cpu = 0.0

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.optimizer.zero_grad()
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        if self.doctor is not None:
            self.doctor.after_backward(loss, logits=logits, targets=y)
        self.optimizer.step()
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu

    def end_epoch(self) -> None:
        if self.doctor is not None:
            wall, cpu = time.perf_counter(), time.process_time()
            self.doctor.end_epoch()
            self.doctor.close()
            self.wall += time.perf_counter() - wall
            self.cpu += time.process_time() - cpu


def paired_run(state: dict, data: list[tuple[torch.Tensor, torch.Tensor]], num_classes: int) -> tuple[float, float]:
    """(wall-clock ratio, CPU ratio) with / without the Doctor over one pass of both copies over ``data``."""
    device = str(data[0][0].device)
    plain = Learner(state, num_classes, device, with_doctor=False)
    watched = Learner(state, num_classes, device, with_doctor=True)
    for index, (x, y) in enumerate(data):
        for learner in (plain, watched) if index % 2 == 0 else (watched, plain):
            learner.step(x, y)
    watched.end_epoch()
    return watched.wall / plain.wall, watched.cpu / plain.cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    num_classes = 7
    data = [
        (
            torch.randn(args.batch_size, 3, 32, 32, device=args.device),
            torch.randint(num_classes, (args.batch_size,), device=args.device),
        )
        for _ in range(args.steps)
    ]
    state = small_cnn(num_classes).state_dict()
    paired_run(state, data[:12], num_classes)  # warm-up (lazy imports, allocator)
    print(f"steps per run: {args.steps}, batch {args.batch_size}, 3x32x32, repeats {args.repeats}, {args.device}")
    ratios = []
    for repeat in range(args.repeats):
        ratios.append(paired_run(state, data, num_classes))
        print(f"repeat {repeat + 1}: with / without Doctor: wall-clock {ratios[-1][0]:.3f}, CPU {ratios[-1][1]:.3f}")
    walls, cpus = sorted(r[0] for r in ratios), sorted(r[1] for r in ratios)
    print(
        f"median over {args.repeats} repeats: wall-clock {statistics.median(walls):.3f} "
        f"(range {walls[0]:.3f}-{walls[-1]:.3f}), CPU {statistics.median(cpus):.3f} "
        f"(range {cpus[0]:.3f}-{cpus[-1]:.3f})"
    )


if __name__ == "__main__":
    main()
