"""Train/val/test splits: stratified by class, and group-aware so no video (or patient, or day) leaks.

Both splitters work on *units*: a unit is one image, or one group of images when a groups CSV is
given. After scikit-learn has proposed a split, a small repair step makes sure every class keeps
training data and every class with at least two units is also seen at validation.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from cnnclinic.errors import UserError


def cap_per_class(targets: np.ndarray, max_per_class: int | None, seed: int) -> np.ndarray:
    """Sorted indices keeping at most ``max_per_class`` images of each class (a seeded, repeatable draw)."""
    if max_per_class is None:
        return np.arange(len(targets))
    rng = np.random.default_rng(seed)
    kept = []
    for cls in np.unique(targets):
        members = np.flatnonzero(targets == cls)
        kept.append(members if len(members) <= max_per_class else rng.choice(members, max_per_class, replace=False))
    return np.sort(np.concatenate(kept)) if kept else np.arange(0)


def _sniff_delimiter(header: str) -> str:
    return max([",", ";", "\t"], key=header.count)


def _normalise_image_path(text: str) -> str:
    return text.strip().replace("\\", "/").removeprefix("./")


def read_groups(csv_path: Path, image_column: str, group_column: str) -> dict[str, str]:
    """``{image path relative to the data folder: group}`` from a ``,`` or ``;`` separated CSV."""
    if not csv_path.is_file():
        raise UserError(f"groups CSV not found: {csv_path}")
    try:
        return _read_group_rows(csv_path, image_column, group_column)
    except UnicodeDecodeError:
        raise UserError(f"groups CSV {csv_path} is not UTF-8 text (save it as UTF-8 CSV)") from None
    except csv.Error as error:
        raise UserError(f"groups CSV {csv_path} is not a readable CSV ({error})") from None


def _read_group_rows(csv_path: Path, image_column: str, group_column: str) -> dict[str, str]:
    with csv_path.open(encoding="utf-8-sig", newline="") as stream:
        header = stream.readline()
        stream.seek(0)
        reader = csv.DictReader(stream, delimiter=_sniff_delimiter(header))
        columns = [name.strip() for name in reader.fieldnames or []]
        for column, key in ((image_column, "data.image_column"), (group_column, "data.group_column")):
            if column not in columns:
                raise UserError(
                    f"groups CSV {csv_path} has no column '{column}' ({key}); its columns are: {', '.join(columns)}"
                )
        reader.fieldnames = columns
        return {
            _normalise_image_path(row[image_column]): row[group_column].strip()
            for row in reader
            if row.get(image_column) and row.get(group_column) and row[group_column].strip()
        }


def groups_for(files: list[str], groups: dict[str, str], csv_path: Path) -> list[str]:
    """The group of every file; a UserError saying how many (and which) files the CSV does not cover."""
    missing = [name for name in files if name not in groups]
    if missing:
        examples = ", ".join(missing[:3])
        raise UserError(
            f"groups CSV {csv_path} does not cover {len(missing)} of {len(files)} images (e.g. {examples}); "
            "paths must be relative to the data folder, like class/image.png"
        )
    return [groups[name] for name in files]


def _repair(targets: np.ndarray, units: np.ndarray, holdout: np.ndarray) -> np.ndarray:
    """Move whole units so every class stays in training and every class with >= 2 units is held out too."""
    holdout = holdout.copy()
    for _ in range(3):  # a unit holding several classes can undo an earlier move; a few passes settle it
        changed = False
        for cls in np.unique(targets):
            of_class = targets == cls
            class_units, sizes = np.unique(units[of_class], return_counts=True)
            held = np.isin(class_units, units[holdout & of_class])
            if len(class_units) >= 2 and not held.any():
                holdout[units == class_units[np.argmin(sizes)]] = True
                changed = True
            elif held.all():
                holdout[units == class_units[held][np.argmin(sizes[held])]] = False
                changed = True
        if not changed:
            break
    return holdout


def _stratified_holdout(targets: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    # A class with a single image cannot be on both sides: it stays in training.
    splittable = np.flatnonzero(np.bincount(targets)[targets] >= 2)
    n_classes = len(np.unique(targets[splittable]))
    # At least one image per class held out, at least one per class kept.
    n_holdout = min(max(round(fraction * len(splittable)), n_classes), len(splittable) - n_classes)
    holdout = np.zeros(len(targets), dtype=bool)
    if n_classes >= 2 and n_holdout >= n_classes:
        _, picked = train_test_split(
            splittable, test_size=n_holdout, stratify=targets[splittable], random_state=seed
        )
        holdout[picked] = True
    return _repair(targets, np.arange(len(targets)), holdout)


def _group_holdout(targets: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    units = np.unique(groups, return_inverse=True)[1]
    n_units = units.max() + 1
    n_splits = int(min(max(round(1 / fraction), 2), n_units))
    if n_splits < 2:
        return np.zeros(len(targets), dtype=bool)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    best, best_score = None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has fewer members than n_splits"
        for _, fold in splitter.split(np.zeros(len(targets)), targets, units):
            holdout = np.isin(np.arange(len(targets)), fold)
            repaired = _repair(targets, units, holdout)
            score = (int((repaired != holdout).sum()), abs(repaired.mean() - fraction))
            if best_score is None or score < best_score:
                best, best_score = repaired, score
    return best


def holdout_split(
    indices: np.ndarray, targets: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (kept, held out), about ``fraction`` held out, stratified and group-disjoint."""
    sub_targets = np.unique(targets[indices], return_inverse=True)[1]
    if groups is None:
        holdout = _stratified_holdout(sub_targets, fraction, seed)
    else:
        holdout = _group_holdout(sub_targets, groups[indices], fraction, seed)
    return indices[~holdout], indices[holdout]
