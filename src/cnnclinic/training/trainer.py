"""The Trainer: one training run, watched by the Doctor, written to a run directory.

The run directory layout is the contract in docs/architecture.md. ``train()`` is the entry point;
``Callback`` lets other parts of cnnclinic (auto-repair) watch a run and stop it.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table
from torch import nn

from cnnclinic.config import Config, load_config
from cnnclinic.data import DataBundle, load_data, make_loaders
from cnnclinic.data.cache import decode_folder
from cnnclinic.data.dataset import CachedImageDataset
from cnnclinic.data.folder import SkippedFile, decode_image, scan_folder
from cnnclinic.errors import UserError
from cnnclinic.models import build_model, count_parameters
from cnnclinic.training.checkpoint import (
    NonFiniteWeightsError,
    append_lines,
    atomic_write_bytes,
    capture_rng_state,
    load_state,
    load_weights,
    read_jsonl,
    remove_partial_writes,
    restore_rng_state,
    save_state,
    save_weights,
)
from cnnclinic.training.distributed import init_distributed
from cnnclinic.training.losses import build_loss
from cnnclinic.training.lr_find import LRFinderResult, lr_range_test, plot_lr_finder
from cnnclinic.training.metrics import ClassificationMetrics, classification_metrics
from cnnclinic.training.optim import build_optimizer, build_scheduler

if TYPE_CHECKING:
    from cnnclinic.doctor import Doctor, Finding
    from cnnclinic.doctor.history import RunSoFar

# Files of the run directory a run writes, its report included (a fresh run removes stale ones first).
RUN_FILES = (
    "metrics.jsonl", "steps.jsonl", "layer_stats.jsonl", "diagnosis.json", "val_predictions.npz", "report.html"
)
RUN_FOLDERS = ("checkpoints", "tensorboard")
# Room for metrics, step and layer logs, TensorBoard events and the report, beyond the checkpoints.
LOG_SPACE_BYTES = 20 * 2**20


class Callback:
    """Hooks into a run, in the spirit of Lightning callbacks; set ``trainer.should_stop`` to end it.

    A stop requested during an epoch ends the run after the current step (that epoch is not recorded);
    one requested in ``on_epoch_end`` ends it after the epoch's checkpoint is written.
    """

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """Called after each epoch with the record just appended to metrics.jsonl."""

    def on_finding(self, trainer: Trainer, finding: Finding) -> None:
        """Called when the Doctor raises a finding (during a step or at the end of an epoch)."""


@dataclass
class RunResult:
    run_dir: Path
    # The records of metrics.jsonl, one per completed epoch.
    history: list[dict[str, Any]]
    findings: list[Finding]
    best_val_acc: float | None
    best_epoch: int | None
    # The model with the best epoch's weights loaded (the last weights when no epoch completed).
    model: nn.Module
    # Why the run ended before its last epoch ("early stopping", the Doctor's reason, ...); None if it did not.
    stop_reason: str | None = None


def train(
    cfg: Config,
    run_dir: str | Path,
    *,
    console: Console | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    init_weights: str | Path | None = None,
    report: bool = True,
) -> RunResult:
    """Train a model as ``cfg`` says and write the run directory; see :class:`Trainer`."""
    trainer = Trainer(cfg, run_dir, console=console, callbacks=callbacks, init_weights=init_weights, report=report)
    return trainer.fit(resume=resume)


@dataclass
class TrainedModel:
    cfg: Config
    model: nn.Module
    class_names: list[str]


def load_trained_model(run_dir: str | Path, weights: str = "best") -> TrainedModel:
    """The model of a finished run (``weights``: "best" or "last"), on the CPU in eval mode."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    weights_path = run_dir / "checkpoints" / f"{weights}.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise UserError(f"{run_dir} is not a cnnclinic run (needs config.yaml and checkpoints/{weights}.safetensors)")
    cfg = load_config(config_path)
    tensors, metadata = load_weights(weights_path)
    class_names = list(metadata["class_names"])
    model = build_model(cfg.model, len(class_names), cfg.data.image_size)
    try:
        model.load_state_dict(tensors)
    except RuntimeError:
        raise UserError(f"{weights_path} does not fit the model described in {config_path}") from None
    return TrainedModel(cfg, model.eval(), class_names)


