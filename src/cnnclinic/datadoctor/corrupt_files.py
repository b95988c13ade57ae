"""The ``corrupt_files`` data check."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from cnnclinic.datadoctor.base import DataCheck, register
from cnnclinic.datadoctor.view import DataView
from cnnclinic.doctor.finding import Finding, Prescription


@register
class CorruptFiles(DataCheck):
    """Image files that could not be decoded and were left out.

    Theory: a truncated download, an empty file or a non-image in a class folder silently shrinks
    that class (and, without a tolerant loader, stops the run). Which files, and why, comes from the
    loader's own list (``DataBundle.skipped``), so the data doctor and the loader never disagree.

    Evidence: the number of skipped files, counts by reason, the files with their reasons.

    Threshold: any skipped file.

    Prescription: re-export or remove the listed files (no config change: the loader skips them).
    """

    id = "corrupt_files"

    @dataclass(frozen=True)
    class Thresholds:
        listed: int = field(default=20, metadata={"help": "files listed in the evidence"})

    def check(self, view: DataView, thresholds: Thresholds) -> list[Finding]:
        if not view.skipped:
            return []
        reasons = Counter(skipped.reason for skipped in view.skipped)
        count = len(view.skipped)
        return [
            self.finding(
                severity="warning",
                evidence={
                    "skipped": count,
                    "by_reason": dict(reasons.most_common()),
                    "files": [{"path": s.path, "reason": s.reason} for s in view.skipped[: thresholds.listed]],
                },
                explanation=(
                    f"{count} file(s) could not be read as images and were left out "
                    f"({', '.join(f'{n} {reason}' for reason, n in reasons.most_common(3))})."
                ),
                prescriptions=[
                    Prescription([], f"Re-export or remove these {count} file(s); they are skipped until then.")
                ],
            )
        ]
