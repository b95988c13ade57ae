"""Checkpoints: weights as safetensors, training state as a weights-only torch file, all written atomically.

Weights (``best.safetensors``, ``last.safetensors``) carry ``{"format": "cnnclinic"}`` and the class
names in their metadata, so a checkpoint describes itself. The training state a resume needs (the weights
again, optimizer, scheduler, counters, RNG states) goes to ``last.state.pt`` as one atomically written file,
so a kill between two writes cannot pair one epoch's weights with another epoch's optimizer. It is read back
with ``torch.load(weights_only=True)``, which refuses pickles that would run code.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from cnnclinic.errors import UserError

WEIGHTS_FORMAT = "cnnclinic"
STATE_FORMAT = "cnnclinic-state"


class NonFiniteWeightsError(ValueError):
    """Raised instead of writing a checkpoint whose weights hold NaN or Inf."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either the old or the new content, never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_name = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    # os.open with 0o666 lets the umask decide the permissions, as for any file the user writes.
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        tmp_name.unlink(missing_ok=True)
        raise
    # Persist the rename itself.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_partial_writes(folder: str | Path) -> None:
    """Delete the temp files of atomic writes that a killed process left behind in ``folder``."""
    for leftover in Path(folder).glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def append_lines(path: str | Path, lines: list[str]) -> None:
    """Append whole lines to a log and fsync them before returning.

    A crash can only tear the last line; readers ignore a partial last line and a resume rewrites
    the log up to its checkpoint, so no record is lost or doubled.
    """
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in lines)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines log (metrics.jsonl, steps.jsonl, ...); [] when it does not exist.

    A run killed mid-write leaves a partial last line: it is ignored. A bad line elsewhere means the file
    is damaged, which is a UserError."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise UserError(f"{path} line {number} is not valid JSON") from None
    return records


def _state_dict(weights: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    # safetensors refuses shared storage (tied weights) and needs contiguous CPU tensors.
    return {name: tensor.detach().cpu().contiguous().clone() for name, tensor in state.items()}


def non_finite_tensors(weights: nn.Module | dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors that hold NaN or Inf."""
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    return [
        name
        for name, tensor in state.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def save_weights(
    weights: nn.Module | dict[str, torch.Tensor],
    path: str | Path,
    *,
    class_names: list[str],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write weights atomically; raise NonFiniteWeightsError (leaving ``path`` untouched) on NaN/Inf."""
    bad = non_finite_tensors(weights)
    if bad:
        raise NonFiniteWeightsError(f"refusing to write {Path(path).name}: non-finite values in {', '.join(bad[:5])}")
    metadata = {"format": WEIGHTS_FORMAT, "class_names": json.dumps(class_names)}
    metadata.update({key: json.dumps(value) for key, value in (extra or {}).items()})
    atomic_write_bytes(path, save_safetensors_bytes(_state_dict(weights), metadata=metadata))


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a cnnclinic weights file: (state dict, metadata with ``class_names`` and any extras)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    try:
        tensors = load_safetensors_bytes(data)
        header_size = int.from_bytes(data[:8], "little")
        raw_metadata = json.loads(data[8 : 8 + header_size]).get("__metadata__") or {}
    except (SafetensorError, ValueError, UnicodeDecodeError):
        raise UserError(f"{path} is not a safetensors file (is it a cnnclinic checkpoint?)") from None
    if raw_metadata.get("format") != WEIGHTS_FORMAT:
        raise UserError(f"{path} is a safetensors file but not a cnnclinic checkpoint")
    metadata = {key: json.loads(value) for key, value in raw_metadata.items() if key != "format"}
    return tensors, metadata


def save_state(state: dict[str, Any], path: str | Path) -> None:
    """Write the non-weight training state atomically (tensors, numbers, strings, lists and dicts only)."""
    buffer = io.BytesIO()
    torch.save({"format": STATE_FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a training state written by :func:`save_state`; anything else is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"training state not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"refusing to load {path}: it holds code or objects a checkpoint must not contain") from None
    except (RuntimeError, EOFError, KeyError, ValueError):
        raise UserError(f"{path} is not a cnnclinic training state (unreadable or truncated)") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserError(f"{path} is not a cnnclinic training state")
    return state


def capture_rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU and CUDA) as weights-only-loadable values."""
    _, mt_keys, mt_pos, has_gauss, cached_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(mt_keys.astype(np.int64)),
            "pos": int(mt_pos),
            "has_gauss": int(has_gauss),
            "cached_gauss": float(cached_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
