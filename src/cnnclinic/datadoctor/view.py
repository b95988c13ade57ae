"""What every data check reads: all splits of a DataBundle side by side, measured once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cnnclinic.data.folder import SkippedFile
from cnnclinic.datadoctor.features import ImageFeatures, TwinMetric, compute_features

SPLITS = ("train", "val", "test")


@dataclass
class DataView:
    """Image i (over train, then val, then test) is ``paths[i]`` of class ``targets[i]`` in ``split[i]``."""

    class_names: list[str]
    split: np.ndarray
    targets: np.ndarray
    paths: list[str]
    grouped: bool
    skipped: list[SkippedFile]
    features: ImageFeatures
    twin_metric: TwinMetric
    # A trained model's out-of-sample predictions (``label_issues``); None before any model exists.
    predictions: Any = None
    # Filled by checks that want to share their measurement with class_data_facts (e.g. label issues).
    notes: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_bundle(cls, bundle: Any) -> DataView:
        datasets = [(name, getattr(bundle, name)) for name in SPLITS if getattr(bundle, name, None) is not None]
        images = [dataset.images for _, dataset in datasets]
        features = compute_features(torch.cat(images))
        return cls(
            class_names=list(bundle.class_names),
            split=np.concatenate([np.full(len(dataset), name) for name, dataset in datasets]),
            targets=np.concatenate([dataset.targets.numpy() for _, dataset in datasets]),
            paths=[path for _, dataset in datasets for path in dataset.paths],
            grouped=all(dataset.groups is not None for _, dataset in datasets),
            skipped=list(bundle.skipped),
            features=features,
            twin_metric=TwinMetric(features),
        )

    def indices(self, split: str, class_index: int | None = None) -> np.ndarray:
        mask = self.split == split
        if class_index is not None:
            mask &= self.targets == class_index
        return np.flatnonzero(mask)

    def counts(self, split: str) -> np.ndarray:
        return np.bincount(self.targets[self.split == split], minlength=len(self.class_names))

    def original_sizes(self) -> np.ndarray:
        """Width x height of every image file as stored (header only, no decoding); NaN when unknown."""
        sizes = np.full((len(self.paths), 2), np.nan)
        for index, path in enumerate(self.paths):
            try:
                with Image.open(Path(path)) as image:
                    sizes[index] = image.size
            except (OSError, ValueError):
                continue  # built-in sources (digits) have no files; corrupt files were skipped already
        return sizes

    def class_statistics(self) -> dict[str, dict[str, Any]]:
        """Counts and image-quality medians of every class (all splits together), measured once."""
        if "class_statistics" in self.notes:
            return self.notes["class_statistics"]
        sizes = self.original_sizes()
        features = self.features
        stats: dict[str, dict[str, Any]] = {}
        for index, name in enumerate(self.class_names):
            members = np.flatnonzero(self.targets == index)
            known = members[~np.isnan(sizes[members, 0])]
            digests = [features.digests[i] for i in members]
            row: dict[str, Any] = {split: int((self.split[members] == split).sum()) for split in SPLITS}
            row |= {
                "images": len(members),
                "blur": _median(features.blur[members]),
                "brightness": _median(features.brightness[members]),
                "contrast": _median(features.contrast[members]),
                "grayscale_share": float(features.grayscale[members].float().mean()) if len(members) else float("nan"),
                "exact_duplicates": len(digests) - len(set(digests)),
                "short_side": float(np.median(sizes[known].min(1))) if len(known) else None,
                "aspect_ratio": float(np.median(sizes[known, 0] / sizes[known, 1])) if len(known) else None,
            }
            stats[name] = row
        self.notes["class_statistics"] = stats
        return stats


def _median(values: torch.Tensor) -> float:
    return float(values.median()) if len(values) else float("nan")
