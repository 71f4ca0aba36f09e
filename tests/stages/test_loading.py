"""Model load checks: file hash and memory, with messages that name the figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentd.errors import ModelError
from agentd.stages.loading import available_memory_bytes, check_memory, file_sha256, verify_file


def test_verify_file_names_both_hashes(tmp_path: Path) -> None:
    f = tmp_path / "m.onnx"
    f.write_bytes(b"model bytes")
    verify_file(f, file_sha256(f), what="model 'm'")
    with pytest.raises(ModelError) as err:
        verify_file(f, "0" * 64, what="model 'm'")
    assert "0" * 64 in str(err.value) and file_sha256(f) in str(err.value) and "refusing" in str(err.value)
    with pytest.raises(ModelError, match="does not exist"):
        verify_file(tmp_path / "missing.onnx", "0" * 64, what="model 'm'")


def test_model_that_does_not_fit_is_refused_with_both_figures() -> None:
    avail = available_memory_bytes()
    assert avail is not None  # Linux: /proc/meminfo
    check_memory("small", 1024, working_bytes=1024, headroom_mb=1)
    with pytest.raises(ModelError) as err:
        check_memory("huge", avail, working_bytes=avail, headroom_mb=64)
    msg = str(err.value)
    assert "needs about" in msg and "MiB is available" in msg and "'huge'" in msg
