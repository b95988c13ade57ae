"""Symptom detectors, one file each. Every module in this package is imported so that its ``@register``
runs: adding a symptom means adding one file."""

from __future__ import annotations

import importlib
import pkgutil

from cnnclinic.doctor.symptoms.base import SYMPTOMS, Symptom, register, resolve_thresholds

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SYMPTOMS", "Symptom", "register", "resolve_thresholds"]
