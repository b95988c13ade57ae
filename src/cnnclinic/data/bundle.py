"""``load_data``: from ``data.*`` config to decoded, split, summarised data (a DataBundle)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from cnnclinic.config import DataConfig, SyntheticFishConfig
from cnnclinic.data.cache import cache_root, decode_folder
from cnnclinic.data.dataset import CachedImageDataset
from cnnclinic.data.digits import load_digit_images
from cnnclinic.data.folder import SkippedFile, scan_folder
from cnnclinic.data.splits import cap_per_class, groups_for, holdout_split, read_groups
from cnnclinic.data.synthetic import GENERATOR_VERSION, generate_synthetic_fish
from cnnclinic.errors import UserError

BUILTIN_SOURCES = ("synthetic-fish", "digits")


@dataclass
class DataBundle:
    train: CachedImageDataset
    val: CachedImageDataset
    test: CachedImageDataset | None
    class_names: list[str]
    skipped: list[SkippedFile] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def synthetic_fish_folder(cfg: SyntheticFishConfig, console: Console | None = None) -> Path:
    """The cached folder of fish generated from ``cfg``, drawing it first if this recipe is new."""
    recipe = json.dumps([GENERATOR_VERSION, cfg.model_dump(mode="json")], sort_keys=True)
    folder = cache_root() / "synthetic-fish" / hashlib.sha256(recipe.encode()).hexdigest()[:16]
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Draw into a private folder, then rename: a half-written data set is never visible.
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        generate_synthetic_fish(
            staging,
            species=cfg.species,
            per_class=cfg.per_class,
            size=cfg.size,
            seed=cfg.seed,
            class_counts=cfg.class_counts,
            hard_species=cfg.hard_species,
            hard_blur=cfg.hard_blur,
            mislabelled=cfg.mislabelled,
            console=console,
        )
        os.replace(staging, folder)
    except OSError:
        if not folder.is_dir():  # not another process that finished first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


@dataclass
class _Images:
    """Decoded images of one source before splitting."""

    images: torch.Tensor
    targets: np.ndarray
    files: list[str]  # relative to the folder (used for groups)
    paths: list[str]  # as shown to the user
    class_names: list[str]
    skipped: list[SkippedFile]


def _load_folder(root: Path, cfg: DataConfig, console: Console | None, what: str) -> _Images:
    scan = scan_folder(root, what)
    if len(scan.class_names) < 2:
        raise UserError(
            f"{what} {root} has only one class folder ({scan.class_names[0]}); a classifier needs at least 2"
        )
    if not scan.files:
        raise UserError(f"{what} {root} holds no files in its class folders ({', '.join(scan.class_names)})")
    decoded = decode_folder(scan, cfg.image_size, console=console)
    if not decoded.files:
        raise UserError(f"{what} {root} holds no readable images ({len(decoded.skipped)} files skipped)")
    counts = np.bincount(decoded.labels, minlength=len(scan.class_names))
    empty = [name for name, count in zip(scan.class_names, counts) if count == 0]
    if empty:
        raise UserError(f"{what} {root}: class folder {', '.join(map(repr, empty))} has no readable images")
    return _Images(
        images=decoded.images,
        targets=np.asarray(decoded.labels, dtype=np.int64),
        files=decoded.files,
        paths=[str(root / name) for name in decoded.files],
        class_names=scan.class_names,
        skipped=decoded.skipped,
    )


def _load_source(cfg: DataConfig, console: Console | None) -> tuple[_Images, Path | None]:
    if cfg.source == "digits":
        images, targets, paths, class_names = load_digit_images(cfg.image_size)
        return _Images(images, targets.numpy(), paths, paths, class_names, []), None
    if cfg.source == "synthetic-fish":
        root = synthetic_fish_folder(cfg.synthetic, console)
    else:
        root = Path(cfg.source).expanduser()
    return _load_folder(root, cfg, console, "data folder"), root


def _dataset(source: _Images, indices: np.ndarray, groups: np.ndarray | None) -> CachedImageDataset:
    picked = indices.tolist()
    return CachedImageDataset(
        source.images[torch.as_tensor(indices, dtype=torch.int64)],
        torch.as_tensor(source.targets[indices]),
        [source.paths[i] for i in picked],
        None if groups is None else [str(groups[i]) for i in picked],
    )


def _resolve_csv(csv: str, root: Path | None) -> Path:
    path = Path(csv).expanduser()
    if not path.is_absolute() and not path.exists() and root is not None and (root / path).exists():
        return root / path  # a CSV named relative to the data folder
    return path


def _check_same_classes(train: list[str], val: list[str], root: Path, val_root: Path) -> None:
    only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    if only_train or only_val:
        parts = [
            f"only in {folder}: {', '.join(names)}"
            for folder, names in ((root, only_train), (val_root, only_val))
            if names
        ]
        raise UserError(f"data.val_dir has other classes than the data folder ({'; '.join(parts)})")


def _summary_line(summary: dict, skipped: list[SkippedFile]) -> str:
    totals = {split: sum(counts.values()) for split, counts in summary["counts"].items()}
    splits = ", ".join(f"{split} {n}" for split, n in totals.items())
    line = (
        f"data: {sum(totals.values())} images of {len(summary['class_names'])} classes "
        f"from {summary['source']} ({splits})"
    )
    if skipped:
        line += f"; skipped {len(skipped)} unreadable files, e.g. {skipped[0].path} ({skipped[0].reason})"
    return line


def load_data(cfg: DataConfig, *, console: Console | None = None) -> DataBundle:
    """Load ``cfg.source``, decode every image once (disk-cached), split it and summarise it."""
    if cfg.source in BUILTIN_SOURCES and (cfg.val_dir or cfg.groups_csv):
        raise UserError(f"data.source={cfg.source} is built in: data.val_dir and data.groups_csv need a folder source")
    source, root = _load_source(cfg, console)
    skipped = list(source.skipped)

    groups = None
    if cfg.groups_csv:
        csv_path = _resolve_csv(cfg.groups_csv, root)
        mapping = read_groups(csv_path, cfg.image_column, cfg.group_column or "")
        groups = np.asarray(groups_for(source.files, mapping, csv_path))

    kept = cap_per_class(source.targets, cfg.max_per_class, cfg.split_seed)
    if cfg.val_dir:
        val_root = Path(cfg.val_dir).expanduser()
        val_source = _load_folder(val_root, cfg, console, "validation folder (data.val_dir)")
        _check_same_classes(source.class_names, val_source.class_names, root, val_root)
        skipped += val_source.skipped
        train_idx = kept
        val = _dataset(val_source, cap_per_class(val_source.targets, cfg.max_per_class, cfg.split_seed), None)
    else:
        train_idx, val_idx = holdout_split(kept, source.targets, groups, cfg.val_fraction, cfg.split_seed)
        val = _dataset(source, val_idx, groups)
    test = None
    if cfg.test_fraction > 0:
        # Test comes out of what is left for training, so val keeps exactly its share.
        share = cfg.test_fraction if cfg.val_dir else cfg.test_fraction / (1 - cfg.val_fraction)
        train_idx, test_idx = holdout_split(train_idx, source.targets, groups, share, cfg.split_seed)
        test = _dataset(source, test_idx, groups)
    train = _dataset(source, train_idx, groups)

    splits = {"train": train, "val": val} | ({"test": test} if test is not None else {})
    counts = {
        split: dict(zip(source.class_names, torch.bincount(data.targets, minlength=len(source.class_names)).tolist()))
        for split, data in splits.items()
    }
    group_counts = (
        {split: len(set(data.groups)) for split, data in splits.items() if data.groups is not None}
        if groups is not None
        else None
    )
    summary = {
        "source": str(root) if root is not None and cfg.source not in BUILTIN_SOURCES else cfg.source,
        "class_names": list(source.class_names),
        "counts": counts,
        "groups": group_counts,
        "skipped": len(skipped),
    }
    if console is not None:
        console.print(_summary_line(summary, skipped), markup=False, highlight=False, soft_wrap=True)
    return DataBundle(train, val, test, list(source.class_names), skipped, summary)
