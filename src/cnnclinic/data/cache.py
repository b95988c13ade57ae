"""Decode a folder once, then keep the pixels on disk so the next run does not decode again.

The cache lives under ``$CNNCLINIC_CACHE_DIR`` (default ``~/.cache/cnnclinic``), never beside the
data (data folders may be read-only). An entry is keyed by every file's resolved path, size and
modification time plus the image size, so editing, adding or removing a photo invalidates it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from cnnclinic.data.folder import FolderScan, SkippedFile, decode_image
from cnnclinic.data.progress import progress_bar

# Bump when the decoding itself changes, so old entries are not reused.
_CACHE_FORMAT = 1


def cache_root() -> Path:
    """Where cnnclinic keeps decoded images and generated data sets."""
    configured = os.environ.get("CNNCLINIC_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "cnnclinic"


@dataclass(frozen=True)
class DecodedFolder:
    """The usable images of a scanned folder: ``images[i]`` is ``files[i]`` (relative) with ``labels[i]``."""

    images: torch.Tensor
    files: list[str]
    labels: list[int]
    skipped: list[SkippedFile]


def _cache_key(scan: FolderScan, image_size: int) -> str:
    entries = []
    for relative in scan.files:
        path = (scan.root / relative).resolve()
        stat = path.stat()
        entries.append([str(path), stat.st_size, stat.st_mtime_ns])
    blob = json.dumps([_CACHE_FORMAT, image_size, entries], ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:32]


def _write_atomically(payload: dict, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _decode_all(scan: FolderScan, image_size: int, console: Console | None) -> dict:
    tensors: list[torch.Tensor] = []
    kept: list[int] = []
    skipped: list[list] = []
    with progress_bar(console, f"decoding {scan.root}") as progress:
        task = progress.add_task("decode", total=len(scan.files))
        for index, relative in enumerate(scan.files):
            decoded = decode_image(scan.root / relative, image_size)
            if isinstance(decoded, str):
                skipped.append([index, decoded])
            else:
                tensors.append(decoded)
                kept.append(index)
            progress.advance(task)
    images = torch.stack(tensors) if tensors else torch.empty(0, 3, image_size, image_size, dtype=torch.uint8)
    return {"images": images, "kept": kept, "skipped": skipped}


def decode_folder(scan: FolderScan, image_size: int, *, console: Console | None = None) -> DecodedFolder:
    """Every file of ``scan`` decoded and resized once, from the disk cache when it is up to date."""
    entry = cache_root() / "decoded" / f"{_cache_key(scan, image_size)}.pt"
    payload = None
    if entry.is_file():
        try:
            payload = torch.load(entry, weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged cache entry is simply decoded again
            payload = None
    if payload is None:
        payload = _decode_all(scan, image_size, console)
        try:
            _write_atomically(payload, entry)
        except OSError as error:
            if console is not None:
                console.print(
                    f"[yellow]note:[/] could not write the image cache ({escape(str(error))}); decoding again next run"
                )
    return DecodedFolder(
        images=payload["images"],
        files=[scan.files[i] for i in payload["kept"]],
        labels=[scan.labels[i] for i in payload["kept"]],
        skipped=[SkippedFile(str(scan.root / scan.files[i]), reason) for i, reason in payload["skipped"]],
    )