def build_training_parts(
    cfg: Config, bundle: DataBundle, device: torch.device
) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
    """Model (on ``device``), loss (weighted by the training class counts) and optimizer for ``cfg``."""
    num_classes = len(bundle.class_names)
    model = build_model(cfg.model, num_classes, cfg.data.image_size).to(device)
    class_counts = torch.bincount(bundle.train.targets, minlength=num_classes).tolist()
    criterion = build_loss(cfg.train, class_counts).to(device)
    return model, criterion, build_optimizer(model, cfg.train)


def find_lr(
    cfg: Config, plot_path: str | Path, *, console: Console | None = None, num_steps: int = 100
) -> LRFinderResult:
    """Smith's LR range test on the training data of ``cfg``; the loss-vs-LR plot is saved to ``plot_path``."""
    plot_path = Path(plot_path)
    if plot_path.suffix.lower() not in {".png", ".svg", ".pdf"}:
        raise UserError(f"lr-find: --out must be a .png, .svg or .pdf file, got {plot_path}")
    check_writable(plot_path.parent if str(plot_path.parent) else Path("."))
    seed_everything(cfg.train.seed)
    bundle = load_data(cfg.data, console=console)
    model, criterion, optimizer = build_training_parts(cfg, bundle, resolve_device(cfg.train.device))
    loaders = make_loaders(bundle, cfg)
    result = lr_range_test(model, loaders.train, criterion, optimizer, num_steps=num_steps, console=console)
    plot_lr_finder(result, plot_path)
    return result


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Deterministic kernels for the duration of a run; the global switches are restored afterwards."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]


def check_writable(run_dir: Path) -> None:
    """Fail fast, before any data is loaded, when the run directory cannot be written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} exists and is not a folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as error:
        raise UserError(f"run directory {run_dir} is not writable ({error.strerror or error})") from None


def check_free_space(run_dir: Path, model: nn.Module) -> None:
    """Fail before the first epoch when the run directory's disk cannot hold the checkpoints and logs."""
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    # best + last weights, the training state (weights again + Adam's two moments), a temp copy of it while
    # writing, logs/report.
    needed = 8 * weight_bytes + LOG_SPACE_BYTES
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise UserError(
            f"not enough free space for run directory {run_dir}: about {needed / 1e6:,.0f} MB needed "
            f"for checkpoints and logs, {free / 1e6:,.0f} MB free"
        )


