"""Overfitting: the Doctor's first cure is dropout together with a decaying learning rate, the cure measured to
work (src/cnnclinic/doctor/symptoms/overfitting.py), and auto-repair tries it first from the kept weights."""

from __future__ import annotations

from cnnclinic.doctor.finding import Finding
from cnnclinic.doctor.history import EpochRecord, TrainingHistory
from cnnclinic.doctor.symptoms import SYMPTOMS
from cnnclinic.repair import needs_fresh_weights, prescriptions_for


def memorising_history(val_losses: list[float]) -> TrainingHistory:
    """Training loss and accuracy improving every epoch (0.9 -> 0.5, 60% -> 90%) while the validation
    accuracy stays at 55%, with the given validation losses."""
    history = TrainingHistory(num_classes=5, class_names=list("abcde"), num_parameters=10_000, lr=1e-3)
    count = len(val_losses)
    for epoch, val_loss in enumerate(val_losses, start=1):
        progress = (epoch - 1) / max(count - 1, 1)
        history.epochs.append(
            EpochRecord(epoch=epoch, steps=13 * epoch, train_loss=0.9 - 0.4 * progress, train_acc=0.6 + 0.3 * progress,
                        val_loss=val_loss, val_acc=0.55)
        )
    history.epoch = count
    return history


def overfitting(history: TrainingHistory) -> Finding | None:
    return SYMPTOMS["overfitting"]().check(history, SYMPTOMS["overfitting"].Thresholds())


def test_memorising_is_treated_with_dropout_and_a_decaying_learning_rate_first() -> None:
    finding = overfitting(memorising_history([1.2, 1.0, 1.1, 1.2, 1.3]))
    assert finding is not None and finding.evidence["best_epoch"] == 2
    first, second = finding.prescriptions[:2]
    assert first.config == ["model.dropout=0.5", "train.schedule=cosine"]
    # Dropout alone comes next: it is what the first cure adds to the model, without the schedule.
    assert second.config == ["model.dropout=0.5"]
    # Auto-repair tries it first, continuing from the best epoch's weights (dropout adds no weight tensor).
    assert prescriptions_for(finding)[0] == first
    assert not needs_fresh_weights(first.config) and not first.restart


def test_a_validation_loss_still_falling_is_not_overfitting() -> None:
    assert overfitting(memorising_history([1.2, 1.1, 1.0, 0.9, 0.8])) is None
    # One epoch above the best is noise, not a trend: the rise must hold for `patience` epochs.
    assert overfitting(memorising_history([1.2, 1.0, 0.9, 0.95, 1.0])) is None


def test_a_rise_within_the_noise_of_the_validation_loss_is_not_overfitting() -> None:
    # 1.0 -> 1.3 is 30% up: overfitting when the per-image losses pin the means down (standard error 0.03),
    # noise when they spread as on a few hundred validation images (standard error 0.12, as in demo case 5).
    for standard_error, found in ((0.03, True), (0.12, False)):
        history = memorising_history([1.2, 1.0, 1.1, 1.2, 1.3])
        for record in history.epochs:
            record.val_loss_se = standard_error
        assert (overfitting(history) is not None) is found
