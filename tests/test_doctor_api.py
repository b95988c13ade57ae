"""The Doctor's public interface: robustness to any model/optimizer/call pattern, hooks, JSON, thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from cnnclinic import Doctor, Finding, Prescription, UserError
from cnnclinic.config import build_config
from cnnclinic.doctor import render_finding
from cnnclinic.doctor.docs import render_markdown
from test_doctor_cases import digits, faulty_setups, init_, mlp, one_thread, sgd, train  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


class FunctionalNet(nn.Module):
    """No activation modules at all: F.relu / torch.sigmoid calls inside forward."""

    def __init__(self, activation: str, bias: float = 0.0, std: float | None = None):
        super().__init__()
        self.activation = activation
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in [(64, 64), (64, 64), (64, 10)])
        for layer in self.layers[:-1]:
            nn.init.constant_(layer.bias, bias)
            if std is not None:
                nn.init.normal_(layer.weight, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x)) if self.activation == "relu" else torch.sigmoid(layer(x))
        return self.layers[-1](x)


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def step(model: nn.Module, optimizer: torch.optim.Optimizer, doctor: Doctor, **kwargs) -> None:
    data = digits()
    optimizer.zero_grad()
    logits = model(data["x_train"][:32])
    loss = F.cross_entropy(logits, data["y_train"][:32])
    loss.backward()
    doctor.after_backward(loss, **({"logits": logits, "targets": data["y_train"][:32]} | kwargs))
    optimizer.step()


def test_functional_relu_deaths_are_seen_by_function_mode() -> None:
    run = train(FunctionalNet("relu", bias=-3.0), sgd(0.05), 2)
    finding = run.get("dying_relu")
    assert set(finding.evidence["dead_fraction_per_layer"]) == {"relu#0", "relu#1"}
    assert run.symptoms == ["dying_relu"]


def test_functional_sigmoid_saturation_is_seen() -> None:
    run = train(FunctionalNet("sigmoid", std=2.0), sgd(0.05), 2)
    assert "saturated_activation" in run.symptoms


def test_healthy_functional_net_with_loss_only_and_no_validation() -> None:
    data = digits()
    torch.manual_seed(0)
    model = FunctionalNet("relu")
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    doctor = Doctor(model, optimizer, num_classes=10)
    for _ in range(3):
        for start in range(0, 1437, 64):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(data["x_train"][start : start + 64]), data["y_train"][start : start + 64])
            loss.backward()
            doctor.after_backward(loss)
            optimizer.step()
        doctor.end_epoch()
    assert doctor.findings() == []
    assert doctor.history.epochs[-1].train_loss < 0.5 and doctor.history.epochs[-1].val_loss is None
    assert doctor.layer_history[0]["dead_fraction"].keys() == {"relu#0", "relu#1"}


def test_hooks_exist_only_for_sampled_forward_and_close_removes_them() -> None:
    model = mlp([32, 32], nn.ReLU)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    doctor = Doctor(model, optimizer, num_classes=10, sample_every=20)
    with torch.no_grad():
        model.eval()
        model(digits()["x_val"])  # a validation pass before training is not the sampled one
        model.train()
    step(model, optimizer, doctor)  # step 0: sampled
    assert no_hooks(model) and torch._C._len_torch_function_stack() == 0
    assert doctor.layer_history[0]["dead_fraction"].keys() == {"1", "3"}
    step(model, optimizer, doctor)  # step 1: not sampled; step 2 is, so its hooks are now armed
    assert not no_hooks(model)
    doctor.close()
    assert no_hooks(model) and torch._C._len_torch_function_stack() == 0


def test_sampling_interval_and_update_ratio_recorded() -> None:
    model = mlp([32], nn.Tanh)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    doctor = Doctor(model, optimizer, num_classes=10, sample_every=10)
    for _ in range(31):
        step(model, optimizer, doctor)
    steps = [record["step"] for record in doctor.layer_history]
    assert steps == [0, 2, 4, 6, 8, 10, 20, 30]
    first = doctor.layer_history[0]
    assert set(first["grad_norm"]) == {"0", "2"} and set(first["saturation"]) == {"1"}
    # Adam's first step moves each weight by ~lr, so ||dw||/||w|| is about lr / rms(w).
    assert 1e-4 < first["update_ratio"]["0"] < 1e-1


def test_findings_callable_any_time_and_tiny_runs_stay_quiet() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    doctor = Doctor(model, optimizer, num_classes=3, class_names=["a", "b", "c"])
    assert doctor.findings() == []
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    for _ in range(3):  # few steps per epoch, many epochs
        for _ in range(2):
            optimizer.zero_grad()
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            doctor.after_backward(loss, logits=logits, targets=y)
            optimizer.step()
            assert isinstance(doctor.findings(), list)
        doctor.end_epoch(val_logits=model(x).detach(), val_targets=y)
    assert doctor.findings() == []


def test_nan_loss_without_logits_is_immediate() -> None:
    model = mlp([16], nn.ReLU)
    seen: list[Finding] = []
    doctor = Doctor(model, None, num_classes=10, on_finding=seen.append)
    loss = model(torch.randn(4, 64)).sum() * float("nan")
    loss.backward()
    doctor.after_backward(loss)
    assert [f.symptom for f in seen] == ["exploding_gradient"] and doctor.should_stop
    assert seen[0].severity == "critical" and seen[0].step == 0 and seen[0].epoch == 1


def test_findings_json_round_trip_and_prescriptions_validate() -> None:
    run = faulty_setups()["class_3_looks_like_8"][1]()
    findings = run.doctor.findings()
    assert findings
    text = json.dumps({"findings": [f.to_dict() for f in findings]})
    restored = [Finding.from_dict(d) for d in json.loads(text)["findings"]]
    assert [f.to_dict() for f in restored] == [f.to_dict() for f in findings]
    for finding in findings:
        for prescription in finding.prescriptions:
            build_config(overrides=prescription.config)


def test_every_symptoms_prescriptions_are_valid_config() -> None:
    for name, (_symptom, setup) in faulty_setups().items():
        if name in {"class_3_looks_like_8", "big_mlp_80_images", "deep_sigmoid_stack"}:
            continue  # slow ones are covered elsewhere
        for finding in setup().doctor.findings():
            for prescription in finding.prescriptions:
                build_config(overrides=prescription.config)  # raises UserError on a bad key or value


def test_only_architecture_changes_restart_from_fresh_weights() -> None:
    assert Prescription(["model.activation=leaky_relu"], "").restart
    assert Prescription(["model.batchnorm=true", "train.lr=0.01"], "").restart
    assert not Prescription(["model.dropout=0.5"], "").restart  # adds no weight tensor
    assert not Prescription(["train.loss=focal", "train.weight_decay=0.0005"], "").restart


def test_class_name_with_comma_is_a_valid_strong_class_override() -> None:
    cfg = build_config(overrides=['data.augment.strong_classes=["pike, northern"]'])
    assert cfg.data.augment.strong_classes == ["pike, northern"]


def test_threshold_overrides_change_verdicts_and_are_validated() -> None:
    strict = {"dying_relu": {"dead_unit_fraction": 1.01, "layer_dead_fraction": 1.01}}
    run = train(init_(mlp([64, 64, 64], nn.ReLU), bias=-3.0), sgd(0.05), 1, doctor_kwargs={"thresholds": strict})
    assert "dying_relu" not in run.symptoms
    model = mlp([8], nn.ReLU)
    with pytest.raises(UserError, match="unknown symptom 'dead_relu'"):
        Doctor(model, None, num_classes=10, thresholds={"dead_relu": {"samples": 2}})
    with pytest.raises(UserError, match="unknown threshold 'dying_relu.fraction'"):
        Doctor(model, None, num_classes=10, thresholds={"dying_relu": {"fraction": 0.5}})
    with pytest.raises(UserError, match="whole number"):
        Doctor(model, None, num_classes=10, thresholds={"dying_relu": {"samples": 2.5}})
    with pytest.raises(UserError, match="must be a number"):
        Doctor(model, None, num_classes=10, thresholds={"dying_relu": {"samples": "many"}})


def test_bad_arguments_are_one_line_user_errors() -> None:
    model = mlp([8], nn.ReLU)
    with pytest.raises(UserError, match="num_classes"):
        Doctor(model, None, num_classes=1)
    with pytest.raises(UserError, match="class_names"):
        Doctor(model, None, num_classes=3, class_names=["a"])
    doctor = Doctor(model, None, num_classes=10)
    loss = model(torch.randn(4, 64)).sum()
    loss.backward()
    with pytest.raises(UserError, match="logits"):
        doctor.after_backward(loss, logits=torch.randn(4, 10), targets=torch.zeros(3, dtype=torch.long))
    with pytest.raises(UserError, match="val_logits"):
        doctor.end_epoch(val_logits=torch.randn(5, 3), val_targets=torch.zeros(5, dtype=torch.long))


def test_render_finding_shows_explanation_evidence_and_cures() -> None:
    finding = Finding(
        "dying_relu", "warning", 1, 4, {"dead_unit_fraction": 0.93871234}, "Most ReLUs are dead.",
        [Prescription(["model.activation=leaky_relu"], "Use LeakyReLU.")],
    )
    console = Console(width=100, record=True)
    console.print(render_finding(finding))
    text = console.export_text()
    assert "dying_relu" in text and "Most ReLUs are dead." in text
    assert "0.9387" in text and "--set model.activation=leaky_relu" in text and "retrain" in text


def test_symptoms_doc_is_generated_and_fresh() -> None:
    committed = (REPO / "docs" / "symptoms.md").read_text(encoding="utf-8")
    assert committed == render_markdown(), "run: python -m cnnclinic.doctor.docs"
    for symptom in ("vanishing_gradient", "exploding_gradient", "dying_relu", "saturated_activation",
                    "loss_stagnation", "oscillating_loss", "overfitting", "lagging_class", "class_imbalance"):
        assert f"## `{symptom}`" in committed
