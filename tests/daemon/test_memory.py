"""release_free_memory gives freed heap pages back to the system (glibc's malloc_trim)."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import pytest

from agentd.daemon.memory import _libc, release_free_memory


def rss_mb() -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim is Linux's")
def test_freed_heap_pages_go_back_to_the_system() -> None:
    libc = _libc()
    assert libc is not None, "the daemon runs on glibc (Debian): malloc_trim must be found"
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(8192) for _ in range(12_000)]  # ~94 MB in the heap, under the mmap threshold
    for b in blocks:
        ctypes.memset(b, 1, 8192)
    keep = libc.malloc(64)  # a live block above the freed ones: only trimming inside the heap frees them
    for b in blocks:
        libc.free(b)
    before = rss_mb()
    assert release_free_memory() is True
    after = rss_mb()
    libc.free(keep)
    assert before - after > 50, f"RSS {before:.1f} MB -> {after:.1f} MB"


def test_settle_heap_freezes_what_is_loaded_and_collects_what_a_reload_dropped() -> None:
    import gc
    import weakref

    from agentd.daemon.memory import settle_heap

    class Engine:  # stands for the loaded engine: long-lived, and full of reference cycles
        def __init__(self) -> None:
            self.me = self

    try:
        first = Engine()
        settle_heap()
        assert gc.get_freeze_count() > 0
        gone = weakref.ref(first)
        del first  # a reload drops the old engine: a cycle, frozen at the last settle
        gc.collect()
        assert gone() is not None, "a frozen cycle is not collected until the next settle"
        settle_heap()  # the reload's settle unfreezes first, so the old engine goes
        assert gone() is None
    finally:
        gc.unfreeze()
