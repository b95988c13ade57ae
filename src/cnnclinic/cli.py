"""The `cnnclinic` command line. Every command turns a UserError into one red line and exit code 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cnnclinic.errors import UserError

if TYPE_CHECKING:
    from cnnclinic.config import Config

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train CNN image classifiers, diagnose training pathologies and cure them.",
)
# Under torchrun every process runs the command; only rank 0 talks (errors still come from any rank).
console = Console(quiet=os.environ.get("RANK", "0") != "0")
err_console = Console(stderr=True)


# Options several commands share, declared once.
DataOption = Annotated[
    str | None, typer.Option(help="Image folder (one sub-folder per class), synthetic-fish or digits.")
]
GroupsOption = Annotated[
    Path | None, typer.Option(help="CSV giving each image a group (e.g. its video); a group never spans splits.")
]
GroupColumnOption = Annotated[str | None, typer.Option(help="The column of --groups that holds the group.")]
ConfigOption = Annotated[Path | None, typer.Option(help="YAML config file.")]


# --- train, evaluate, predict, lr-find ------------------------------------------------------------
# Heavy modules (torch, the trainer) are imported inside the commands so `--help` stays fast.


def _config_from_options(
    config: Path | None, overrides: list[str] | None, data: str | None, epochs: int | None = None,
    groups: Path | None = None, group_column: str | None = None,
) -> Config:
    """The config file (or defaults), then --set overrides, then the explicit options (which win)."""
    from cnnclinic.config import load_config

    cfg = load_config(config, overrides or [])
    options = {
        "data.source": data,
        "train.epochs": epochs,
        "data.groups_csv": str(groups) if groups is not None else None,
        "data.group_column": group_column,
    }
    return cfg.with_overrides({key: value for key, value in options.items() if value is not None})


@app.command("train")
def train_command(
    data: DataOption = None,
    out: Annotated[Path | None, typer.Option(help="Run directory to write.")] = None,
    config: ConfigOption = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Config override key=value (repeatable), e.g. model.activation=elu."),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Number of epochs (train.epochs).")] = None,
    groups: GroupsOption = None,
    group_column: GroupColumnOption = None,
    resume: Annotated[Path | None, typer.Option(help="Continue this run directory from its last checkpoint.")] = None,
    auto_repair: Annotated[
        bool,
        typer.Option(
            "--auto-repair",
            help=(
                "When the doctor names a pathology, apply its cures, verify them and keep what worked "
                "(writes treatment.json)."
            ),
        ),
    ] = False,
    max_attempts: Annotated[
        int | None, typer.Option(help="Most cures --auto-repair tries (repair.max_attempts, default 4).")
    ] = None,
) -> None:
    """Train a classifier, watched by the doctor, and write a run directory."""
    if resume is not None and (auto_repair or max_attempts is not None):
        raise UserError("--auto-repair starts a new run; it cannot be combined with --resume")
    if resume is not None:
        if config is not None:
            raise UserError(
                "--resume uses the run's own config.yaml; drop --config (use --set or --epochs to change it)"
            )
        if out is not None and out.resolve() != resume.resolve():
            raise UserError("--resume continues the run in place; drop --out or give the same folder")
        if not (resume / "config.yaml").is_file():
            raise UserError(f"--resume {resume}: not a cnnclinic run directory (no config.yaml)")
        config, out = resume / "config.yaml", resume
    elif out is None or data is None:
        raise UserError("train needs --data (a folder, synthetic-fish or digits) and --out (the run directory)")
    cfg = _config_from_options(config, set_, data, epochs, groups, group_column)
    if cfg.data.groups_csv is not None and not Path(cfg.data.groups_csv).is_file():
        raise UserError(f"--groups: file not found: {cfg.data.groups_csv}")

    repair = {"repair.enabled": True if auto_repair else None, "repair.max_attempts": max_attempts}
    cfg = cfg.with_overrides({key: value for key, value in repair.items() if value is not None})

    if cfg.repair.enabled and "WORLD_SIZE" in os.environ:
        raise UserError("--auto-repair moves attempt folders around and runs in one process: start it without torchrun")
    if cfg.repair.enabled and resume is None:
        from cnnclinic.repair import auto_repair as repair_run

        result = repair_run(cfg, out, console=console).run
    else:
        from cnnclinic.training.distributed import finish_distributed
        from cnnclinic.training.trainer import train

        result = train(cfg, out, console=console, resume=resume is not None)
        finish_distributed()
    if result.best_epoch is not None:
        console.print(f"best val accuracy {result.best_val_acc:.3f} at epoch {result.best_epoch}")
    count = len(result.findings)
    console.print(f"{count} finding{'' if count == 1 else 's'}; run written to [bold]{result.run_dir}[/]")


@app.command("evaluate")
def evaluate_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `cnnclinic train`.")],
    data: Annotated[Path | None, typer.Option(help="Image folder (one sub-folder per class) to evaluate on.")] = None,
) -> None:
    """Accuracy, per-class precision/recall/F1/AUC and the confusion matrix of a run's best weights."""
    if data is None:
        raise UserError("evaluate needs --data (an image folder with one sub-folder per class)")
    from rich.table import Table

    from cnnclinic.training.trainer import evaluate_folder

    evaluation = evaluate_folder(run_dir, data, console=console)
    metrics, names = evaluation.metrics, evaluation.class_names
    if evaluation.skipped:
        console.print(f"[yellow]{len(evaluation.skipped)} unreadable files skipped[/]")
    per_class = Table(title=f"accuracy {metrics.accuracy:.3f}   macro AUC "
                      + (f"{metrics.macro_auc:.3f}" if metrics.macro_auc is not None else "n/a"), title_justify="left")
    for column in ("class", "precision", "recall", "F1", "AUC", "images"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for name, m in metrics.per_class.items():
        auc = f"{m.auc:.3f}" if m.auc is not None else "n/a"
        per_class.add_row(name, f"{m.precision:.3f}", f"{m.recall:.3f}", f"{m.f1:.3f}", auc, str(m.support))
    console.print(per_class)
    confusion = Table(title="confusion matrix (rows: true class, columns: predicted)", title_justify="left")
    confusion.add_column("")
    for name in names:
        confusion.add_column(name, justify="right")
    for name, row in zip(names, metrics.confusion):
        confusion.add_row(name, *(str(n) for n in row))
    console.print(confusion)


@app.command("predict")
def predict_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `cnnclinic train`.")],
    images: Annotated[list[Path], typer.Argument(help="Image files to classify.")],
    top_k: Annotated[int, typer.Option(help="How many classes to show per image.")] = 3,
) -> None:
    """The top-k classes, with probabilities, of each image."""
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    from cnnclinic.training.trainer import load_images, load_trained_model, predict_probs

    trained = load_trained_model(run_dir)
    dataset, unreadable = load_images(images, trained.cfg.data.image_size)
    if len(dataset):
        probs = predict_probs(trained.model, dataset)
        k = min(top_k, len(trained.class_names))
        for path, row in zip(dataset.paths, probs):
            best = row.argsort()[::-1][:k]
            ranked = ", ".join(f"{trained.class_names[i]} {row[i]:.3f}" for i in best)
            console.print(f"{path}: {ranked}", highlight=False, soft_wrap=True)
    if unreadable:
        raise UserError("cannot read " + "; ".join(f"{s.path} ({s.reason})" for s in unreadable))


