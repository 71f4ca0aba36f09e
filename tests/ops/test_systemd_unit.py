"""The systemd unit and its Jetson drop-in, checked with systemd's own tools.

``systemd-analyze verify`` must accept the unit, ``systemd-analyze security --offline=yes``
must rate its sandbox at an exposure of at most 1.5 (docs/DESIGN.md section 10), and the
runtimes the daemon loads must work under the unit's MemoryDenyWriteExecute=yes: the test
installs the same seccomp filter systemd installs for it and runs a real ONNX decision and
a real llama.cpp evaluation (when the llm extra is installed) under it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
UNIT = ROOT / "systemd" / "agentd.service"
JETSON = ROOT / "systemd" / "jetson.conf"
EXAMPLE_CONFIG = ROOT / "config" / "agentd.yaml"
MAX_EXPOSURE = 1.5
INSTALLED_AGENTD = "/opt/agentd/venv/bin/agentd"


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    if not Path(path).exists():
        pytest.fail("systemd-analyze is missing: scripts/setup.sh installs Debian's systemd package")
    return path


def _directives(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> every value given, in order (systemd allows repeated keys)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def _one(d: dict[str, list[str]], key: str) -> str:
    values = d.get(key)
    assert values, f"{key} is not set"
    return values[-1]


def _seconds(value: str) -> float:
    """systemd time spans used in our unit: '30', '30s', '2min'."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|)?", value)
    assert m, f"unexpected time span {value!r}"
    return float(m.group(1)) * (60 if m.group(2) == "min" else 1)


def _exposure(output: str, unit: str = "agentd.service") -> float:
    m = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+(?:\.\d+)?)", output)
    assert m, f"no 'Overall exposure level' line in systemd-analyze output:\n{output[-2000:]}"
    return float(m.group(1))


