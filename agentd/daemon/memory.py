"""Hand memory freed during start-up back to the system (glibc keeps it otherwise).

Loading the config, the models and their examples allocates and frees a lot at once (ONNX
Runtime's graph optimisation, embedding a text stage's examples); glibc keeps the freed
heap in the process, so a node idles at its start-up peak. ``malloc_trim(0)`` returns what
is free at the top of every heap and, since glibc 2.8, whole free pages inside them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from typing import Any

log = logging.getLogger(__name__)


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_free_memory() -> bool:
    """``malloc_trim(0)`` where the C library has it (glibc); False elsewhere (musl, macOS)."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))
