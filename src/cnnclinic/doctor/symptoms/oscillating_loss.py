from __future__ import annotations

import math
from dataclasses import dataclass, field

from cnnclinic.doctor.finding import Finding, Prescription
from cnnclinic.doctor.history import TrainingHistory
from cnnclinic.doctor.symptoms._shared import learning_rate_evidence, smaller_lr
from cnnclinic.doctor.symptoms.base import Symptom, register


@register
class OscillatingLoss(Symptom):
    """Oscillating loss: the loss swings up and down by large amounts without a trend, because each step
    overshoots (learning rate too high).

    **Theory.** With a learning rate above the stable range for the local curvature, each step overshoots
    the valley floor: the loss jumps up and down instead of settling, without (yet) diverging. Mini-batch
    noise also moves the loss from step to step, and an odd batch the model gets badly wrong makes a spike,
    but with steps of a normal size the run goes on learning. The loss alone cannot tell the two apart:
    the swings of the too-large steps happen from one step to the next, so averaged over chunks of steps
    they look like noise too (the mean chunk-to-chunk change is 0.6-0.7x what the spread of the per-step
    losses within a chunk predicts for pure noise, sqrt(2/pi) x sqrt(2/``chunk_steps``) x sd, in the
    oscillating runs measured below, and 0.7-1.1x in the false alarms). What tells them apart is the size of
    the steps themselves.

    **Evidence.** The shape: the per-step losses of the last ``chunks`` x ``chunk_steps`` steps, averaged
    over chunks of ``chunk_steps`` steps. The mean absolute change between consecutive chunks is at least
    ``min_amplitude`` of the initial loss, at least ``min_sign_changes`` of consecutive changes flip
    direction, and the net change over the window is smaller than the swings (``max_trend`` times the
    summed absolute changes), i.e. there is no trend. The cause: the largest update-to-weight ratio ‖Δw‖/‖w‖
    of any layer at any sampled step after the first (``peak_update_ratio``) is at least ``lr_update_ratio``
    (a step moves a layer by 15% of its weights); below it the swings are mini-batch noise and nothing is
    reported. Measured, peak update ratio: the benchmark's oscillating case (demo fish CNN, LeakyReLU, Adam
    lr 0.02, batch 16: loss stuck near its initial value with spikes to 12-16, val acc 0.12-0.57, seeds
    0-2) 0.31-0.32; the test suite's digits MLP at AdamW lr 0.05 (loss floor 0.3-0.35 where lr 0.02 reaches
    0.06-0.09) 0.29; runs with a few outlier batches that the loss shape alone flagged, and that learn
    fine: the demo's base CNN at Adam 5e-3, batch 8 (val acc 0.77/0.96) 0.10, at Adam 5e-4, batch 8 (0.72)
    0.011, the quick sick run of demo case 4 (0.95) 0.024; healthy runs 0.01-0.05.

    **Prescriptions.** A 10x smaller learning rate (``train.lr``); gradient clipping, which caps the
    overshooting steps; a cyclic schedule whose lower bound is stable.
    """

    id = "oscillating_loss"

    @dataclass
    class Thresholds:
        chunk_steps: int = field(default=5, metadata={"help": "steps averaged into one point"})
        chunks: int = field(default=12, metadata={"help": "points in the window"})
        min_amplitude: float = field(default=0.1, metadata={"help": "mean swing / initial loss"})
        min_sign_changes: float = field(default=0.4, metadata={"help": "share of swings that flip direction"})
        max_trend: float = field(default=0.25, metadata={"help": "net change / summed absolute swings"})
        lr_update_ratio: float = field(
            default=0.15, metadata={"help": "peak update/weight ratio of an overshooting step (below: noise)"}
        )

    def check(self, history: TrainingHistory, t: Thresholds) -> Finding | None:
        needed = t.chunk_steps * t.chunks
        losses = list(history.losses)[-needed:]
        initial = history.initial_loss
        if len(losses) < needed or history.step + 1 < needed + 10 or not initial or initial <= 0:
            return None
        if not all(math.isfinite(v) for v in losses):
            return None
        steps = learning_rate_evidence(history, t.lr_update_ratio)
        if not steps["learning_rate_too_high"]:
            return None  # steps of a normal size: the swings are mini-batch noise
        points = [sum(losses[i : i + t.chunk_steps]) / t.chunk_steps for i in range(0, needed, t.chunk_steps)]
        changes = [b - a for a, b in zip(points, points[1:])]
        swings = sum(abs(c) for c in changes)
        amplitude = swings / len(changes) / initial
        flips = sum(1 for a, b in zip(changes, changes[1:]) if a * b < 0) / max(len(changes) - 1, 1)
        trend = abs(points[-1] - points[0]) / swings if swings > 0 else 1.0
        if amplitude < t.min_amplitude or flips < t.min_sign_changes or trend > t.max_trend:
            return None
        evidence = {
            "relative_amplitude": amplitude,
            "sign_change_share": flips,
            "trend_share": trend,
            "loss_range": [min(points), max(points)],
            "lr": history.lr,
            **steps,
        }
        return history.finding(
            self.id,
            "warning",
            evidence,
            f"The loss keeps jumping up and down by about {amplitude:.0%} of its initial value without "
            f"improving: the learning rate is too high, each step overshoots (a step moved a layer by "
            f"{steps['peak_update_ratio']:.0%} of its weights).",
            [
                smaller_lr(history),
                Prescription(["train.grad_clip=1.0"], "Clip the gradient norm to 1: it caps the overshooting steps."),
                Prescription(["train.schedule=cyclic"], "Use a cyclic schedule that also visits smaller rates."),
            ],
        )
