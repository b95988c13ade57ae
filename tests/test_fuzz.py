"""Fuzzing with hypothesis: config parsing and image decoding never fail with anything but a clear answer."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnclinic.config import Config, build_config, load_config
from cnnclinic.data.cache import decode_folder
from cnnclinic.data.folder import decode_image, scan_folder
from cnnclinic.errors import UserError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _leaf_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for name, value in tree.items():
        keys += _leaf_keys(value, f"{prefix}{name}.") if isinstance(value, dict) and value else [prefix + name]
    return keys


REAL_KEYS = _leaf_keys(Config().to_dict())
SECTIONS = sorted({key.split(".")[0] for key in REAL_KEYS})

# Keys: real ones, real sections with made-up fields, and arbitrary dotted text.
keys = st.one_of(
    st.sampled_from(REAL_KEYS),
    st.builds(lambda section, name: f"{section}.{name}", st.sampled_from(SECTIONS), st.text(max_size=8)),
    st.lists(st.text(max_size=6), min_size=1, max_size=4).map(".".join),
)
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)


def _config_or_user_error(build) -> Config | None:
    try:
        return build()
    except UserError as error:
        assert str(error) and "\n" not in str(error), repr(str(error))
        return None


@FUZZ
@given(st.lists(st.tuples(keys, st.text(max_size=20)), max_size=4))
def test_random_key_value_text_gives_a_config_or_a_one_line_user_error(pairs: list[tuple[str, str]]) -> None:
    overrides = [f"{key}={raw}" for key, raw in pairs]
    cfg = _config_or_user_error(lambda: build_config(overrides=overrides))
    if cfg is not None:  # whatever was accepted survives the trip through config.yaml
        assert build_config(base=cfg.to_dict()) == cfg


@FUZZ
@given(st.dictionaries(keys, yaml_values, max_size=4))
def test_random_structured_values_give_a_config_or_a_one_line_user_error(overrides: dict[str, Any]) -> None:
    _config_or_user_error(lambda: build_config(overrides=overrides))


@FUZZ
@given(st.text(max_size=200))
def test_any_config_file_text_gives_a_config_or_a_one_line_user_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(text, encoding="utf-8")
        _config_or_user_error(lambda: load_config(path))


# Valid values of a sample of keys (every kind: bounded ints and floats, choices, lists, optionals).
valid_settings = st.one_of(
    st.tuples(st.just("model.depth"), st.integers(1, 64)),
    st.tuples(st.just("model.activation"), st.sampled_from(["sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu"])),
    st.tuples(st.just("model.head"), st.lists(st.integers(1, 4096), max_size=4)),
    st.tuples(st.just("model.dropout"), st.floats(0.0, 0.99)),
    st.tuples(st.just("train.lr"), st.floats(1e-9, 100.0)),
    st.tuples(st.just("train.grad_clip"), st.none() | st.floats(1e-6, 1e6)),
    st.tuples(
        st.just("train.focal_alpha"),
        st.sampled_from(["none", "balanced"]) | st.lists(st.floats(0.0, 10.0), min_size=1, max_size=4),
    ),
    st.tuples(st.just("data.augment.rotation"), st.floats(0.0, 180.0)),
    st.tuples(
        st.just("data.augment.strong_classes"),
        st.lists(st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=8), max_size=3),
    ),
    st.tuples(st.just("data.max_per_class"), st.none() | st.integers(1, 10**6)),
)


@FUZZ
@given(valid_settings)
def test_valid_values_round_trip_through_set_and_config_yaml(setting: tuple[str, Any]) -> None:
    key, value = setting
    cfg = build_config(overrides=[f"{key}={json.dumps(value, ensure_ascii=False)}"])  # as typed: 0.5, [64, 32]
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    assert node == value
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(cfg.to_yaml())
        assert load_config(path) == cfg


def _encoded(image_format: str) -> bytes:
    pixels = np.random.default_rng(1).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


VALID_FILES = {".png": _encoded("PNG"), ".jpg": _encoded("JPEG")}


def _check_decoded(decoded: torch.Tensor | str) -> None:
    if isinstance(decoded, str):
        assert decoded and "\n" not in decoded
    else:
        assert decoded.dtype == torch.uint8 and decoded.shape == (3, 16, 16)


@FUZZ
@given(st.sampled_from(sorted(VALID_FILES)), st.data())
def test_damaged_photos_decode_or_give_a_reason(suffix: str, data: st.DataObject) -> None:
    """A real PNG/JPEG with bytes overwritten and/or cut off: pixels of the right shape, or a reason."""
    content = bytearray(VALID_FILES[suffix])
    for _ in range(data.draw(st.integers(0, 8), label="flips")):
        position = data.draw(st.integers(0, len(content) - 1), label="position")
        content[position] = data.draw(st.integers(0, 255), label="byte")
    content = content[: data.draw(st.integers(0, len(content)), label="length")]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"fish{suffix}"
        path.write_bytes(bytes(content))
        _check_decoded(decode_image(path, 16))


@FUZZ
@given(st.sampled_from(sorted(VALID_FILES)), st.binary(max_size=512))
def test_random_bytes_in_a_class_folder_are_skipped_with_a_reason(suffix: str, content: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "bream").mkdir()
        (root / "bream" / f"good{suffix}").write_bytes(VALID_FILES[suffix])
        (root / "bream" / f"random{suffix}").write_bytes(content)
        decoded = decode_folder(scan_folder(root), 16)
    assert [Path(f).name for f in decoded.files] == [f"good{suffix}"]
    assert [Path(s.path).name for s in decoded.skipped] == [f"random{suffix}"]
    assert decoded.skipped[0].reason
    assert decoded.images.shape == (1, 3, 16, 16)


@pytest.mark.parametrize("suffix", sorted(VALID_FILES))
def test_the_fuzzed_files_start_from_decodable_photos(suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"fish{suffix}"
    path.write_bytes(VALID_FILES[suffix])
    assert isinstance(decode_image(path, 16), torch.Tensor)
