"""Atomic file writes (write beside the target, then rename, so a reader never sees half a file) and durable appends."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same extension); rename it over ``path`` on success.

    With ``durable`` the file and its folder are fsynced, so the rename survives
    a power cut, not only a crash of this process. A failed write leaves
    ``path`` untouched and removes the temporary file.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)
        if durable:
            fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_path(path: str | Path) -> None:
    """Flush a file, or a folder's entries, to the disk."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def append_line_durable(path: str | Path, line: str) -> None:
    """Append ``line`` and a newline to ``path`` and fsync it, so it is on the disk before anything written next."""
    with open(path, "a") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def write_json_atomic(path: str | Path, payload: dict) -> None:
    """``payload`` as indented JSON at ``path``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
