"""``inspect_data``: run every data check on a DataBundle, before training (and again once a model exists)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnclinic.data import DataBundle
from cnnclinic.datadoctor.base import DATA_CHECKS
from cnnclinic.datadoctor.label_issues import OutOfSamplePredictions
from cnnclinic.datadoctor.view import DataView
from cnnclinic.doctor.finding import Finding, json_safe


@dataclass
class InspectionReport:
    """Findings of the data checks, per-class statistics and the seconds each stage took."""

    findings: list[Finding]
    per_class_stats: dict[str, dict[str, Any]]
    timings: dict[str, float]
    # Measurements behind the findings (leakage shares, label-check coverage), also when nothing was found.
    measurements: dict[str, Any] = field(default_factory=dict)
    # The measured data set, kept so a later check (labels, once a model exists) does not measure it again.
    view: DataView | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "findings": [finding.to_dict() for finding in self.findings],
                "per_class_stats": self.per_class_stats,
                "measurements": self.measurements,
                "timings": self.timings,
            }
        )

    def write(self, out_dir: str | Path) -> Path:
        """Write ``inspection.json`` into ``out_dir`` (created if needed)."""
        path = Path(out_dir) / "inspection.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        return path


def inspect_data(bundle: DataBundle, *, model_run: str | Path | None = None) -> InspectionReport:
    """Every data check on ``bundle``; ``model_run`` (a run directory) adds ``label_issues`` from its
    out-of-sample validation predictions."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    view = DataView.from_bundle(bundle)
    if model_run is not None:
        view.predictions = OutOfSamplePredictions.from_run(model_run, len(view.class_names))
    timings["measure"] = time.perf_counter() - started
    findings: list[Finding] = []
    for check_id, check_class in DATA_CHECKS.items():
        begun = time.perf_counter()
        findings.extend(check_class().check(view, check_class.Thresholds()))
        timings[check_id] = time.perf_counter() - begun
    timings["total"] = time.perf_counter() - started
    measurements = {key: view.notes[key] for key in ("leakage", "label_check") if key in view.notes}
    return InspectionReport(findings, view.class_statistics(), timings, measurements, view)


def check_labels(report: InspectionReport, run_dir: str | Path) -> list[Finding]:
    """Only the ``label_issues`` check, on the data ``report`` measured, from a finished run's
    out-of-sample validation predictions (run by the trainer at the end of training)."""
    view = report.view
    assert view is not None, "check_labels needs the report of inspect_data"
    view.predictions = OutOfSamplePredictions.from_run(run_dir, len(view.class_names))
    check = DATA_CHECKS["label_issues"]
    return check().check(view, check.Thresholds())


def class_data_facts(
    report: InspectionReport, class_name: str, *, confusion_partner: str | None = None
) -> dict[str, Any]:
    """What the data says about one class, for the Doctor's lagging-class evidence: its image counts,
    blur rank (1 = blurriest class), the data findings naming it, suspicious labels and the class its
    photos are most often confused with (``confusion_partner`` from the confusion matrix when given)."""
    stats = report.per_class_stats[class_name]
    by_blur = sorted(report.per_class_stats, key=lambda name: report.per_class_stats[name]["blur"])
    facts: dict[str, Any] = {
        "class": class_name,
        "train_images": stats["train"],
        "val_images": stats["val"],
        "blur": stats["blur"],
        "blur_rank": f"{by_blur.index(class_name) + 1} of {len(by_blur)} (1 = blurriest)",
        "data_findings": [
            finding.symptom
            for finding in report.findings
            if finding.subject == class_name
            or (finding.symptom == "class_imbalance" and finding.evidence["rarest"] == class_name)
        ],
    }
    labels = next((f for f in report.findings if f.symptom == "label_issues"), None)
    suspicious = labels.evidence["per_class"].get(class_name, []) if labels else []
    if labels:
        facts["suspicious_labels"] = len(suspicious)
    partners = [item["predicted"] for item in suspicious]
    if confusion_partner is None and partners:
        confusion_partner = max(set(partners), key=partners.count)
    if confusion_partner is not None:
        facts["confusion_partner"] = confusion_partner
    return facts
