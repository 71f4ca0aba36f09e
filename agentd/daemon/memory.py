"""Settle the heap after start-up: long-lived objects out of the collector's way, freed memory back to the system.

Loading the config, the models and their examples allocates and frees a lot at once (ONNX
Runtime's graph optimisation, embedding a text stage's examples); glibc keeps the freed
heap in the process, so a node idles at its start-up peak. ``malloc_trim(0)`` returns what
is free at the top of every heap and, since glibc 2.8, whole free pages inside them.

The collector's full (oldest-generation) passes walk every object the process holds, the
config's models, the engine and the imported modules included: one took 24.6 ms in the
middle of a 20 ms deadline (`agentd bench --only deadline`). Those objects live as long as
the engine, so they are frozen (``gc.freeze``) once loaded and the passes skip them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
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


def settle_heap() -> None:
    """Collect, freeze what survives (the loaded engine, for good), then ``release_free_memory``.

    Called at READY and after each reload: the previous freeze is undone first, so the old
    engine's cycles are collected, not kept frozen.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    release_free_memory()
