"""``run_demo``: each scenario's sick run, the Doctor's diagnosis, the treated run, and the verdict.

Writes ``DIR/<scenario>/{sick,treated}`` (full run directories with their reports) and
``DIR/results.json``, and prints a rich table of the five cases.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cnnclinic.config import Config, build_config, parse_override
from cnnclinic.demo.scenarios import BASE, SCENARIOS, Scenario
from cnnclinic.doctor import Finding
from cnnclinic.errors import UserError
from cnnclinic.training.checkpoint import atomic_write_bytes
from cnnclinic.training.trainer import RunResult, train


@dataclass(frozen=True)
class DemoData:
    """Where the demo's images come from: its own synthetic fish (``folder`` None) or the user's folder."""

    folder: Path | None = None
    groups_csv: Path | None = None
    group_column: str | None = None
    # The user's photos are larger and more detailed than the synthetic fish.
    folder_image_size: int = 64

    def overrides(self, scenario: Scenario) -> list[str]:
        if self.folder is None:
            return list(scenario.synthetic)
        chosen = {
            "data.source": str(self.folder),
            "data.image_size": self.folder_image_size,
            "data.groups_csv": None if self.groups_csv is None else str(self.groups_csv),
            "data.group_column": self.group_column,
        }
        return [f"{key}={json.dumps(value)}" for key, value in chosen.items() if value is not None]


# A case is judged on the mean of its last few epochs: on a validation set of a few hundred images one
# epoch's accuracy or AUC moves by several points from one epoch to the next.
JUDGED_EPOCHS = 3


@dataclass
class RunSummary:
    """The numbers of one run the demo reports: its findings, last epoch's metrics and the judged means."""

    run_dir: Path
    findings: list[Finding]
    train_acc: float | None
    val_acc: float | None
    class_auc: dict[str, float]
    seconds: float
    # Means over the last JUDGED_EPOCHS epochs (what a case is judged on).
    recent_val_acc: float | None = None
    recent_class_auc: dict[str, float] = field(default_factory=dict)
    # Symptoms the Doctor found during the run and later saw clear up (diagnosis.json "resolved").
    resolved_symptoms: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, result: RunResult, seconds: float) -> RunSummary:
        last = result.history[-1] if result.history else {}
        recent = result.history[-JUDGED_EPOCHS:]
        accuracies = [r["val_acc"] for r in recent if r.get("val_acc") is not None]
        class_aucs = [r["val_auc"] for r in recent if r.get("val_auc")]
        diagnosis = result.run_dir / "diagnosis.json"
        resolved = json.loads(diagnosis.read_text()).get("resolved", []) if diagnosis.is_file() else []
        return cls(
            run_dir=result.run_dir,
            findings=list(result.findings),
            train_acc=last.get("train_acc"),
            val_acc=last.get("val_acc"),
            class_auc=dict(last.get("val_auc") or {}),
            seconds=seconds,
            recent_val_acc=statistics.fmean(accuracies) if accuracies else None,
            recent_class_auc={
                name: statistics.fmean(aucs[name] for aucs in class_aucs if name in aucs)
                for name in (class_aucs[-1] if class_aucs else {})
            },
            resolved_symptoms=[finding["symptom"] for finding in resolved],
        )

    def has(self, symptom: str, subject: str | None = None) -> bool:
        """Whether the Doctor raised ``symptom`` (about ``subject``, when one is given)."""
        return any(f.symptom == symptom and subject in (None, f.subject) for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "findings": [
                {"symptom": f.symptom, "subject": f.subject, "epoch": f.epoch, "explanation": f.explanation}
                for f in self.findings
            ],
            "train_acc": self.train_acc,
            "val_acc": self.val_acc,
            "class_auc": self.class_auc,
            f"val_acc_last_{JUDGED_EPOCHS}_mean": self.recent_val_acc,
            f"class_auc_last_{JUDGED_EPOCHS}_mean": self.recent_class_auc,
            "resolved_symptoms": self.resolved_symptoms,
            "seconds": round(self.seconds, 1),
        }


