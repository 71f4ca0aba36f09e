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