def _unit_with_real_exec(tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart names this checkout's agentd (verify needs a real file)."""
    agentd = Path(sys.executable).with_name("agentd")
    assert agentd.exists(), f"{agentd} missing: run scripts/setup.sh"
    text = UNIT.read_text()
    assert INSTALLED_AGENTD in text
    copy = tmp_path / "agentd.service"
    copy.write_text(text.replace(INSTALLED_AGENTD, str(agentd)))
    return copy


def test_unit_verifies(tmp_path: Path) -> None:
    unit = _unit_with_real_exec(tmp_path)
    proc = subprocess.run([_systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, check=False)
    # verify exits 0 on unknown keys and misplaced sections; it only warns. Both are defects here.
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", f"systemd-analyze verify warned:\n{proc.stderr}"


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a missing ExecStart binary are reported."""
    unit = _unit_with_real_exec(tmp_path)
    unit.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSecs=") + "\n")
    proc = subprocess.run([_systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, check=False)
    assert "WatchdogSecs" in proc.stderr
    missing = tmp_path / "missing" / "agentd.service"
    missing.parent.mkdir()
    missing.write_text(UNIT.read_text().replace(INSTALLED_AGENTD, str(tmp_path / "no-such-agentd")))
    proc = subprocess.run([_systemd_analyze(), "verify", str(missing)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "no-such-agentd" in proc.stderr


def test_security_exposure_at_most_1_5() -> None:
    proc = subprocess.run(
        [_systemd_analyze(), "security", "--offline=yes", str(UNIT)], capture_output=True, text=True, check=False
    )
    assert "ignoring" not in proc.stderr, proc.stderr
    score = _exposure(proc.stdout)
    assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}:\n{proc.stdout}"


def test_security_exposure_with_the_jetson_drop_in(tmp_path: Path) -> None:
    """The drop-in opens the GPU nodes only; the unit with it still scores <= 1.5."""
    system = tmp_path / "etc" / "systemd" / "system"
    (system / "agentd.service.d").mkdir(parents=True)
    shutil.copy(UNIT, system / "agentd.service")
    shutil.copy(JETSON, system / "agentd.service.d" / "jetson.conf")
    proc = subprocess.run(
        [_systemd_analyze(), "security", "--offline=yes", f"--root={tmp_path}", "agentd.service"],
        capture_output=True, text=True, check=False,
    )
    assert "ignoring" not in proc.stderr, proc.stderr
    # The drop-in was read: its device grants appear in the report.
    assert "/dev/nvmap:rw" in proc.stdout
    assert "PrivateDevices=" in proc.stdout
    score = _exposure(proc.stdout)
    assert score <= MAX_EXPOSURE, f"exposure with jetson.conf {score} > {MAX_EXPOSURE}:\n{proc.stdout}"


def test_jetson_drop_in_grants_only_gpu_nodes() -> None:
    d = _directives(JETSON)
    assert _one(d, "Service.DevicePolicy") == "closed"
    allowed = [v.split()[0] for v in d["Service.DeviceAllow"]]
    assert allowed, "no DeviceAllow lines"
    for node in allowed:
        assert re.fullmatch(r"/dev/(nvhost-[a-z-]+|nvgpu/igpu0/[a-z]+|nvmap|host1x-fence)", node), node
    # Nothing else in the sandbox is relaxed.
    assert set(d) <= {"Service.PrivateDevices", "Service.DevicePolicy", "Service.DeviceAllow", "Service.SupplementaryGroups",
                      "Service.Environment"}
    assert d.get("Service.Environment", []) == ["LD_LIBRARY_PATH=/usr/local/cuda/lib64"]


def test_unit_contract() -> None:
    """What the daemon and scripts/install.sh rely on (DESIGN section 10)."""
    d = _directives(UNIT)
    assert _one(d, "Service.Type") == "notify"
    assert _one(d, "Service.NotifyAccess") == "main"
    assert _one(d, "Service.ExecStart").startswith(f"{INSTALLED_AGENTD} run --config /etc/agentd/agentd.yaml")
    assert "-HUP $MAINPID" in _one(d, "Service.ExecReload")
    assert _one(d, "Service.Restart") == "on-failure"
    assert _one(d, "Service.User") == _one(d, "Service.Group") == "agentd"
    assert _one(d, "Service.StateDirectory") == "agentd"
    assert _one(d, "Service.RuntimeDirectory") == "agentd"  # the socket: $RUNTIME_DIRECTORY/agentd.sock
    assert _one(d, "Service.ConfigurationDirectory") == "agentd"
    assert _one(d, "Service.MemoryDenyWriteExecute") == "yes"
    assert d["Service.RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    # The daemon's defaults must fit the unit's timers.
    daemon = yaml.safe_load(EXAMPLE_CONFIG.read_text())["daemon"]
    assert _seconds(_one(d, "Service.WatchdogSec")) >= 2 * daemon["watchdog_interval_s"]
    assert _seconds(_one(d, "Service.TimeoutStopSec")) > daemon["drain_timeout_s"]


# systemd 252's MemoryDenyWriteExecute=yes (src/shared/seccomp-util.c), rebuilt with
# libseccomp: mmap with PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect with PROT_EXEC and
# shmat with SHM_EXEC fail with EPERM. Then exec the command under it.
_MDWE = r'''
import ctypes, os, sys
lib = ctypes.CDLL("libseccomp.so.2")
class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(Cmp)]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ctx = lib.seccomp_init(0x7FFF0000)  # SCMP_ACT_ALLOW
for name, mask in (("mmap", 6), ("mprotect", 4), ("pkey_mprotect", 4), ("shmat", 0o100000)):
    rule = (Cmp * 1)(Cmp(2, 7, mask, mask))  # arg 2, SCMP_CMP_MASKED_EQ
    assert lib.seccomp_rule_add_array(ctx, 0x00050001, lib.seccomp_syscall_resolve_name(name.encode()), 1, rule) == 0
assert lib.seccomp_load(ctx) == 0
os.execv(sys.argv[1], sys.argv[1:])
'''


def _under_mdwe(tmp_path: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    helper = tmp_path / "mdwe.py"
    helper.write_text(_MDWE)
    return subprocess.run([sys.executable, str(helper), *argv], capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def test_mdwe_filter_bites(tmp_path: Path) -> None:
    """The emulated filter is real: a writable+executable mapping is refused under it."""
    code = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"
    proc = _under_mdwe(tmp_path, [sys.executable, "-c", code])
    assert proc.returncode != 0
    assert "Operation not permitted" in proc.stderr
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_onnx_decision_and_ctypes_callbacks_under_mdwe(tmp_path: Path) -> None:
    """The ONNX model answers and ctypes callbacks (libffi closures) work with W^X enforced."""
    agentd = str(Path(sys.executable).with_name("agentd"))
    event = {"temperature_c": -19, "door_open_s": 4, "compressor_a": 5}
    proc = _under_mdwe(tmp_path, [agentd, "decide", "freezer_health", "--config", str(EXAMPLE_CONFIG),
                                  "--data", json.dumps(event), "--json"])
    assert proc.returncode == 0, proc.stderr
    decision = json.loads(proc.stdout)
    assert decision["source"] == "model", decision  # not a rules fallback after a model error
    code = "import ctypes; f = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1); assert f(41) == 42"
    proc = _under_mdwe(tmp_path, [sys.executable, "-c", code])
    assert proc.returncode == 0, proc.stderr


_LLAMA = r'''
import sys
from pathlib import Path
import llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=128, verbose=False)
tokens = llm.tokenize(b"the freezer door is open")
llm.eval(tokens)
# A Python abort callback is a libffi closure: the case that once kept W^X off.
callback = llama_cpp.ggml_abort_callback(lambda data: False)
llama_cpp.llama_set_abort_callback(llm._ctx.ctx, callback, None)
llm.reset()
llm.eval(tokens)
print("evaluated", llm.n_tokens)
'''


def test_llama_cpp_under_mdwe(tmp_path: Path) -> None:
    """llama.cpp (CPU) loads a GGUF and evaluates, with a Python abort callback, under W^X."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the llm extra) is not installed")
    from tests.tinygguf import write_tiny_gguf

    model = tmp_path / "tiny.gguf"
    write_tiny_gguf(model)
    script = tmp_path / "llama_eval.py"
    script.write_text(_LLAMA)
    proc = _under_mdwe(tmp_path, [sys.executable, str(script), str(model)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"evaluated [1-9]\d*", proc.stdout), proc.stdout
