"""The data-check registry: each check is one small class in its own file, registered by its stable ID.

Same shape as the Doctor's symptoms (``cnnclinic.doctor.symptoms.base``): the class docstring is the
theory, evidence, thresholds and prescriptions; ``Thresholds`` is a dataclass of defaults. Data checks
read a ``DataView`` (the data set, measured once) instead of a training history, and their Findings
have ``epoch=0, step=0``: they are known before the first step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from cnnclinic.doctor.finding import Finding
from cnnclinic.doctor.symptoms.base import registrar

if TYPE_CHECKING:
    from cnnclinic.datadoctor.view import DataView


class DataCheck:
    """Base class. Subclasses set ``id`` and ``Thresholds`` and implement ``check``."""

    id: ClassVar[str]
    Thresholds: ClassVar[type]

    def check(self, view: DataView, thresholds: Any) -> list[Finding]:
        raise NotImplementedError

    def finding(self, **fields: Any) -> Finding:
        """A Finding of this check; data findings are known before training: epoch 0, step 0."""
        return Finding(symptom=self.id, epoch=0, step=0, **fields)


DATA_CHECKS: dict[str, type[DataCheck]] = {}
register = registrar(DATA_CHECKS, "check")
