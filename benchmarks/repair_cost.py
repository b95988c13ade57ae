"""Auto-repair on a faulty-case suite: how many cases are cured, and at what cost in time.

The suite is the five pathologies of the analysis (the demo's sick scenarios, ``cnnclinic.demo``) plus
exploding gradients, an oscillating loss and saturated activations, all on synthetic fish. For each case:

1. ``auto_repair`` the sick configuration (wall-clock and CPU time measured);
2. train the configuration it ended with (``treatment.json`` ``final_config``) once from scratch, plainly,
   for all of ``train.epochs`` (early stopping off, so it is a run of the same length): the healthy run the
   user would have trained had they known the cure. A reference that stops early is flagged.

A case is cured when the Doctor named the expected symptom in the sick run and auto-repair treated it first,
kept a cure, the symptom is not among the kept run's active findings, and the metric that pathology is
judged on (treatment.json ``original.judged`` / ``final.judged``: a lagging class's AUC, overfitting's
last-epochs mean accuracy, else the best validation accuracy) beats the sick run's by more than its noise
margin (two standard errors). The ratio is repair time /
healthy-run time (the goal: at most 1.5). CPU time is printed next to wall-clock time because the machine
may be shared: it counts only this process's work. "other findings" lists what else the sick run raised
before it was stopped: a case should provoke only its own pathology.

``--seeds 0,1,2`` runs every case once per training seed (weights, shuffling, augmentation; the data stay
the same): the cases were set up with seed 0, so other seeds show whether the cures hold or were luck.

    .venv/bin/python benchmarks/repair_cost.py [--quick] [--cases a,b] [--seeds 0,1,2] [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from rich.console import Console
from rich.table import Table

from cnnclinic.config import Config, build_config
from cnnclinic.demo.runner import DemoData, scenario_config
from cnnclinic.demo.scenarios import BASE, SCENARIOS
from cnnclinic.repair import auto_repair
from cnnclinic.training.trainer import train

# Cases beyond the five of the analysis, on the demo's base set-up; each raises only its own symptom before
# auto-repair stops it. LeakyReLU keeps too-large steps from killing ReLU units (dying_relu's case).
# Exploding: SGD with momentum 0.9 at lr 2.0 overflows to NaN within 3 epochs. Oscillating: Adam at lr 0.02
# (20x the healthy 1e-3) with batch 16 (25 steps an epoch, so the Doctor's 70-step window fills in epoch 3)
# bounces the loss between ~1.1 and ~3.3 without diverging; at batch 8 it gets stuck flat instead.
EXTRA_CASES = {
    "exploding_gradient": ["model.activation=leaky_relu", "train.optimizer=sgd", "train.lr=2.0", "train.epochs=6"],
    "oscillating_loss": ["model.activation=leaky_relu", "train.lr=0.02", "train.batch_size=16", "train.epochs=6"],
    "saturated_activation": ["model.activation=sigmoid", "model.init=normal", "model.init_std=1.0", "train.epochs=6"],
}


@dataclass(frozen=True)
class Case:
    name: str
    expected_symptom: str
    cfg: Config


@dataclass
class Measured:
    case: Case
    found: bool
    changes: list[str]
    kept_attempt: int
    other_findings: list[str]
    metric_name: str | None
    metric_before: float | None
    metric_after: float | None
    cured: bool
    repair_wall: float
    repair_cpu: float
    healthy_wall: float
    healthy_cpu: float
    # Epochs the reference trained of the epochs it was given; why it stopped early.
    healthy_epochs: tuple[int, int]
    healthy_stop: str | None

    def to_dict(self) -> dict:
        return {
            "case": self.case.name, "expected_symptom": self.case.expected_symptom, "found": self.found,
            "changes": self.changes, "kept_attempt": self.kept_attempt, "other_findings": self.other_findings,
            "metric_name": self.metric_name, "metric_before": self.metric_before,
            "metric_after": self.metric_after, "cured": self.cured, "repair_seconds": round(self.repair_wall, 2),
            "repair_cpu_seconds": round(self.repair_cpu, 2), "healthy_seconds": round(self.healthy_wall, 2),
            "healthy_cpu_seconds": round(self.healthy_cpu, 2),
            "time_ratio": round(self.repair_wall / self.healthy_wall, 3),
            "cpu_ratio": round(self.repair_cpu / self.healthy_cpu, 3),
            "healthy_epochs": list(self.healthy_epochs), "healthy_stop": self.healthy_stop,
        }


def faulty_cases(quick: bool, seeds: list[int]) -> list[Case]:
    cases = [Case(s.name, s.expected_symptom, scenario_config(s, DemoData(), quick)) for s in SCENARIOS]
    cases += [Case(name, name, build_config(overrides=[*BASE, *sick])) for name, sick in EXTRA_CASES.items()]
    return [
        Case(case.name + (f"-seed{seed}" if len(seeds) > 1 else ""), case.expected_symptom,
             case.cfg.with_overrides([f"train.seed={seed}"]))
        for case in cases
        for seed in seeds
    ]


def timed(run) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def measure(case: Case, out: Path) -> Measured:
    quiet = Console(file=io.StringIO(), width=140)
    repair_dir = out / case.name / "repaired"
    repaired, repair_wall, repair_cpu = timed(lambda: auto_repair(case.cfg, repair_dir, console=quiet, report=False))
    treatment = repaired.treatment
    final = build_config(treatment["final_config"]).with_overrides(["train.early_stopping_patience=null"])
    healthy, healthy_wall, healthy_cpu = timed(
        lambda: train(final, out / case.name / "healthy", console=quiet, report=False)
    )
    original = treatment.get("original", {})
    # No attempt: the kept run is the original run, and its findings are the final ones.
    symptoms = [f["symptom"] for f in original["findings"]] if original else treatment["final"]["findings"]
    found = case.expected_symptom in symptoms
    # Judged on the yardstick of the first pathology auto-repair treated (treatment.json "judged"): a
    # lagging class on its AUC, overfitting on the last epochs' mean accuracy, the rest on val accuracy.
    judged_before, judged_after = original.get("judged"), treatment["final"].get("judged")
    treated_first = judged_before is not None and judged_before["symptom"] == case.expected_symptom
    before = None if judged_before is None else judged_before["value"]
    after = None if judged_after is None else judged_after["value"]
    improved = treated_first and after is not None and after > before + judged_before["noise"]
    gone = case.expected_symptom not in treatment["final"]["findings"]
    cured = found and treatment["kept_attempt"] > 0 and gone and improved
    return Measured(
        case, found,
        [" ".join(a["change"]) + f" ({a['verdict']})" for a in treatment["attempts"]]
        + [f"{u['symptom']}{'' if u['subject'] is None else '[' + u['subject'] + ']'} untreated: "
           f"{u['epochs_needed']} epochs needed, {u['epochs_left']:g} left" for u in treatment["untreated"]],
        treatment["kept_attempt"], sorted(set(symptoms) - {case.expected_symptom}),
        None if judged_before is None else judged_before["metric_name"], before, after, cured,
        repair_wall, repair_cpu, healthy_wall, healthy_cpu, (len(healthy.history), final.train.epochs),
        healthy.stop_reason,
    )


def table(results: list[Measured]) -> Table:
    view = Table(title="auto-repair on the faulty-case suite", title_justify="left")
    for column in ("case", "found", "other findings", "attempts (changes)", "kept", "judged metric", "cured",
                   "repair s", "healthy s (epochs)", "ratio", "cpu ratio"):
        view.add_column(column)
    for m in results:
        view.add_row(
            m.case.name, "yes" if m.found else "[red]no[/]", ", ".join(m.other_findings) or "-",
            "; ".join(m.changes) or "-", str(m.kept_attempt), f"{m.metric_name} {m.metric_before} -> {m.metric_after}",
            "[green]yes[/]" if m.cured else "[red]no[/]", f"{m.repair_wall:.1f}",
            f"{m.healthy_wall:.1f} ({m.healthy_epochs[0]}/{m.healthy_epochs[1]})"
            + ("" if m.healthy_stop is None else f" [red]{m.healthy_stop}[/]"), f"{m.repair_wall / m.healthy_wall:.2f}",
            f"{m.repair_cpu / m.healthy_cpu:.2f}",
        )
    return view


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the demo's quick variants of its five scenarios")
    parser.add_argument("--cases", help="comma-separated case names (default: all)")
    parser.add_argument(
        "--seeds", default="0", help="comma-separated training seeds, each case once per seed (default: 0)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/repair-benchmark"))
    args = parser.parse_args()
    cases = faulty_cases(args.quick, [int(seed) for seed in args.seeds.split(",")])
    if args.cases:
        wanted = set(args.cases.split(","))
        cases = [case for case in cases if case.name.split("-seed")[0] in wanted]
    console = Console(width=200)
    results = []
    for case in cases:
        console.print(f"{case.name}: repairing, then training the cure once ...")
        results.append(measure(case, args.out))
        console.print(table(results[-1:]))
    console.print(table(results))
    cured = sum(m.cured for m in results)
    ratios = [m.repair_wall / m.healthy_wall for m in results]
    cpu_ratios = [m.repair_cpu / m.healthy_cpu for m in results]
    console.print(
        f"cured {cured}/{len(results)} ({cured / len(results):.0%}); time ratio repair/healthy: mean "
        f"{mean(ratios):.2f}, max {max(ratios):.2f} (CPU time: mean {mean(cpu_ratios):.2f}, max {max(cpu_ratios):.2f})"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps([m.to_dict() for m in results], indent=2))


if __name__ == "__main__":
    main()
