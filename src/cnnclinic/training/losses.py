"""Classification losses: cross-entropy, class-weighted cross-entropy and multiclass focal loss.

Every loss takes logits (N x K) and targets that are either class indices (N,) or probabilities
(N x K, as MixUp/CutMix produce); a one-hot target gives exactly the same loss as its class index.
Label smoothing mixes the target with the uniform distribution: t' = (1 - eps) t + eps / K.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnnclinic.config import TrainConfig
from cnnclinic.errors import UserError


def inverse_frequency_weights(class_counts: Sequence[int]) -> torch.Tensor:
    """Per-class weights proportional to 1 / count, normalised to mean 1 (a class without images counts as 1)."""
    counts = torch.tensor([max(int(c), 1) for c in class_counts], dtype=torch.float32)
    weights = 1.0 / counts
    return weights * len(weights) / weights.sum()


def target_distribution(targets: torch.Tensor, num_classes: int, label_smoothing: float = 0.0) -> torch.Tensor:
    """Class indices or probabilities -> smoothed probabilities (N x K, float)."""
    if targets.ndim == 1:
        probs = F.one_hot(targets.long(), num_classes).float()
    else:
        probs = targets.float()
    return probs * (1.0 - label_smoothing) + label_smoothing / num_classes


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy with per-class weights: mean over the batch of -sum_k w_k t_k log p_k.

    Unlike ``nn.CrossEntropyLoss(weight=...)`` on class indices (which divides by the summed weights of
    the batch), hard and soft targets share one normalisation: the batch size.
    """

    def __init__(self, weight: torch.Tensor, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", weight.float())
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        probs = target_distribution(targets, logits.shape[1], self.label_smoothing)
        return F.cross_entropy(logits, probs, weight=self.weight)


class FocalLoss(nn.Module):
    """Multiclass focal loss (Lin et al., 2017): mean over the batch of -alpha_y (1 - p_y)^gamma log p_y.

    ``(1 - p_y)^gamma`` shrinks the loss of examples the model already gets right, so training
    concentrates on the hard ones; gamma = 0 without alpha is cross-entropy. ``alpha`` is an optional
    per-class weight tensor. Soft or smoothed targets t use -sum_k alpha_k t_k (1 - p_k)^gamma log p_k.
    """

    def __init__(self, gamma: float = 2.0, alpha: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.register_buffer("alpha", None if alpha is None else alpha.float())

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        probs = target_distribution(targets, logits.shape[1], self.label_smoothing)
        log_p = F.log_softmax(logits.float(), dim=1)
        per_class = -probs * (1.0 - log_p.exp()).pow(self.gamma) * log_p
        if self.alpha is not None:
            per_class = per_class * self.alpha
        return per_class.sum(dim=1).mean()


def build_loss(train_cfg: TrainConfig, class_counts: Sequence[int]) -> nn.Module:
    """The loss named by ``train.loss``; ``class_counts`` are the training images per class."""
    smoothing = train_cfg.label_smoothing
    if train_cfg.loss == "cross_entropy":
        # nn.CrossEntropyLoss accepts class indices and probabilities alike.
        return nn.CrossEntropyLoss(label_smoothing=smoothing)
    if train_cfg.loss == "weighted_cross_entropy":
        return WeightedCrossEntropy(inverse_frequency_weights(class_counts), smoothing)
    alpha = train_cfg.focal_alpha
    if alpha == "none":
        weights = None
    elif alpha == "balanced":
        weights = inverse_frequency_weights(class_counts)
    elif len(alpha) == len(class_counts):
        weights = torch.tensor(alpha, dtype=torch.float32)
    else:
        raise UserError(f"train.focal_alpha has {len(alpha)} weights but the data has {len(class_counts)} classes")
    return FocalLoss(train_cfg.focal_gamma, weights, smoothing)
