"""What the doctor reports: a Finding (a named pathology with its measured evidence) and its Prescriptions."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from cnnclinic.config import needs_fresh_weights

Severity = Literal["info", "warning", "critical"]
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")


@dataclass(frozen=True)
class Prescription:
    """One cure: cnnclinic config overrides (``["model.activation=leaky_relu"]``) and advice for own loops."""

    config: list[str]
    advice: str
    # The evidence says this cure works from fresh weights only (e.g. rebalancing a rare class whose
    # features the imbalanced run has already shaped), though the change alone would keep the weights.
    fresh_weights: bool = False

    @property
    def restart(self) -> bool:
        """Architecture changes need fresh weights; the others (lr, loss, dropout, ...) can continue training,
        unless the Doctor asks for fresh weights (``fresh_weights``)."""
        return self.fresh_weights or needs_fresh_weights(self.config)

    def to_dict(self) -> dict[str, Any]:
        return {"config": list(self.config), "advice": self.advice, "restart": self.restart}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Prescription:
        return cls(config=list(data["config"]), advice=str(data["advice"]), fresh_weights=bool(data.get("restart")))


@dataclass
class Finding:
    """A pathology seen in training. ``epoch`` is 1-based (the epoch in which it was first seen), ``step``
    counts ``after_backward`` calls from 0. ``subject`` names what it is about when a symptom can occur
    several times (the class of a lagging class); otherwise None. ``resolved_at_epoch`` is set once the
    condition has stayed clear for a few epochs (it is the first of them); None while the finding is active."""

    symptom: str
    severity: Severity
    epoch: int
    step: int
    evidence: dict[str, Any]
    explanation: str
    prescriptions: list[Prescription] = field(default_factory=list)
    subject: str | None = None
    resolved_at_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")
        self.evidence = json_safe(self.evidence)

    @property
    def active(self) -> bool:
        return self.resolved_at_epoch is None

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.symptom, self.subject)

    def to_dict(self) -> dict[str, Any]:
        return {
            "symptom": self.symptom,
            "severity": self.severity,
            "epoch": self.epoch,
            "step": self.step,
            "subject": self.subject,
            "evidence": self.evidence,
            "explanation": self.explanation,
            "prescriptions": [p.to_dict() for p in self.prescriptions],
            "resolved_at_epoch": self.resolved_at_epoch,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        return cls(
            symptom=data["symptom"],
            severity=data["severity"],
            epoch=int(data["epoch"]),
            step=int(data["step"]),
            evidence=dict(data["evidence"]),
            explanation=data["explanation"],
            prescriptions=[Prescription.from_dict(p) for p in data.get("prescriptions", [])],
            subject=data.get("subject"),
            resolved_at_epoch=data.get("resolved_at_epoch"),
        )


def round_significant(value: float, digits: int = 4) -> float | str:
    """Round to a few significant digits; NaN/Inf become strings so the result is valid JSON."""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return 0.0
    return round(value, digits - 1 - int(math.floor(math.log10(abs(value)))))


def json_safe(value: Any) -> Any:
    """Evidence as plain JSON: rounded floats, lists for tuples/arrays/tensors, string keys."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return round_significant(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return json_safe(value.tolist())
    return str(value)
