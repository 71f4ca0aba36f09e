"""Checks every model load makes: the file's SHA-256 and the memory it needs."""

from __future__ import annotations

import hashlib
from pathlib import Path

from agentd.errors import ModelError


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: Path, expected: str, *, what: str) -> None:
    """ModelError unless ``path`` exists and hashes to ``expected``."""
    if not path.is_file():
        raise ModelError(f"{what}: file {path} does not exist")
    actual = file_sha256(path)
    if actual != expected:
        raise ModelError(
            f"{what}: SHA-256 mismatch for {path}: expected {expected}, got {actual}; refusing to load it"
            " (restore the file, or update sha256 in the config if the new file is intended)"
        )


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(name: str, file_bytes: int, *, working_bytes: int, headroom_mb: float) -> None:
    """ModelError when the model would not fit in available memory with the headroom left."""
    avail = available_memory_bytes()
    if avail is None:
        return
    need = file_bytes + working_bytes + int(headroom_mb * 2**20)
    if need > avail:
        raise ModelError(
            f"model {name!r} needs about {need / 2**20:.0f} MiB (file {file_bytes / 2**20:.0f} MiB + working"
            f" memory + {headroom_mb:.0f} MiB headroom) but only {avail / 2**20:.0f} MiB is available; refusing to load it"
        )
