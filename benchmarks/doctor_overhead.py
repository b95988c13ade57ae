"""Overhead of the Doctor: the same small CNN and data trained with and without it, timings interleaved.

    .venv/bin/python benchmarks/doctor_overhead.py [--steps 60] [--repeats 5] [--threads 1]

Prints the median wall-clock and CPU time per run without and with the Doctor and their ratios (goal <= 1.03).
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


def run(
    state: dict, data: list[tuple[torch.Tensor, torch.Tensor]], with_doctor: bool, num_classes: int
) -> tuple[float, float]:
    """(wall-clock seconds, process CPU seconds) of one pass over the data."""
    device = data[0][0].device
    model = small_cnn(num_classes).to(device)
    model.load_state_dict(state)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    doctor = Doctor(model, optimizer, num_classes=num_classes) if with_doctor else None
    start, start_cpu = time.perf_counter(), time.process_time()
    for x, y in data:
        optimizer.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        if doctor is not None:
            doctor.after_backward(loss, logits=logits, targets=y)
        optimizer.step()
    if doctor is not None:
        doctor.end_epoch()
        doctor.close()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - start_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
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
    run(state, data[:3], True, num_classes)  # warm-up (lazy imports, allocator)
    run(state, data[:3], False, num_classes)
    plain, doctored = [], []
    for _ in range(args.repeats):  # interleaved, so machine load drifts hit both alike
        plain.append(run(state, data, False, num_classes))
        doctored.append(run(state, data, True, num_classes))
    print(f"steps per run: {args.steps}, batch {args.batch_size}, 3x32x32, repeats {args.repeats}, {args.device}")
    # On a shared machine wall-clock time mostly measures the other jobs; the process CPU time (with one
    # thread) is what the Doctor itself adds. Medians of the interleaved repeats.
    for label, index in (("wall-clock", 0), ("CPU time", 1)):
        without = statistics.median(t[index] for t in plain)
        with_ = statistics.median(t[index] for t in doctored)
        print(f"{label:>10}: without Doctor {without:.3f} s, with Doctor {with_:.3f} s, ratio {with_ / without:.3f}")


if __name__ == "__main__":
    main()
