from __future__ import annotations

import math
from dataclasses import dataclass, field

from cnnclinic.doctor.finding import Finding, Prescription
from cnnclinic.doctor.history import TrainingHistory
from cnnclinic.doctor.symptoms._shared import learning_rate_evidence, smaller_lr
from cnnclinic.doctor.symptoms.base import Symptom, register


@register
class OscillatingLoss(Symptom):
    """Oscillating loss: the loss swings up and down by large amounts without a trend (learning rate too high).

    **Theory.** With a learning rate above the stable range for the local curvature, each step overshoots
    the valley floor: the loss jumps up and down instead of settling, without (yet) diverging.

    **Evidence.** The per-step losses of the last ``chunks`` x ``chunk_steps`` steps, averaged over chunks
    of ``chunk_steps`` steps (removing mini-batch noise). Reported when the mean absolute change between
    consecutive chunks is at least ``min_amplitude`` of the initial loss, at least ``min_sign_changes`` of
    consecutive changes flip direction, and the net change over the window is smaller than the swings
    (``max_trend`` times the summed absolute changes), i.e. there is no trend.

    **Root cause.** The largest update-to-weight ratio ‖Δw‖/‖w‖ of any layer at any sampled step after the
    first (``peak_update_ratio``): at ``lr_update_ratio`` (15% of a layer's weights in one step) or more, each
    step overshoots and the learning rate is the cause (``learning_rate_too_high``); below it, the steps are
    of a normal size and the swings come from a few large gradients of small, noisy batches. Measured on the
    demo's fish CNN: Adam lr 0.02 at batch 16 (the benchmark's oscillating case) 0.31; Adam 5e-3 at batch 8,
    also reported as oscillating, 0.11; healthy runs 0.01-0.05.

    **Prescriptions.** A 10x smaller learning rate (``train.lr``); gradient clipping; a cyclic schedule
    whose lower bound is stable. The learning rate cut comes first when the learning rate is the cause,
    gradient clipping otherwise: at Adam 5e-3, batch 8, clipping reaches 94-96% validation accuracy and a 10x
    cut 70-74% (seeds 0-1, 6 epochs).
    """

    id = "oscillating_loss"

    @dataclass
    class Thresholds:
        chunk_steps: int = field(default=5, metadata={"help": "steps averaged into one point"})
        chunks: int = field(default=12, metadata={"help": "points in the window"})
        min_amplitude: float = field(default=0.1, metadata={"help": "mean swing / initial loss"})
        min_sign_changes: float = field(default=0.4, metadata={"help": "share of swings that flip direction"})
        max_trend: float = field(default=0.25, metadata={"help": "net change / summed absolute swings"})
        lr_update_ratio: float = field(default=0.15, metadata={"help": "peak update/weight ratio: LR is the cause"})

    def check(self, history: TrainingHistory, t: Thresholds) -> Finding | None:
        needed = t.chunk_steps * t.chunks
        losses = list(history.losses)[-needed:]
        initial = history.initial_loss
        if len(losses) < needed or history.step + 1 < needed + 10 or not initial or initial <= 0:
            return None
        if not all(math.isfinite(v) for v in losses):
            return None
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
            **learning_rate_evidence(history, t.lr_update_ratio),
        }
        clip = Prescription(["train.grad_clip=1.0"], "Clip the gradient norm to 1.")
        steps, why = [clip, smaller_lr(history)], "a few large gradients of small, noisy batches throw it off"
        if evidence["learning_rate_too_high"]:
            steps, why = steps[::-1], "the learning rate is too high, each step overshoots"
        return history.finding(
            self.id,
            "warning",
            evidence,
            f"The loss keeps jumping up and down by about {amplitude:.0%} of its initial value without "
            f"improving: {why}.",
            [*steps, Prescription(["train.schedule=cyclic"], "Use a cyclic schedule that also visits smaller rates.")],
        )
