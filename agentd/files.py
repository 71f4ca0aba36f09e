"""Durable file writes: data on disk (fsynced) before it takes a file's name."""

from __future__ import annotations

import os
from pathlib import Path


def write_synced(path: Path, data: bytes, mode: int) -> None:
    """Create or truncate ``path`` with ``mode``, write ``data`` and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: Path, data: bytes, mode: int = 0o640) -> None:
    """Write ``data`` beside ``path``, then rename it over ``path``: readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    write_synced(tmp, data, mode)
    os.replace(tmp, path)
