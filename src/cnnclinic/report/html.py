"""Jinja2 rendering of the report pages and the number formatting they share."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

import cnnclinic
from cnnclinic.training.checkpoint import atomic_write_bytes

_ENVIRONMENT = Environment(
    loader=PackageLoader("cnnclinic.report", "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(template_name: str, **context: Any) -> str:
    return _ENVIRONMENT.get_template(template_name).render(version=cnnclinic.__version__, **context)


def write_page(path: Path, html: str) -> Path:
    """Written atomically, so a browser never opens half a page."""
    atomic_write_bytes(path, html.encode("utf-8"))
    return path


def format_value(value: Any) -> str:
    """A number or a small structure as a short, readable string (4 significant digits)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{key}: {format_value(item)}" for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(item) for item in value) or "none"
    return str(value)


def percent(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}%"
