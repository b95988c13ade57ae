from __future__ import annotations

import math
from dataclasses import dataclass, field

from cnnclinic.doctor.finding import Finding, Prescription
from cnnclinic.doctor.history import SQUASHING_KINDS, TrainingHistory
from cnnclinic.doctor.symptoms._shared import batchnorm, learning_rate_evidence, median, scaled_lr
from cnnclinic.doctor.symptoms.base import Symptom, register


@register
class LossStagnation(Symptom):
    """Loss stagnation: the training loss stays flat near where it started.

    **Theory.** A loss that does not move has a cause; the evidence names it (``evidence.cause``):

    - ``bad_initialization`` (checked first: it makes every other number meaningless): the initial weight
      scale is far from He/Xavier, so the signal dies in the forward pass;
    - ``learning_rate_too_small``: the measured update-to-weight ratio ‖Δw‖/‖w‖ per step is far below the
      healthy ~1e-3, so the weights hardly change;
    - ``learning_rate_too_large``: the ratio is far above it, the optimizer jumps across the valley, or
      single steps moved a layer by ``lr_update_ratio`` of its weights (checked before the median ratio: the
      weights such steps inflate make the later ratios look small; measured: SGD with momentum at lr 2.0,
      train seed 2 of the repair benchmark's exploding case, peak 0.165, last ratios 0.01, loss at chance);
    - ``bad_initialization`` too when the weights do move but the logits stay collapsed (every input gets
      the same output). Checked after the learning rate: PyTorch's default initialisation starts a deep
      CNN with logits spread by ~1e-3, which stays so only while the weights do not move (measured: the
      demo's lr-1e-6 run with train seed 1 or 2: spread 0.0007-0.0009, update ratio 6e-6);
    - ``model_too_complex``: gradients and learning rate look healthy, but the model has a huge number of
      parameters per training sample;
    - ``plateau``: none of the above; the optimizer is stuck on a plateau.

    When a gradient or activation pathology (vanishing/exploding gradient, dying ReLU, saturation) is found
    too, it is the root cause and this finding is folded into its evidence instead of reported.

    **Evidence.** Per-step losses over the last ``window`` steps (or ``window_epochs`` whole epochs when they
    are fewer steps, but at least ``min_window``: a loss flat for 4 epochs of 13 steps is as flat as one flat
    for 100 steps, and the user should not wait 8 epochs to hear it): the relative improvement of the mean of
    the second half over the first half is below ``min_improvement`` while the loss has come down less than
    ``max_progress`` (relative) from its initial value. Measured on the per-step losses of 101 run folders
    of the demo and the repair benchmark (``--seeds 0,1,2``): the epoch window fires on no run that learns;
    of the runs stuck at chance it names the same ones as 100 steps do, at the same step (25-step epochs)
    or 48 steps earlier (13-step epochs), plus the lr-2.0 run that 100 steps never reached (78 steps).
    Cause from the sampled update ratios (median over
    layers; below ``small_update_ratio`` or above ``large_update_ratio``), the logit spread across the batch
    (below ``collapsed_logit_spread``), the initial weight scale std(w)/sqrt(2/fan_in) (median outside
    [1/``init_scale_factor``, ``init_scale_factor``]) and parameters per training sample (above
    ``params_per_sample``).

    **Prescriptions.** Depend on the cause: a learning rate scaled by the factor that brings the update
    ratio back to ~1e-3; He/Xavier initialisation and BatchNorm; a smaller model; a cyclic schedule.
    """

    id = "loss_stagnation"

    @dataclass
    class Thresholds:
        window: int = field(default=100, metadata={"help": "steps the loss must stay flat"})
        window_epochs: int = field(default=4, metadata={"help": "or this many whole epochs, when fewer steps"})
        min_window: int = field(default=50, metadata={"help": "fewest steps of a window"})
        lr_update_ratio: float = field(default=0.15, metadata={"help": "peak update/weight ratio: LR too large"})
        min_improvement: float = field(default=0.01, metadata={"help": "relative gain across the window"})
        max_progress: float = field(default=0.2, metadata={"help": "relative drop from the initial loss"})
        small_update_ratio: float = field(default=1e-4, metadata={"help": "update/weight ratio: LR too small"})
        large_update_ratio: float = field(default=0.1, metadata={"help": "update/weight ratio: LR too large"})
        collapsed_logit_spread: float = field(default=1e-3, metadata={"help": "std of logits across the batch"})
        init_scale_factor: float = field(default=10.0, metadata={"help": "weight scale vs He init, either way"})
        params_per_sample: float = field(default=1000.0, metadata={"help": "parameters per training sample"})

    def check(self, history: TrainingHistory, t: Thresholds) -> Finding | None:
        window = t.window
        if history.epochs and history.epochs[0].steps > 0:
            window = min(window, max(t.min_window, t.window_epochs * history.epochs[0].steps))
        losses = list(history.losses)[-window:]
        initial = history.initial_loss
        if len(losses) < window or not initial or initial <= 0:
            return None
        if not all(math.isfinite(v) for v in losses):
            return None
        half = len(losses) // 2
        before, after = sum(losses[:half]) / half, sum(losses[half:]) / (len(losses) - half)
        improvement = (before - after) / before if before > 0 else 0.0
        progress = (initial - after) / initial
        if improvement >= t.min_improvement or progress >= t.max_progress:
            return None
        evidence = {
            "window_improvement": improvement,
            "progress_from_start": progress,
            "initial_loss": initial,
            "recent_loss": after,
            "lr": history.lr,
        }
        cause, prescriptions = self._diagnose(history, t, evidence)
        evidence["cause"] = cause
        return history.finding(
            self.id,
            "warning",
            evidence,
            f"The loss has stayed flat around {after:.3g} for {window} steps; most likely cause: "
            f"{cause.replace('_', ' ')}.",
            prescriptions,
        )

    @staticmethod
    def _diagnose(history: TrainingHistory, t: Thresholds, evidence: dict) -> tuple[str, list[Prescription]]:
        ratios = [median(list(s.update_ratio.values())) for s in history.samples[-5:] if s.update_ratio]
        update_ratio = median(ratios) if ratios else float("nan")
        spreads = [s.logit_spread for s in history.samples[-5:] if s.logit_spread is not None]
        logit_spread = median(spreads) if spreads else float("nan")
        first = history.samples[0] if history.samples else None
        init_scale = median(list(first.init_scale.values())) if first and first.init_scale else float("nan")
        per_sample = (
            history.num_parameters / history.samples_per_epoch if history.samples_per_epoch else float("nan")
        )
        evidence.update(
            update_ratio=update_ratio, logit_spread=logit_spread, init_scale=init_scale, params_per_sample=per_sample
        )
        squashing = bool(history.kinds_present() & set(SQUASHING_KINDS))
        init = "xavier" if squashing else "he"
        bad_initialization = "bad_initialization", [
            Prescription([f"model.init={init}"], f"Initialise with {init.title()} initialisation."),
            batchnorm(),
        ]
        if not (1 / t.init_scale_factor <= init_scale <= t.init_scale_factor or math.isnan(init_scale)):
            return bad_initialization
        # learning_rate_too_high in the evidence also tells auto-repair that weights at chance are damaged.
        steps = learning_rate_evidence(history, t.lr_update_ratio)
        evidence.update(steps)
        if steps["learning_rate_too_high"] or update_ratio > t.large_update_ratio:
            return "learning_rate_too_large", [
                Prescription([scaled_lr(history, 0.1)], "Divide the learning rate by 10."),
                Prescription(["train.grad_clip=1.0"], "Clip the gradient norm to 1."),
            ]
        if update_ratio < t.small_update_ratio:
            factor = min(1000.0, 10.0 ** math.ceil(math.log10(1e-3 / max(update_ratio, 1e-12))))
            return "learning_rate_too_small", [
                Prescription([scaled_lr(history, factor)], f"Raise the learning rate {factor:g}x."),
                Prescription(["train.schedule=cyclic"], "Or let a cyclic schedule sweep a range of learning rates."),
            ]
        if logit_spread < t.collapsed_logit_spread:
            return bad_initialization
        if per_sample > t.params_per_sample:
            return "model_too_complex", [
                Prescription(["model.head=[]", "model.width=16"], "Use a smaller model (narrower, no hidden head)."),
                Prescription(["model.batchnorm=true"], "Add BatchNorm, which makes large models easier to train."),
            ]
        return "plateau", [
            Prescription(["train.schedule=cyclic"], "Use a cyclic learning-rate schedule to escape the plateau."),
            Prescription([scaled_lr(history, 3)], "Or try a 3x larger learning rate."),
        ]
