"""Auto-repair: each of the analysis's five pathologies cured automatically on small synthetic fish, a
healthy run left alone, failed cures rolled back, and the files a user reads (treatment.json, RUN_DIR)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from rich.console import Console
from typer.testing import CliRunner

from cnnclinic.cli import app
from cnnclinic.config import build_config
from cnnclinic.demo import SCENARIOS, DemoData
from cnnclinic.demo.runner import scenario_config
from cnnclinic.doctor import Finding, Prescription
from cnnclinic.errors import UserError
from cnnclinic.repair import LR_RANGE_TEST, auto_repair, needs_fresh_weights, prescriptions_for
from cnnclinic.repair import treatment as treatment_module
from cnnclinic.repair.range_test import lr_from_range_test
from cnnclinic.repair.treatment import AttemptRun, StopForTreatment, ValMetric, _RepairLoop, judged_score, starts_fresh
from cnnclinic.training.trainer import RunResult

# A small CNN on 2 species x 160 photos of 32 px that learns well above chance within 4 epochs. The 64
# validation photos make the noise margin (two binomial SEs, ~0.125 at 50%) small enough for a real cure
# to beat it. Two classes cannot lag behind each other, so only the pathology a test provokes is found.
TINY = [
    "data.synthetic.species=2",
    "data.synthetic.per_class=160",
    "data.synthetic.size=32",
    "data.image_size=32",
    "model.depth=3",
    "model.width=16",
    "model.head=[32]",
    "train.batch_size=16",
    "train.lr=0.003",
    "train.epochs=4",
    "repair.max_attempts=1",
]

# Sick configurations, the change auto-repair is expected to try first, and how it starts that attempt.
PATHOLOGIES = {
    "vanishing_gradient": (["model.activation=sigmoid", "model.depth=6"], "model.activation=relu", "fresh"),
    "dying_relu": (["data.synthetic.species=3", "train.lr=0.03"], "model.activation=leaky_relu", "fresh"),
    # The Doctor needs `window` flat steps: 30 is inside epoch 2 here (24 steps an epoch), so the cure
    # continues from epoch 1's weights.
    "loss_stagnation": (
        ["data.synthetic.species=3", "train.lr=1e-6", "doctor.thresholds={loss_stagnation: {window: 30}}"],
        "train.lr=",
        "warm",
    ),
    # The demo's case 4 (--quick), on its own data: species_x, bream's twin but for its fin colour, has 60
    # photos against 450 of each other species. The data doctor finds it short of images, so class weights
    # + oversampling come first, from fresh weights. A smaller 3-species set-up (100 photos against 300)
    # was cured with 1 thread but with torch's default 2 threads species_x was never named (its AUC
    # 0.76-0.83 against the twin's 0.85-0.92: too close to count as a lag).
    "lagging_class": (None, "train.loss=weighted_cross_entropy", "fresh"),
    # The demo's case 5 (--quick), on its own data: a wide CNN memorising 20% mislabelled photos; overfitting
    # found at epoch 6-8 of 12. Dropout adds no weights, so dropout + cosine continues from the best epoch
    # before the symptom. On tiny clean set-ups overfitting is found only in the last epoch, when no cure
    # can beat the last epochs by the noise margin (measured: 0.728 -> 0.706, noise 0.115).
    "overfitting": (None, "model.dropout=0.5", "warm"),
}


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def tiny(*overrides: str):
    return build_config(overrides=[*TINY, *overrides])


def sick_config(symptom: str):
    """The sick configuration of a pathology: its TINY set-up, or the demo's quick case when it has none."""
    sick = PATHOLOGIES[symptom][0]
    if sick is None:
        scenario = next(s for s in SCENARIOS if s.expected_symptom == symptom)
        return scenario_config(scenario, DemoData(), quick=True)
    return tiny(*sick)


@pytest.mark.slow
@pytest.mark.parametrize(
    "symptom",
    list(PATHOLOGIES),
)
def test_each_pathology_is_repaired_automatically(symptom: str, tmp_path: Path) -> None:
    _, expected_change, expected_start = PATHOLOGIES[symptom]
    sick = sick_config(symptom)
    run_dir = tmp_path / "run"
    result = auto_repair(sick, run_dir, console=quiet(), report=False)

    treatment = json.loads((run_dir / "treatment.json").read_text())
    assert treatment == result.treatment
    assert symptom in [f["symptom"] for f in treatment["original"]["findings"]]
    first = treatment["attempts"][0]
    assert first["trigger"]["symptom"] == symptom
    assert any(change.startswith(expected_change) for change in first["change"])
    assert first["start"] == expected_start
    # Verified on the numbers: the symptom did not come back and the validation metric improved by more
    # than the noise of the validation accuracy.
    assert first["symptom_gone"] and first["cured"] and first["kept"] and first["verdict"] == "cured"
    assert first["metric_after"] > first["metric_before"] + first["noise_margin"] > first["metric_before"]
    assert first["metric_name"] == {"lagging_class": "val_auc[species_x]", "overfitting": "val_acc_last3"}.get(
        symptom, "val_acc"
    )
    assert treatment["kept_attempt"] == 1
    judged_before, judged_after = treatment["original"]["judged"], treatment["final"]["judged"]
    assert judged_before["metric_name"] == judged_after["metric_name"] == first["metric_name"]
    assert (judged_before["value"], judged_after["value"]) == (first["metric_before"], first["metric_after"])
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
    assert final.train.epochs == sick.train.epochs
    assert final == sick.with_overrides(first["change"])