@app.command("lr-find")
def lr_find_command(
    data: DataOption = None,
    out: Annotated[Path, typer.Option(help="Where to save the loss-vs-learning-rate plot.")] = Path("lr_find.png"),
    config: ConfigOption = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Config override key=value (repeatable).")] = None,
    steps: Annotated[
        int, typer.Option(help="Mini-batches to try, the LR growing exponentially from 1e-7 to 10.")
    ] = 100,
) -> None:
    """Smith's learning-rate range test: suggests train.lr for this data, model and optimizer."""
    cfg = _config_from_options(config, set_, data)
    from cnnclinic.training.trainer import find_lr

    result = find_lr(cfg, out, console=console, num_steps=steps)
    console.print(f"suggested learning rate [bold]{result.suggested_lr:.2g}[/] ({result.reason})", highlight=False)
    console.print(f"plot saved to {out}; train with:  --set train.lr={result.suggested_lr:.2g}", highlight=False)


# --- inspect (the data doctor) --------------------------------------------------------------------


@app.command("inspect")
def inspect_command(
    data: DataOption = None,
    groups: GroupsOption = None,
    group_column: GroupColumnOption = None,
    run: Annotated[
        Path | None,
        typer.Option(help="A run directory: check labels against its out-of-sample (validation) predictions."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Folder to write inspection.json into.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config file (its data section is used).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Config override key=value (repeatable), e.g. data.image_size=64."),
    ] = None,
) -> None:
    """The data doctor: leakage between splits, suspicious labels, imbalance, small classes, image quality."""
    if data is None and config is None:
        raise UserError("inspect needs --data (a folder, synthetic-fish or digits) or --config")
    cfg = _config_from_options(config, set_, data, None, groups, group_column)
    from cnnclinic.data import load_data
    from cnnclinic.datadoctor import inspect_data
    from cnnclinic.datadoctor.render import print_inspection

    report = inspect_data(load_data(cfg.data, console=console), model_run=run)
    print_inspection(report, console)
    if out is not None:
        console.print(f"inspection written to [bold]{report.write(out)}[/]")


# --- report, compare ------------------------------------------------------------------------------


@app.command("report")
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `cnnclinic train`.")],
) -> None:
    """Write RUN_DIR/report.html: the verdict, its evidence and the training curves on one page."""
    from cnnclinic.report import write_report

    path = write_report(run_dir, console=console)
    console.print(f"report written to [bold]{path}[/]")


