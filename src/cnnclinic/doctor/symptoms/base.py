"""The symptom registry: each symptom is one small class in its own file, registered by its stable ID."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from cnnclinic.errors import UserError

if TYPE_CHECKING:
    from cnnclinic.doctor.finding import Finding
    from cnnclinic.doctor.history import TrainingHistory


class Symptom:
    """Base class. Subclasses set ``id``, a ``Thresholds`` dataclass (defaults, each field with a
    ``metadata={"help": ...}``) and implement ``check``; the class docstring is the documentation
    (theory, evidence, prescriptions) that ``docs/symptoms.md`` is generated from."""

    id: ClassVar[str]
    Thresholds: ClassVar[type]

    def check(self, history: TrainingHistory, thresholds: Any) -> Finding | list[Finding] | None:
        raise NotImplementedError


R = TypeVar("R", bound=type)


def registrar(registry: dict[str, Any], what: str) -> Callable[[R], R]:
    """A class decorator that adds a rule (a symptom, a data check) to ``registry`` under its ``id``,
    after checking it documents itself: a Thresholds dataclass and a docstring."""

    def register(cls: R) -> R:
        if not dataclasses.is_dataclass(cls.Thresholds):
            raise TypeError(f"{cls.__name__}.Thresholds must be a dataclass")
        if not inspect.getdoc(cls):
            raise TypeError(f"{cls.__name__} needs a docstring: it is the {what}'s documentation")
        registry[cls.id] = cls
        return cls

    return register


SYMPTOMS: dict[str, type[Symptom]] = {}
register = registrar(SYMPTOMS, "symptom")


def resolve_thresholds(overrides: dict[str, dict[str, float]] | None) -> dict[str, Any]:
    """Default thresholds of every symptom with the user's overrides applied; unknown names -> UserError."""
    overrides = dict(overrides or {})
    for symptom_id in overrides:
        if symptom_id not in SYMPTOMS:
            raise UserError(
                f"doctor thresholds: unknown symptom '{symptom_id}' (known: {', '.join(sorted(SYMPTOMS))})"
            )
    resolved: dict[str, Any] = {}
    for symptom_id, cls in SYMPTOMS.items():
        given = overrides.get(symptom_id) or {}
        if not isinstance(given, dict):
            raise UserError(f"doctor thresholds: '{symptom_id}' needs a mapping of threshold names to numbers")
        fields = {f.name: f for f in dataclasses.fields(cls.Thresholds)}
        values: dict[str, float | int] = {}
        for name, value in given.items():
            if name not in fields:
                raise UserError(
                    f"doctor thresholds: unknown threshold '{symptom_id}.{name}' (known: {', '.join(fields)})"
                )
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"doctor thresholds: '{symptom_id}.{name}' must be a number, got {value!r}")
            if isinstance(fields[name].default, int) and float(value) != int(value):
                raise UserError(f"doctor thresholds: '{symptom_id}.{name}' must be a whole number, got {value!r}")
            values[name] = int(value) if isinstance(fields[name].default, int) else float(value)
        resolved[symptom_id] = cls.Thresholds(**values)
    return resolved