@dataclass
class ScenarioResult:
    scenario: Scenario
    sick: RunSummary
    treated: RunSummary
    cure: list[str]  # overrides applied on top of the sick config
    cure_from_doctor: list[str]  # those of them the Doctor prescribed in the sick run
    hard_class: str | None  # the class the metric is about (hard_class_auc only)

    def metric(self, run: RunSummary) -> float | None:
        if self.scenario.metric == "val_acc":
            return run.recent_val_acc
        return run.recent_class_auc.get(self.hard_class or "")

    @property
    def reproduced(self) -> bool:
        # Found at some epoch counts, even when it cleared up later (a noisy val loss can end on a dip).
        expected = self.scenario.expected_symptom
        return self.sick.has(expected) or expected in self.sick.resolved_symptoms

    @property
    def symptom_gone(self) -> bool:
        # For a lagging class the symptom is about that class (as in auto-repair: one finding per subject).
        return not self.treated.has(self.scenario.expected_symptom, self.hard_class)

    @property
    def improved(self) -> bool:
        before, after = self.metric(self.sick), self.metric(self.treated)
        return before is not None and after is not None and after > before

    @property
    def cured(self) -> bool:
        return self.reproduced and self.symptom_gone and self.improved

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "title": self.scenario.title,
            "analysis": self.scenario.analysis,
            "how": self.scenario.how,
            "expected_symptom": self.scenario.expected_symptom,
            "sick": self.sick.to_dict(),
            "treated": self.treated.to_dict(),
            "cure": self.cure,
            "cure_from_doctor": self.cure_from_doctor,
            "metric": self.scenario.metric,
            "hard_class": self.hard_class,
            "metric_before": self.metric(self.sick),
            "metric_after": self.metric(self.treated),
            "reproduced": self.reproduced,
            "symptom_gone": self.symptom_gone,
            "improved": self.improved,
            "cured": self.cured,
        }


def scenario_config(scenario: Scenario, data: DemoData, quick: bool) -> Config:
    """The sick run's configuration."""
    overrides = [*BASE, *data.overrides(scenario), *scenario.sick]
    return build_config(overrides=overrides + list(scenario.quick if quick else ()))


def hard_class_of(scenario: Scenario, sick: RunSummary) -> str | None:
    """The class a hard_class_auc scenario is about: of the classes the Doctor names (else of all classes),
    the one with the sick run's lowest (judged) AUC."""
    aucs = sick.recent_class_auc
    if scenario.metric != "hard_class_auc" or not aucs:
        return None
    named = {f.subject for f in sick.findings if f.symptom == scenario.expected_symptom} & set(aucs)
    return min(named or aucs, key=aucs.__getitem__)


def resolve_cure(
    scenario: Scenario, sick: RunSummary, hard_class: str | None = None
) -> tuple[list[str], list[str]]:
    """The cure overrides, each replaced by the Doctor's prescription for the same key when it made one
    (its prescription for ``hard_class`` first, e.g. targeted augmentation of that class)."""
    findings = [f for f in sick.findings if f.symptom == scenario.expected_symptom]
    findings.sort(key=lambda f: f.subject != hard_class)  # stable: otherwise in the order found
    prescribed: dict[str, str] = {}
    for finding in findings:
        for prescription in finding.prescriptions:
            for item in prescription.config:
                prescribed.setdefault(parse_override(item)[0], item)
    cure, from_doctor = [], []
    for item in scenario.cure:
        key = parse_override(item)[0]
        if key in prescribed:
            item = prescribed[key]
            from_doctor.append(item)
        cure.append(item)
    return cure, from_doctor


def _timed_train(cfg: Config, run_dir: Path, console: Console) -> RunSummary:
    started = time.perf_counter()
    result = train(cfg, run_dir, console=console)
    return RunSummary.of(result, time.perf_counter() - started)


