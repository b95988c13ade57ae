"""The run report (RUN_DIR/report.html) and the comparison of runs, as self-contained HTML pages."""

from cnnclinic.report.compare import write_comparison
from cnnclinic.report.run_report import write_report

__all__ = ["write_comparison", "write_report"]