@pytest.mark.slow
def test_a_failed_cure_is_rolled_back_and_the_next_one_kept(tmp_path: Path, monkeypatch) -> None:
    useless = Prescription(["train.label_smoothing=0.1"], "Label smoothing (does nothing for vanishing gradients).")
    real = treatment_module.prescriptions_for
    monkeypatch.setattr(treatment_module, "prescriptions_for", lambda finding: [useless, *real(finding)])
    run_dir = tmp_path / "run"
    result = auto_repair(
        tiny("model.activation=sigmoid", "model.depth=6", "repair.max_attempts=2"),
        run_dir, console=quiet(), report=False,
    )

    failed, cured = result.treatment["attempts"]
    assert failed["change"] == ["train.label_smoothing=0.1"]
    # The symptom came back inside the first epoch, with no gain: the attempt was stopped at that epoch's end
    # (judged on its numbers), not trained on.
    assert not failed["symptom_gone"] and not failed["cured"] and not failed["kept"]
    assert failed["epochs"] == 1 and failed["stopped_by"] == "vanishing_gradient"
    assert "is back, with no gain" in failed["stop_reason"]
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


def test_a_gain_within_the_noise_of_the_validation_accuracy_is_no_cure() -> None:
    # 5 classes, 100 validation images: 0.20 -> 0.24 is 4 images, well inside two standard errors (0.08).
    chance = ValMetric(0.20, 0.5, samples=100)
    assert chance.noise == pytest.approx(0.08)
    assert not ValMetric(0.24, 0.6, samples=100).beats(chance)
    assert ValMetric(0.30, 0.6, samples=100).beats(chance)
    # The same gain on 10,000 images is real.
    assert ValMetric(0.24, 0.6, samples=10_000).beats(ValMetric(0.20, 0.5, samples=10_000))
    # Never less than one image: a perfect score cannot be beaten by a tie.
    assert not ValMetric(1.0, 1.0, samples=50).beats(ValMetric(1.0, 1.0, samples=50))


def test_each_pathology_is_judged_on_the_metric_it_is_about() -> None:
    # 100 validation photos, 10 of them pike: the pike AUC moves far more than the overall accuracy.
    def metric(accuracy: float, pike_auc: float, recent: float) -> ValMetric:
        return ValMetric(accuracy, 0.8, 100, {"pike": pike_auc, "bream": 0.9}, {"pike": 10, "bream": 90}, recent)

    lagging = Finding("lagging_class", "warning", 3, 90, {}, "pike lags", subject="pike")
    before, after = judged_score(metric(0.80, 0.60, 0.7), lagging), judged_score(metric(0.81, 0.95, 0.7), lagging)
    assert before.metric_name == "val_auc[pike]" and before.value == 0.60
    # Hanley-McNeil: 2 SEs of an AUC of 0.6 with 10 positives and 90 negatives are about 0.19.
    assert before.noise == pytest.approx(0.19, abs=0.01)
    assert after.beats(before) and not metric(0.81, 0.95, 0.7).beats(metric(0.80, 0.60, 0.7))
    assert not judged_score(metric(0.8, 0.75, 0.7), lagging).beats(before)
    # Never less than one positive photo's worth of AUC: a perfect AUC cannot be beaten by a tie.
    perfect = judged_score(metric(0.8, 1.0, 0.7), lagging)
    assert perfect.noise == pytest.approx(0.1) and not perfect.beats(perfect)

    overfitting = Finding("overfitting", "warning", 9, 90, {}, "overfits")
    late = judged_score(metric(0.80, 0.6, 0.62), overfitting)
    assert late.metric_name == "val_acc_last3" and late.value == 0.62
    assert judged_score(metric(0.80, 0.6, 0.78), overfitting).beats(late)
    stagnation = judged_score(metric(0.80, 0.6, 0.62), Finding("loss_stagnation", "warning", 1, 9, {}, "flat"))
    assert (stagnation.metric_name, stagnation.value, stagnation.noise) == ("val_acc", 0.80, pytest.approx(0.08))



