"""The rich progress bar shown while decoding or drawing images."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def progress_bar(console: Console | None, title: str) -> Progress:
    """A transient bar on ``console``; silent without a console or when output is not interactive (logs, pipes)."""
    interactive = console is not None and (console.is_terminal or console.is_jupyter)
    return Progress(
        TextColumn(f"[bold]{escape(title)}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not interactive,
        transient=True,
    )
