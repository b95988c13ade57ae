"""Auto-repair: train, and when the Doctor names a pathology, apply its cures until one is verified.

The loop (``auto_repair``):

1. Train the configuration as given, straight into the run directory. A callback stops the run the
   moment the Doctor raises a finding that auto-repair can treat (no wasted epochs). No finding: the run
   is left exactly as a plain ``train`` would leave it.
2. Take the first untried prescription for that finding (see ``formulary``) and apply it as a config
   change on top of the kept attempt's configuration. Changes that keep the weights meaningful (learning
   rate, schedule, loss, sampling, augmentation, dropout, weight decay, early stopping) warm-start from the
   kept attempt's best checkpoint, which was saved before the symptom stopped it, and train the epochs
   that are left of ``train.epochs``; architecture changes start from fresh weights and train all of them,
   and so does any change when a too-large learning rate left the kept checkpoint at chance (``starts_fresh``).
3. Verify on the numbers, on the metric the treated pathology is about (``judged_score``): a lagging
   class on that class's one-vs-rest validation AUC (it is a small share of the validation photos, so
   the overall accuracy hardly moves), overfitting on the mean validation accuracy of the last
   ``RECENT_EPOCHS`` epochs (its damage shows late), everything else on the best validation accuracy.
   The metric *improved* only when it beats the kept attempt's by more than ``NOISE_SES`` standard errors
   of the kept attempt's value (binomial for an accuracy: with 100 images at 20%, 0.20 -> 0.24 is noise;
   Hanley-McNeil for an AUC). Then:
   - symptom gone (not among the Doctor's active findings) and metric improved: **cured**, kept;
   - symptom still there but metric improved: **helped**, kept, and the next prescription for the same
     finding is stacked on top of it (a lagging class is cured by a combination of cures);
   - metric not improved: **rolled back** to the kept attempt, the next prescription is tried on it.
   An attempt stops at the end of the epoch in which its treated symptom comes back, and when, by half of
   its epochs, neither its judged metric, its accuracy nor its macro AUC has beaten the kept attempt's
   (beyond noise) in any epoch; neither stop applies while it is ahead of the kept attempt on that
   pathology's yardstick by any margin (a rebalanced lagging class catches up over several epochs,
   lagging all the while; see ``StopForTreatment``). A kept attempt stopped by a new finding is treated in
   turn.
4. Stop when nothing is left to treat, after ``repair.max_attempts`` attempts, or when the epoch budget
   (``repair.epoch_budget`` x ``train.epochs``, over all attempts and range tests together) cannot pay for
   the next attempt's full epochs. A kept cure that a later finding stopped early is then trained on to the
   end of its epochs, so the final model has trained as long as a plain run (budget is reserved for it).
   A finding whose cure the budget could not pay for when it appeared is not silent: ``treatment.json``
   lists it under ``untreated`` and the console names its cure.

Every attempt trains in ``RUN_DIR/attempts/<n>/`` (the original run moves to ``attempts/0`` once a
repair starts); at the end the kept attempt's files are copied to ``RUN_DIR`` and ``treatment.json``
records what was tried, why, on top of what and with what outcome.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console
from rich.table import Table

from cnnclinic.config import Config
from cnnclinic.doctor import Finding, Prescription
from cnnclinic.models import build_model
from cnnclinic.repair.formulary import LR_RANGE_TEST, changes_config, prescriptions_for
from cnnclinic.repair.range_test import lr_from_range_test
from cnnclinic.training.checkpoint import atomic_write_bytes, load_state, load_weights, save_weights
from cnnclinic.training.metrics import classification_metrics
from cnnclinic.training.trainer import RUN_FILES, RUN_FOLDERS, Callback, RunResult, Trainer

TREATMENT_FILE = "treatment.json"
ATTEMPTS_FOLDER = "attempts"
# Everything a training run writes into its run directory.
RUN_CONTENTS = ("config.yaml", "data_summary.json", *RUN_FILES, *RUN_FOLDERS)
# An accuracy gain counts when it exceeds this many binomial standard errors of the accuracy it is
# compared with (two: a gain that chance alone gives in about 1 run of 40).
NOISE_SES = 2.0
# Overfitting is judged on the mean validation accuracy of this many last epochs.
RECENT_EPOCHS = 3

Verdict = Literal["cured", "helped", "rolled back"]


@dataclass(frozen=True)
class ValMetric:
    """Best-epoch validation accuracy on ``samples`` images, and the macro and per-class AUCs of that epoch.

    ``class_counts``: validation images per class; ``recent_accuracy``: mean validation accuracy of the
    last ``RECENT_EPOCHS`` epochs (None: no epoch finished)."""

    accuracy: float
    macro_auc: float
    samples: int
    class_auc: dict[str, float] = field(default_factory=dict)
    class_counts: dict[str, int] = field(default_factory=dict)
    recent_accuracy: float | None = None

    @property
    def noise(self) -> float:
        """Accuracy differences below this are noise: ``NOISE_SES`` binomial standard errors, at least one image."""
        return _accuracy_noise(self.accuracy, self.samples)

    def beats(self, other: ValMetric | None) -> bool:
        """Better than ``other`` by more than ``other``'s noise."""
        return other is None or self.accuracy > other.accuracy + other.noise

    @property
    def learned_something(self) -> bool:
        """Its accuracy beats always answering the most common validation class by more than noise."""
        if not self.class_counts or self.samples <= 0:
            return True
        chance = max(self.class_counts.values()) / self.samples
        return self.accuracy > chance + _accuracy_noise(chance, self.samples)

    def ranks_better(self, other: ValMetric | None) -> bool:
        """Macro AUC beats ``other``'s by more than two binomial standard errors: an early sign of learning
        (the ranking improves epochs before the arg-max does)."""
        if other is None:
            return True
        return self.macro_auc > other.macro_auc + _accuracy_noise(other.macro_auc, other.samples)


