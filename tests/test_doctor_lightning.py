"""The Lightning callback finds a faulty run and stays silent on a healthy one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from cnnclinic.doctor.lightning import DoctorCallback  # noqa: E402
from test_doctor_cases import digits, init_, mlp  # noqa: E402


class DigitsModule(pl.LightningModule):
    def __init__(self, net: nn.Module, lr: float):
        super().__init__()
        self.net = net
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def fit(net: nn.Module, lr: float, epochs: int, save: str | None = None, resume: str | None = None) -> DoctorCallback:
    """Train ``net`` on digits under the callback; ``save``: write a checkpoint at the end, ``resume``: go on
    from one."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    data = digits()
    train = DataLoader(TensorDataset(data["x_train"], data["y_train"]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(data["x_val"], data["y_val"]), batch_size=128)
    callback = DoctorCallback(num_classes=10)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, enable_progress_bar=False, logger=False,
        enable_checkpointing=False, enable_model_summary=False, callbacks=[callback],
    )
    try:
        trainer.fit(DigitsModule(net, lr), train, val, ckpt_path=resume)
        if save is not None:
            trainer.save_checkpoint(save)
    finally:
        torch.set_num_threads(threads)
    return callback


def test_lightning_callback_finds_dead_relus() -> None:
    callback = fit(init_(mlp([64, 64, 64], nn.ReLU), bias=-3.0), 1e-3, 2)
    assert [f.symptom for f in callback.doctor.findings()] == ["dying_relu"]


def test_lightning_callback_healthy_run_is_clean_and_sees_validation() -> None:
    callback = fit(mlp([64, 64], nn.ReLU), 1e-3, 3)
    doctor = callback.doctor
    assert doctor.findings() == []
    epochs = doctor.history.epochs
    assert len(epochs) == 3 and epochs[-1].val_acc > 0.9 and epochs[-1].train_acc > 0.9
    assert sum(epochs[-1].val_counts) == 360  # the whole validation set, sanity check excluded
    assert all(not m._forward_hooks for m in callback.doctor.model.modules())  # removed at fit end


def test_lightning_callback_counts_on_after_a_resume(tmp_path) -> None:
    checkpoint = str(tmp_path / "two_epochs.ckpt")
    first = fit(mlp([64, 64], nn.ReLU), 1e-3, 2, save=checkpoint)
    steps_per_epoch = first.doctor.history.step // 2
    resumed = fit(mlp([64, 64], nn.ReLU), 1e-3, 3, resume=checkpoint)
    history = resumed.doctor.history
    assert [e.epoch for e in history.epochs] == [3]
    assert history.step == 3 * steps_per_epoch
    assert min(s.step for s in history.samples) >= 2 * steps_per_epoch