@contextmanager
def disk_full_is_a_user_error(run_dir: Path) -> Iterator[None]:
    """A disk that fills up during training ends the run with a one-line message, not a traceback."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise UserError(
            f"the disk of {run_dir} is full ({error.strerror}); every checkpoint written so far is intact: "
            f"free some space, then continue with `cnnclinic train --resume {run_dir}`"
        ) from None


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA device is available (use train.device=auto or cpu)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(record) + "\n" for record in records).encode("utf-8"))


class Trainer:
    """Runs the epochs of one training run; ``fit()`` returns a :class:`RunResult`.

    Attributes callbacks may read: ``cfg``, ``run_dir``, ``model``, ``optimizer``, ``doctor``
    (None when disabled), ``epoch``, ``global_step``, ``history``, ``class_names``.
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: str | Path,
        *,
        console: Console | None = None,
        callbacks: Sequence[Callback] = (),
        init_weights: str | Path | None = None,
        report: bool = True,
    ):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.console = console or Console()
        self.callbacks = list(callbacks)
        self.init_weights = Path(init_weights) if init_weights is not None else None
        # Write report.html when the run ends (a few seconds of plotting).
        self.report = report
        self.should_stop = False
        self.stop_reason: str | None = None
        self.epoch = 0
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.best_val_acc: float | None = None
        self.best_val_loss_at_best: float = math.inf
        self.best_epoch: int | None = None
        self.early_stopping = {"best_val_loss": math.inf, "bad_epochs": 0}
        self.doctor: Doctor | None = None
        self._previous_findings: list[Finding] = []
        self._layer_records_written = 0
        self._steps_file: io.TextIOWrapper | None = None

    # ----------------------------------------------------------------------------------------- run
    def fit(self, resume: bool = False) -> RunResult:
        check_writable(self.run_dir)
        # Under torchrun: join the process group; only rank 0 prints and writes the run directory.
        self.dist = init_distributed(resolve_device(self.cfg.train.device), self.cfg.train)
        if not self.dist.is_main:
            self.console = Console(quiet=True)
        if resume:
            state = self._resumable_state()
        elif self.dist.is_main:
            self._remove_stale_files()
        with deterministic_algorithms(self.cfg.train.deterministic), disk_full_is_a_user_error(self.run_dir):
            # Each process draws its own augmentations; DDP gives every process rank 0's initial weights.
            seed_everything(self.cfg.train.seed + self.dist.rank)
            self._setup()
            try:
                so_far = self._restore(state) if resume else None
                if not resume and self.init_weights is not None:
                    self._load_init_weights(self.init_weights)
                if self.cfg.doctor.enabled:
                    self._start_doctor(so_far)
                self._write_run_description()
                # Opened after a resume has trimmed steps.jsonl (which replaces the file).
                if self.dist.is_main:
                    self._steps_file = (self.run_dir / "steps.jsonl").open("a", encoding="utf-8")
                self._run_epochs()
            finally:
                self._close()
        if self.dist.is_main and (self.run_dir / "val_predictions.npz").is_file():
            self._check_labels()
        if self.report and self.dist.is_main:
            # Imported here: the report reads finished runs through this module (load_trained_model).
            from cnnclinic.report import write_report

            report = write_report(self.run_dir, console=self.console)
            self.console.print(f"report: [bold]{report}[/]")
        return self._result()

    def _setup(self) -> None:
        cfg = self.cfg
        self.device = self.dist.device
        with self.dist.local_main_first():  # one process per machine fills the decode cache
            self.bundle: DataBundle = load_data(cfg.data, console=self.console)
        self.class_names = list(self.bundle.class_names)
        self._print_data_summary()
        self._inspect_data()
        self.loaders = self.dist.prepare_loaders(make_loaders(self.bundle, cfg), cfg)
        self.model, self.criterion, self.optimizer = build_training_parts(cfg, self.bundle, self.device)
        # What the training steps call (DDP); self.model stays the plain module.
        self.train_model = self.dist.training_model(self.model, cfg.train)
        self.compiled_model = torch.compile(self.train_model) if cfg.train.compile else self.train_model
        train_images = len(self.bundle.train)
        parameters = count_parameters(self.model)
        self.console.print(
            f"model [bold]{cfg.model.arch}[/]: {parameters:,} parameters, "
            f"{parameters / max(train_images, 1):,.0f} per training image ({train_images:,} images)"
        )
        check_free_space(self.run_dir, self.model)
        self.scheduler = build_scheduler(self.optimizer, cfg.train, steps_per_epoch=len(self.loaders.train))
        from torch.utils.tensorboard import SummaryWriter  # slow import, only when training

        self.tensorboard = SummaryWriter(log_dir=str(self.run_dir / "tensorboard")) if self.dist.is_main else None

    def _run_epochs(self) -> None:
        total_epochs = self.cfg.train.epochs
        if self.epoch >= total_epochs:
            self.console.print(f"nothing to do: the run already has {self.epoch} of {total_epochs} epochs")
            return
        with Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.3f}  {task.fields[speed]:,.0f} img/s"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        ) as progress:
            task = progress.add_task("train", total=len(self.loaders.train), epoch=0, epochs=total_epochs,
                                     loss=math.nan, acc=math.nan, speed=0.0)
            for epoch in range(self.epoch + 1, total_epochs + 1):
                self.epoch = epoch
                self.dist.set_epoch(self.loaders.train, epoch)
                started = time.perf_counter()
                progress.reset(task, total=len(self.loaders.train), epoch=epoch, epochs=total_epochs,
                               loss=math.nan, acc=math.nan, speed=0.0)
                train_loss, train_acc = self._train_one_epoch(progress, task)
                if self.should_stop:
                    break
                self._end_epoch(train_loss, train_acc, time.perf_counter() - started)
                self._stop_together()
                if self.should_stop:
                    break
        if self.stop_reason:
            self.console.print(f"[yellow]stopped in epoch {self.epoch}:[/] {self.stop_reason}")

    def _train_one_epoch(self, progress: Progress, task: TaskID) -> tuple[float, float]:
        self.model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        started = time.perf_counter()
        for images, targets in self.loaders.train:
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            # MixUp/CutMix give soft targets; accuracy and the Doctor use their argmax.
            hard_targets = targets.argmax(dim=1) if targets.ndim == 2 else targets
            # The Doctor's sampled passes run eagerly: torch.compile cannot trace its activation hooks.
            measured = self.doctor is not None and self.doctor.measuring
            with self.dist.autocast(self.cfg.train):
                logits = (self.train_model if measured else self.compiled_model)(images)
                loss = self.criterion(logits, targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # The global batch's loss (the shards' combined), so every process and its Doctor see the same.
            step_loss = self.dist.mean_loss(loss, images.shape[0])
            if self.doctor is not None:
                self.doctor.after_backward(step_loss, logits=logits.detach(), targets=hard_targets)
            loss_value = step_loss.item()
            if self.doctor is not None and self.doctor.should_stop:
                self._request_stop("the Doctor raised a critical finding; the last good checkpoint is kept")
            elif not math.isfinite(loss_value):
                self._request_stop(
                    f"loss is {loss_value} at step {self.global_step + 1}; the last good checkpoint is kept"
                )
            self._stop_together()
            if self.should_stop:
                break
            if self.cfg.train.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            self.global_step += 1
            batch = images.shape[0]
            loss_sum += loss_value * batch
            correct += int((logits.detach().argmax(dim=1) == hard_targets).sum())
            seen += batch
            if self._steps_file is not None:
                self._steps_file.write(
                    json.dumps({"step": self.global_step, "epoch": self.epoch, "loss": loss_value, "lr": lr}) + "\n"
                )
            progress.update(task, advance=1, loss=loss_sum / seen, acc=correct / seen,
                            speed=seen * self.dist.world_size / (time.perf_counter() - started))
            if self.should_stop:
                break
        totals = self.dist.all_reduce_sum(torch.tensor([loss_sum, correct, seen], dtype=torch.float64))
        loss_sum, correct, seen = totals.tolist()
        return loss_sum / max(seen, 1), correct / max(seen, 1)

    @torch.no_grad()
    def predict_logits(self, loader: torch.utils.data.DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and hard targets of every batch of ``loader`` (in loader order), on the CPU."""
        self.model.eval()
        all_logits, all_targets = [], []
        for images, targets in loader:
            all_logits.append(self.model(images.to(self.device, non_blocking=True)).float().cpu())
            all_targets.append(targets.argmax(dim=1) if targets.ndim == 2 else targets)
        return self.dist.gather_in_order(loader, torch.cat(all_logits), torch.cat(all_targets))

    def _end_epoch(self, train_loss: float, train_acc: float, train_seconds: float) -> None:
        started = time.perf_counter()
        val_logits, val_targets = self.predict_logits(self.loaders.val)
        with torch.no_grad():
            val_loss = float(self.criterion(val_logits.to(self.device), val_targets.to(self.device)))
        probs = torch.softmax(val_logits, dim=1).numpy()
        metrics = classification_metrics(probs, val_targets.numpy(), self.class_names)
        if self.doctor is not None:
            self.doctor.combine_epoch_counts(self.dist.all_reduce_sum)
            self.doctor.end_epoch(val_logits=val_logits, val_targets=val_targets)
        record = {
            "epoch": self.epoch,
            "step": self.global_step,
            "train_loss": _finite_or_none(train_loss),
            "train_acc": train_acc,
            "val_loss": _finite_or_none(val_loss),
            "val_acc": metrics.accuracy,
            "val_auc": metrics.auc,
            "val_macro_auc": metrics.macro_auc,
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": round(train_seconds + time.perf_counter() - started, 3),
        }
        self.history.append(record)
        if self.dist.is_main:
            append_lines(self.run_dir / "metrics.jsonl", [json.dumps(record)])
        self._log_tensorboard(record)
        self._print_epoch(record)

        improved = self.best_val_acc is None or metrics.accuracy > self.best_val_acc or (
            metrics.accuracy == self.best_val_acc and val_loss < self.best_val_loss_at_best
        )
        if improved and self._save_weights("best.safetensors"):
            self.best_val_acc, self.best_val_loss_at_best, self.best_epoch = metrics.accuracy, val_loss, self.epoch
            self._save_val_predictions(probs, val_targets.numpy())
        self._update_early_stopping(val_loss)
        for callback in self.callbacks:
            callback.on_epoch_end(self, record)
        self._stop_together()
        # Logs first, checkpoint last: a crash in between leaves logs ahead of the checkpoint, which a
        # resume trims; the reverse order would lose this epoch's records for good.
        if self._steps_file is not None:
            self._steps_file.flush()
            os.fsync(self._steps_file.fileno())
        self._write_doctor_files()
        final = self.should_stop or self.epoch == self.cfg.train.epochs
        if final or self.epoch % self.cfg.train.checkpoint_every == 0:
            self._save_last()

    def _start_doctor(self, so_far: RunSoFar | None) -> None:
        """Attach the Doctor; after a resume (``so_far``) it counts on from the checkpoint's step and epoch."""
        from cnnclinic.doctor import Doctor

        self.doctor = Doctor(
            self.model,
            self.optimizer,
            len(self.class_names),
            class_names=self.class_names,
            thresholds=self.cfg.doctor.thresholds,
            sample_every=self.cfg.doctor.sample_every,
            on_finding=self._on_finding,
            data_facts=self._class_data_facts,
            so_far=so_far,
        )

    def _update_early_stopping(self, val_loss: float) -> None:
        if val_loss < self.early_stopping["best_val_loss"]:
            self.early_stopping = {"best_val_loss": val_loss, "bad_epochs": 0}
        else:
            self.early_stopping["bad_epochs"] += 1
        patience = self.cfg.train.early_stopping_patience
        if patience is not None and self.early_stopping["bad_epochs"] >= patience:
            self._request_stop(f"early stopping: val loss has not improved for {patience} epochs")

    def _request_stop(self, reason: str) -> None:
        self.should_stop = True
        self.stop_reason = self.stop_reason or reason

    def _stop_together(self) -> None:
        """Under torchrun, a stop requested on any process ends every process at the same point."""
        if self.dist.any(self.should_stop) and not self.should_stop:
            self._request_stop("another process of this torchrun job stopped the run")

    # ---------------------------------------------------------------------------------- the doctor
    def _on_finding(self, finding: Finding) -> None:
        from cnnclinic.doctor import render_finding

        if finding.key in {data_finding.key for data_finding in self.data_findings}:
            return  # already reported by the data doctor before training
        self.console.print(render_finding(finding))
        for callback in self.callbacks:
            callback.on_finding(self, finding)

    def _class_data_facts(self, class_name: str) -> dict[str, Any]:
        """The data doctor's facts about one class, for the Doctor's lagging-class evidence."""
        from cnnclinic.datadoctor import class_data_facts

        return class_data_facts(self.data_report, class_name)

    def findings(self) -> list[Finding]:
        current = self.doctor.findings() if self.doctor is not None else []
        # Data findings come first; they replace any finding of the same key (the Doctor's class_imbalance
        # from targets seen, or the data findings a resumed run read back from diagnosis.json).
        # After a resume, the fresh Doctor may name again what the run found before: keep the first.
        unique: dict[tuple[str, str | None], Finding] = {}
        for finding in self.data_findings + self._previous_findings + current:
            unique.setdefault(finding.key, finding)
        return list(unique.values())

    def _inspect_data(self) -> None:
        """The data doctor (leakage, imbalance, small classes, image quality, corrupt files) before step 1."""
        from cnnclinic.datadoctor import inspect_data
        from cnnclinic.doctor import render_finding

        if not self.dist.is_main:
            self.data_findings = []
            return
        report = inspect_data(self.bundle)
        self.data_report = report
        self.data_findings: list[Finding] = report.findings
        for finding in self.data_findings:
            self.console.print(render_finding(finding))
        self.console.print(f"data doctor: {len(report.findings)} finding(s) in {report.timings['total']:.1f} s")

    def _check_labels(self) -> None:
        """The data doctor's label check, now that a model's out-of-sample (validation) predictions exist."""
        from cnnclinic.datadoctor import check_labels
        from cnnclinic.doctor import render_finding

        label_findings = check_labels(self.data_report, self.run_dir)
        for finding in label_findings:
            self.console.print(render_finding(finding))
        self.data_findings = [f for f in self.data_findings if f.symptom != "label_issues"] + label_findings
        self._write_doctor_files()

    def _write_doctor_files(self) -> None:
        if not self.dist.is_main:
            return
        # "findings": active at the end of the run; "resolved": seen, then cleared for several epochs.
        resolved = [f for f in self.doctor.findings(include_resolved=True) if not f.active] if self.doctor else []
        diagnosis = {
            "findings": [finding.to_dict() for finding in self.findings()],
            "resolved": [finding.to_dict() for finding in resolved],
        }
        atomic_write_bytes(self.run_dir / "diagnosis.json", json.dumps(diagnosis, indent=2).encode("utf-8"))
        if self.doctor is None:
            return
        new_records = self.doctor.layer_history[self._layer_records_written :]
        append_lines(self.run_dir / "layer_stats.jsonl", [json.dumps(record) for record in new_records])
        self._layer_records_written += len(new_records)

    # ------------------------------------------------------------------------- files and checkpoints
    def _remove_stale_files(self) -> None:
        for name in RUN_FILES:
            (self.run_dir / name).unlink(missing_ok=True)
        for name in RUN_FOLDERS:
            shutil.rmtree(self.run_dir / name, ignore_errors=True)

    def _write_run_description(self) -> None:
        if not self.dist.is_main:
            return
        atomic_write_bytes(self.run_dir / "config.yaml", self.cfg.to_yaml().encode("utf-8"))
        summary = dict(self.bundle.summary)
        summary["skipped_files"] = [{"path": s.path, "reason": s.reason} for s in self.bundle.skipped]
        atomic_write_bytes(self.run_dir / "data_summary.json", json.dumps(summary, indent=2).encode("utf-8"))

    def _save_weights(self, name: str) -> bool:
        if not self.dist.is_main:
            return True
        try:
            save_weights(self.model, self.run_dir / "checkpoints" / name, class_names=self.class_names,
                         extra={"epoch": self.epoch})
        except NonFiniteWeightsError as error:
            self.console.print(f"[red]{error}[/]; keeping the last good checkpoint")
            self._request_stop("the weights became NaN/Inf")
            return False
        return True

    def _save_last(self) -> None:
        if not self.dist.is_main:
            return
        if not self._save_weights("last.safetensors"):
            return
        state = {
            "class_names": self.class_names,
            # The weights again, in the same atomically written file as the rest of the state: a kill between
            # writing last.safetensors and this file must not pair one epoch's weights with another's optimizer.
            "model": self.model.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "best_val_acc": self.best_val_acc,
            "best_val_loss_at_best": self.best_val_loss_at_best,
            "best_epoch": self.best_epoch,
            "early_stopping": dict(self.early_stopping),
            "rng": capture_rng_state(),
            # The train loader shuffles with its own generator (seeded by train.seed), not the global one.
            "loader_rng": None if self.loaders.train.generator is None else self.loaders.train.generator.get_state(),
        }
        save_state(state, self.run_dir / "checkpoints" / "last.state.pt")

    def _save_val_predictions(self, probs: np.ndarray, targets: np.ndarray) -> None:
        if not self.dist.is_main:
            return
        paths = np.array([str(p) for p in self.bundle.val.paths], dtype=np.str_)
        buffer = io.BytesIO()
        np.savez(buffer, probs=probs.astype(np.float32), targets=targets.astype(np.int64), paths=paths)
        atomic_write_bytes(self.run_dir / "val_predictions.npz", buffer.getvalue())

    def _resumable_state(self) -> dict[str, Any]:
        checkpoints = self.run_dir / "checkpoints"
        if not (checkpoints / "last.state.pt").is_file():
            if (self.run_dir / "config.yaml").is_file():
                raise UserError(f"{self.run_dir} stopped before its first checkpoint was written: nothing to resume; "
                                "train it again (same --out)")
            raise UserError(f"{self.run_dir} is not a cnnclinic run that can be resumed (no checkpoints/last.state.pt)")
        if self.dist.is_main:  # another process's leftovers may be rank 0's writes in progress
            for folder in (self.run_dir, checkpoints):
                remove_partial_writes(folder)
        state = load_state(checkpoints / "last.state.pt")
        if "model" not in state:
            raise UserError(f"cannot resume {self.run_dir}: an older cnnclinic wrote its training state without "
                            "the weights; start the run again")
        return state

    def _restore(self, state: dict[str, Any]) -> RunSoFar:
        """Load the checkpoint's state and trim the run's files back to it; what the run had done, for the
        Doctor."""
        from cnnclinic.doctor.history import RunSoFar

        if list(state["class_names"]) != self.class_names:
            raise UserError(
                f"cannot resume {self.run_dir}: it was trained on classes {state['class_names']}, "
                f"the data now has {self.class_names}"
            )
        self._load_model_weights(state["model"], self.run_dir / "checkpoints" / "last.state.pt")
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.global_step = state["epoch"], state["global_step"]
        self.best_val_acc, self.best_epoch = state["best_val_acc"], state["best_epoch"]
        self.best_val_loss_at_best = state["best_val_loss_at_best"]
        self.early_stopping = dict(state["early_stopping"])
        # Drop whatever a crashed run wrote after its last checkpoint, so the files match the state.
        self.history = [r for r in read_jsonl(self.run_dir / "metrics.jsonl") if r["epoch"] <= self.epoch]
        # steps.jsonl numbers steps from 1 (steps done), the Doctor's layer_stats.jsonl from 0 (the step's
        # index): the checkpoint holds steps 1..global_step, i.e. indices 0..global_step - 1.
        steps = [r for r in read_jsonl(self.run_dir / "steps.jsonl") if r["step"] <= self.global_step]
        if self.dist.is_main:
            _write_jsonl(self.run_dir / "metrics.jsonl", self.history)
            _write_jsonl(self.run_dir / "steps.jsonl", steps)
            samples = [r for r in read_jsonl(self.run_dir / "layer_stats.jsonl") if r["step"] < self.global_step]
            _write_jsonl(self.run_dir / "layer_stats.jsonl", samples)
        diagnosis_path = self.run_dir / "diagnosis.json"
        if diagnosis_path.is_file():
            from cnnclinic.doctor import Finding

            earlier = json.loads(diagnosis_path.read_text(encoding="utf-8")).get("findings", [])
            self._previous_findings = [Finding.from_dict(d) for d in earlier if d.get("epoch", 0) <= self.epoch]
        restore_rng_state(state["rng"])
        if state["loader_rng"] is not None and self.loaders.train.generator is not None:
            self.loaders.train.generator.set_state(state["loader_rng"])
        self.console.print(f"resuming {self.run_dir} after epoch {self.epoch} (step {self.global_step})")
        return RunSoFar(self.global_step, self.epoch, tuple(r["loss"] for r in steps[:3]))

    def _load_init_weights(self, path: Path) -> None:
        tensors, metadata = load_weights(path)
        if list(metadata.get("class_names", [])) != self.class_names:
            raise UserError(
                f"init weights {path} were trained on classes {metadata.get('class_names')}, "
                f"the data has {self.class_names}"
            )
        self._load_model_weights(tensors, path)
        self.console.print(f"starting from the weights in {path}")

    def _load_model_weights(self, tensors: dict[str, torch.Tensor], path: Path) -> None:
        try:
            self.model.load_state_dict(tensors)
        except RuntimeError as error:
            first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
            raise UserError(f"{path} does not fit this model ({first})") from None

    def _close(self) -> None:
        if self.doctor is not None:
            self._write_doctor_files()
            self.doctor.close()
        if self._steps_file is not None:
            self._steps_file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()

    def _result(self) -> RunResult:
        best = self.run_dir / "checkpoints" / "best.safetensors"
        if self.best_epoch is not None and best.is_file():
            self._load_model_weights(load_weights(best)[0], best)
        self.model.eval()
        return RunResult(
            run_dir=self.run_dir,
            history=list(self.history),
            findings=self.dist.from_main(self.findings()),  # rank 0 decides (it also saw the data doctor)
            best_val_acc=self.best_val_acc,
            best_epoch=self.best_epoch,
            model=self.model,
            stop_reason=self.stop_reason,
        )

    # -------------------------------------------------------------------------------------- output
    def _print_data_summary(self) -> None:
        counts: dict[str, dict[str, int]] = self.bundle.summary["counts"]
        table = Table(title="images per class and split", title_justify="left")
        table.add_column("class")
        for split in counts:
            table.add_column(split, justify="right")
        for name in self.class_names:
            table.add_row(name, *(str(counts[split].get(name, 0)) for split in counts))
        table.add_row("[bold]total", *(f"[bold]{sum(counts[split].values())}" for split in counts))
        self.console.print(table)
        if self.bundle.skipped:
            self.console.print(f"[yellow]{len(self.bundle.skipped)} files skipped[/] (see data_summary.json):")
            for skipped in self.bundle.skipped[:5]:
                self.console.print(f"  {skipped.path}: {skipped.reason}", highlight=False)

    def _print_epoch(self, record: dict[str, Any]) -> None:
        def shown(key: str, digits: int) -> str:
            return "n/a" if record[key] is None else f"{record[key]:.{digits}f}"

        self.console.print(
            f"epoch {record['epoch']:>3}  train loss {shown('train_loss', 3)} acc {shown('train_acc', 3)}"
            f"  val loss {shown('val_loss', 3)} acc {shown('val_acc', 3)} AUC {shown('val_macro_auc', 3)}"
            f"  lr {record['lr']:.1e}  {record['seconds']:.1f}s",
            highlight=False,
            soft_wrap=True,
        )

    def _log_tensorboard(self, record: dict[str, Any]) -> None:
        if self.tensorboard is None:
            return
        step = record["epoch"]
        scalars = {
            "loss/train": record["train_loss"],
            "loss/val": record["val_loss"],
            "accuracy/train": record["train_acc"],
            "accuracy/val": record["val_acc"],
            "lr": record["lr"],
            "auc/macro": record["val_macro_auc"],
            **{f"auc/{name}": auc for name, auc in record["val_auc"].items()},
        }
        for tag, value in scalars.items():
            if value is not None:
                self.tensorboard.add_scalar(tag, value, step)
        self.tensorboard.flush()


# ------------------------------------------------------------------------------ using a trained model
@torch.no_grad()
def predict_probs(model: nn.Module, dataset: torch.utils.data.Dataset, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N x K) of every item of ``dataset``, in order, on the CPU."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    model.eval()
    return torch.cat([torch.softmax(model(images), dim=1) for images, _ in loader]).numpy()


def load_images(paths: Sequence[str | Path], image_size: int) -> tuple[CachedImageDataset, list[SkippedFile]]:
    """Decode image files the way training does; unreadable ones are returned as SkippedFile."""
    decoded, kept, skipped = [], [], []
    for path in paths:
        image = decode_image(Path(path), image_size)
        if isinstance(image, str):
            skipped.append(SkippedFile(str(path), image))
        else:
            decoded.append(image)
            kept.append(str(path))
    images = torch.stack(decoded) if decoded else torch.empty(0, 3, image_size, image_size, dtype=torch.uint8)
    return CachedImageDataset(images, torch.zeros(len(kept), dtype=torch.int64), kept), skipped


@dataclass
class Evaluation:
    metrics: ClassificationMetrics
    class_names: list[str]
    skipped: list[SkippedFile] = field(default_factory=list)


def evaluate_folder(run_dir: str | Path, folder: str | Path, *, console: Console | None = None) -> Evaluation:
    """Metrics of a run's best weights on an ImageFolder tree whose classes are among the run's classes."""
    trained = load_trained_model(run_dir)
    scan = scan_folder(Path(folder), "evaluation folder")
    unknown = [name for name in scan.class_names if name not in trained.class_names]
    if unknown:
        raise UserError(
            f"evaluation folder classes {unknown} are not classes of the run (it knows {trained.class_names})"
        )
    decoded = decode_folder(scan, trained.cfg.data.image_size, console=console)
    if not decoded.files:
        raise UserError(f"evaluation folder {folder} has no readable images")
    # The folder may hold a subset of the classes: map its labels onto the checkpoint's indices by name.
    targets = torch.tensor([trained.class_names.index(scan.class_names[label]) for label in decoded.labels])
    dataset = CachedImageDataset(decoded.images, targets, decoded.files)
    probs = predict_probs(trained.model, dataset)
    metrics = classification_metrics(probs, targets.numpy(), trained.class_names)
    return Evaluation(metrics, trained.class_names, decoded.skipped)
