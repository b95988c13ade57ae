"""The ``label_issues`` data check."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cleanlab.filter import find_label_issues

from cnnclinic.datadoctor.base import DataCheck, register
from cnnclinic.datadoctor.view import DataView
from cnnclinic.doctor.finding import Finding, Prescription
from cnnclinic.errors import UserError


@dataclass(frozen=True)
class OutOfSamplePredictions:
    """A trained model's class probabilities for images it did not train on (a run's validation set)."""

    probs: np.ndarray  # N x K
    targets: np.ndarray  # N, the labels the run trained with
    paths: list[str]
    source: str

    @classmethod
    def from_run(cls, run_dir: str | Path, num_classes: int) -> OutOfSamplePredictions:
        path = Path(run_dir) / "val_predictions.npz"
        if not path.is_file():
            raise UserError(f"--run: {path} not found (a finished `cnnclinic train` run writes it)")
        try:
            with np.load(path, allow_pickle=False) as stored:
                probs, targets, paths = stored["probs"], stored["targets"], [str(p) for p in stored["paths"]]
        except (OSError, ValueError, KeyError) as error:
            raise UserError(f"--run: {path} is not a cnnclinic predictions file ({error})") from None
        if probs.ndim != 2 or probs.shape[1] != num_classes or len(targets) != len(probs):
            raise UserError(
                f"--run: {path} has predictions for {probs.shape[-1]} classes; this data set has {num_classes}"
            )
        return cls(probs.astype(np.float64), targets.astype(np.int64), paths, f"{path} (validation images)")


@register
class LabelIssues(DataCheck):
    """Images whose label disagrees with a trained model's out-of-sample predictions.

    Theory (confident learning, cleanlab): from the model's predicted probabilities on images it did
    not train on, estimate how often each class is mistaken for each other class, and flag the
    images whose given label the model finds least plausible beyond that noise. Only out-of-sample
    predictions are honest, so this check uses a run's ``val_predictions.npz``: it covers the
    validation images (with ``cnnclinic inspect --run RUN_DIR``, and after training). A quick
    cross-validated pixel model was tried for the whole data set and rejected: on the real fish it
    flags 16-50 % of all images, far too many to be labels.

    Evidence: per class, the suspicious files with the predicted class and its probability; the
    number of images checked and the model's accuracy on them.

    Thresholds: cleanlab's, and the model must be sure of the class it sees instead: its probability at
    least ``min_confidence``. A model's own mistakes are mostly unsure ones, a wrong label's are sure ones
    once the model has learned the class. Measured on the validation predictions of the demo's and the
    repair benchmark's runs on synthetic fish: with clean labels (12 models at 60-97% validation accuracy)
    cleanlab alone flagged 0-27 images per 100, all labelled right; with confidence 0.8 or more 0-7 per
    100 remain. With a fifth of the labels wrong (``data.synthetic.mislabelled=0.2``: 53 of 250 validation
    photos; 6 models at 62-70%) cleanlab alone flagged 58-78 at 58-79% precision; 22-43 remain at 60-91%.
    Skipped when the model's accuracy on the checked images is below ``min_accuracy`` (its disagreements
    would say more about the model than the labels).

    Prescription: look at the listed files and relabel (move to the right class folder) or remove them.
    """

    id = "label_issues"

    @dataclass(frozen=True)
    class Thresholds:
        min_accuracy: float = field(default=0.5, metadata={"help": "model accuracy needed to judge labels"})
        listed: int = field(default=20, metadata={"help": "files listed per class"})
        min_confidence: float = field(
            default=0.8, metadata={"help": "model's probability of the class it sees instead"}
        )

    def check(self, view: DataView, thresholds: Thresholds) -> list[Finding]:
        predictions = view.predictions
        if predictions is None or len(predictions.targets) == 0:
            return []
        accuracy = float((predictions.probs.argmax(1) == predictions.targets).mean())
        view.notes["label_check"] = {"checked": len(predictions.targets), "model_accuracy": accuracy}
        if accuracy < thresholds.min_accuracy or len(np.unique(predictions.targets)) < 2:
            view.notes["label_check"]["skipped"] = "model too weak to judge labels"
            return []
        ranked = find_label_issues(predictions.targets, predictions.probs, return_indices_ranked_by="self_confidence")
        seen = predictions.probs.argmax(1)  # the class the model sees in each image
        flagged = [
            index for index in ranked
            if seen[index] != predictions.targets[index] and predictions.probs[index].max() >= thresholds.min_confidence
        ]
        names = view.class_names
        per_class: dict[str, list[dict]] = {}
        for index in flagged:
            given, predicted = int(predictions.targets[index]), int(seen[index])
            per_class.setdefault(names[given], []).append(
                {
                    "path": predictions.paths[index],
                    "predicted": names[predicted],
                    "probability": float(predictions.probs[index, predicted]),
                }
            )
        view.notes["label_issues"] = per_class
        if not per_class:
            return []
        counts = Counter({name: len(items) for name, items in per_class.items()})
        summary = ", ".join(f"{n} {name}" for name, n in counts.most_common())
        return [
            self.finding(
                severity="warning",
                evidence={
                    "suspicious": len(flagged),
                    "checked": len(predictions.targets),
                    "model_accuracy": accuracy,
                    "source": predictions.source,
                    "per_class": {name: items[: thresholds.listed] for name, items in per_class.items()},
                },
                explanation=(
                    f"{len(flagged)} of {len(predictions.targets)} checked images ({summary}) are labelled "
                    f"against what a trained model sees with {thresholds.min_confidence:.0%} confidence or "
                    "more: likely wrong labels, which teach the model contradictions and cap its accuracy."
                ),
                prescriptions=[Prescription([], f"Look at these {len(flagged)} files and relabel or remove them.")],
            )
        ]