def test_a_cure_ahead_within_the_noise_runs_on_and_one_behind_is_stopped() -> None:
    """Demo case 4, train seed 2: rebalancing from fresh weights lifts species_x from AUC 0.87 to 0.92 by
    epoch 6, inside the 0.08 noise of 30 photos, while the class still lags; run to the end it reaches 0.98."""
    counts = {"species_x": 30, "bream": 270}
    baseline = ValMetric(0.94, 0.97, 300, {"species_x": 0.87, "bream": 1.0}, counts, 0.94)
    lagging = Finding("lagging_class", "warning", 3, 90, {}, "species_x lags", subject="species_x")

    class Validation(list):  # the 300 validation labels, as a data set the trainer's bundle holds
        targets = torch.tensor([0] * 30 + [1] * 270)

    bundle = SimpleNamespace(val=Validation(range(300)))

    def epoch_end(species_x_auc: float, recurred: bool) -> bool:
        """Whether the attempt is stopped at the end of epoch 6 (its patience) with this AUC."""
        record = {
            "epoch": 6, "val_acc": 0.92, "val_macro_auc": 0.97, "val_auc": {"species_x": species_x_auc, "bream": 1.0}
        }
        trainer = SimpleNamespace(history=[record], best_epoch=6, epoch=6, should_stop=False, stop_reason=None,
                                  class_names=["species_x", "bream"], bundle=bundle)
        stopper = StopForTreatment(loop=None, treated=lagging, baseline=baseline, patience=6)
        stopper.recurred = lagging if recurred else None
        stopper.on_epoch_end(trainer, record)
        return trainer.should_stop

    for recurred in (False, True):
        assert not epoch_end(0.92, recurred)  # ahead, by less than the noise: judged when it has run its course
        assert epoch_end(0.86, recurred)  # behind: stopped, the budget goes to the next cure


LAGGING = [
    Prescription(["train.loss=focal", "train.focal_alpha=balanced"], "Focal loss."),
    Prescription(['data.augment.strong_classes=["pike"]'], "Augment pike."),
    Prescription(["model.attention=se"], "SE attention."),
]


def scripted(monkeypatch, outcomes: dict[int, tuple[float, list[str]]]) -> list:
    """Replace training by a script: attempt number -> (best val accuracy on 100 images, symptoms it shows);
    returns the configurations trained, in order."""
    trained = []

    def fake_train(self, number, cfg, folder, *, treated, start_weights, epoch_offset, baseline=None):
        accuracy, symptoms = outcomes[number]
        findings = [Finding(s, "warning", 2, 9, {}, s, LAGGING, subject="pike") for s in symptoms]
        # Every scripted run stops in its first epoch, at half of it.
        result = RunResult(folder, [], findings, accuracy, None, torch.nn.Identity())
        self.spent += 0.5
        trained.append(cfg)
        return AttemptRun(number, cfg, folder, result, findings[0] if findings else None,
                          ValMetric(accuracy, 0.5, 100), epoch_offset, start_weights,
                          None if baseline is None else baseline.number)

    monkeypatch.setattr(_RepairLoop, "_train", fake_train)
    return trained


def test_a_cure_that_helps_is_kept_and_the_next_one_stacked_on_top(tmp_path: Path, monkeypatch) -> None:
    # Focal loss gains noise only (rolled back); targeted augmentation helps but the class still lags (kept,
    # stacked); SE attention on top of it cures.
    trained = scripted(monkeypatch, {0: (0.50, ["lagging_class"]), 1: (0.53, ["lagging_class"]),
                                     2: (0.65, ["lagging_class"]), 3: (0.80, [])})
    result = auto_repair(tiny("repair.max_attempts=4", "repair.epoch_budget=4"), tmp_path / "run", console=quiet(),
                         report=False)

    attempts = result.treatment["attempts"]
    assert [a["verdict"] for a in attempts] == ["rolled back", "helped", "cured"]
    assert [a["builds_on"] for a in attempts] == [0, 0, 2]
    assert attempts[0]["noise_margin"] == pytest.approx(0.1)
    assert not attempts[0]["improved"] and attempts[1]["improved"] and not attempts[1]["symptom_gone"]
    stacked = trained[3]
    assert stacked.data.augment.strong_classes == ["pike"] and stacked.model.attention == "se"
    assert stacked.train.loss == "cross_entropy"  # the rolled-back focal loss is not in it
    assert result.treatment["kept_attempt"] == 3 and result.treatment["kept_chain"] == [0, 2, 3]
    # The first pathology treated, judged on its yardstick before and after the whole repair.
    assert (
        result.treatment["original"]["judged"]["value"] == 0.5
        and result.treatment["final"]["judged"]["value"] == 0.8
    )
    assert [a["kept"] for a in attempts] == [False, True, True]
    final = build_config(result.treatment["final_config"])
    assert final == tiny("repair.max_attempts=4", "repair.epoch_budget=4").with_overrides(
        [*attempts[1]["change"], *attempts[2]["change"]]
    )
    assert json.loads((tmp_path / "run" / "treatment.json").read_text()) == result.treatment


