"""Read a run directory (the contract in docs/architecture.md) into plain Python data."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cnnclinic.errors import UserError
from cnnclinic.training.checkpoint import read_jsonl


@dataclass
class ValPredictions:
    probs: np.ndarray  # N x K
    targets: np.ndarray  # N
    paths: list[str]


@dataclass
class RunFiles:
    run_dir: Path
    config: dict[str, Any]
    data_summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    layer_stats: list[dict[str, Any]]
    findings: list[dict[str, Any]]
    predictions: ValPredictions | None
    # Auto-repair attempts, as written by the repair step; None when auto-repair did not run.
    treatment: Any | None

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def class_names(self) -> list[str]:
        return list(self.data_summary.get("class_names") or [])


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error.msg}, line {error.lineno})") from None


def _read_predictions(path: Path) -> ValPredictions | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return ValPredictions(
                probs=np.asarray(npz["probs"], dtype=np.float64),
                targets=np.asarray(npz["targets"], dtype=np.int64),
                paths=[str(p) for p in npz["paths"]] if "paths" in npz.files else [],
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        raise UserError(f"{path} is not a readable val_predictions file (probs, targets, paths)") from None


def load_run(run_dir: str | Path) -> RunFiles:
    """Read every file of a run directory; UserError when it is not one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise UserError(f"{run_dir} is not a cnnclinic run directory (no config.yaml)")
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        raise UserError(f"{config_path} is not valid YAML") from None
    summary_path = run_dir / "data_summary.json"
    diagnosis_path = run_dir / "diagnosis.json"
    treatment_path = run_dir / "treatment.json"
    return RunFiles(
        run_dir=run_dir,
        config=config,
        data_summary=_read_json(summary_path) if summary_path.is_file() else {},
        metrics=read_jsonl(run_dir / "metrics.jsonl"),
        steps=read_jsonl(run_dir / "steps.jsonl"),
        layer_stats=read_jsonl(run_dir / "layer_stats.jsonl"),
        findings=(_read_json(diagnosis_path).get("findings") or []) if diagnosis_path.is_file() else [],
        predictions=_read_predictions(run_dir / "val_predictions.npz"),
        treatment=_read_json(treatment_path) if treatment_path.is_file() else None,
    )