@dataclass(frozen=True)
class Score:
    """The value of the metric an attempt is judged on, and the difference below which it is noise."""

    metric_name: str
    value: float
    noise: float

    def beats(self, other: Score | None) -> bool:
        return other is None or self.value > other.value + other.noise


def starts_fresh(cure: Prescription, trigger: Finding, kept: ValMetric | None) -> bool:
    """Whether a cure restarts from fresh weights rather than the kept attempt's best checkpoint: it changes
    the architecture or the Doctor asks for fresh weights (``Prescription.restart``), or a too-large
    learning rate (the trigger's evidence) left that checkpoint at chance, i.e. damaged (dead or saturated
    units, huge weights) with nothing learned worth keeping."""
    if cure.restart:
        return True
    damaged = bool(trigger.evidence.get("learning_rate_too_high"))
    return damaged and kept is not None and not kept.learned_something


def judged_score(metric: ValMetric, finding: Finding) -> Score:
    """``metric`` on the yardstick of ``finding``'s pathology (see the module docstring)."""
    subject = finding.subject
    if finding.symptom == "lagging_class" and subject in metric.class_auc and metric.class_counts.get(subject):
        positives = metric.class_counts[subject]
        auc = metric.class_auc[subject]
        return Score(f"val_auc[{subject}]", auc, _auc_noise(auc, positives, metric.samples - positives))
    if finding.symptom == "overfitting" and metric.recent_accuracy is not None:
        return Score(f"val_acc_last{RECENT_EPOCHS}", metric.recent_accuracy,
                     _accuracy_noise(metric.recent_accuracy, metric.samples))
    return Score("val_acc", metric.accuracy, metric.noise)


def _accuracy_noise(p: float, samples: int) -> float:
    """``NOISE_SES`` binomial standard errors of a share ``p`` of ``samples``, at least one image."""
    return max(NOISE_SES * math.sqrt(p * (1 - p) / samples), 1 / samples)


