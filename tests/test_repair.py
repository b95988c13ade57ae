"""Auto-repair: each of the analysis's five pathologies cured automatically on small synthetic fish, a
healthy run left alone, failed cures rolled back, and the files a user reads (treatment.json, RUN_DIR)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from cnnclinic.cli import app
from cnnclinic.config import build_config
from cnnclinic.doctor import Finding, Prescription
from cnnclinic.errors import UserError
from cnnclinic.repair import LR_RANGE_TEST, auto_repair, needs_fresh_weights, prescriptions_for
from cnnclinic.repair import treatment as treatment_module
from cnnclinic.repair.range_test import lr_from_range_test

# A small CNN on 2 species x 32 photos of 32 px that learns well above chance within 4 epochs. Two
# classes cannot lag behind each other, so only the pathology a test provokes is found.
TINY = [
    "data.synthetic.species=2",
    "data.synthetic.per_class=32",
    "data.synthetic.size=32",
    "data.image_size=32",
    "model.depth=3",
    "model.width=16",
    "model.head=[32]",
    "train.batch_size=8",
    "train.lr=0.003",
    "train.epochs=4",
    "repair.max_attempts=1",
]

# Sick configurations, the change auto-repair is expected to try first, and how it starts that attempt.
PATHOLOGIES = {
    "vanishing_gradient": (["model.activation=sigmoid", "model.depth=6"], "model.activation=relu", "fresh"),
    "dying_relu": (["data.synthetic.species=3", "train.lr=0.1"], "model.activation=leaky_relu", "fresh"),
    # The Doctor needs `window` flat steps; 15 keeps the test short (the default 40 is 2+ epochs here).
    "loss_stagnation": (
        ["data.synthetic.species=3", "train.lr=1e-6", "doctor.thresholds={loss_stagnation: {window: 15}}"],
        "train.lr=",
        "warm",
    ),
    "lagging_class": (
        ["data.synthetic.species=4", "data.synthetic.class_counts=[40,40,40,16]", "data.val_fraction=0.3",
         "train.epochs=6"],
        "data.augment.strong_classes=",
        "warm",
    ),
    # Dropout adds no weights, so the cure continues from the best epoch before the symptom. With 8
    # validation photos per species a class can look lagging by chance: that detector is kept quiet here.
    "overfitting": (
        ["data.synthetic.species=3", "data.synthetic.per_class=16", "data.val_fraction=0.5", "model.depth=2",
         "model.head=[256]",
         "train.epochs=10", "doctor.thresholds={overfitting: {patience: 2}, lagging_class: {epochs: 99}}"],
        "model.dropout=0.5",
        "warm",
    ),
}


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def tiny(*overrides: str):
    return build_config(overrides=[*TINY, *overrides])


@pytest.mark.slow
@pytest.mark.parametrize("symptom", list(PATHOLOGIES))
def test_each_pathology_is_repaired_automatically(symptom: str, tmp_path: Path) -> None:
    sick, expected_change, expected_start = PATHOLOGIES[symptom]
    run_dir = tmp_path / "run"
    result = auto_repair(tiny(*sick), run_dir, console=quiet(), report=False)

    treatment = json.loads((run_dir / "treatment.json").read_text())
    assert treatment == result.treatment
    assert symptom in [f["symptom"] for f in treatment["original"]["findings"]]
    first = treatment["attempts"][0]
    assert first["trigger"]["symptom"] == symptom
    assert any(change.startswith(expected_change) for change in first["change"])
    assert first["start"] == expected_start
    # Verified on the numbers: the symptom did not come back and the validation metric improved.
    assert first["symptom_gone"] and first["cured"] and first["kept"]
    before = (first["metric_before"], first["macro_auc_before"])
    assert (first["metric_after"], first["macro_auc_after"]) > before
    assert treatment["kept_attempt"] == 1
    assert treatment["epochs_spent"] <= treatment["epoch_budget"]

    # RUN_DIR holds the kept attempt: its config, its checkpoints, its metrics.
    kept_config = yaml.safe_load((run_dir / "config.yaml").read_text())
    attempt_config = yaml.safe_load((run_dir / "attempts" / "1" / "config.yaml").read_text())
    assert kept_config == attempt_config
    assert (run_dir / "checkpoints" / "best.safetensors").is_file()
    metrics = (run_dir / "metrics.jsonl").read_text()
    assert metrics == (run_dir / "attempts" / "1" / "metrics.jsonl").read_text()
    assert len(metrics.splitlines()) == first["epochs"]
    assert symptom not in {f.symptom for f in result.run.findings}
    # The configuration to train the cure from scratch carries the change and the user's epochs.
    final = build_config(treatment["final_config"])
    assert final.train.epochs == tiny(*sick).train.epochs
    assert final == tiny(*sick).with_overrides(first["change"])


@pytest.mark.slow
def test_a_failed_cure_is_rolled_back_and_the_next_one_kept(tmp_path: Path, monkeypatch) -> None:
    useless = Prescription(["train.label_smoothing=0.1"], "Label smoothing (does nothing for vanishing gradients).")
    real = treatment_module.prescriptions_for
    monkeypatch.setattr(treatment_module, "prescriptions_for", lambda finding: [useless, *real(finding)])
    run_dir = tmp_path / "run"
    result = auto_repair(
        tiny("model.activation=sigmoid", "model.depth=6", "repair.max_attempts=2"), run_dir, console=quiet(), report=False
    )

    failed, cured = result.treatment["attempts"]
    assert failed["change"] == ["train.label_smoothing=0.1"]
    # The symptom came back inside the first epoch: the attempt was stopped at once, not trained on.
    assert not failed["symptom_gone"] and not failed["cured"] and not failed["kept"]
    assert failed["epochs"] == 0 and failed["stopped_by"] == "vanishing_gradient"
    # Rolled back: the next cure is applied to the original configuration, not on top of the failed one.
    assert cured["change"] == ["model.activation=relu", "model.init=he"] and cured["kept"]
    assert result.kept_attempt == 2
    kept_config = build_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert kept_config.train.label_smoothing == 0.0 and kept_config.model.activation == "relu"


@pytest.mark.slow
def test_a_healthy_run_is_never_touched(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cli = CliRunner().invoke(
        app,
        ["train", "--data", "synthetic-fish", "--out", str(run_dir), "--epochs", "3", "--auto-repair",
         *[arg for override in TINY for arg in ("--set", override)]],
    )
    assert cli.exit_code == 0, cli.output
    treatment = json.loads((run_dir / "treatment.json").read_text())
    assert treatment["attempts"] == [] and treatment["kept_attempt"] == 0
    assert not (run_dir / "attempts").exists()
    config = build_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert build_config(treatment["final_config"]) == config
    assert config.model == tiny().model and config.train.lr == tiny().train.lr
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3
    assert (run_dir / "report.html").is_file()


def test_auto_repair_options_are_checked(tmp_path: Path) -> None:
    runner = CliRunner()
    resumed = runner.invoke(app, ["train", "--resume", str(tmp_path), "--auto-repair"])
    assert isinstance(resumed.exception, UserError) and "--resume" in str(resumed.exception)
    zero = runner.invoke(app, ["train", "--data", "digits", "--out", str(tmp_path / "r"), "--auto-repair",
                               "--max-attempts", "0"])
    assert isinstance(zero.exception, UserError) and "repair.max_attempts" in str(zero.exception)


def test_doctor_prescriptions_come_first_then_the_other_cures_without_repeats() -> None:
    doctor_order = [
        Prescription(["model.activation=leaky_relu"], "LeakyReLU."),
        Prescription(["train.lr=0.0001"], "Smaller lr."),
        Prescription(["model.init=he"], "He init."),
    ]
    finding = Finding("dying_relu", "warning", 1, 3, {}, "dead units", doctor_order)
    cures = [p.config for p in prescriptions_for(finding)]
    assert cures[:3] == [p.config for p in doctor_order]
    assert ["model.activation=elu"] in cures and ["model.activation=prelu"] in cures and [LR_RANGE_TEST] in cures
    assert len(cures) == len({tuple(c) for c in cures})
    duplicate = Finding("dying_relu", "warning", 1, 3, {}, "dead units", [Prescription(["model.activation=elu"], "ELU")])
    assert [p.config for p in prescriptions_for(duplicate)].count(["model.activation=elu"]) == 1


def test_every_cure_of_the_analysis_is_available() -> None:
    def cures_for(symptom: str) -> set[str]:
        return {c for p in prescriptions_for(Finding(symptom, "warning", 1, 0, {}, "")) for c in p.config}

    assert {"model.activation=elu", "model.activation=prelu", LR_RANGE_TEST} <= cures_for("dying_relu")
    assert {"train.loss=weighted_cross_entropy", "data.balanced_sampling=true"} <= cures_for("lagging_class")
    assert "model.head=[]" in cures_for("overfitting")
    assert LR_RANGE_TEST in cures_for("loss_stagnation") and LR_RANGE_TEST in cures_for("oscillating_loss")


@pytest.mark.parametrize(
    ("changes", "fresh"),
    [
        (["model.activation=elu"], True),
        (["model.batchnorm=true"], True),
        (["model.residual=true"], True),
        (["model.init=he"], True),
        (["model.attention=se"], True),
        (["model.arch=efficientnet_b0"], True),
        (["model.head=[]"], True),
        (["model.dropout=0.5"], False),
        (["train.lr=0.01"], False),
        (["train.schedule=cyclic"], False),
        (["train.loss=focal", "train.focal_alpha=balanced"], False),
        (["train.weight_decay=0.0005"], False),
        (["train.early_stopping_patience=3"], False),
        (['data.augment.strong_classes=["pike"]'], False),
        (["data.balanced_sampling=true"], False),
    ],
)
def test_architecture_changes_restart_from_fresh_weights(changes: list[str], fresh: bool) -> None:
    assert needs_fresh_weights(changes) is fresh


def test_lr_range_test_cure_gives_a_learning_rate_and_its_plot(tmp_path: Path) -> None:
    cfg = tiny("data.synthetic.per_class=16")
    found = lr_from_range_test(cfg, None, tmp_path / "lr.png")
    assert 1e-7 < found.lr < 10
    assert cfg.with_overrides([f"train.lr={found.lr:g}"]).train.lr == found.lr
    assert found.epochs_spent > 0
    assert (tmp_path / "lr.png").stat().st_size > 0
