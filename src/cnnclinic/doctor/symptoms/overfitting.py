from __future__ import annotations

import math
from dataclasses import dataclass, field

from cnnclinic.doctor.finding import Finding, Prescription
from cnnclinic.doctor.history import EpochRecord, TrainingHistory
from cnnclinic.doctor.symptoms.base import Symptom, register


@register
class Overfitting(Symptom):
    """Overfitting: the model memorises the training set; validation gets worse while training gets better.

    **Theory.** A model with more capacity than the data supports keeps lowering the training loss by
    fitting noise and individual images; from some epoch on the validation loss rises again and training
    accuracy runs far ahead of validation accuracy.

    **Evidence.** Per epoch: mean training loss and accuracy (from the logits and targets passed to
    ``after_backward``) and the validation loss and accuracy. Reported when the validation loss has been
    above its best (minimum) for at least ``patience`` epochs and has been at least ``min_val_loss_rise``
    (relative) above it in each of the last two epochs, and - where the Doctor saw the validation logits -
    by more than ``noise_ses`` standard errors of the difference of the two means (each the per-image
    losses' standard deviation / sqrt(n)): on a few hundred validation images the mean loss moves by ~8%
    by chance, and the minimum of noisy epochs is biased low. The training loss must be below its value
    at the best epoch, and - when training accuracy is known - training accuracy must exceed validation
    accuracy by at least ``min_accuracy_gap``. Measured on the demo's case 5 (250 validation images, 15
    epochs): two standard errors of the difference are 0.27-0.40; the sick run's loss rises 0.47-1.17
    above its best from epoch 9 on (found at epoch 9; with the 5% rule alone at epoch 8). After auto-repair's
    dropout + cosine a 6% rise (1.107 -> 1.176) with an unchanged validation accuracy (0.712 in each of the
    last 3 epochs) was reported as overfitting by the 5% rule alone; it is within the noise.

    **Prescriptions.** First dropout *together with* a learning rate that decays to zero
    (``model.dropout=0.5 train.schedule=cosine``); then dropout alone; weight decay
    (``train.weight_decay=0.0005``); stronger data augmentation; early stopping
    (``train.early_stopping_patience=3``), which keeps the best epoch's weights.

    **Why that order.** Two things pull the late validation accuracy down: memorising (the training accuracy
    climbs while the validation loss rises) and steps that stay large, so the weights keep jumping around
    what generalises (the validation accuracy swings by 0.08-0.16 from one epoch to the next). Dropout
    stops the first, the decaying learning rate the second; neither alone cures. Measured on the demo's case
    5 (wide CNN with BatchNorm on synthetic fish, a fifth of them under a wrong species, Adam lr 1e-3;
    ``--quick``; auto-repair stops it at the finding, epoch 8/6/6, and warm-starts the cure from the best
    epoch; mean validation accuracy of the last 3 epochs, seeds 0/1/2, noise margin 0.06): sick
    0.585/0.513/0.535; dropout + cosine 0.696/0.705/0.709, symptom gone (training accuracy ends at
    0.79-0.85); dropout alone 0.603/0.619/0.600 (symptom back in seeds 1 and 2); cosine alone
    0.572/0.541/0.596; dropout + weight decay 0.577/0.567/0.567; dropout + one-cycle
    0.617/0.568/0.709; MixUp (alpha 0.4) 0.536/0.513/0.589; label smoothing 0.1 0.553/0.484/0.572. Dropout
    at a tenth of the learning rate does as well warm (0.696/0.663/0.696) but under-trains from scratch
    (with weight decay: 0.46/0.45/0.50 after 12 epochs), while dropout + cosine from scratch, the
    configuration auto-repair hands back, reaches 0.656/0.655/0.669 (sick 0.529/0.585/0.563).
    """

    id = "overfitting"

    @dataclass
    class Thresholds:
        patience: int = field(default=3, metadata={"help": "epochs since the best validation loss"})
        min_val_loss_rise: float = field(default=0.05, metadata={"help": "relative rise above the best val loss"})
        min_accuracy_gap: float = field(default=0.1, metadata={"help": "train accuracy - val accuracy"})
        noise_ses: float = field(default=2.0, metadata={"help": "val loss rise in standard errors of the difference"})

    @staticmethod
    def _beyond_noise(best: EpochRecord, later: EpochRecord, noise_ses: float) -> bool:
        """``later``'s val loss exceeds ``best``'s by more than ``noise_ses`` standard errors of the difference
        (True when the standard errors are unknown: a Doctor given only the mean)."""
        if best.val_loss_se is None or later.val_loss_se is None:
            return True
        rise = later.val_loss - best.val_loss  # type: ignore[operator]
        return rise > noise_ses * math.hypot(best.val_loss_se, later.val_loss_se)

    def check(self, history: TrainingHistory, t: Thresholds) -> Finding | None:
        epochs = [e for e in history.epochs if e.val_loss is not None and math.isfinite(e.val_loss)]
        if not history.at_epoch_end or len(epochs) < t.patience + 1:
            return None
        best = min(epochs, key=lambda e: e.val_loss)  # type: ignore[arg-type,return-value]
        last = epochs[-1]
        since_best = last.epoch - best.epoch
        rises = [
            (e.val_loss - best.val_loss) / best.val_loss if best.val_loss else 0.0  # type: ignore[operator]
            for e in epochs[-2:]
        ]
        rise = rises[-1]
        # Both of the last two epochs: one noisy validation epoch is no trend.
        if since_best < t.patience or min(rises) < t.min_val_loss_rise or last.train_loss >= best.train_loss:
            return None
        if not all(self._beyond_noise(best, e, t.noise_ses) for e in epochs[-2:]):
            return None
        gap = None
        if last.train_acc is not None and last.val_acc is not None:
            gap = last.train_acc - last.val_acc
            if gap < t.min_accuracy_gap:
                return None
        evidence = {
            "best_epoch": best.epoch,
            "epochs_since_best": since_best,
            "best_val_loss": best.val_loss,
            "val_loss": last.val_loss,
            "val_loss_rise": rise,
            "train_loss": last.train_loss,
            "train_loss_at_best": best.train_loss,
            "train_acc": last.train_acc,
            "val_acc": last.val_acc,
            "accuracy_gap": gap,
        }
        return history.finding(
            self.id,
            "warning",
            evidence,
            f"The validation loss has risen {rise:.0%} since epoch {best.epoch} while the training loss kept "
            "falling: the model is memorising the training images instead of learning what generalises.",
            [
                Prescription(
                    ["model.dropout=0.5", "train.schedule=cosine"],
                    "Add dropout (p=0.5) before the classifier layers and let the learning rate decay to zero "
                    "(cosine): dropout stops the memorising, the shrinking steps let the weights settle.",
                ),
                Prescription(["model.dropout=0.5"], "Add dropout (p=0.5) before the classifier layers."),
                Prescription(["train.weight_decay=0.0005"], "Add weight decay (L2 regularisation), 5e-4."),
                Prescription(
                    ["data.augment.policy=trivialaugment", "data.augment.hflip=true"],
                    "Augment the training images (random flips, TrivialAugment).",
                ),
                Prescription(["train.early_stopping_patience=3"], "Stop early and keep the best epoch's weights."),
            ],
        )
