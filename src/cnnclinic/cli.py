"""The `cnnclinic` command line. Every command turns a UserError into one red line and exit code 2."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from cnnclinic.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train CNN image classifiers, diagnose training pathologies and cure them.",
)
console = Console()
err_console = Console(stderr=True)


def main() -> None:
    try:
        app()
    except UserError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