def test_the_budget_never_starts_an_attempt_it_cannot_pay_for_in_full(tmp_path: Path, monkeypatch) -> None:
    # Every cure helps but the class keeps lagging. Budget 1.5 x 4 epochs: after the original run and
    # attempt 1 (half an epoch each), attempt 2's 4 epochs do not fit next to the 4 that attempt 1 needs to
    # train on to its end, so no attempt 2; attempt 1, the kept cure, trains (for real) all of its epochs.
    scripted(monkeypatch, {n: (0.3 + 0.15 * n, ["lagging_class"]) for n in range(5)})
    run_dir = tmp_path / "run"
    result = auto_repair(tiny("repair.max_attempts=4"), run_dir, console=quiet(), report=False)
    treatment = result.treatment
    assert [a["verdict"] for a in treatment["attempts"]] == ["helped"]
    assert treatment["completion"] == {"attempt": 1, "from_epoch": 0, "to_epoch": 4}
    assert treatment["final"]["epochs_trained"] == 4 and len(result.run.history) == 4
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 4
    assert treatment["epochs_spent"] == pytest.approx(5.0) and treatment["epochs_spent"] <= treatment["epoch_budget"]


def test_a_finding_the_budget_cannot_treat_is_named_with_its_cure(tmp_path: Path) -> None:
    # A budget of 1 x train.epochs: once the vanishing gradient is found, a fresh restart (4 epochs) no longer
    # fits. The run trains on, untouched, and the user is told what was not treated and how to apply the cure.
    output = io.StringIO()
    sick = tiny(*PATHOLOGIES["vanishing_gradient"][0], "repair.epoch_budget=1.0")
    result = auto_repair(sick, tmp_path / "run", console=Console(file=output, width=300), report=False)
    treatment = result.treatment
    assert treatment["attempts"] == [] and len(result.run.history) == 4
    untreated = next(record for record in treatment["untreated"] if record["symptom"] == "vanishing_gradient")
    assert untreated["epoch"] == 1 and untreated["start"] == "fresh"
    assert (
        untreated["cure"][0] == "model.activation=relu"
        and untreated["epochs_needed"] == 4 > untreated["epochs_left"]
    )
    line = next(
        line for line in output.getvalue().splitlines() if "vanishing_gradient (epoch 1) was not treated" in line
    )
    assert "repair.epoch_budget" in line and "--set model.activation=relu" in line


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
    duplicate = Finding(
        "dying_relu", "warning", 1, 3, {}, "dead units", [Prescription(["model.activation=elu"], "ELU")]
    )
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


def test_weights_a_too_large_learning_rate_left_at_chance_are_not_warm_started_from() -> None:
    five_classes = {name: 20 for name in "abcde"}  # 100 validation images, chance 0.20, noise 0.08
    at_chance, learned = (
        ValMetric(0.28, 0.5, 100, class_counts=five_classes),
        ValMetric(0.45, 0.7, 100, class_counts=five_classes),
    )
    assert not at_chance.learned_something and learned.learned_something
    # Always answering the big class scores 0.8 here: that is chance too.
    assert not ValMetric(0.80, 0.5, 100, class_counts={"a": 80, "b": 20}).learned_something
    too_high = Finding("oscillating_loss", "warning", 2, 9, {"learning_rate_too_high": True}, "swings", [])
    small_steps = Finding("loss_stagnation", "warning", 2, 9, {}, "flat", [])
    lr_cut, elu = Prescription(["train.lr=0.002"], "cut"), Prescription(["model.activation=elu"], "ELU")
    assert starts_fresh(lr_cut, too_high, at_chance)
    assert not starts_fresh(lr_cut, too_high, learned)  # learned before it went wrong: kept
    assert not starts_fresh(lr_cut, small_steps, at_chance)  # tiny steps: weights are intact
    assert starts_fresh(elu, small_steps, learned)
    # The Doctor can ask for fresh weights where the evidence says a weight-keeping change needs them.
    assert starts_fresh(
        Prescription(["data.balanced_sampling=true"], "rebalance", fresh_weights=True), small_steps, learned
    )


def test_lr_range_test_cure_gives_a_learning_rate_and_its_plot(tmp_path: Path) -> None:
    cfg = tiny("data.synthetic.per_class=16")
    found = lr_from_range_test(cfg, None, tmp_path / "lr.png")
    assert 1e-7 < found.lr < 10
    assert cfg.with_overrides([f"train.lr={found.lr:g}"]).train.lr == found.lr
    assert found.epochs_spent > 0
    assert (tmp_path / "lr.png").stat().st_size > 0
