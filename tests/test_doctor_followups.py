"""Doctor follow-ups: attention gates are not pathologies, findings resolve, lagging classes persist and
name what the data says about them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnclinic import Doctor
from cnnclinic.config import ModelConfig
from cnnclinic.doctor.gates import GateFinder
from cnnclinic.models import build_model
from test_doctor_cases import digits, mlp, one_thread, sgd, train  # noqa: F401


def digit_images(size: int = 16) -> dict[str, torch.Tensor]:
    """The digits as 3 x size x size images (what build_model expects)."""
    data = digits()

    def to_images(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.reshape(-1, 1, 8, 8), size=(size, size), mode="bilinear").repeat(1, 3, 1, 1)

    return dict(data, x_train=to_images(data["x_train"]), x_val=to_images(data["x_val"]))


def fit_images(model: nn.Module, epochs: int) -> tuple[Doctor, float]:
    torch.manual_seed(0)
    data = digit_images()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    doctor = Doctor(model, optimizer, num_classes=10)
    for _ in range(epochs):
        model.train()
        for start in range(0, 1437, 32):
            x, y = data["x_train"][start : start + 32], data["y_train"][start : start + 32]
            optimizer.zero_grad()
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            doctor.after_backward(loss, logits=logits, targets=y)
            optimizer.step()
        model.eval()
        with torch.no_grad():
            doctor.end_epoch(val_logits=model(data["x_val"]), val_targets=data["y_val"])
    with torch.no_grad():
        accuracy = float((model(data["x_val"]).argmax(1) == data["y_val"]).float().mean())
    doctor.close()
    return doctor, accuracy


def test_attention_without_batchnorm_is_healthy() -> None:
    for attention in ("se", "cbam"):
        torch.manual_seed(0)
        model = build_model(ModelConfig(attention=attention, width=16, depth=3, head=[64]), 10, 16)
        doctor, accuracy = fit_images(model, 3)
        assert accuracy > 0.6, attention  # it really learns (chance is 0.1)
        assert doctor.findings() == [], [f.to_dict() for f in doctor.findings()]
        gates = doctor.history.gate_members
        assert any(name.endswith("fc2") or "mlp" in name for name in gates), gates
        assert "features.0.0" not in gates and "classifier.0" not in gates  # the main path stays


def test_gate_finder_separates_gates_from_plain_sigmoid_stacks() -> None:
    backbone = build_model(ModelConfig(arch="mobilenet_v3_small"), 10, 32).train()
    finder = GateFinder(backbone, {n for n, _ in backbone.named_modules()})
    backbone(torch.randn(2, 3, 32, 32))
    gates = finder.members()
    assert finder.done and not backbone.features[0]._forward_hooks
    assert "features.1.block.1.fc1" in gates and "features.11.block.2.fc2" in gates  # also at 1 x 1 maps
    assert "features.1.block.0.0" not in gates and "classifier.0" not in gates
    stack = mlp([32] * 4, nn.Sigmoid).train()
    finder = GateFinder(stack, {n for n, _ in stack.named_modules()})
    stack(torch.randn(2, 64))
    assert finder.members() == set()
    sigmoid_residual = build_model(ModelConfig(activation="sigmoid", residual=True, width=8, depth=2), 10, 16)
    finder = GateFinder(sigmoid_residual.train(), {n for n, _ in sigmoid_residual.named_modules()})
    sigmoid_residual(torch.randn(2, 3, 16, 16))
    assert finder.members() == set()


def test_deep_sigmoid_stack_still_vanishes() -> None:
    run = train(mlp([32] * 8, nn.Sigmoid), sgd(0.1), 2)
    assert "vanishing_gradient" in run.symptoms


def lagging(doctor: Doctor, include_resolved: bool = False) -> list:
    """The lagging-class findings (the random training data of ``feed_epochs`` also stagnates)."""
    return [f for f in doctor.findings(include_resolved) if f.symptom == "lagging_class"]


def feed_epochs(doctor: Doctor, model: nn.Module, lagging: list[bool], generator: torch.Generator) -> None:
    """Epochs of 20 steps on random data, then validation logits in which class 0 lags (random scores for
    its images) or not (all classes recognised)."""
    targets = torch.arange(4).repeat(25)
    for lags in lagging:
        for _ in range(20):
            model.zero_grad()
            x, y = torch.randn(16, 8, generator=generator), torch.randint(0, 4, (16,), generator=generator)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            doctor.after_backward(loss, logits=logits, targets=y)
        val_logits = 4.0 * F.one_hot(targets, 4).float() + torch.randn(100, 4, generator=generator) * 0.3
        if lags:
            val_logits[targets == 0] = torch.randn(25, 4, generator=generator) * 3.0
        doctor.end_epoch(val_logits=val_logits, val_targets=targets)


def test_lagging_class_resolves_and_blips_are_no_findings() -> None:
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    blip = Doctor(model, None, num_classes=4)
    feed_epochs(blip, model, [False, False, True, False, False], generator)  # one epoch: not persistent
    assert lagging(blip, include_resolved=True) == []
    doctor = Doctor(model, None, num_classes=4, class_names=["burbot", "bream", "pike", "perch"])
    feed_epochs(doctor, model, [True, True, True], generator)
    assert [f.subject for f in lagging(doctor)] == ["burbot"]
    feed_epochs(doctor, model, [False, False, False], generator)  # recovered: resolved after 3 clear epochs
    assert lagging(doctor) == []
    (resolved,) = lagging(doctor, include_resolved=True)
    assert resolved.resolved_at_epoch == 4 and resolved.to_dict()["resolved_at_epoch"] == 4
    feed_epochs(doctor, model, [True, True, True], generator)  # it comes back: active again
    assert [f.active for f in lagging(doctor)] == [True]


def test_lagging_class_explained_by_data_facts() -> None:
    facts = {"burbot": {"class": "burbot", "train_images": 45, "blur_rank": "1 of 4 (1 = blurriest)",
                        "data_findings": ["small_class"], "suspicious_labels": 0}}
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    doctor = Doctor(model, None, num_classes=4, class_names=["burbot", "bream", "pike", "perch"], data_facts=facts)
    feed_epochs(doctor, model, [True, True, True], torch.Generator().manual_seed(1))
    (finding,) = lagging(doctor)
    assert finding.evidence["data"]["train_images"] == 45
    assert "'burbot' has only 45 training images and is the blurriest class" in finding.explanation
    # Short of images: class weights with oversampling first, before targeted augmentation.
    assert finding.prescriptions[0].config == ["train.loss=weighted_cross_entropy", "data.balanced_sampling=true"]
    assert finding.prescriptions[0].restart  # from fresh weights (measured better for a rare class)
    assert finding.prescriptions[1].config == ['data.augment.strong_classes=["burbot"]']
    plain = Doctor(model, None, num_classes=4, data_facts=lambda name: None)
    feed_epochs(plain, model, [True, True, True], torch.Generator().manual_seed(1))
    (finding,) = lagging(plain)
    assert "data" not in finding.evidence and "data explains" not in finding.explanation
    assert finding.prescriptions[0].config[0].startswith("data.augment.strong_classes=")


def test_noisy_labels_of_one_class_make_it_lag() -> None:
    data = digits()
    generator = torch.Generator().manual_seed(0)
    labels = data["y_train"].clone()
    fives = (labels == 5).nonzero().flatten()
    flipped = fives[torch.rand(len(fives), generator=generator) < 0.8]
    labels[flipped] = torch.randint(0, 10, (len(flipped),), generator=generator)
    run = train(mlp([128, 64], nn.ReLU), lambda p: torch.optim.Adam(p, lr=1e-3), 8, data=dict(data, y_train=labels))
    lagging = [f.subject for f in run.doctor.findings() if f.symptom == "lagging_class"]
    assert lagging == ["5"], [f.to_dict() for f in run.doctor.findings()]


def test_long_healthy_run_and_very_short_epochs_stay_clean() -> None:
    short = train(mlp([64], nn.ReLU), lambda p: torch.optim.Adam(p, lr=3e-3), 30, batch_size=360)  # 4 steps
    assert short.val_acc > 0.85 and short.doctor.findings() == [], [f.to_dict() for f in short.doctor.findings()]
