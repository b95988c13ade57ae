"""Rich rendering of findings for the terminal."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cnnclinic.doctor.finding import Finding

SEVERITY_STYLES = {"info": "cyan", "warning": "yellow", "critical": "bold red"}


def _short(value: Any, limit: int = 90) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render_finding(finding: Finding) -> Panel:
    """A panel: the explanation, the measured evidence and the ordered prescriptions."""
    style = SEVERITY_STYLES.get(finding.severity, "white")
    evidence = Table.grid(padding=(0, 2))
    evidence.add_column(style="dim")
    evidence.add_column()
    for key, value in finding.evidence.items():
        evidence.add_row(key, _short(value))
    cures = Text()
    for number, prescription in enumerate(finding.prescriptions, start=1):
        cures.append(f"{number}. ", style="bold")
        cures.append(" ".join(f"--set {item}" for item in prescription.config), style="green")
        if prescription.restart:
            cures.append(" (retrain from scratch)", style="dim")
        cures.append(f"\n   {prescription.advice}\n")
    subject = f" [{finding.subject}]" if finding.subject else ""
    title = (
        f"[{style}]{finding.severity.upper()}[/] {finding.symptom}{subject} - "
        f"epoch {finding.epoch}, step {finding.step}"
    )
    body = Group(
        Text(finding.explanation), Text("\nEvidence", style="bold"), evidence, Text("\nCures", style="bold"), cures
    )
    return Panel(body, title=title, title_align="left", border_style=style)
