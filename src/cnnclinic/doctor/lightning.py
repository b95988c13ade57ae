"""The Doctor as a Lightning callback (``pip install cnnclinic[lightning]``).

    from cnnclinic.doctor.lightning import DoctorCallback
    callback = DoctorCallback(num_classes=7, class_names=names)
    Trainer(callbacks=[callback]).fit(module, train_loader, val_loader)
    callback.doctor.findings()

What the LightningModule must do: batches are ``(inputs, targets, ...)`` with class-index targets, and
``forward`` (called as ``self(x)`` in ``training_step``/``validation_step``) returns the logits. The
callback reads the logits from a forward hook on the module and the targets from the batch, so
``training_step`` may return just the loss. The Doctor is fed after each backward pass (gradients present,
before the optimizer step) and, at the end of each training epoch, with the logits of that epoch's
validation loop. When a critical finding (NaN/Inf) appears, ``trainer.should_stop`` is set.
"""

from __future__ import annotations

from typing import Any

import torch

from cnnclinic.doctor.doctor import Doctor
from cnnclinic.doctor.history import RunSoFar
from cnnclinic.errors import UserError

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - exercised only without the optional extra
    raise UserError(
        "the Lightning callback needs the 'lightning' package: pip install 'cnnclinic[lightning]'"
    ) from None


def _targets_of(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, (list, tuple)) and len(batch) >= 2 and isinstance(batch[1], torch.Tensor):
        return batch[1]
    return None


class DoctorCallback(Callback):
    """Creates a :class:`Doctor` when training starts and feeds it every step and validation epoch."""

    def __init__(self, num_classes: int, class_names: list[str] | None = None, **doctor_kwargs: Any):
        super().__init__()
        self.num_classes = num_classes
        self.class_names = class_names
        self.doctor_kwargs = doctor_kwargs
        self.doctor: Doctor | None = None
        self._logits: torch.Tensor | None = None
        self._targets: torch.Tensor | None = None
        self._loss: torch.Tensor | None = None
        self._val_logits: list[torch.Tensor] = []
        self._val_targets: list[torch.Tensor] = []
        self._hook: Any = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._hook = pl_module.register_forward_hook(self._keep_logits)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        # fit(ckpt_path=...) has restored the loop counters by now (not yet at fit start): count on from them.
        so_far = RunSoFar(trainer.global_step, trainer.current_epoch) if trainer.global_step > 0 else None
        self.doctor = Doctor(
            pl_module, optimizer, self.num_classes, class_names=self.class_names, so_far=so_far, **self.doctor_kwargs
        )

    def _keep_logits(self, module: Any, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[1] == self.num_classes:
            self._logits = output

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._targets, self._logits = _targets_of(batch), None

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        self._loss = loss

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        if self.doctor is None or self._loss is None:
            return
        logits = self._logits if self._targets is not None else None
        self.doctor.after_backward(self._loss, logits=logits, targets=self._targets if logits is not None else None)
        self._loss = None
        if self.doctor.should_stop:
            trainer.should_stop = True

    def on_validation_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        targets = _targets_of(batch)
        if trainer.sanity_checking or targets is None or self._logits is None:
            return
        self._val_logits.append(self._logits.detach().float().cpu())
        self._val_targets.append(targets.detach().cpu())
        self._logits = None

    def on_validation_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._logits = None

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.doctor is None:
            return
        if self._val_logits:
            self.doctor.end_epoch(torch.cat(self._val_logits), torch.cat(self._val_targets))
        else:
            self.doctor.end_epoch()
        self._val_logits, self._val_targets = [], []
        if self.doctor.should_stop:
            trainer.should_stop = True

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.doctor is not None:
            self.doctor.close()