@app.command("compare")
def compare_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="Two or more run directories.")],
    out: Annotated[Path, typer.Option(help="HTML file to write.")] = Path("compare.html"),
) -> None:
    """Compare runs side by side: key numbers, findings, overlaid curves, model size vs accuracy."""
    from cnnclinic.report import write_comparison

    path = write_comparison(run_dirs, out, console=console)
    console.print(f"comparison written to [bold]{path}[/]")


# --- make-fish ------------------------------------------------------------------------------------


def _parse_class_counts(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(
            f"--class-counts expects whole numbers separated by commas (like 200,50,50), got {text!r}"
        ) from None


@app.command("make-fish")
def make_fish_command(
    out_dir: Annotated[Path, typer.Argument(help="New folder to write (one sub-folder per species).")],
    species: Annotated[
        int | None, typer.Option(help="Number of species, 2-12 (default 5, or as many as --class-counts).")
    ] = None,
    per_class: Annotated[int, typer.Option(help="Images per species.")] = 120,
    size: Annotated[int, typer.Option(help="Image width and height in pixels (16-512).")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed writes the same files, byte for byte.")] = 0,
    class_counts: Annotated[
        str | None, typer.Option(help="Images per species, comma separated (e.g. 200,50,50): an imbalanced set.")
    ] = None,
    hard_species: Annotated[
        int | None, typer.Option(help="Species K becomes 'species_x', a twin of species 0 with other fin colour only.")
    ] = None,
    hard_blur: Annotated[
        float, typer.Option(help="Extra Gaussian blur (pixels at 64 px) on the hard species' photos.")
    ] = 0.0,
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


# --- demo (the five case studies) -----------------------------------------------------------------


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option(help="Folder for results.json and every run directory.")] = Path("runs/demo"),
    quick: Annotated[bool, typer.Option("--quick", help="Smaller data and fewer epochs (about 2 minutes).")] = False,
    data: Annotated[
        Path | None, typer.Option(help="Your image folder (one sub-folder per class) instead of synthetic fish.")
    ] = None,
    groups: Annotated[
        Path | None, typer.Option(help="CSV giving each image of --data a group (e.g. its video).")
    ] = None,
    group_column: GroupColumnOption = None,
    case: Annotated[list[str] | None, typer.Option(help="Run only this case (repeatable); default: all five.")] = None,
) -> None:
    """The five case studies: each pathology reproduced (sick run), named by the doctor and cured (treated run)."""
    if data is None and (groups is not None or group_column is not None):
        raise UserError("--groups and --group-column describe your own photos; give --data too")
    if data is not None and not data.is_dir():
        raise UserError(f"--data: not a folder: {data}")
    if groups is not None and not groups.is_file():
        raise UserError(f"--groups: file not found: {groups}")
    if (groups is None) != (group_column is None):
        raise UserError("--groups and --group-column go together (the CSV and the column that holds the group)")
    from cnnclinic.demo import DemoData, run_demo, select_scenarios

    scenarios = select_scenarios(case or [])
    run_demo(out, quick=quick, data=DemoData(data, groups, group_column), scenarios=scenarios, console=console)


def main() -> None:
    try:
        # standalone_mode=False hands typer's usage errors to us, so they too print as one line.
        result = app(standalone_mode=False)
    except typer.TyperException as error:
        ctx = getattr(error, "ctx", None)
        if ctx is not None and type(error).__name__ == "NoArgsIsHelpError":
            typer.echo(ctx.get_help())
            sys.exit(0)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        _fail(f"{error.format_message()}{hint}", error.exit_code)
    except UserError as error:
        _fail(str(error), error.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)


def _fail(message: str, exit_code: int) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
