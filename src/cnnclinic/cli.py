"""The `cnnclinic` command line. Every command turns a UserError into one red line and exit code 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

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


# --- make-fish ------------------------------------------------------------------------------------


def _parse_class_counts(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--class-counts expects whole numbers separated by commas (like 200,50,50), got {text!r}") from None


@app.command("make-fish")
def make_fish_command(
    out_dir: Annotated[Path, typer.Argument(help="New folder to write (one sub-folder per species).")],
    species: Annotated[int | None, typer.Option(help="Number of species, 2-12 (default 5, or as many as --class-counts).")] = None,
    per_class: Annotated[int, typer.Option(help="Images per species.")] = 120,
    size: Annotated[int, typer.Option(help="Image width and height in pixels (16-512).")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed writes the same files, byte for byte.")] = 0,
    class_counts: Annotated[str | None, typer.Option(help="Images per species, comma separated (e.g. 200,50,50): an imbalanced set.")] = None,
    hard_species: Annotated[int | None, typer.Option(help="Species K becomes 'species_x', a twin of species 0 with other fin colour only.")] = None,
    hard_blur: Annotated[float, typer.Option(help="Extra Gaussian blur (pixels at 64 px) on the hard species' photos.")] = 0.0,
) -> None:
    """Draw a synthetic fish data set: species differ by body shape, tail, pattern and colours, on water."""
    from cnnclinic.data.synthetic import generate_synthetic_fish

    counts = _parse_class_counts(class_counts)
    path = generate_synthetic_fish(
        out_dir,
        species=species if species is not None else len(counts) if counts else 5,
        per_class=per_class,
        size=size,
        seed=seed,
        class_counts=counts,
        hard_species=hard_species,
        hard_blur=hard_blur,
        console=console,
    )
    written = {folder.name: sum(1 for _ in folder.glob("*.png")) for folder in sorted(path.iterdir())}
    console.print(f"wrote {sum(written.values())} fish photos ({size} x {size} px) to [bold]{path}[/]", highlight=False)
    console.print(", ".join(f"{name} {n}" for name, n in written.items()), highlight=False)


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
