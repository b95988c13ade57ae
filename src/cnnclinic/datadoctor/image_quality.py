"""The ``image_quality`` data check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnclinic.datadoctor.base import DataCheck, register
from cnnclinic.datadoctor.view import DataView
from cnnclinic.doctor.finding import Finding, Prescription


def _others(stats: dict[str, dict[str, Any]], name: str, key: str) -> float | None:
    values = [row[key] for other, row in stats.items() if other != name and row[key] is not None and row["images"]]
    values = [v for v in values if np.isfinite(v)]
    return float(np.median(values)) if values else None


@register
class ImageQuality(DataCheck):
    """A class whose photos differ sharply from the other classes' photos: blur, light, size, colour.

    Theory: when one class is blurrier, darker, smaller or greyscale, the model can learn that
    property instead of the species (a shortcut), and the class lags where the property does not
    hold; a blurry class also simply carries less detail (the analysis's "blurry images" cause of a
    lagging class). Exact duplicates inside a class inflate its count without adding information.

    Evidence: per aspect, the class's median and the median of the other classes' medians.
    Blur is the variance of the Laplacian of the grey image over content pixels (padding ignored).

    Thresholds: blur below ``blur_ratio`` x the others; brightness more than ``brightness_gap`` grey
    levels away; contrast below ``contrast_ratio`` x or above 1/``contrast_ratio`` x the others;
    ``grayscale_share`` or more greyscale photos while the others have under a tenth of that; shorter
    side below ``size_ratio`` x the others; aspect ratio off by a factor ``aspect_factor``; any exact
    duplicate within the class.

    Prescriptions: collect better photos of the class (sharper, better lit, full size) or remove the
    worst; ``data.augment.strong_classes=[class]`` so training sees it under more variation; remove
    the exact duplicates.
    """

    id = "image_quality"

    @dataclass(frozen=True)
    class Thresholds:
        blur_ratio: float = field(default=0.5, metadata={"help": "sharpness vs the other classes"})
        brightness_gap: float = field(default=50.0, metadata={"help": "grey levels (0-255) from the others"})
        contrast_ratio: float = field(default=0.5, metadata={"help": "contrast vs the other classes"})
        grayscale_share: float = field(default=0.5, metadata={"help": "share of greyscale photos"})
        size_ratio: float = field(default=0.5, metadata={"help": "shorter side vs the other classes"})
        aspect_factor: float = field(default=1.5, metadata={"help": "aspect ratio vs the other classes"})

    def _aspects(self, stats: dict[str, dict[str, Any]], name: str, t: Thresholds) -> dict[str, dict[str, Any]]:
        row = stats[name]
        found: dict[str, dict[str, Any]] = {}

        def note(aspect: str, key: str, words: str) -> None:
            found[aspect] = {"class": row[key], "others": _others(stats, name, key), "words": words}

        blur, brightness, contrast = (_others(stats, name, key) for key in ("blur", "brightness", "contrast"))
        if blur and row["blur"] < t.blur_ratio * blur:
            note("blurry", "blur", f"blurry (sharpness {row['blur']:.0f} vs {blur:.0f} for the others)")
        if brightness is not None and abs(row["brightness"] - brightness) > t.brightness_gap:
            side = "darker" if row["brightness"] < brightness else "brighter"
            note(side, "brightness", f"{side} (mean grey {row['brightness']:.0f} vs {brightness:.0f})")
        if contrast and not t.contrast_ratio <= row["contrast"] / contrast <= 1 / t.contrast_ratio:
            note("contrast", "contrast", f"of unusual contrast ({row['contrast']:.0f} vs {contrast:.0f})")
        grey = _others(stats, name, "grayscale_share")
        if grey is not None and row["grayscale_share"] >= t.grayscale_share and grey < row["grayscale_share"] / 10:
            note("grayscale", "grayscale_share", f"mostly greyscale ({row['grayscale_share']:.0%} vs {grey:.0%})")
        side = _others(stats, name, "short_side")
        if side and row["short_side"] is not None and row["short_side"] < t.size_ratio * side:
            note("small", "short_side", f"small (shorter side {row['short_side']:.0f} px vs {side:.0f})")
        aspect = _others(stats, name, "aspect_ratio")
        if aspect and row["aspect_ratio"] is not None:
            factor = max(row["aspect_ratio"] / aspect, aspect / row["aspect_ratio"])
            if factor > t.aspect_factor:
                note("aspect", "aspect_ratio", f"of another shape (aspect {row['aspect_ratio']:.2f} vs {aspect:.2f})")
        if row["exact_duplicates"]:
            found["duplicates"] = {
                "class": row["exact_duplicates"], "words": f"{row['exact_duplicates']} exact duplicate(s)"
            }
        return found

    def check(self, view: DataView, thresholds: Thresholds) -> list[Finding]:
        stats = view.class_statistics()
        findings = []
        for name in view.class_names:
            if not stats[name]["images"]:
                continue
            aspects = self._aspects(stats, name, thresholds)
            if not aspects:
                continue
            words = ", ".join(a.pop("words") for a in aspects.values())
            prescriptions = [Prescription([], f"Collect better {name} photos, or remove the worst ones.")]
            if set(aspects) - {"duplicates"}:
                prescriptions.append(
                    Prescription(
                        [f"data.augment.strong_classes=[{name}]"],
                        f"Augment {name} harder so the model cannot lean on how its photos look.",
                    )
                )
            if "duplicates" in aspects:
                prescriptions.append(Prescription([], f"Remove the exact duplicates within {name}."))
            findings.append(
                self.finding(
                    severity="warning" if set(aspects) - {"duplicates"} else "info",
                    subject=name,
                    evidence={"aspects": aspects, "class_stats": stats[name]},
                    explanation=(
                        f"{name}'s photos differ from the other classes': {words}. The model may learn that "
                        "instead of the species, and lag where it does not hold."
                    ),
                    prescriptions=prescriptions,
                )
            )
        return findings
