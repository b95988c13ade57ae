"""Shared pytest fixtures. Every test session gets its own cnnclinic cache, never ~/.cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def isolated_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point CNNCLINIC_CACHE_DIR at a temporary folder for the whole session."""
    cache = tmp_path_factory.mktemp("cnnclinic-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNCLINIC_CACHE_DIR", str(cache))
        yield cache


@pytest.fixture(scope="session")
def fish_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic-fish ImageFolder: 4 species x 40 photos of 32 x 32 px (treat it as read-only)."""
    from cnnclinic.data import generate_synthetic_fish

    return generate_synthetic_fish(
        tmp_path_factory.mktemp("fish") / "fish", species=4, per_class=40, size=32, seed=0
    )
