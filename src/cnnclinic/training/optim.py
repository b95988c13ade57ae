"""Optimizers and learning-rate schedules.

Every scheduler returned by ``build_scheduler`` is stepped once per *optimizer step*, so epoch-based
settings (``step_epochs``, ``cyclic_step_epochs``, ``epochs``) are converted to steps here:

- constant: LambdaLR with factor 1 (so the caller can step any schedule the same way)
- step: StepLR, lr x step_gamma every step_epochs epochs
- cosine: CosineAnnealingLR from lr to 0 over all steps
- cyclic: CyclicLR between cyclic_base_lr (default lr/10) and cyclic_max_lr (default lr), half-cycle of
  cyclic_step_epochs epochs; exp_range shrinks the amplitude to 10% by the last step. With SGD and
  momentum > 0 the momentum cycles inversely, between momentum - 0.1 and momentum (Smith, 2017).
- onecycle: OneCycleLR with max_lr = lr over all steps; same momentum rule as cyclic.
"""

from __future__ import annotations

from torch import nn
from torch.optim import SGD, Adam, AdamW, Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    CyclicLR,
    LambdaLR,
    LRScheduler,
    OneCycleLR,
    StepLR,
)

from cnnclinic.config import TrainConfig
from cnnclinic.errors import UserError

# exp_range: the cycle amplitude is multiplied by this over the whole run.
EXP_RANGE_FINAL_AMPLITUDE = 0.1
# Cycled momentum spans [momentum - MOMENTUM_SPAN, momentum].
MOMENTUM_SPAN = 0.1


def build_optimizer(model: nn.Module, train_cfg: TrainConfig) -> Optimizer:
    """SGD (momentum, nesterov), Adam or AdamW over the model's trainable parameters.

    ``weight_decay`` is an L2 penalty for SGD and Adam, decoupled weight decay for AdamW."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("the model has no trainable parameters")
    lr, decay = train_cfg.lr, train_cfg.weight_decay
    if train_cfg.optimizer == "sgd":
        if train_cfg.nesterov and train_cfg.momentum == 0:
            raise UserError("train.nesterov=true needs train.momentum > 0")
        return SGD(params, lr=lr, momentum=train_cfg.momentum, nesterov=train_cfg.nesterov, weight_decay=decay)
    if train_cfg.optimizer == "adam":
        return Adam(params, lr=lr, weight_decay=decay)
    return AdamW(params, lr=lr, weight_decay=decay)


def _constant(_: int) -> float:
    return 1.0


def _cycles_momentum(train_cfg: TrainConfig) -> bool:
    return train_cfg.optimizer == "sgd" and train_cfg.momentum > 0


def build_scheduler(optimizer: Optimizer, train_cfg: TrainConfig, steps_per_epoch: int) -> LRScheduler:
    """The schedule named by ``train.schedule``, to be stepped after every optimizer step."""
    if steps_per_epoch < 1:
        raise UserError("the training set yields no batches, so there is nothing to schedule")
    total_steps = train_cfg.epochs * steps_per_epoch
    momentum_range = {
        "cycle_momentum": _cycles_momentum(train_cfg),
        "base_momentum": max(0.0, train_cfg.momentum - MOMENTUM_SPAN),
        "max_momentum": train_cfg.momentum,
    }
    schedule = train_cfg.schedule
    if schedule == "constant":
        return LambdaLR(optimizer, _constant)
    if schedule == "step":
        return StepLR(optimizer, step_size=train_cfg.step_epochs * steps_per_epoch, gamma=train_cfg.step_gamma)
    if schedule == "cosine":
        return CosineAnnealingLR(optimizer, T_max=total_steps)
    if schedule == "onecycle":
        return OneCycleLR(optimizer, max_lr=train_cfg.lr, total_steps=total_steps, **momentum_range)
    base_lr = train_cfg.cyclic_base_lr or train_cfg.lr / 10
    max_lr = train_cfg.cyclic_max_lr or train_cfg.lr
    if base_lr >= max_lr:
        raise UserError(f"train.cyclic_base_lr ({base_lr:g}) must be below train.cyclic_max_lr ({max_lr:g})")
    return CyclicLR(
        optimizer,
        base_lr=base_lr,
        max_lr=max_lr,
        step_size_up=max(1, round(train_cfg.cyclic_step_epochs * steps_per_epoch)),
        mode=train_cfg.cyclic_mode,
        gamma=EXP_RANGE_FINAL_AMPLITUDE ** (1.0 / total_steps),
        **momentum_range,
    )
