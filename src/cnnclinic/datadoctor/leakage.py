"""The ``data_leakage`` data check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cnnclinic.datadoctor.base import DataCheck, register
from cnnclinic.datadoctor.features import NEAR_TWIN_DISTANCE
from cnnclinic.datadoctor.view import DataView
from cnnclinic.doctor.finding import Finding, Prescription


def twin_shares(view: DataView, near_twin_distance: float, examples: int) -> dict[str, dict[str, Any]]:
    """For val and test: how many images have a near-twin (or an exact copy) in train, with examples."""
    train = view.indices("train")
    train_digests = {view.features.digests[i] for i in train}
    shares = {}
    for split in ("val", "test"):
        held_out = view.indices(split)
        if len(held_out) == 0 or len(train) == 0:
            continue
        nearest, distance_t = view.twin_metric.nearest(torch.from_numpy(held_out), torch.from_numpy(train))
        distance = distance_t.numpy()
        exact = np.array([view.features.digests[i] in train_digests for i in held_out])
        twins = (distance <= near_twin_distance) | exact
        closest = [k for k in np.argsort(distance, kind="stable") if twins[k]][:examples]
        shares[split] = {
            "images": len(held_out),
            "with_train_twin": int(twins.sum()),
            "share": float(twins.mean()),
            "exact_copies": int(exact.sum()),
            "median_nearest_distance": float(np.median(distance)),
            "examples": [
                {
                    "held_out": view.paths[held_out[k]],
                    "train": view.paths[int(nearest[k])],
                    "distance": float(distance[k]),
                }
                for k in closest
            ],
        }
    return shares


@register
class DataLeakage(DataCheck):
    """Validation (or test) images that have a near-twin in the training set.

    Theory: when frames of one video, bursts of one photo session or copied files land on both sides
    of a split, the model is graded on images it has practically seen, and validation accuracy
    flatters it. On the real fish photos a small CNN reached about 0.76 validation accuracy with a
    random split and about 0.34 with a split that keeps each video on one side.

    Evidence: the share of validation images whose nearest training image is closer than the
    near-twin distance (scale-free, calibrated on the real fish; see ``datadoctor.features``), the same
    for test, exact copies across splits, and the closest example pairs.

    Thresholds: share >= ``share`` (the video-grouped fish split measures about 0.01, the random split
    about 0.5), or any exact copy across splits.

    Prescriptions: split by a grouping column (``--groups CSV --group-column NAME``, i.e.
    ``data.groups_csv`` / ``data.group_column``: video, session, patient, day), or de-duplicate.
    """

    id = "data_leakage"

    @dataclass(frozen=True)
    class Thresholds:
        share: float = field(default=0.10, metadata={"help": "share of val images with a near-twin in train"})
        near_twin_distance: float = field(default=NEAR_TWIN_DISTANCE, metadata={"help": "twin distance cut"})
        examples: int = field(default=5, metadata={"help": "example pairs listed in the evidence"})

    def check(self, view: DataView, thresholds: Thresholds) -> list[Finding]:
        shares = twin_shares(view, thresholds.near_twin_distance, thresholds.examples)
        view.notes["leakage"] = shares
        leaking = {
            split: s for split, s in shares.items() if s["share"] >= thresholds.share or s["exact_copies"] > 0
        }
        if not leaking:
            return []
        held_out = ", ".join(
            f"{s['with_train_twin']} of {s['images']} {split} images ({s['share']:.0%})" for split, s in leaking.items()
        )
        if view.grouped:
            split_advice = Prescription(
                [],
                "The split is already grouped, yet twins cross it: photos of one scene carry different group "
                "names. Merge those groups in the CSV, or remove the listed twins.",
            )
        else:
            split_advice = Prescription(
                [],
                "Split by the column that ties near-identical photos together (video, session, day): "
                "--groups CSV --group-column NAME (data.groups_csv / data.group_column), e.g. "
                "--groups test-sample.csv --group-column video_name for the fish photos.",
            )
        return [
            self.finding(
                severity="warning",
                evidence={
                    "val_share_with_train_twin": shares.get("val", {}).get("share"),
                    "example_pairs": [
                        f"{pair['held_out']} ~ {pair['train']} ({pair['distance']:.3f})"
                        for s in leaking.values()
                        for pair in s["examples"][:2]
                    ],
                    "near_twin_distance": thresholds.near_twin_distance,
                    "grouped_split": view.grouped,
                    "splits": shares,
                },
                explanation=(
                    f"{held_out} have a near-twin in the training set, so validation grades the model on "
                    "images it has practically seen: its accuracy flatters it."
                ),
                prescriptions=[
                    split_advice,
                    Prescription([], "De-duplicate: keep one image of each twin pair (examples in the evidence)."),
                ],
            )
        ]
