"""The data doctor's console output: a per-class table, the leakage measurement, then the findings."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from cnnclinic.datadoctor.inspection import InspectionReport
from cnnclinic.doctor.render import render_finding

# (statistic, column header, format)
_COLUMNS = (
    ("train", "train", "{:d}"),
    ("val", "val", "{:d}"),
    ("test", "test", "{:d}"),
    ("blur", "blur", "{:.0f}"),
    ("brightness", "bright", "{:.0f}"),
    ("contrast", "contr", "{:.0f}"),
    ("grayscale_share", "grey", "{:.0%}"),
    ("exact_duplicates", "dups", "{:d}"),
    ("short_side", "side", "{:.0f}"),
    ("aspect_ratio", "aspect", "{:.2f}"),
)


def class_table(report: InspectionReport) -> Table:
    table = Table(
        title="per-class data (blur: Laplacian variance, low = blurry; side, aspect: files as stored)",
        title_justify="left",
    )
    table.add_column("class")
    for _, header, _ in _COLUMNS:
        table.add_column(header, justify="right")
    flagged = {f.subject for f in report.findings if f.subject}
    for name, row in report.per_class_stats.items():
        cells = ["n/a" if row[key] is None else fmt.format(row[key]) for key, _, fmt in _COLUMNS]
        table.add_row(f"[bold yellow]{name}[/]" if name in flagged else name, *cells)
    return table


def print_inspection(report: InspectionReport, console: Console) -> None:
    console.print(class_table(report))
    for split, share in report.measurements.get("leakage", {}).items():
        console.print(
            f"{split}: {share['with_train_twin']} of {share['images']} images ({share['share']:.1%}) have a "
            "near-twin in train",
            highlight=False,
        )
    label_check = report.measurements.get("label_check")
    if label_check:
        console.print(
            f"labels checked on {label_check['checked']} out-of-sample predictions "
            f"(model accuracy {label_check['model_accuracy']:.3f})"
            f"{'; ' + label_check['skipped'] if 'skipped' in label_check else ''}",
            highlight=False,
        )
    for finding in report.findings:
        console.print(render_finding(finding))
    console.print(
        f"{len(report.findings)} data finding(s); inspection took {report.timings['total']:.2f} s",
        highlight=False,
    )
