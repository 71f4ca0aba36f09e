"""scripts/install.sh and scripts/uninstall.sh, run for real into a temporary root.

``--root DIR`` installs the whole tree under DIR; ``--deps-from-venv`` takes the
dependencies from this test venv (agentd itself is built from the checkout with --no-deps),
so the tree holds a real venv whose ``agentd`` runs, without minutes of pip downloads.
The Jetson/CUDA detection is checked with ``--dry-run`` against a fake board folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
VENV = Path(sys.prefix)
AS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A frozen copy of the checkout's installable parts: the scripts run from it, so edits
    made to the working tree while the tests run do not change what a re-run installs."""
    copy = tmp_path_factory.mktemp("checkout")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    for name in ("agentd", "config", "models", "systemd", "scripts", "docs"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return copy


def sh(checkout: Path, script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run scripts/<script> of the frozen checkout."""
    return subprocess.run(["bash", str(checkout / "scripts" / script), *args], capture_output=True, text=True,
                          check=False, env={**os.environ, **(env or {})})


def install(checkout: Path, root: Path, *args: str) -> str:
    proc = sh(checkout, "install.sh", "--root", str(root), "--deps-from-venv", str(VENV), "--node-id", "box-1", *args)
    assert proc.returncode == 0, f"install.sh failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def snapshot(root: Path, *, skip_venv: bool = False) -> dict[str, tuple[int, int, int, str]]:
    """Every path under root -> (mode, uid, gid, sha256 of a file's content)."""
    out: dict[str, tuple[int, int, int, str]] = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if skip_venv and rel.startswith("opt/agentd/venv"):
            continue
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else ""
        out[rel] = (st.st_mode, st.st_uid, st.st_gid, digest)
    return out


def ids(root: Path, name: str = "agentd") -> tuple[int, int]:
    """The service user's uid and gid in the tree's own passwd/group (systemd-sysusers --root)."""
    uid = next(int(line.split(":")[2]) for line in (root / "etc/passwd").read_text().splitlines() if line.startswith(f"{name}:"))
    gid = next(int(line.split(":")[2]) for line in (root / "etc/group").read_text().splitlines() if line.startswith(f"{name}:"))
    return uid, gid


@pytest.fixture(scope="module")
def installed(checkout: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One real install into a fresh root, shared by the read-only tests."""
    root = tmp_path_factory.mktemp("box") / "root"
    return root, install(checkout, root)


def test_tree(installed: tuple[Path, str]) -> None:
    root, _ = installed
    mode = lambda rel: (root / rel).stat().st_mode & 0o7777  # noqa: E731
    assert mode("etc/agentd") == 0o750
    assert mode("etc/agentd/agentd.yaml") == 0o640
    assert mode("var/lib/agentd") == 0o750
    assert mode("var/lib/agentd/keys/node.key") == 0o600
    assert mode("etc/systemd/system/agentd.service") == 0o644
    assert (root / "etc/systemd/system/agentd.service").read_text() == (ROOT / "systemd/agentd.service").read_text()
    # Not a Jetson: no GPU drop-in.
    assert not (root / "etc/systemd/system/agentd.service.d").exists()
    assert (root / "opt/agentd/models/freezer_anomaly.int8.onnx").read_bytes() == (ROOT / "models/freezer_anomaly.int8.onnx").read_bytes()
    assert (root / "opt/agentd/docs/INSTALL.md").is_file()  # the unit's Documentation=
    assert os.access(root / "opt/agentd/venv/bin/agentd", os.X_OK)
    # The service user: a sysusers.d entry, applied to the tree's passwd, not the host's.
    assert (root / "usr/lib/sysusers.d/agentd.conf").read_text().startswith("u agentd - ")
    uid, gid = ids(root)
    passwd = (root / "etc/passwd").read_text()
    assert ":/var/lib/agentd:/usr/sbin/nologin" in passwd
    assert uid < 1000  # a system user
    if AS_ROOT:
        key = (root / "var/lib/agentd/keys/node.key").stat()
        assert (key.st_uid, key.st_gid) == (uid, gid)
        conf = (root / "etc/agentd/agentd.yaml").stat()
        assert (conf.st_uid, conf.st_gid) == (0, gid)
        state = (root / "var/lib/agentd").stat()
        assert (state.st_uid, state.st_gid) == (uid, gid)


def test_config_points_at_the_box_paths(installed: tuple[Path, str]) -> None:
    root, _ = installed
    cfg = yaml.safe_load((root / "etc/agentd/agentd.yaml").read_text())
    assert cfg["node"]["id"] == "box-1"
    assert cfg["node"]["data_dir"] == "/var/lib/agentd"
    # The unit's RuntimeDirectory: the CLI finds the daemon there without $RUNTIME_DIRECTORY.
    assert cfg["daemon"]["socket"] == "/run/agentd/agentd.sock"
    model = cfg["models"][0]
    assert model["path"] == "/opt/agentd/models/freezer_anomaly.int8.onnx"
    shipped = (root / model["path"].lstrip("/")).read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == model["sha256"]


def test_installed_agentd_runs(installed: tuple[Path, str], tmp_path: Path) -> None:
    root, out = installed
    agentd = root / "opt/agentd/venv/bin/agentd"
    version = subprocess.run([str(agentd), "--version"], capture_output=True, text=True, check=True)
    assert "0.1.0" in version.stdout
    # The package comes from the tree's venv, not from the checkout.
    where = subprocess.run([str(root / "opt/agentd/venv/bin/python"), "-c", "import agentd; print(agentd.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    assert where.stdout.startswith(str(root / "opt/agentd/venv/"))
    check = subprocess.run([str(agentd), "config", "validate", str(root / "etc/agentd/agentd.yaml")],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    # The installed config with the tree's prefix: the shipped model decides, and the
    # node key the installer created is the one the node uses.
    text = (root / "etc/agentd/agentd.yaml").read_text()
    text = text.replace("/opt/agentd/", f"{root}/opt/agentd/").replace("data_dir: /var/lib/agentd", f"data_dir: {root}/var/lib/agentd")
    cfg = tmp_path / "agentd.yaml"
    cfg.write_text(text)
    event = {"temperature_c": -19, "door_open_s": 4, "compressor_a": 5}
    decide = subprocess.run([str(agentd), "decide", "freezer_health", "--config", str(cfg), "--data", json.dumps(event), "--json"],
                            capture_output=True, text=True, check=False)
    assert decide.returncode == 0, decide.stderr
    assert json.loads(decide.stdout)["source"] == "model"
    show = subprocess.run([str(agentd), "keys", "show", "--json", "--config", str(cfg)], capture_output=True, text=True, check=True)
    key = json.loads(show.stdout)
    assert key["node"] == "box-1"
    assert f"public key: {key['public_key']}" in out


def test_dry_run_changes_nothing(checkout: Path, installed: tuple[Path, str], tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    out = install(checkout, fresh, "--dry-run")
    assert not fresh.exists()
    for step in ("systemd-sysusers --root=", "-m venv", "--no-deps", "keys init", "etc/agentd/agentd.yaml",
                 "etc/systemd/system/agentd.service", "systemctl enable --now agentd"):
        assert step in out, f"dry run does not show {step!r}:\n{out}"
    root, _ = installed
    before = snapshot(root)
    install(checkout, root, "--dry-run")
    assert snapshot(root) == before


def test_lifecycle_rerun_edit_uninstall_purge(checkout: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = install(checkout, root)
    tree = snapshot(root, skip_venv=True)
    key = (root / "var/lib/agentd/keys/node.key").read_bytes()

    # A second run with nothing new changes nothing, and says so.
    again = install(checkout, root)
    assert snapshot(root, skip_venv=True) == tree
    assert "agentd: already installed from this source" in again
    assert "unchanged" in again and "exists (kept)" in again
    assert "created:" in first and "created:" not in again

    # An edited config is kept; the new example lands beside it as .new.
    conf = root / "etc/agentd/agentd.yaml"
    edited = conf.read_text().replace("fleet: acme-cold", "fleet: my-fleet")
    conf.write_text(edited)
    out = install(checkout, root)
    assert conf.read_text() == edited
    new = root / "etc/agentd/agentd.yaml.new"
    assert new.is_file() and "fleet: acme-cold" in new.read_text()
    assert new.stat().st_mode & 0o777 == 0o640
    assert "agentd.yaml.new" in out
    assert (root / "var/lib/agentd/keys/node.key").read_bytes() == key

    # A broken edit is reported, and still not overwritten.
    conf.write_text(edited.replace("deadline_ms: 200", "deadline_ms: -1"))
    proc = sh(checkout, "install.sh", "--root", str(root), "--deps-from-venv", str(VENV), "--node-id", "box-1")
    assert proc.returncode != 0
    assert "deadline_ms" in proc.stderr
    assert "fix it and run this again" in proc.stderr
    conf.write_text(edited)

    # Uninstall keeps the config and the data; --purge deletes them.
    (root / "var/lib/agentd/agentd.db").write_bytes(b"decisions")
    dry = sh(checkout, "uninstall.sh", "--root", str(root), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert (root / "opt/agentd/venv/bin/agentd").exists()
    proc = sh(checkout, "uninstall.sh", "--root", str(root))
    assert proc.returncode == 0, proc.stderr
    assert not (root / "opt/agentd").exists()
    assert not (root / "etc/systemd/system/agentd.service").exists()
    assert conf.read_text() == edited
    assert (root / "var/lib/agentd/keys/node.key").read_bytes() == key
    assert (root / "var/lib/agentd/agentd.db").read_bytes() == b"decisions"

    proc = sh(checkout, "uninstall.sh", "--root", str(root), "--purge")
    assert proc.returncode == 0, proc.stderr
    for gone in ("opt/agentd", "etc/agentd", "var/lib/agentd", "usr/lib/sysusers.d/agentd.conf"):
        assert not (root / gone).exists(), gone


def _fake_board(tmp_path: Path, *, jetson: bool, nvcc: bool) -> Path:
    board = tmp_path / "board"
    board.mkdir()
    if jetson:
        (board / "etc").mkdir()
        (board / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0, GCID: 0, BOARD: generic, EABI: aarch64\n")
        (board / "proc/device-tree").mkdir(parents=True)
        (board / "proc/device-tree/compatible").write_bytes(b"nvidia,p3768-0000+p3767-0005\0nvidia,p3767-0005\0nvidia,tegra234\0")
    if nvcc:
        (board / "usr/local/cuda/bin").mkdir(parents=True)
        (board / "usr/local/cuda/bin/nvcc").write_text("#!/bin/sh\n")
        (board / "usr/local/cuda/bin/nvcc").chmod(0o755)
    return board


def _dry_run_on(checkout: Path, board: Path, tmp_path: Path, *args: str) -> str:
    proc = sh(checkout, "install.sh", "--dry-run", "--root", str(tmp_path / "root"), "--node-id", "box-1", *args,
              env={"AGENTD_INSTALL_DETECT_ROOT": str(board), "AGENTD_INSTALL_ARCH": "aarch64"})
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert not (tmp_path / "root").exists()
    return proc.stdout


def test_jetson_orin_gets_the_cuda_build_and_the_drop_in(checkout: Path, tmp_path: Path) -> None:
    out = _dry_run_on(checkout, _fake_board(tmp_path, jetson=True, nvcc=True), tmp_path)
    assert "NVIDIA Jetson" in out
    assert "CMAKE_ARGS=-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=87" in out
    assert "CUDACXX=/usr/local/cuda/bin/nvcc" in out
    assert "llama-cpp-python" in out
    assert "etc/systemd/system/agentd.service.d/jetson.conf" in out
    # The example config's LLM is fetched and hash-checked into the models folder.
    assert "get_gemma.py" in out and "opt/agentd/models/gemma-3-270m-q4_k_m.gguf" in out


def test_jetson_without_cuda_and_no_llm(checkout: Path, tmp_path: Path) -> None:
    board = _fake_board(tmp_path, jetson=True, nvcc=False)
    out = _dry_run_on(checkout, board, tmp_path)
    assert "no /usr/local/cuda/bin/nvcc" in out
    assert "GGML_CUDA" not in out
    assert "built for the CPU" in out
    assert "agentd.service.d/jetson.conf" in out  # the drop-in still grants the GPU for later
    other = tmp_path / "again"
    other.mkdir()
    out = _dry_run_on(checkout, board, other, "--no-llm")
    assert "llama-cpp-python" not in out
    assert "get_gemma.py" not in out
    assert "left out (--no-llm)" in out
    if "backend: llama_cpp" in (checkout / "config/agentd.yaml").read_text():
        assert "declares an LLM" in out  # its skill will decide by rules: say so


def test_raspberry_pi_builds_for_the_cpu(checkout: Path, tmp_path: Path) -> None:
    out = _dry_run_on(checkout, _fake_board(tmp_path, jetson=False, nvcc=False), tmp_path)
    assert "board: aarch64" in out
    assert "GGML_CUDA" not in out
    assert "built for the CPU" in out
    assert "agentd.service.d" not in out


def test_32_bit_arm_is_refused_with_the_fix(checkout: Path, tmp_path: Path) -> None:
    proc = sh(checkout, "install.sh", "--dry-run", "--root", str(tmp_path / "root"), env={"AGENTD_INSTALL_ARCH": "armv7l"})
    assert proc.returncode == 1
    assert "64-bit" in proc.stderr
    assert not (tmp_path / "root").exists()


def test_bad_options_are_refused(checkout: Path, tmp_path: Path) -> None:
    proc = sh(checkout, "install.sh", "--frobnicate")
    assert proc.returncode == 2
    assert "unknown option --frobnicate" in proc.stderr
    proc = sh(checkout, "install.sh", "--dry-run", "--node-id", "Bad Id")
    assert proc.returncode == 1
    assert "--node-id" in proc.stderr
    proc = sh(checkout, "install.sh", "--dry-run", "--deps-from-venv", str(tmp_path))
    assert proc.returncode == 1
    assert "no bin/python" in proc.stderr
