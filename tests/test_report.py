"""The run report and run comparison: the data behind each plot, and the pages built from a run directory."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from torch import nn
from typer.testing import CliRunner

from cnnclinic.cli import app, main
from cnnclinic.config import Config
from cnnclinic.errors import UserError
from cnnclinic.models import build_model, count_parameters
from cnnclinic.report import write_comparison, write_report
from cnnclinic.report.explain import gradcam_maps
from cnnclinic.report.figures import gradient_flow_figure
from cnnclinic.report.html import format_value
from cnnclinic.report.plot_data import (
    best_epoch_record,
    class_to_explain,
    first_last_gradient_ratio,
    gradient_flow_matrix,
    highest_loss_items,
    layer_stat_matrix,
    learning_rate_curve,
    most_confused_pairs,
    roc_curves,
    training_curves,
)
from cnnclinic.report.run_files import load_run
from cnnclinic.training.checkpoint import save_weights
from cnnclinic.training.metrics import classification_metrics

CLASSES = ["bream", "perch", "pike"]


# --- the data behind each plot -------------------------------------------------------------------------------


def test_gradient_flow_matrix_puts_layers_in_model_order_and_steps_in_time_order():
    records = [
        {"step": 20, "epoch": 1, "grad_norm": {"conv1": 0.1, "conv2": 0.5, "fc": 2.0}},
        {"step": 0, "epoch": 1, "grad_norm": {"conv1": 1e-4, "conv2": 0.01, "fc": 1.0}},
        {"step": 10, "epoch": 1, "grad_norm": {"conv1": 1e-3, "fc": 1.5}},  # conv2 not measured here
        {"step": 30, "epoch": 2, "dead_fraction": {"relu1": 0.9}},  # no gradients in this record
    ]
    matrix = gradient_flow_matrix(records)
    assert matrix.layers == ["conv1", "conv2", "fc"]
    assert matrix.steps == [0, 10, 20]
    assert matrix.values[0].tolist() == [1e-4, 1e-3, 0.1]
    assert math.isnan(matrix.values[1, 1])
    assert matrix.values[2, 2] == 2.0
    assert first_last_gradient_ratio(matrix) == pytest.approx([1e-4, 1e-3 / 1.5, 0.05])


def test_first_last_ratio_is_undefined_where_the_last_layer_has_no_gradient():
    matrix = gradient_flow_matrix(
        [{"step": 0, "grad_norm": {"a": 1.0, "b": 0.0}}, {"step": 1, "grad_norm": {"a": 1.0, "b": 4.0}}]
    )
    ratios = first_last_gradient_ratio(matrix)
    assert math.isnan(ratios[0]) and ratios[1] == pytest.approx(0.25)


def test_dead_fraction_matrix_reads_its_own_key():
    records = [
        {"step": 0, "dead_fraction": {"relu1": 0.1, "relu2": 0.2}, "saturation": {}},
        {"step": 10, "dead_fraction": {"relu1": 0.8, "relu2": 0.95}, "saturation": {}},
    ]
    dead = layer_stat_matrix(records, "dead_fraction")
    assert dead.layers == ["relu1", "relu2"] and dead.steps == [0, 10]
    assert dead.values[:, 1].tolist() == [0.8, 0.95]
    assert layer_stat_matrix(records, "saturation").steps == []


def test_heatmaps_draw_a_single_sample_and_all_zero_gradients():
    # One sampled step, and a dead network whose every gradient is 0 (nothing to put on a log scale).
    single = gradient_flow_matrix([{"step": 0, "grad_norm": {"conv1": 1e-3, "fc": 1.0}}])
    dead = gradient_flow_matrix([{"step": s, "grad_norm": {f"layer{i}": 0.0 for i in range(60)}} for s in range(3)])
    for matrix in (single, dead):
        uri = gradient_flow_figure(matrix, first_last_gradient_ratio(matrix))
        assert Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).width > 500


def test_most_confused_pairs_ranks_off_diagonal_cells():
    confusion = [[8, 2, 0], [5, 4, 1], [0, 0, 10]]
    pairs = most_confused_pairs(confusion, CLASSES, k=2)
    assert [(p.true_class, p.predicted_class, p.count) for p in pairs] == [("perch", "bream", 5), ("bream", "perch", 2)]
    assert pairs[0].fraction == pytest.approx(0.5)
    # Only non-zero cells: three exist, the diagonal never counts.
    assert len(most_confused_pairs(confusion, CLASSES, k=10)) == 3
    assert most_confused_pairs(np.eye(3, dtype=int) * 4, CLASSES) == []


def test_highest_loss_items_are_the_confident_mistakes_first():
    probs = np.array([[0.9, 0.05, 0.05], [0.01, 0.98, 0.01], [0.3, 0.3, 0.4], [0.2, 0.7, 0.1]])
    targets = np.array([0, 0, 2, 0])
    items = highest_loss_items(probs, targets, k=3)
    assert [item.index for item in items] == [1, 3, 2]
    assert items[0].loss == pytest.approx(-math.log(0.01))
    assert (items[0].target, items[0].predicted, items[0].prob_target) == (0, 1, pytest.approx(0.01))
    # A zero probability still gives a finite loss.
    assert math.isfinite(highest_loss_items(np.array([[1.0, 0.0]]), np.array([1]), k=1)[0].loss)


def test_roc_curves_agree_with_the_auc_table_and_skip_absent_classes():
    rng = np.random.default_rng(0)
    targets = np.array([0, 1] * 30)
    probs = rng.dirichlet([1, 1, 1], size=len(targets))
    probs[targets == 0, 0] += 2.0  # class 0 is separable, class 1 is noise, class 2 never occurs
    probs /= probs.sum(axis=1, keepdims=True)
    curves = roc_curves(probs, targets, CLASSES)
    assert set(curves) == {"bream", "perch"}
    expected = classification_metrics(probs, targets, CLASSES).auc
    for name, curve in curves.items():
        assert curve.auc == pytest.approx(expected[name])
        assert (curve.fpr[0], curve.tpr[0], curve.fpr[-1], curve.tpr[-1]) == (0, 0, 1, 1)
        # Trapezoid area under the plotted points is the AUC in the table.
        assert np.trapezoid(curve.tpr, curve.fpr) == pytest.approx(curve.auc)
    assert curves["bream"].auc > 0.9 > curves["perch"].auc


def test_grad_cam_explains_the_lagging_class_else_the_lowest_auc_class():
    auc = {"bream": 0.95, "perch": 0.62, "pike": 0.81}
    lagging = {"symptom": "lagging_class", "subject": "pike", "evidence": {"auc": 0.81}}
    assert class_to_explain([{"symptom": "overfitting", "evidence": {}}, lagging], auc) == "pike"
    assert class_to_explain([{"symptom": "overfitting", "evidence": {}}], auc) == "perch"
    assert class_to_explain([], {"bream": None}) is None


def test_training_curves_best_epoch_and_learning_rate():
    metrics = [
        {"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "train_acc": 0.5, "val_acc": 0.4},
        {"epoch": 2, "train_loss": 0.5, "val_loss": 0.9, "train_acc": 0.8, "val_acc": 0.7},
        {"epoch": 3, "train_loss": 0.2, "val_loss": 1.2, "train_acc": 0.95, "val_acc": 0.7},
    ]
    curves = training_curves(metrics)
    assert curves.epochs == [1, 2, 3] and curves.val_loss == [1.1, 0.9, 1.2]
    assert best_epoch_record(metrics)["epoch"] == 2  # first of the tied best
    assert learning_rate_curve([{"step": 0, "lr": 0.1}, {"step": 1, "lr": 0.05}]) == ([0, 1], [0.1, 0.05])


def test_grad_cam_lights_up_where_the_class_evidence_is():
    # conv sums the channels, the class-0 logit is the mean of that map: evidence = brightness.
    conv = nn.Conv2d(3, 1, 1, bias=False)
    nn.init.constant_(conv.weight, 1.0)
    head = nn.Linear(1, 2, bias=False)
    head.weight.data = torch.tensor([[1.0], [-1.0]])
    model = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()
    images = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    images[0, :, :4, :4] = 255  # bright top-left corner
    images[1, :, 12:, 12:] = 255  # bright bottom-right corner
    maps = gradcam_maps(model, images, target_class=0)
    assert maps.shape == (2, 16, 16) and maps.max() == pytest.approx(1.0)
    assert maps[0, :4, :4].mean() > 0.9 > 0.1 > maps[0, 8:, 8:].mean()
    assert maps[1, 12:, 12:].mean() > 0.9 > 0.1 > maps[1, :8, :8].mean()


# --- a run directory, as the trainer writes it --------------------------------------------------------------


def make_run_dir(
    root: Path,
    name: str = "run",
    *,
    width: int = 4,
    with_images: bool = True,
    with_weights: bool = True,
    findings: list[dict] | None = None,
    epochs: int = 4,
) -> Path:
    """A small but complete run directory: real images on disk, real weights, plausible records."""
    run_dir = root / name
    (run_dir / "checkpoints").mkdir(parents=True)
    image_size = 32
    data_dir = root / f"{name}-data"
    cfg = Config().with_overrides(
        [f"data.source={data_dir}", f"data.image_size={image_size}", "model.depth=2", f"model.width={width}"]
    )
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    rng = np.random.default_rng(len(name))
    per_class, paths, targets = 6, [], []
    for k, cls in enumerate(CLASSES):
        for i in range(per_class):
            rel = f"{cls}/{i}.png"
            if with_images:
                (data_dir / cls).mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
                pixels[..., k] = 230  # each species has its own tint
                Image.fromarray(pixels).save(data_dir / rel)
            paths.append(rel)
            targets.append(k)
    targets_array = np.array(targets)
    logits = rng.normal(size=(len(targets), 3))
    logits[np.arange(len(targets)), targets_array] += np.where(targets_array == 2, 0.2, 2.5)  # pike lags
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.savez(
        run_dir / "val_predictions.npz",
        probs=probs.astype(np.float32),
        targets=targets_array,
        paths=np.array(paths),
    )
    summary = {
        "source": str(data_dir),
        "class_names": CLASSES,
        "counts": {"train": {c: 24 for c in CLASSES}, "val": {c: per_class for c in CLASSES}},
        "groups": None,
        "skipped": 1,
        "skipped_files": [{"path": "pike/broken.jpg", "reason": "truncated image"}],
    }
    (run_dir / "data_summary.json").write_text(json.dumps(summary))
    metrics = [
        {
            "epoch": e,
            "step": e * 10,
            "train_loss": 1.2 / e,
            "train_acc": min(0.3 + 0.2 * e, 1.0),
            "val_loss": 1.0 / e + 0.1 * e,
            "val_acc": 0.35 + 0.1 * e - 0.02 * width,
            "val_auc": {c: 0.8 for c in CLASSES},
            "val_macro_auc": 0.8,
            "lr": 1e-3,
            "seconds": 1.0,
        }
        for e in range(1, epochs + 1)
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    steps = [
        {"step": s, "epoch": s // 10 + 1, "loss": 1.0 / (1 + s), "lr": 1e-3 * 0.9 ** (s // 10)}
        for s in range(10 * epochs)
    ]
    (run_dir / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    layers = ["features.0", "features.1", "head.0", "head.1"]
    layer_stats = [
        {
            "step": s,
            "epoch": s // 10 + 1,
            "grad_norm": {layer: 10.0 ** (i - 4) * (1 + s / 40) for i, layer in enumerate(layers)},
            "dead_fraction": {"features.relu0": min(0.1 * s / 5, 1.0), "features.relu1": 0.2},
            "saturation": {},
        }
        for s in range(0, 10 * epochs, 5)
    ]
    (run_dir / "layer_stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in layer_stats))
    if findings is None:
        findings = [
            {
                "symptom": "lagging_class",
                "severity": "warning",
                "epoch": 3,
                "step": 25,
                "subject": "pike",
                "evidence": {"auc": 0.61, "others_median_auc": 0.93, "confused_with": {"bream": 3}},
                "explanation": "The model learns pike much worse than the other species.",
                "prescriptions": [
                    {
                        "config": ["data.augment.strong_classes=[pike]"],
                        "advice": "Augment pike harder.",
                        "restart": False,
                    }
                ],
            },
            {
                "symptom": "class_imbalance",
                "severity": "info",
                "epoch": 0,  # the data doctor, before training
                "step": 0,
                "subject": None,
                "evidence": {"imbalance_ratio": 4.5},
                "explanation": "Some species have far more photos than others.",
                "prescriptions": [{"config": [], "advice": "Collect more pike photos.", "restart": False}],
            },
            {
                "symptom": "vanishing_gradient",
                "severity": "critical",
                "epoch": 1,
                "step": 9,
                "subject": None,
                "evidence": {"first_last_ratio": 1e-4},
                "explanation": "Gradients fade before they reach the first layers.",
                "prescriptions": [
                    {"config": ["model.activation=relu", "model.batchnorm=true"], "advice": "", "restart": True}
                ],
            },
        ]
    (run_dir / "diagnosis.json").write_text(json.dumps({"findings": findings}))
    if with_weights:
        torch.manual_seed(0)
        model = build_model(cfg.model, len(CLASSES), image_size)
        save_weights(model, run_dir / "checkpoints" / "best.safetensors", class_names=CLASSES)
    return run_dir


def _image_sources(html: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)


def test_report_puts_the_verdict_first_and_embeds_every_figure(tmp_path):
    run_dir = make_run_dir(tmp_path)
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    html = path.read_text()
    # Verdict first: the critical card comes before the warning and before any figure.
    critical, warning = html.index('class="card critical"'), html.index('class="card warning"')
    assert critical < warning < html.index("<img")
    assert "Lagging class — pike" in html and "--set data.augment.strong_classes=[pike]" in html
    assert "first seen at epoch 1, step 9" in html
    assert html.index('class="card warning"') < html.index('class="card info"')
    assert "found in the data, before training" in html and "Collect more pike photos." in html
    sources = _image_sources(html)
    # curves, lr, gradient flow, dead units, ROC, confusion, highest-loss images, Grad-CAM
    assert len(sources) == 8
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    # Self-contained: nothing is fetched from anywhere.
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<link" not in html and "<script" not in html
    assert "Grad-CAM for “pike”" in html  # the lagging class the doctor named is the one explained
    assert "pike/broken.jpg" in html and "truncated image" in html


def test_every_train_run_ends_with_a_report(fish_dir, tmp_path):
    from cnnclinic.config import build_config
    from cnnclinic.training.trainer import train

    cfg = build_config(
        overrides={
            "data.source": str(fish_dir),
            "data.image_size": 32,
            "model.depth": 2,
            "model.width": 8,
            "train.epochs": 2,
            "train.lr": 0.01,
            "doctor.sample_every": 2,
        }
    )
    result = train(cfg, tmp_path / "run", console=Console(file=io.StringIO()))
    html = (result.run_dir / "report.html").read_text()
    # From the trainer's own files: curves, lr, gradient flow, dead units, ROC, confusion, images, Grad-CAM.
    assert len(_image_sources(html)) == 8
    assert f"{count_parameters(result.model):,}" in html
    assert "cannot be loaded" not in html and "not at their recorded paths" not in html


def test_report_degrades_to_notes_without_images_weights_or_doctor(tmp_path):
    run_dir = make_run_dir(tmp_path, with_images=False, with_weights=False, findings=[])
    (run_dir / "layer_stats.jsonl").unlink()
    html = write_report(run_dir).read_text()
    assert "No pathology found" in html
    assert "not at their recorded paths" in html
    assert "needs the best model, which cannot be loaded" in html and "checkpoints/best.safetensors" in html
    assert "layer_stats.jsonl is empty" in html
    # Curves, learning rate, ROC and confusion matrix still come from the records.
    assert len(_image_sources(html)) == 4


def test_report_shows_the_treatment_history(tmp_path):
    run_dir = make_run_dir(tmp_path)
    trigger = {"symptom": "dying_relu", "subject": None, "severity": "warning", "epoch": 1, "step": 9}
    attempts = [
        {"attempt": 1, "trigger": trigger, "change": ["model.activation=leaky_relu"], "advice": "Let units leak.",
         "start": "fresh", "epochs": 4, "symptom_gone": True, "metric_name": "val_acc", "metric_before": 0.2,
         "metric_after": 0.41, "cured": True, "verdict": "cured", "kept": True, "stopped_by": "lagging_class"},
        {"attempt": 2, "trigger": trigger | {"symptom": "lagging_class", "subject": "pike"},
         "change": ["model.dropout=0.3"], "advice": "", "start": "warm", "epochs": 2, "symptom_gone": False,
         "metric_name": "val_auc[pike]", "metric_before": 0.61, "metric_after": 0.64, "cured": False,
         "verdict": "rolled back", "kept": False, "stopped_by": None},
    ]
    untreated = [{"symptom": "overfitting", "subject": None, "epoch": 7, "cure": ["model.dropout=0.5"],
                  "start": "warm", "epochs_needed": 4, "epochs_left": 1.5}]
    treatment = {"attempts": attempts, "kept_attempt": 1, "epochs_spent": 10.5, "epoch_budget": 12,
                 "untreated": untreated}
    (run_dir / "treatment.json").write_text(json.dumps(treatment))
    html = write_report(run_dir).read_text()
    assert "Treatment history" in html and "Attempt 1 was kept" in html
    assert "<code>model.activation=leaky_relu</code>" in html and "Dying relu" in html
    # Each attempt on the yardstick it was judged on: an accuracy in percent, a lagging class's AUC as is.
    assert "20.0%" in html and "41.0%" in html and "<code>val_auc[pike]</code>" in html and "0.64" in html
    assert "cured, kept" in html and "rolled back" in html and "10.5 of 12" in html
    assert "not treated</span> Overfitting (epoch 7)" in html and "needs 4 epochs (warm start)" in html
    # Auto-repair that found nothing to treat adds no section.
    (run_dir / "treatment.json").write_text(json.dumps(treatment | {"attempts": [], "untreated": []}))
    assert "Treatment history" not in write_report(run_dir).read_text()


def test_evidence_values_read_as_words_even_when_empty():
    facts = {"class": "carp", "blur_rank": "4 of 5", "data_findings": [], "auc": 0.906912, "lagging": True}
    assert format_value(facts) == "class: carp, blur_rank: 4 of 5, data_findings: none, auc: 0.9069, lagging: yes"


def test_load_run_rejects_what_is_not_a_run_and_survives_a_torn_last_line(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_run(tmp_path / "nope")
    with pytest.raises(UserError, match="no config.yaml"):
        load_run(tmp_path)
    run_dir = make_run_dir(tmp_path)
    with (run_dir / "metrics.jsonl").open("a") as handle:
        handle.write('{"epoch": 5, "train_lo')  # the run was killed mid-write
    assert len(load_run(run_dir).metrics) == 4
    (run_dir / "val_predictions.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable val_predictions"):
        load_run(run_dir)


def test_compare_tabulates_key_numbers_and_findings(tmp_path):
    small = make_run_dir(tmp_path, "small", width=4, findings=[])
    large = make_run_dir(tmp_path, "large", width=16)
    out = write_comparison([small, large], tmp_path / "cmp.html")
    html = out.read_text()
    cfg = Config().with_overrides(["data.image_size=32", "model.depth=2"])
    for name, width in (("small", 4), ("large", 16)):
        params = count_parameters(build_model(cfg.model.model_copy(update={"width": width}), 3, 32))
        assert f"{params:,}" in html and f"<strong>{name}</strong>" in html
    assert "lagging_class" in html and "vanishing_gradient" in html and "healthy" in html
    assert len(_image_sources(html)) == 2  # overlaid curves + parameters vs accuracy
    with pytest.raises(UserError, match="at least two"):
        write_comparison([small], tmp_path / "one.html")
    with pytest.raises(UserError, match="not a cnnclinic run"):
        write_comparison([small, tmp_path], tmp_path / "bad.html")


def test_cli_report_and_compare(tmp_path, monkeypatch, capsys):
    runner = CliRunner()
    a, b = make_run_dir(tmp_path, "a"), make_run_dir(tmp_path, "b", with_images=False)
    result = runner.invoke(app, ["report", str(a)])
    assert result.exit_code == 0, result.output
    assert (a / "report.html").is_file()
    out = tmp_path / "both.html"
    result = runner.invoke(app, ["compare", str(a), str(b), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    # The real entry point: one line on stderr, exit code 2, no traceback.
    monkeypatch.setattr(sys, "argv", ["cnnclinic", "report", str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert "run directory not found" in capsys.readouterr().err
