"""The data-check registry: each check is one small class in its own file, registered by its stable ID.

Same shape as the Doctor's symptoms (``cnnclinic.doctor.symptoms.base``): the class docstring is the
theory, evidence, thresholds and prescriptions; ``Thresholds`` is a dataclass of defaults. Data checks
read a ``DataView`` (the data set, measured once) instead of a training history, and their Findings
have ``epoch=0, step=0``: they are known before the first step.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    from cnnclinic.datadoctor.view import DataView
    from cnnclinic.doctor.finding import Finding


class DataCheck:
    """Base class. Subclasses set ``id`` and ``Thresholds`` and implement ``check``."""

    id: ClassVar[str]
    Thresholds: ClassVar[type]

    def check(self, view: "DataView", thresholds: Any) -> "list[Finding]":
        raise NotImplementedError


DATA_CHECKS: dict[str, type[DataCheck]] = {}
C = TypeVar("C", bound=type[DataCheck])


def register(cls: C) -> C:
    """Class decorator: add a data check to the registry under its ``id``."""
    if not dataclasses.is_dataclass(cls.Thresholds):
        raise TypeError(f"{cls.__name__}.Thresholds must be a dataclass")
    if not inspect.getdoc(cls):
        raise TypeError(f"{cls.__name__} needs a docstring: it is the check's documentation")
    DATA_CHECKS[cls.id] = cls
    return cls
