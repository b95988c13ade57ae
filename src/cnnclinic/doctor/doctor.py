"""The Doctor: collects cheap training statistics and asks every registered symptom for a verdict."""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix, roc_auc_score
from torch import nn

from cnnclinic.doctor.activations import ActivationCapture, activation_modules
from cnnclinic.doctor.finding import SEVERITIES, Finding
from cnnclinic.doctor.gates import GateFinder
from cnnclinic.doctor.history import ClassFacts, EpochRecord, LayerSample, RunSoFar, TrainingHistory
from cnnclinic.doctor.symptoms import SYMPTOMS, resolve_thresholds
from cnnclinic.errors import UserError

# Symptoms that explain a flat or wild loss; when one is present the loss symptoms are echoes.
ROOT_CAUSES = ("exploding_gradient", "vanishing_gradient", "dying_relu", "saturated_activation")
ECHOES = ("loss_stagnation", "oscillating_loss")
# Extra samples early in the first epoch so gradient and activation symptoms can persist by its end.
EARLY_SAMPLE_STEPS = frozenset({0, 2, 4, 6, 8})
DEAD_MASK_MEMORY = 8
# A finding whose condition has not been seen for this many whole epochs is resolved (critical ones never are).
RESOLVE_AFTER_EPOCHS = 3


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Modules that own a trainable weight matrix or kernel (conv, linear, and custom layers alike)."""
    layers: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        weight = module._parameters.get("weight")
        if isinstance(weight, torch.Tensor) and weight.dim() >= 2 and weight.requires_grad:
            layers[name or type(module).__name__.lower()] = module
    return layers


class Doctor:
    """Watches a training loop and names its pathologies.

    Call ``after_backward(loss, logits=None, targets=None)`` every step before ``optimizer.step()`` and
    ``end_epoch(val_logits=None, val_targets=None)`` after each epoch. Per step the doctor reads the loss and
    one total gradient norm (one device sync); every ``sample_every`` steps (and at a few early steps) it
    also measures per-layer gradient and weight norms, the update-to-weight ratio and activation
    statistics, with hooks that exist only for that forward pass.

    ``so_far``: for a resumed run, what it had done before (``RunSoFar``). The Doctor's windows start again
    at the resume (it keeps no per-layer history across processes); its step and epoch numbers and its
    reference loss are the run's.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        num_classes: int,
        class_names: list[str] | None = None,
        thresholds: dict[str, dict[str, float]] | None = None,
        sample_every: int = 10,
        on_finding: Callable[[Finding], None] | None = None,
        data_facts: ClassFacts | Mapping[str, dict[str, Any]] | None = None,
        so_far: RunSoFar | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise UserError(f"Doctor: model must be a torch nn.Module, got {type(model).__name__}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise UserError(f"Doctor: num_classes must be an integer >= 2, got {num_classes!r}")
        if isinstance(sample_every, bool) or not isinstance(sample_every, int) or sample_every < 1:
            raise UserError(f"Doctor: sample_every must be an integer >= 1, got {sample_every!r}")
        names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(num_classes)]
        if len(names) != num_classes:
            raise UserError(f"Doctor: {len(names)} class_names given for num_classes={num_classes}")
        if data_facts is not None and not (callable(data_facts) or isinstance(data_facts, Mapping)):
            raise UserError(
                "Doctor: data_facts must be a mapping or a callable class name -> facts, "
                f"got {type(data_facts).__name__}"
            )
        self.model = model
        self.optimizer = optimizer
        self.num_classes = num_classes
        self.class_names = names
        self.sample_every = sample_every
        self.on_finding = on_finding
        self.thresholds = resolve_thresholds(thresholds)
        self._symptoms = {symptom_id: cls() for symptom_id, cls in SYMPTOMS.items()}
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._layers = weight_layers(model)
        self._activation_modules = activation_modules(model)
        self.history = TrainingHistory(
            num_classes=num_classes,
            class_names=names,
            num_parameters=sum(p.numel() for p in self._params),
            class_counts=np.zeros(num_classes, dtype=np.int64),
            data_facts=data_facts.get if isinstance(data_facts, Mapping) else data_facts,
        )
        if so_far is not None:
            self.history.step, self.history.epoch = so_far.steps, so_far.epochs + 1
            self.history.initial_losses = [loss for loss in so_far.initial_losses if math.isfinite(loss)][:3]
        self.should_stop = False
        self._found: dict[tuple[str, str | None], Finding] = {}
        self._last_seen: dict[tuple[str, str | None], int] = {}  # key -> last epoch its condition held
        self._gates: GateFinder | None = GateFinder(model, set(self._layers) | set(self._activation_modules))
        self._interval = sample_every
        self._capture: ActivationCapture | None = None
        self._functional_activations = True  # until the first sampled pass shows there are none
        self._weights_before_step: dict[str, torch.Tensor] | None = None
        self._epoch_steps = 0
        self._epoch_loss_sum = 0.0
        self._epoch_correct: torch.Tensor | None = None
        self._epoch_seen: torch.Tensor | None = None
        self._epoch_counts: torch.Tensor | None = None
        self._closed = False
        if so_far is not None and so_far.epochs > 0:
            self._interval = max(1, min(sample_every, so_far.steps // so_far.epochs))  # as its first epoch set it
        self._arm(self.history.step)

    # ----------------------------------------------------------------------------------------- public
    @property
    def measuring(self) -> bool:
        """The next forward pass is a sampled one: its activation hooks are in place (a trainer runs
        that pass eagerly when it otherwise calls a torch.compile'd model, which cannot trace them)."""
        return self._capture is not None

    @property
    def layer_history(self) -> list[dict[str, Any]]:
        """Sampled per-layer statistics, one dict per sampled step (see ``LayerSample``)."""
        return [sample.to_dict() for sample in self.history.samples]

    def after_backward(
        self, loss: torch.Tensor | float, logits: torch.Tensor | None = None, targets: torch.Tensor | None = None
    ) -> None:
        """Record one training step. Call after ``loss.backward()`` and before ``optimizer.step()``."""
        if self._closed:
            raise UserError("Doctor: after_backward() called after close()")
        history = self.history
        step = history.step
        sampled = self._capture is not None
        grads = [p.grad.detach() for p in self._params if p.grad is not None]
        loss_t = loss.detach().float().reshape(-1)[:1] if isinstance(loss, torch.Tensor) else None
        device = loss_t.device if loss_t is not None else (grads[0].device if grads else torch.device("cpu"))
        grad_norm = torch.nn.utils.get_total_norm(grads).float() if grads else torch.zeros((), device=device)
        if loss_t is None:
            loss_t = torch.tensor([float(loss)], device=device)
        if logits is not None and targets is not None:
            self._count_batch(logits, targets)
        loss_value, grad_value = torch.cat([loss_t.to(device), grad_norm.reshape(1).to(device)]).tolist()
        history.record_step(loss_value, grad_value)
        if self.optimizer is not None and self.optimizer.param_groups:
            history.lr = float(self.optimizer.param_groups[0].get("lr", 0.0))
        self._epoch_steps += 1
        self._epoch_loss_sum += loss_value if math.isfinite(loss_value) else 0.0
        if self._weights_before_step is not None:
            self._measure_update()
        if not (math.isfinite(loss_value) and math.isfinite(grad_value)) and history.nonfinite is None:
            where = "loss" if not math.isfinite(loss_value) else "gradients"
            history.nonfinite = {"where": where, "step": step, "loss": loss_value, "grad_norm": grad_value}
            self._run_checks()
        if sampled:
            self._sample(step, logits)
            self._run_checks()
        history.step += 1
        self._arm(history.step)

    def end_epoch(self, val_logits: Any = None, val_targets: Any = None) -> None:
        """Close the epoch: summarise it, evaluate the validation logits of the whole val set if given."""
        history = self.history
        record = EpochRecord(
            epoch=history.epoch,
            steps=self._epoch_steps,
            train_loss=self._epoch_loss_sum / max(self._epoch_steps, 1),
            train_acc=self._train_accuracy(),
        )
        if self._epoch_counts is not None:
            history.class_counts += self._epoch_counts.cpu().numpy()[: self.num_classes]
        if val_logits is not None and val_targets is not None:
            self._evaluate(record, val_logits, val_targets)
        history.epochs.append(record)
        if history.samples_per_epoch is None and self._epoch_seen is not None:
            history.samples_per_epoch = int(self._epoch_seen.item())
        if len(history.epochs) == 1 and self._epoch_steps > 0:
            # At least one sample per epoch when epochs are shorter than sample_every.
            self._interval = max(1, min(self.sample_every, self._epoch_steps))
        self._run_checks()
        self._resolve_cleared()
        history.epoch += 1
        self._epoch_steps = 0
        self._epoch_loss_sum = 0.0
        self._epoch_correct = self._epoch_seen = self._epoch_counts = None

    @torch.no_grad()
    def combine_epoch_counts(self, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace this epoch's train counts (correct, seen, per class) by their sum over all processes.

        For DistributedDataParallel: every process calls this, with the same reduction, before ``end_epoch``,
        so each Doctor's train accuracy and class counts cover the whole global batch, not its shard.
        """
        device = self._epoch_counts.device if self._epoch_counts is not None else torch.device("cpu")
        local = torch.zeros(self.num_classes + 2, dtype=torch.long, device=device)
        if self._epoch_counts is not None and self._epoch_correct is not None and self._epoch_seen is not None:
            local[0], local[1], local[2:] = self._epoch_correct, self._epoch_seen, self._epoch_counts
        total = all_reduce_sum(local)
        if int(total[1]) > 0:
            self._epoch_correct, self._epoch_seen, self._epoch_counts = total[0], total[1], total[2:]

    def findings(self, include_resolved: bool = False) -> list[Finding]:
        """Root causes only, one per (symptom, subject), in the order first seen.

        Only active findings by default: one whose condition has not been seen for ``RESOLVE_AFTER_EPOCHS``
        whole epochs is resolved (a transient blip of a run that recovered is no diagnosis of the run).
        ``include_resolved=True`` adds those, with ``resolved_at_epoch`` set."""
        found = [f for f in self._found.values() if include_resolved or f.active]
        roots = [f for f in found if f.symptom in ROOT_CAUSES]
        if not roots:
            return [dataclasses.replace(f, evidence=dict(f.evidence)) for f in found]
        echoes = {f.symptom: f.evidence for f in found if f.symptom in ECHOES}
        kept = []
        for finding in found:
            if finding.symptom in ECHOES:
                continue
            evidence = dict(finding.evidence)
            if finding.symptom in ROOT_CAUSES and echoes:
                evidence["also_seen"] = echoes
            kept.append(dataclasses.replace(finding, evidence=evidence))
        return kept

    def close(self) -> None:
        """Remove every hook and free the weight copy; the findings stay available."""
        self._disarm()
        if self._gates is not None:
            self._gates.remove()
            self._gates = None
        self._weights_before_step = None
        self._closed = True

    def __enter__(self) -> Doctor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------- sampling
    def _is_sample_step(self, step: int) -> bool:
        return step in EARLY_SAMPLE_STEPS or step % self._interval == 0

    def _arm(self, step: int) -> None:
        self._disarm()
        if self._is_sample_step(step):
            self._capture = ActivationCapture(self.model, self._activation_modules, self._functional_activations)

    def _disarm(self) -> None:
        if self._capture is not None:
            self._capture.remove()
            self._capture = None

    @torch.no_grad()
    def _sample(self, step: int, logits: torch.Tensor | None) -> None:
        history = self.history
        capture = self._capture
        assert capture is not None
        self._disarm()
        if capture.done:
            self._functional_activations = capture.functional_calls > 0
        if self._gates is not None and self._gates.done:
            history.gate_members = self._gates.members()
            self._gates = None
        names = [n for n, m in self._layers.items() if m.weight.grad is not None]
        weights = [self._layers[n].weight.detach() for n in names]
        grads = [self._layers[n].weight.grad.detach() for n in names]
        if names:
            norms = torch.stack(
                [n.float() for n in torch._foreach_norm(grads)] + [n.float() for n in torch._foreach_norm(weights)]
            ).tolist()
        else:
            norms = []
        sample = LayerSample(step=step, epoch=history.epoch, grad_norm={}, grad_rms={}, weight_norm={}, init_scale={})
        if history.nonfinite is None and not all(math.isfinite(v) for v in norms[len(names) :]):
            bad = next(n for n, v in zip(names, norms[len(names) :]) if not math.isfinite(v))
            history.nonfinite = {"where": f"weights of layer '{bad}'", "step": step}
        for i, (name, weight) in enumerate(zip(names, weights)):
            grad_norm, weight_norm = norms[i], norms[len(names) + i]
            count, fan_in = weight.numel(), weight[0].numel()
            sample.grad_norm[name] = grad_norm
            sample.grad_rms[name] = grad_norm / math.sqrt(count)
            sample.weight_norm[name] = weight_norm
            sample.init_scale[name] = (weight_norm / math.sqrt(count)) / math.sqrt(2.0 / fan_in)
        for name, (kind, stats) in capture.results.items():
            history.activation_kinds.setdefault(name, kind)
            if "dead_mask" in stats:
                mask = stats["dead_mask"]
                sample.dead_fraction[name] = float(mask.mean())
                sample.zero_share[name] = stats["zero_share"]
                masks = history.dead_masks.setdefault(name, deque(maxlen=DEAD_MASK_MEMORY))
                if masks and masks[-1].shape != mask.shape:
                    masks.clear()
                masks.append(mask)
            if "saturation" in stats:
                sample.saturation[name] = stats["saturation"]
        if logits is not None and logits.dim() == 2 and logits.shape[0] > 1:
            # How different the outputs are across the batch; ~0 means collapsed logits.
            sample.logit_spread = logits.detach().float().std(dim=0).mean().item()
        history.samples.append(sample)
        self._weights_before_step = {n: w.clone() for n, w in zip(names, weights)}

    @torch.no_grad()
    def _measure_update(self) -> None:
        before = self._weights_before_step or {}
        self._weights_before_step = None
        names = [n for n in before if n in self._layers]
        if not names or not self.history.samples:
            return
        deltas = torch._foreach_sub([self._layers[n].weight.detach() for n in names], [before[n] for n in names])
        values = torch.stack(
            [n.float() for n in torch._foreach_norm(deltas)]
            + [n.float() for n in torch._foreach_norm([before[n] for n in names])]
        ).tolist()
        sample = self.history.samples[-1]
        for i, name in enumerate(names):
            delta, norm = values[i], values[len(names) + i]
            sample.update_ratio[name] = delta / norm if norm > 0 else float("inf") if delta > 0 else 0.0

    # -------------------------------------------------------------------------------------- per batch
    @torch.no_grad()
    def _count_batch(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        logits = logits.detach()
        targets = targets.detach()
        if targets.dim() == 2 and targets.shape == logits.shape:  # soft / one-hot targets (MixUp)
            targets = targets.argmax(dim=1)
        if logits.dim() != 2 or targets.dim() != 1 or logits.shape[0] != targets.shape[0]:
            raise UserError(
                f"Doctor: logits must be N x num_classes and targets N class indices; got logits "
                f"{tuple(logits.shape)} and targets {tuple(targets.shape)}"
            )
        targets = targets.long()
        correct = (logits.argmax(dim=1) == targets).sum()
        counts = torch.bincount(targets.clamp(0, self.num_classes - 1), minlength=self.num_classes)
        if self._epoch_correct is None:
            self._epoch_correct = torch.zeros((), dtype=torch.long, device=targets.device)
            self._epoch_seen = torch.zeros((), dtype=torch.long, device=targets.device)
            self._epoch_counts = torch.zeros(self.num_classes, dtype=torch.long, device=targets.device)
        self._epoch_correct += correct
        self._epoch_seen += targets.shape[0]
        self._epoch_counts += counts[: self.num_classes]

    def _train_accuracy(self) -> float | None:
        if self._epoch_correct is None or self._epoch_seen is None:
            return None
        seen = int(self._epoch_seen.item())
        return int(self._epoch_correct.item()) / seen if seen else None

    @torch.no_grad()
    def _evaluate(self, record: EpochRecord, val_logits: Any, val_targets: Any) -> None:
        logits = torch.as_tensor(val_logits).detach().float().cpu()
        targets = torch.as_tensor(val_targets).detach().cpu().long()
        if logits.dim() != 2 or logits.shape[1] != self.num_classes or targets.shape != (logits.shape[0],):
            raise UserError(
                f"Doctor: val_logits must be N x {self.num_classes} and val_targets N class indices; got "
                f"{tuple(logits.shape)} and {tuple(targets.shape)}"
            )
        if logits.shape[0] == 0:
            return
        if not torch.isfinite(logits).all():
            record.val_loss = float("nan")
            return
        y = targets.numpy()
        probs = F.softmax(logits, dim=1).numpy()
        losses = F.cross_entropy(logits, targets, reduction="none")
        record.val_loss = float(losses.mean())
        record.val_loss_se = float(losses.std() / math.sqrt(len(losses))) if len(losses) > 1 else None
        record.val_acc = float((probs.argmax(axis=1) == y).mean())
        record.val_counts = np.bincount(y, minlength=self.num_classes)[: self.num_classes].tolist()
        record.confusion = confusion_matrix(y, probs.argmax(axis=1), labels=range(self.num_classes)).tolist()
        aucs: dict[str, float] = {}
        for c, name in enumerate(self.class_names):
            positives = y == c
            if 0 < positives.sum() < len(y):
                aucs[name] = float(roc_auc_score(positives, probs[:, c]))
        record.val_auc = aucs

    # ----------------------------------------------------------------------------------------- verdicts
    def _run_checks(self) -> None:
        for symptom_id, symptom in self._symptoms.items():
            result = symptom.check(self.history, self.thresholds[symptom_id])
            for finding in [result] if isinstance(result, Finding) else result or []:
                self._record(finding)

    def _record(self, finding: Finding) -> None:
        previous = self._found.get(finding.key)
        self._last_seen[finding.key] = self.history.epoch
        if finding.severity == "critical":
            self.should_stop = True
        if previous is not None and previous.active:
            # Keep when it was first seen, update the evidence with the latest numbers.
            previous.evidence = finding.evidence
            previous.explanation = finding.explanation
            previous.prescriptions = finding.prescriptions
            if SEVERITIES.index(finding.severity) > SEVERITIES.index(previous.severity):
                previous.severity = finding.severity
            return
        # New, or back after it had resolved: either way news, dated from now.
        self._found[finding.key] = finding
        active_root = any(f.symptom in ROOT_CAUSES and f.active for f in self._found.values())
        is_echo = finding.symptom in ECHOES and active_root
        if self.on_finding is not None and not is_echo:
            self.on_finding(finding)

    def _resolve_cleared(self) -> None:
        """At the end of an epoch: resolve the findings whose condition has been clear for long enough."""
        epoch = self.history.epoch
        for key, finding in self._found.items():
            last_seen = self._last_seen.get(key, finding.epoch)
            if finding.active and finding.severity != "critical" and epoch - last_seen >= RESOLVE_AFTER_EPOCHS:
                finding.resolved_at_epoch = last_seen + 1