def _auc_noise(auc: float, positives: int, negatives: int) -> float:
    """``NOISE_SES`` Hanley-McNeil (1982) standard errors of a one-vs-rest AUC, at least ``1 / positives``:
    what one positive image moving past every negative changes."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)) / max(
        positives * negatives, 1
    )
    return max(NOISE_SES * math.sqrt(max(variance, 0.0)), 1 / positives)


@dataclass
class AttemptRun:
    """One training run of the repair loop and what it showed."""

    number: int
    cfg: Config
    run_dir: Path
    result: RunResult
    # The finding that stopped it for treatment; None when it ran to the end or stopped for lack of gain.
    stopped_by: Finding | None
    metric: ValMetric | None
    # Epochs its starting weights had already been trained for (0 for fresh weights).
    epoch_offset: int = 0
    # The checkpoint it started from (None: fresh weights).
    start_weights: Path | None = None
    # The attempt whose configuration and weights it started from (None for the original run).
    builds_on: int | None = None

    @property
    def best_weights(self) -> Path | None:
        path = self.run_dir / "checkpoints" / "best.safetensors"
        return path if self.result.best_epoch is not None and path.is_file() else None

    @property
    def trained_epochs_at_best(self) -> int:
        return self.epoch_offset + (self.result.best_epoch or 0)

    @property
    def resumable_epoch(self) -> int:
        """The epoch its last checkpoint can resume from (0: none, it stopped inside its first epoch)."""
        state = self.run_dir / "checkpoints" / "last.state.pt"
        return int(load_state(state)["epoch"]) if state.is_file() else 0

    @property
    def epochs_left(self) -> int:
        """Epochs of its own ``train.epochs`` that training it on to the end would cost."""
        return self.cfg.train.epochs - self.resumable_epoch

    @property
    def finding_keys(self) -> set[tuple[str, str | None]]:
        return {finding.key for finding in self.result.findings}


@dataclass
class RepairResult:
    run_dir: Path
    # The kept attempt's run (its files are the ones in run_dir).
    run: RunResult
    treatment: dict[str, Any]
    attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def kept_attempt(self) -> int:
        return int(self.treatment["kept_attempt"])


class StopForTreatment(Callback):
    """Stops an attempt at the first finding the repair loop wants to act on, or when it shows no gain.

    ``baseline``: the kept attempt's metric; an attempt that has not beaten it after ``patience`` epochs
    is stopped (None: never, for the original run). The treated symptom coming back stops the attempt at
    the end of that epoch. Neither stop applies while the attempt is ahead of the baseline on the
    pathology's own yardstick, even by less than the noise: a cure such as rebalancing lifts a lagging class
    over several epochs, during which the class still lags, and whether the gain is real is judged when it
    has run its course. Rebalancing from fresh weights was stopped half-way otherwise (demo case 4, train
    seeds 1 and 2: species_x AUC 0.92 at epoch 6 against 0.87-0.89 and a noise margin of 0.08 on 30
    photos; run to the end it reaches 0.98-0.99)."""

    def __init__(self, loop: _RepairLoop, treated: Finding | None, baseline: ValMetric | None, patience: int):
        self.loop = loop
        self.treated = treated
        self.treated_key = treated.key if treated is not None else None
        self.baseline = baseline
        self.patience = patience
        self.finding: Finding | None = None
        self.recurred: Finding | None = None
        # Once an epoch has shown a gain the cure is not abandoned: a noisy metric (the mean of the last
        # epochs on a few hundred photos) may dip below the margin again before the cure has run its course.
        self.showed_gain = False

    def on_finding(self, trainer: Trainer, finding: Finding) -> None:
        if self.finding is not None:
            return
        if finding.key == self.treated_key:
            self.recurred = finding  # judged at the end of the epoch, on its numbers
        elif self.loop.can_treat(finding, trainer, original=self.treated_key is None):
            self._stop(trainer, finding, f"auto-repair: {finding.symptom} found")

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.baseline is None or trainer.should_stop:
            return
        any_gain, ahead = self._gains(trainer)
        self.showed_gain = self.showed_gain or any_gain
        if self.recurred is not None and not ahead:
            self._stop(trainer, self.recurred, f"auto-repair: {self.recurred.symptom} is back, with no gain")
        elif trainer.epoch >= self.patience and not self.showed_gain and not ahead:
            trainer.should_stop = True
            trainer.stop_reason = f"auto-repair: no gain over the kept attempt after {trainer.epoch} epochs"

    def still_treating(self, result: RunResult) -> Finding | None:
        """The treated symptom when it came back and is still active at the end of the attempt."""
        if self.recurred is not None and self.recurred.key in {finding.key for finding in result.findings}:
            return self.recurred
        return None

    def _gains(self, trainer: Trainer) -> tuple[bool, bool]:
        """(beats the baseline beyond the noise on the treated pathology's yardstick, accuracy or macro AUC;
        is above it on that yardstick by any margin)."""
        now = _history_metric(trainer, trainer.history, trainer.best_epoch)
        if now is None or self.baseline is None:
            return False, False
        best = replace(now, macro_auc=max((r["val_macro_auc"] or 0.0 for r in trainer.history), default=0.0))
        any_gain = best.beats(self.baseline) or best.ranks_better(self.baseline)
        if self.treated is None:
            return any_gain, False
        score, baseline = judged_score(best, self.treated), judged_score(self.baseline, self.treated)
        return any_gain or score.beats(baseline), score.value > baseline.value

    def _stop(self, trainer: Trainer, finding: Finding, reason: str) -> None:
        self.finding = finding
        trainer.should_stop = True
        trainer.stop_reason = trainer.stop_reason or reason


def auto_repair(
    cfg: Config, run_dir: str | Path, *, console: Console | None = None, report: bool = True
) -> RepairResult:
    """Train ``cfg`` into ``run_dir`` and repair what the Doctor finds (see the module docstring).

    ``report``: write ``run_dir/report.html`` for the kept attempt at the end."""
    return _RepairLoop(cfg, Path(run_dir), console or Console(), report).run()


class _RepairLoop:
    def __init__(self, cfg: Config, run_dir: Path, console: Console, report: bool):
        self.cfg = cfg
        self.run_dir = run_dir
        self.console = console
        self.report = report
        self.epochs = cfg.train.epochs
        self.budget = cfg.repair.epoch_budget * cfg.train.epochs
        self.spent = 0.0
        self.attempts: list[dict[str, Any]] = []
        self.tried: dict[tuple[str, str | None], set[tuple[str, ...]]] = {}
        self.completion: dict[str, Any] | None = None
        # Findings with a cure left that the budget could not pay for when they appeared, by key.
        self.unaffordable: dict[tuple[str, str | None], dict[str, Any]] = {}

    # ------------------------------------------------------------------------------------ the loop
    def run(self) -> RepairResult:
        shutil.rmtree(self.run_dir / ATTEMPTS_FOLDER, ignore_errors=True)
        (self.run_dir / TREATMENT_FILE).unlink(missing_ok=True)
        kept = self._train(0, self.cfg, self.run_dir, treated=None, start_weights=None, epoch_offset=0)
        pending = kept.stopped_by
        if pending is None:
            return self._finish(kept, original=None)
        original = kept = self._move_to_attempts(kept)
        while pending is not None and len(self.attempts) < self.cfg.repair.max_attempts:
            prescription = self.next_prescription(pending, kept.cfg)
            if prescription is None:
                self.console.print(f"[yellow]auto-repair:[/] no untried cure left for {pending.symptom}")
                break
            self.tried.setdefault(pending.key, set()).add(tuple(prescription.config))
            attempt = self._attempt(len(self.attempts) + 1, kept, pending, prescription)
            if attempt is None:
                break
            if self.attempts[-1]["verdict"] != "rolled back":
                # Cured: treat what stopped it next, if anything. Helped: the same finding (it came back)
                # gets its next prescription on top of this attempt.
                kept, pending = attempt, attempt.stopped_by
            self._write_treatment(kept, original)
        if pending is not None and len(self.attempts) >= self.cfg.repair.max_attempts:
            self.console.print(f"[yellow]auto-repair:[/] stopped after repair.max_attempts={len(self.attempts)}")
        return self._finish(self._complete(kept), original)

    def _attempt(
        self, number: int, kept: AttemptRun, trigger: Finding, prescription: Prescription
    ) -> AttemptRun | None:
        """Train one cure on top of ``kept``; record it in ``self.attempts``; None when the budget cannot pay
        for all of its epochs."""
        folder = self.run_dir / ATTEMPTS_FOLDER / str(number)
        changes = list(prescription.config)
        fresh = kept.best_weights is None or starts_fresh(prescription, trigger, kept.metric)
        offset = 0 if fresh else kept.trained_epochs_at_best
        epochs = self.attempt_epochs(offset)
        if epochs > self.available_epochs(kept):
            self.console.print(
                f"[yellow]auto-repair:[/] the epoch budget (repair.epoch_budget) cannot pay for {epochs} more epochs"
            )
            return None
        start_weights = None if fresh else kept.best_weights
        if LR_RANGE_TEST in changes:
            probe_cfg = kept.cfg.with_overrides([c for c in changes if c != LR_RANGE_TEST])
            found = lr_from_range_test(probe_cfg, start_weights, folder / "lr_range_test.png", console=self.console)
            self.spent += found.epochs_spent
            changes = [f"train.lr={found.lr:g}" if c == LR_RANGE_TEST else c for c in changes]
            self.console.print(f"LR range test: {found.reason}", highlight=False)
        cfg = kept.cfg.with_overrides([*changes, f"train.epochs={epochs}"])
        if start_weights is not None:
            start_weights = _transfer_weights(kept, cfg, folder / "start.safetensors")
            offset = 0 if start_weights is None else offset
        start: Literal["warm", "fresh"] = "fresh" if start_weights is None else "warm"
        self.console.rule(f"auto-repair attempt {number}: {trigger.symptom}", style="cyan")
        on_top = "the original configuration" if kept.number == 0 else f"attempt {kept.number}"
        self.console.print(
            f"applying {' '.join(changes)} ({prescription.advice}) on top of {on_top}; {start} start, {epochs} epochs",
            highlight=False,
        )
        attempt = self._train(
            number, cfg, folder, treated=trigger, start_weights=start_weights, epoch_offset=offset, baseline=kept
        )
        symptom_gone = trigger.key not in attempt.finding_keys
        before = None if kept.metric is None else judged_score(kept.metric, trigger)
        after = None if attempt.metric is None else judged_score(attempt.metric, trigger)
        improved = after is not None and after.beats(before)
        verdict: Verdict = "rolled back" if not improved else "cured" if symptom_gone else "helped"
        record = {
            "attempt": number,
            "trigger": trigger.to_dict(),
            "change": changes,
            "advice": prescription.advice,
            "builds_on": kept.number,
            "start": start,
            "epochs": len(attempt.result.history),
            "symptom_gone": symptom_gone,
            # The metric the verdict is based on (see judged_score), before and after, and its noise.
            "metric_name": (before or after or Score("val_acc", 0.0, 0.0)).metric_name,
            "metric_before": _rounded(before),
            "metric_after": _rounded(after),
            "noise_margin": None if before is None else round(before.noise, 4),
            "val_acc_before": _accuracy(kept.metric),
            "val_acc_after": _accuracy(attempt.metric),
            "macro_auc_before": _macro_auc(kept.metric),
            "macro_auc_after": _macro_auc(attempt.metric),
            "improved": improved,
            "cured": verdict == "cured",
            "verdict": verdict,
            "kept": False,
            "stopped_by": attempt.stopped_by.symptom if attempt.stopped_by is not None else None,
            "stop_reason": attempt.result.stop_reason,
            "run_dir": str(folder.relative_to(self.run_dir)),
        }
        self.attempts.append(record)
        self._print_outcome(record)
        return attempt

    def _complete(self, kept: AttemptRun) -> AttemptRun:
        """Train a kept cure that a later finding stopped on to the end of its epochs (the cures for that
        finding failed), so the final model has trained as long as a plain run of its configuration."""
        if (
            kept.number == 0 or kept.stopped_by is None or kept.stopped_by.severity == "critical"
            or kept.epochs_left < 1
        ):
            return kept
        # Stopped inside its first epoch: nothing to resume, it starts again from its own start.
        done = kept.resumable_epoch
        resume = done > 0
        self.console.rule(
            f"auto-repair: attempt {kept.number} trains on to its epoch {kept.cfg.train.epochs}", style="cyan"
        )
        trainer = Trainer(kept.cfg, kept.run_dir, console=self.console,
                          init_weights=None if resume else kept.start_weights, report=False)
        result = trainer.fit(resume=resume)
        self.spent += len(result.history) - done
        self.completion = {"attempt": kept.number, "from_epoch": done, "to_epoch": len(result.history)}
        return AttemptRun(
            number=kept.number, cfg=kept.cfg, run_dir=kept.run_dir, result=result, stopped_by=None,
            metric=_best_metric(trainer, result), epoch_offset=kept.epoch_offset, start_weights=kept.start_weights,
            builds_on=kept.builds_on,
        )

    # ------------------------------------------------------------------------------ what to treat
    def next_prescription(self, finding: Finding, cfg: Config) -> Prescription | None:
        """The first prescription for ``finding`` not tried yet that would change ``cfg``."""
        tried = self.tried.get(finding.key, set())
        for prescription in prescriptions_for(finding):
            if tuple(prescription.config) not in tried and changes_config(cfg, prescription.config):
                return prescription
        return None

    def available_epochs(self, kept: AttemptRun) -> float:
        """Epochs the budget leaves for a new attempt, keeping what ``kept`` (a cure) needs to train on to
        its end should the attempt fail."""
        reserve = kept.epochs_left if kept.number > 0 and kept.stopped_by is not None else 0
        return self.budget - self.spent - reserve

    def attempt_epochs(self, offset: int) -> int:
        """Epochs an attempt trains that starts from weights trained for ``offset`` epochs: those left of
        train.epochs, but at least half of them, so that the cure has time to show."""
        return max(self.epochs - offset, math.ceil(self.epochs / 2))

    def can_treat(self, finding: Finding, trainer: Trainer, *, original: bool) -> bool:
        """Worth stopping the run for: a cure is left to try, and attempts and budget to pay for all of its
        epochs (beyond what a stopped cure needs to train on to its end). A run stopped for a cure the budget
        then cannot pay for would be lost."""
        if finding.severity == "info" or len(self.attempts) >= self.cfg.repair.max_attempts:
            return False
        prescription = self.next_prescription(finding, trainer.cfg)
        if prescription is None:
            return False
        spent_now = self.spent + trainer.global_step / max(len(trainer.loaders.train), 1)
        reserve = 0 if original else trainer.cfg.train.epochs - trainer.epoch + 1
        room = self.budget - spent_now - reserve
        best = _history_metric(trainer, trainer.history, trainer.best_epoch)
        fresh = best is None or starts_fresh(prescription, finding, best)
        # The run's own best epoch; a cure's weights have trained longer, so this never underestimates.
        needed = self.attempt_epochs(0 if fresh else trainer.best_epoch or 0)
        if room < needed:
            self.unaffordable.setdefault(finding.key, {
                "symptom": finding.symptom, "subject": finding.subject, "epoch": finding.epoch,
                "cure": list(prescription.config), "start": "fresh" if fresh else "warm",
                "epochs_needed": needed, "epochs_left": round(max(room, 0.0), 2),
            })
        return room >= needed

    # ------------------------------------------------------------------------------------ training
    def _train(
        self, number: int, cfg: Config, folder: Path, *, treated: Finding | None, start_weights: Path | None,
        epoch_offset: int, baseline: AttemptRun | None = None,
    ) -> AttemptRun:
        # A cure gets half of its epochs to beat the kept run (on accuracy or, earlier, on macro AUC).
        patience = math.ceil(cfg.train.epochs / 2)
        stopper = StopForTreatment(self, treated, baseline.metric if baseline is not None else None, patience)
        trainer = Trainer(
            cfg, folder, console=self.console, callbacks=[stopper], init_weights=start_weights, report=False
        )
        result = trainer.fit()
        self.spent += trainer.global_step / max(len(trainer.loaders.train), 1)
        return AttemptRun(
            number=number,
            cfg=cfg,
            run_dir=folder,
            result=result,
            stopped_by=stopper.finding or stopper.still_treating(result),
            metric=_best_metric(trainer, result),
            epoch_offset=epoch_offset,
            start_weights=start_weights,
            builds_on=baseline.number if baseline is not None else None,
        )

    def _move_to_attempts(self, original: AttemptRun) -> AttemptRun:
        folder = self.run_dir / ATTEMPTS_FOLDER / "0"
        folder.mkdir(parents=True)
        for name in RUN_CONTENTS:
            if (self.run_dir / name).exists():
                shutil.move(self.run_dir / name, folder / name)
        original.run_dir = folder
        original.result.run_dir = folder
        return original

    # ------------------------------------------------------------------------------------- results
    def _finish(self, kept: AttemptRun, original: AttemptRun | None) -> RepairResult:
        if kept.run_dir != self.run_dir:
            for name in RUN_CONTENTS:
                source = kept.run_dir / name
                if source.is_dir():
                    shutil.copytree(source, self.run_dir / name)
                elif source.is_file():
                    shutil.copy2(source, self.run_dir / name)
        treatment = self._write_treatment(kept, original)
        if self.attempts:
            self._print_summary(kept)
        for untreated in treatment["untreated"]:
            subject = "" if untreated["subject"] is None else f" for '{untreated['subject']}'"
            self.console.print(
                f"[yellow]auto-repair:[/] {untreated['symptom']}{subject} (epoch {untreated['epoch']}) was not "
                f"treated: its cure {' '.join(untreated['cure'])} needs {untreated['epochs_needed']} epochs "
                f"({untreated['start']} start) and the budget had {untreated['epochs_left']:g} left; raise "
                f"repair.epoch_budget or train with --set {' --set '.join(untreated['cure'])}",
                highlight=False,
            )
        if self.report:
            # Attempts train without a report; RUN_DIR now holds the kept attempt and its treatment history,
            # and its report shows both.
            from cnnclinic.report import write_report

            self.console.print(f"report: [bold]{write_report(self.run_dir, console=self.console)}[/]")
        kept.result.run_dir = self.run_dir
        return RepairResult(self.run_dir, kept.result, treatment, list(self.attempts))

    def _chain(self, kept: AttemptRun) -> list[int]:
        """The attempts whose changes the kept configuration holds, the original run (0) first."""
        builds_on = {record["attempt"]: record["builds_on"] for record in self.attempts}
        chain = [kept.number]
        while chain[-1] != 0:
            chain.append(builds_on[chain[-1]])
        return chain[::-1]

    def _write_treatment(self, kept: AttemptRun, original: AttemptRun | None) -> dict[str, Any]:
        """treatment.json as it stands; ``original`` is None when the run needed no repair."""
        chain = self._chain(kept)
        for record in self.attempts:
            record["kept"] = record["attempt"] in chain
        treatment: dict[str, Any] = {
            "attempts": self.attempts,
            "kept_attempt": kept.number,
            # The attempts whose changes are stacked in the kept configuration (0 = the original run).
            "kept_chain": chain,
            # The configuration to train the cure from scratch (train.epochs as the user asked).
            "final_config": kept.cfg.with_overrides([f"train.epochs={self.epochs}"]).to_dict(),
            "final": {
                "metric": _accuracy(kept.metric),
                "epochs_trained": kept.epoch_offset + len(kept.result.history),
                "findings": sorted({f.symptom for f in kept.result.findings}),
            },
            # The kept attempt trained on to its end after later cures failed (None: not needed).
            "completion": self.completion,
            # Findings of the kept run whose next cure the budget could not pay for when they appeared.
            "untreated": [record for key, record in self.unaffordable.items() if key in kept.finding_keys],
            "epochs_spent": round(self.spent, 3),
            "epoch_budget": self.budget,
        }
        if original is not None:
            treatment["original"] = {
                "epochs": len(original.result.history),
                "metric": _accuracy(original.metric),
                "findings": [finding.to_dict() for finding in original.result.findings],
            }
            # The first pathology treated, on its own yardstick, before and after the whole repair.
            first = original.stopped_by
            if first is not None:
                treatment["original"]["judged"] = _score_dict(original.metric, first)
                treatment["final"]["judged"] = _score_dict(kept.metric, first)
        atomic_write_bytes(self.run_dir / TREATMENT_FILE, json.dumps(treatment, indent=2).encode("utf-8"))
        return treatment

    def _print_outcome(self, record: dict[str, Any]) -> None:
        verdict = {
            "cured": "[green]cured, kept[/]",
            "helped": "[cyan]helped, kept: the next cure is stacked on top[/]",
            "rolled back": "[red]rolled back[/]",
        }[record["verdict"]]
        margin = "" if record["noise_margin"] is None else f" (noise ±{record['noise_margin']:.3f})"
        self.console.print(
            f"attempt {record['attempt']}: symptom {'gone' if record['symptom_gone'] else '[red]persists[/]'}, "
            f"{record['metric_name']} {_shown(record['metric_before'])} -> {_shown(record['metric_after'])}{margin}: "
            f"{verdict}"
        )

    def _print_summary(self, kept: AttemptRun) -> None:
        table = Table(title="auto-repair", title_justify="left")
        for column in ("attempt", "finding", "change", "on top of", "start", "epochs", "symptom gone", "judged on",
                       "verdict", "kept"):
            table.add_column(column)
        for record in self.attempts:
            table.add_row(
                str(record["attempt"]), record["trigger"]["symptom"], " ".join(record["change"]),
                str(record["builds_on"]), record["start"], str(record["epochs"]),
                "yes" if record["symptom_gone"] else "no",
                f"{record['metric_name']} {_shown(record['metric_before'])} -> {_shown(record['metric_after'])}",
                record["verdict"],
                "[green]yes[/]" if record["kept"] else "",
            )
        self.console.print(table)
        which = "the original run" if kept.number == 0 else f"attempt {kept.number}"
        self.console.print(
            f"kept {which}; {self.spent:.1f} epochs trained of a budget of {self.budget:g} "
            f"({self.spent / self.epochs:.2f}x train.epochs)"
        )


# ---------------------------------------------------------------------------------------------- helpers
def _best_metric(trainer: Trainer, result: RunResult) -> ValMetric | None:
    """The best epoch's validation metric; for a run stopped inside its first epoch, its weights' metric."""
    metric = _history_metric(trainer, result.history, result.best_epoch)
    if metric is not None:
        return metric
    logits, targets = trainer.predict_logits(trainer.loaders.val)
    if not torch.isfinite(logits).all():
        return None
    metrics = classification_metrics(torch.softmax(logits, dim=1).numpy(), targets.numpy(), trainer.class_names)
    return ValMetric(metrics.accuracy, metrics.macro_auc or 0.0, len(targets), _defined(metrics.auc),
                     _class_counts(trainer))


def _history_metric(trainer: Trainer, history: list[dict[str, Any]], best_epoch: int | None) -> ValMetric | None:
    """The validation metric of epoch ``best_epoch`` of ``history`` (None: no such epoch)."""
    best = next((r for r in history if r["epoch"] == best_epoch), None)
    if best is None:
        return None
    recent = [r["val_acc"] for r in history[-RECENT_EPOCHS:]]
    return ValMetric(best["val_acc"], best["val_macro_auc"] or 0.0, len(trainer.bundle.val),
                     _defined(best["val_auc"]), _class_counts(trainer), sum(recent) / len(recent))


def _defined(aucs: dict[str, float | None] | None) -> dict[str, float]:
    """The per-class AUCs that exist (a class without validation images has none)."""
    return {name: auc for name, auc in (aucs or {}).items() if auc is not None}


def _class_counts(trainer: Trainer) -> dict[str, int]:
    counts = torch.bincount(trainer.bundle.val.targets, minlength=len(trainer.class_names))
    return {name: int(count) for name, count in zip(trainer.class_names, counts)}


def _transfer_weights(source: AttemptRun, cfg: Config, path: Path) -> Path | None:
    """Write ``source``'s best weights as a checkpoint for ``cfg``'s model; None when they do not fit it.

    Parameter-free modules (dropout) shift the indices in state-dict names, so tensors are matched by
    position and shape, not by name.
    """
    assert source.best_weights is not None
    tensors, metadata = load_weights(source.best_weights)
    class_names = list(metadata["class_names"])
    image_size = cfg.data.image_size
    old_names = list(build_model(source.cfg.model, len(class_names), image_size).state_dict())
    new_state = build_model(cfg.model, len(class_names), image_size).state_dict()
    if len(old_names) != len(new_state) or any(
        tensors[old].shape != tensor.shape for old, tensor in zip(old_names, new_state.values())
    ):
        return None
    save_weights({new: tensors[old] for old, new in zip(old_names, new_state)}, path, class_names=class_names)
    return path


def _accuracy(metric: ValMetric | None) -> float | None:
    return None if metric is None else round(metric.accuracy, 4)


def _score_dict(metric: ValMetric | None, finding: Finding) -> dict[str, Any] | None:
    """``metric`` judged on ``finding``'s yardstick, for treatment.json (None: no epoch finished)."""
    if metric is None:
        return None
    score = judged_score(metric, finding)
    return {"symptom": finding.symptom, "subject": finding.subject, "metric_name": score.metric_name,
            "value": round(score.value, 4), "noise": round(score.noise, 4)}


def _rounded(score: Score | None) -> float | None:
    return None if score is None else round(score.value, 4)


def _macro_auc(metric: ValMetric | None) -> float | None:
    return None if metric is None else round(metric.macro_auc, 4)


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
