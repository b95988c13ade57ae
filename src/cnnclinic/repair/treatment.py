"""Auto-repair: train, and when the Doctor names a pathology, apply its cures until one is verified.

The loop (``auto_repair``):

1. Train the configuration as given, straight into the run directory. A callback stops the run the
   moment the Doctor raises a finding that auto-repair can treat (no wasted epochs). No finding: the run
   is left exactly as a plain ``train`` would leave it.
2. Take the first untried prescription for that finding (see ``formulary``) and apply it as a config
   change to the kept attempt's configuration. Changes that keep the weights meaningful (learning rate,
   schedule, loss, sampling, augmentation, dropout, weight decay, early stopping) warm-start from the kept
   attempt's best checkpoint, which was saved before the symptom stopped it, and train the epochs that
   are left of ``train.epochs``; architecture changes start from fresh weights and train all of them.
3. Verify on the numbers: the cure is kept when the treated symptom does not come back and the best
   validation accuracy beats the kept attempt's (ties broken by macro AUC). Otherwise roll back to the
   kept attempt and try the next prescription. A kept attempt that was itself stopped by a new finding
   is treated in turn.
4. Stop when nothing is left to treat, after ``repair.max_attempts`` attempts, or when the epoch budget
   (``repair.epoch_budget`` x ``train.epochs``, over all attempts and range tests together) is spent.

Every attempt trains in ``RUN_DIR/attempts/<n>/`` (the original run moves to ``attempts/0`` once a
repair starts); at the end the kept attempt's files are copied to ``RUN_DIR`` and ``treatment.json``
records what was tried, why and with what outcome.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console
from rich.table import Table

from cnnclinic.config import Config
from cnnclinic.doctor import Finding, Prescription
from cnnclinic.models import build_model
from cnnclinic.repair.formulary import LR_RANGE_TEST, changes_config, needs_fresh_weights, prescriptions_for
from cnnclinic.repair.range_test import lr_from_range_test
from cnnclinic.training.checkpoint import atomic_write_bytes, load_weights, save_weights
from cnnclinic.training.metrics import classification_metrics
from cnnclinic.training.trainer import RUN_FILES, RUN_FOLDERS, Callback, RunResult, Trainer

TREATMENT_FILE = "treatment.json"
ATTEMPTS_FOLDER = "attempts"
# Everything a training run writes into its run directory.
RUN_CONTENTS = ("config.yaml", "data_summary.json", *RUN_FILES, *RUN_FOLDERS)


@dataclass(frozen=True, order=True)
class ValMetric:
    """Best-epoch validation accuracy; macro AUC breaks ties (it is comparable across loss functions)."""

    accuracy: float
    macro_auc: float

    def beats(self, other: ValMetric | None) -> bool:
        return other is None or self > other


@dataclass
class AttemptRun:
    """One training run of the repair loop and what it showed."""

    number: int
    cfg: Config
    run_dir: Path
    result: RunResult
    # The finding that stopped it for treatment; None when it ran to the end.
    stopped_by: Finding | None
    metric: ValMetric | None
    # Epochs of training it cost (partial epochs count by their steps).
    epochs_spent: float
    # Epochs its starting weights had already been trained for (0 for fresh weights).
    epoch_offset: int = 0

    @property
    def best_weights(self) -> Path | None:
        path = self.run_dir / "checkpoints" / "best.safetensors"
        return path if self.result.best_epoch is not None and path.is_file() else None

    @property
    def trained_epochs_at_best(self) -> int:
        return self.epoch_offset + (self.result.best_epoch or 0)

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
    """Stops the run at the first finding the repair loop wants to act on."""

    def __init__(self, loop: _RepairLoop, treated: Finding | None):
        self.loop = loop
        self.treated_key = treated.key if treated is not None else None
        self.finding: Finding | None = None

    def on_finding(self, trainer: Trainer, finding: Finding) -> None:
        if self.finding is not None:
            return
        # The treated symptom coming back means the cure failed: no point in training on.
        if finding.key == self.treated_key or self.loop.can_treat(finding, trainer.cfg, trainer):
            self.finding = finding
            trainer.should_stop = True
            trainer.stop_reason = trainer.stop_reason or f"auto-repair: {finding.symptom} found"


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
            if self.attempts[-1]["cured"]:
                kept, pending = attempt, attempt.stopped_by
            self._write_treatment(kept, original)
        if pending is not None and len(self.attempts) >= self.cfg.repair.max_attempts:
            self.console.print(f"[yellow]auto-repair:[/] stopped after repair.max_attempts={len(self.attempts)}")
        return self._finish(kept, original)

    def _attempt(self, number: int, kept: AttemptRun, trigger: Finding, prescription: Prescription) -> AttemptRun | None:
        """Train one cure; record it in ``self.attempts``; None when the budget cannot pay for it."""
        folder = self.run_dir / ATTEMPTS_FOLDER / str(number)
        changes = list(prescription.config)
        fresh = needs_fresh_weights(changes) or kept.best_weights is None
        start_weights = None if fresh else kept.best_weights
        if LR_RANGE_TEST in changes:
            probe_cfg = kept.cfg.with_overrides([c for c in changes if c != LR_RANGE_TEST])
            found = lr_from_range_test(probe_cfg, start_weights, folder / "lr_range_test.png", console=self.console)
            self.spent += found.epochs_spent
            changes = [f"train.lr={found.lr:g}" if c == LR_RANGE_TEST else c for c in changes]
            self.console.print(f"LR range test: {found.reason}", highlight=False)
        offset = 0 if fresh else kept.trained_epochs_at_best
        # The epochs left of train.epochs, but at least half of them, so that the cure has time to show.
        wanted = max(self.epochs - offset, math.ceil(self.epochs / 2))
        epochs = min(wanted, math.floor(self.budget - self.spent))
        if epochs < 1:
            self.console.print("[yellow]auto-repair:[/] the epoch budget (repair.epoch_budget) is spent")
            return None
        cfg = kept.cfg.with_overrides([*changes, f"train.epochs={epochs}"])
        if start_weights is not None:
            start_weights = _transfer_weights(kept, cfg, folder / "start.safetensors")
            fresh = start_weights is None
            offset = 0 if fresh else offset
        start: Literal["warm", "fresh"] = "fresh" if fresh else "warm"
        self.console.rule(f"auto-repair attempt {number}: {trigger.symptom}", style="cyan")
        self.console.print(
            f"applying {' '.join(changes)} ({prescription.advice}); {start} start, {epochs} epochs",
            highlight=False,
        )
        attempt = self._train(number, cfg, folder, treated=trigger, start_weights=start_weights, epoch_offset=offset)
        symptom_gone = trigger.key not in attempt.finding_keys
        improved = attempt.metric is not None and attempt.metric.beats(kept.metric)
        record = {
            "attempt": number,
            "trigger": trigger.to_dict(),
            "change": changes,
            "advice": prescription.advice,
            "start": start,
            "epochs": len(attempt.result.history),
            "symptom_gone": symptom_gone,
            "metric_before": _accuracy(kept.metric),
            "metric_after": _accuracy(attempt.metric),
            "macro_auc_before": _macro_auc(kept.metric),
            "macro_auc_after": _macro_auc(attempt.metric),
            "cured": symptom_gone and improved,
            "kept": False,
            "stopped_by": attempt.stopped_by.symptom if attempt.stopped_by is not None else None,
            "run_dir": str(folder.relative_to(self.run_dir)),
        }
        self.attempts.append(record)
        self._print_outcome(record)
        return attempt

    # ------------------------------------------------------------------------------ what to treat
    def next_prescription(self, finding: Finding, cfg: Config) -> Prescription | None:
        """The first prescription for ``finding`` not tried yet that would change ``cfg``."""
        tried = self.tried.get(finding.key, set())
        for prescription in prescriptions_for(finding):
            if tuple(prescription.config) not in tried and changes_config(cfg, prescription.config):
                return prescription
        return None

    def can_treat(self, finding: Finding, cfg: Config, trainer: Trainer) -> bool:
        """Worth stopping the run for: a cure is left to try, and attempts and budget to try it."""
        if finding.severity == "info" or len(self.attempts) >= self.cfg.repair.max_attempts:
            return False
        spent_now = self.spent + trainer.global_step / max(len(trainer.loaders.train), 1)
        return self.budget - spent_now >= 1 and self.next_prescription(finding, cfg) is not None

    # ------------------------------------------------------------------------------------ training
    def _train(
        self, number: int, cfg: Config, folder: Path, *, treated: Finding | None, start_weights: Path | None,
        epoch_offset: int,
    ) -> AttemptRun:
        stopper = StopForTreatment(self, treated)
        trainer = Trainer(
            cfg, folder, console=self.console, callbacks=[stopper], init_weights=start_weights, report=False
        )
        result = trainer.fit()
        steps_per_epoch = max(len(trainer.loaders.train), 1)
        self.spent += trainer.global_step / steps_per_epoch
        return AttemptRun(
            number=number,
            cfg=cfg,
            run_dir=folder,
            result=result,
            stopped_by=stopper.finding,
            metric=_best_metric(trainer, result),
            epochs_spent=trainer.global_step / steps_per_epoch,
            epoch_offset=epoch_offset,
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
        if self.report:
            # Attempts train without a report; RUN_DIR now holds the kept attempt and its treatment history,
            # and its report shows both.
            from cnnclinic.report import write_report

            self.console.print(f"report: [bold]{write_report(self.run_dir, console=self.console)}[/]")
        kept.result.run_dir = self.run_dir
        return RepairResult(self.run_dir, kept.result, treatment, list(self.attempts))

    def _write_treatment(self, kept: AttemptRun, original: AttemptRun | None) -> dict[str, Any]:
        """treatment.json as it stands; ``original`` is None when the run needed no repair."""
        for record in self.attempts:
            record["kept"] = record["attempt"] == kept.number
        treatment: dict[str, Any] = {
            "attempts": self.attempts,
            "kept_attempt": kept.number,
            # The configuration to train the cure from scratch (train.epochs as the user asked).
            "final_config": kept.cfg.with_overrides([f"train.epochs={self.epochs}"]).to_dict(),
            "epochs_spent": round(self.spent, 3),
            "epoch_budget": self.budget,
        }
        if original is not None:
            treatment["original"] = {
                "epochs": len(original.result.history),
                "metric": _accuracy(original.metric),
                "findings": [finding.to_dict() for finding in original.result.findings],
            }
        atomic_write_bytes(self.run_dir / TREATMENT_FILE, json.dumps(treatment, indent=2).encode("utf-8"))
        return treatment

    def _print_outcome(self, record: dict[str, Any]) -> None:
        verdict = "[green]cured, kept[/]" if record["cured"] else "[red]rolled back[/]"
        self.console.print(
            f"attempt {record['attempt']}: symptom {'gone' if record['symptom_gone'] else '[red]persists[/]'}, "
            f"val acc {_shown(record['metric_before'])} -> {_shown(record['metric_after'])} "
            f"(macro AUC {_shown(record['macro_auc_before'])} -> {_shown(record['macro_auc_after'])}): {verdict}"
        )

    def _print_summary(self, kept: AttemptRun) -> None:
        table = Table(title="auto-repair", title_justify="left")
        for column in ("attempt", "finding", "change", "start", "epochs", "symptom gone", "val acc", "kept"):
            table.add_column(column)
        for record in self.attempts:
            table.add_row(
                str(record["attempt"]), record["trigger"]["symptom"], " ".join(record["change"]), record["start"],
                str(record["epochs"]), "yes" if record["symptom_gone"] else "no",
                f"{_shown(record['metric_before'])} -> {_shown(record['metric_after'])}",
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
    best = next((r for r in result.history if r["epoch"] == result.best_epoch), None)
    if best is not None:
        return ValMetric(best["val_acc"], best["val_macro_auc"] or 0.0)
    logits, targets = trainer.predict_logits(trainer.loaders.val)
    if not torch.isfinite(logits).all():
        return None
    metrics = classification_metrics(torch.softmax(logits, dim=1).numpy(), targets.numpy(), trainer.class_names)
    return ValMetric(metrics.accuracy, metrics.macro_auc or 0.0)


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


def _macro_auc(metric: ValMetric | None) -> float | None:
    return None if metric is None else round(metric.macro_auc, 4)


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