def run_scenario(scenario: Scenario, out: Path, data: DemoData, quick: bool, console: Console) -> ScenarioResult:
    sick_cfg = scenario_config(scenario, data, quick)
    console.rule(f"[bold]{scenario.title}[/]: sick run ({scenario.how})")
    sick = _timed_train(sick_cfg, out / scenario.name / "sick", console)
    hard_class = hard_class_of(scenario, sick)
    cure, from_doctor = resolve_cure(scenario, sick, hard_class)
    console.rule(f"[bold]{scenario.title}[/]: treated run ({', '.join(cure)})")
    treated = _timed_train(sick_cfg.with_overrides(cure), out / scenario.name / "treated", console)
    return ScenarioResult(scenario, sick, treated, cure, from_doctor, hard_class)


def select_scenarios(names: Sequence[str]) -> tuple[Scenario, ...]:
    """The scenarios called ``names`` (all of them when empty), in the demo's order."""
    known = {scenario.name for scenario in SCENARIOS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UserError(f"--case: unknown case {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
    return tuple(scenario for scenario in SCENARIOS if not names or scenario.name in names)


def run_demo(
    out: str | Path,
    *,
    quick: bool = False,
    data: DemoData | None = None,
    scenarios: Sequence[Scenario] = SCENARIOS,
    console: Console | None = None,
) -> list[ScenarioResult]:
    """Run every scenario (sick, then treated), write ``out/results.json`` and print the summary table."""
    console = console or Console()
    out = Path(out)
    data = data or DemoData()
    results: list[ScenarioResult] = []
    started = time.perf_counter()
    for scenario in scenarios:
        results.append(run_scenario(scenario, out, data, quick, console))
        # Written after every scenario so an interrupted demo keeps what it measured.
        write_results(results, out / "results.json")
    console.print(results_table(results))
    cured = sum(result.cured for result in results)
    console.print(
        f"{cured} of {len(results)} cases cured in {time.perf_counter() - started:.0f} s; "
        f"results in [bold]{out / 'results.json'}[/]"
    )
    return results


def write_results(results: list[ScenarioResult], path: Path) -> None:
    text = json.dumps([result.to_dict() for result in results], indent=2)
    atomic_write_bytes(path, text.encode("utf-8"))


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _findings_cell(run: RunSummary, expected: str) -> str:
    """Symptom names, the expected one in bold; a symptom raised for several classes shows a count."""
    counts: dict[str, int] = {}
    for finding in run.findings:
        counts[finding.symptom] = counts.get(finding.symptom, 0) + 1
    if not counts:
        return "[dim]none[/]"
    names = [name + (f" x{n}" if n > 1 else "") for name, n in counts.items()]
    return "\n".join(f"[bold]{name}[/]" if name.startswith(expected) else name for name in names)


def results_table(results: list[ScenarioResult]) -> Table:
    table = Table(title="cnnclinic demo: the five case studies", title_justify="left", show_lines=True)
    for column in ("case", "sick run: findings", "cure", "treated run: findings", "train / val acc",
                   f"metric (mean of last {JUDGED_EPOCHS} epochs)", "cured"):
        table.add_column(column)
    for result in results:
        expected = result.scenario.expected_symptom
        metric_name = "val acc" if result.scenario.metric == "val_acc" else f"AUC {result.hard_class}"
        metric_format = _percent if result.scenario.metric == "val_acc" else _number
        table.add_row(
            f"{result.scenario.title}\n[dim]expects {expected}[/]",
            _findings_cell(result.sick, expected),
            "\n".join(result.cure),
            _findings_cell(result.treated, expected),
            f"{_percent(result.sick.train_acc)} / {_percent(result.sick.val_acc)}\n"
            f"→ {_percent(result.treated.train_acc)} / {_percent(result.treated.val_acc)}",
            f"{metric_name}\n{metric_format(result.metric(result.sick))} → "
            f"{metric_format(result.metric(result.treated))}",
            "[bold green]yes[/]" if result.cured else "[bold red]no[/]",
        )
    return table
