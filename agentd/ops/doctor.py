"""`agentd doctor`: independent, quick checks of everything a node needs, each with its fix.

Every check is a function of the (possibly invalid) config that returns ``Check`` results;
one check failing or crashing never stops the others. A check that cannot run without
something another check found broken says so as ``skip``. Nothing here writes to the node.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import ssl
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agentd.errors import AgentdError

if TYPE_CHECKING:
    from agentd.config.loader import LoadedConfig
    from agentd.config.schema import Config

Status = Literal["ok", "warn", "fail", "skip"]
BROKER_TIMEOUT_S = 3.0
# agentd 0.1.0 was cut on this day (UTC); a clock before it is certainly wrong. Bump per release.
RELEASED_AT = 1_795_564_800.0  # 2026-11-25T00:00:00Z
CLOCK_JUMP_S = 366 * 86400.0  # ahead of the newest record by more than this: suspicious


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, how it went, and (unless ok) the one-line fix."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warn", detail, fix)


def skip(name: str, detail: str) -> Check:
    return Check(name, "skip", detail)


@dataclass
class Context:
    """What the checks share: the config path and, if it loaded, the config."""

    path: Path
    loaded: LoadedConfig | None = None

    @property
    def cfg(self) -> Config:
        assert self.loaded is not None
        return self.loaded.config


# -- config ---------------------------------------------------------------------


def check_config(ctx: Context) -> list[Check]:
    from agentd.config.loader import load_config
    from agentd.decision.rules import compile_all

    try:
        loaded = load_config(ctx.path)
        compile_all(loaded)
    except AgentdError as exc:
        first = str(exc).splitlines()[0]
        return [fail("config", first, f"run `agentd config validate {ctx.path}` and fix the keys it names")]
    ctx.loaded = loaded
    return [ok("config", f"{ctx.path} valid (sha256 {loaded.sha256[:12]})")]


# -- keys and permissions -------------------------------------------------------


def _secret_file(name: str, path: Path, owner: int | None) -> Check:
    """A private file: it exists, is mode 0600 (no group/other bits), owned by ``owner``."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return fail(name, f"{path} does not exist", "create it (node key: `agentd keys init`) or correct the path in the config")
    except OSError as exc:
        return fail(name, f"{path}: {exc.strerror}", f"make {path} readable by the service user")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return fail(name, f"{path} has mode {mode:04o}; others can read it", f"chmod 600 {path}")
    if owner is not None and st.st_uid != owner:
        return fail(name, f"{path} is owned by uid {st.st_uid}, not the service user (uid {owner}, owner of the data dir)",
                    f"chown {owner} {path}")
    return ok(name, f"{path} mode {mode:04o}, owner uid {st.st_uid}")


def check_keys(ctx: Context) -> list[Check]:
    from agentd.trust.keys import key_path, load_key

    cfg = ctx.cfg
    try:
        owner: int | None = cfg.data_dir.stat().st_uid
    except OSError:
        owner = None
    out = []
    node_key = _secret_file("node key", key_path(cfg.data_dir), owner)
    if node_key.status == "ok":
        try:
            key = load_key(cfg.data_dir)
            node_key = ok("node key", f"{node_key.detail}; public key {key.public_b64}")
        except AgentdError as exc:
            node_key = fail("node key", str(exc), "restore keys/node.key from your key backup (see docs/OPERATIONS.md, key rotation)")
    out.append(node_key)
    tls = cfg.mqtt.tls
    if cfg.mqtt.enabled and tls is not None and tls.key:
        out.append(_secret_file("mqtt tls key", Path(tls.key), None))
    if cfg.mqtt.enabled and cfg.mqtt.password_file:
        out.append(_secret_file("mqtt password file", Path(cfg.mqtt.password_file), None))
    return out


# -- models and runtimes ---------------------------------------------------------


def check_models(ctx: Context) -> list[Check]:
    from agentd.errors import ModelError
    from agentd.stages.loading import verify_file

    out = []
    for m in ctx.cfg.models:
        name = f"model {m.name}"
        path, sha = getattr(m, "path", None), getattr(m, "sha256", None)
        if path is None or sha is None:
            out.append(ok(name, f"backend {m.backend} has no file"))
            continue
        try:
            verify_file(Path(path), sha, what=f"model {m.name!r}")
        except ModelError as exc:
            fix = (f"restore {path} from models/ or the release (sha256 {sha[:16]}...); if the new file is intended,"
                   " put its sha256 in the config and reload")
            out.append(fail(name, str(exc).split(";")[0], fix))
        except OSError as exc:
            out.append(fail(name, f"{path}: {exc.strerror}", f"make {path} readable by the service user"))
        else:
            out.append(ok(name, f"{path} matches sha256 {sha[:12]} (version {m.version})"))
    return out


def check_runtimes(ctx: Context) -> list[Check]:
    backends = {m.backend for m in ctx.cfg.models} if ctx.loaded else set()
    out = []
    try:
        import onnxruntime as ort

        out.append(ok("onnxruntime", f"{ort.__version__}, providers {', '.join(ort.get_available_providers())}"))
    except Exception as exc:  # an ImportError, or a broken native library
        check = fail if "onnx" in backends else warn
        out.append(check("onnxruntime", f"cannot import onnxruntime: {exc}", "pip install onnxruntime (in agentd's venv)"))
    try:
        import llama_cpp

        out.append(ok("llama.cpp", f"llama-cpp-python {getattr(llama_cpp, '__version__', '?')}"))
    except Exception as exc:
        if "llama_cpp" in backends:
            out.append(fail("llama.cpp", f"a model uses backend llama_cpp but llama_cpp cannot be imported: {exc}",
                            "pip install 'agentd[llm]' in agentd's venv (or scripts/install.sh, which builds it for this board)"))
        else:
            out.append(ok("llama.cpp", "not installed (optional extra `llm`; no model needs it)"))
    return out


# -- database and disk -----------------------------------------------------------


def check_database(ctx: Context) -> list[Check]:
    from agentd.state import queries
    from agentd.trust.keys import load_key

    cfg = ctx.cfg
    path = queries.db_path(cfg.data_dir)
    if not path.exists():
        return [ok("database", f"{path}: none yet (created at the first start)")]
    try:
        conn = queries.open_readonly(cfg.data_dir)
    except AgentdError as exc:
        return [fail("database", str(exc), "restore the last backup: `agentd restore BACKUP` (the node must be stopped)")]
    try:
        rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchmany(5)]
        if rows != ["ok"]:
            return [fail("database", f"{path}: quick_check found: {'; '.join(map(str, rows))}",
                         "stop the node and restore the last backup: `agentd restore BACKUP`")]
        out = [ok("database", f"{path}: quick_check ok, {path.stat().st_size / 2**20:.1f} MiB")]
        try:
            trusted: str | None = load_key(cfg.data_dir).public_b64
        except AgentdError:
            trusted = None
        result = queries.verify_audit(conn, trusted_key=trusted)
        if result.ok:
            out.append(ok("audit chain", f"{result.records} record(s), {result.checkpoints} signed checkpoint(s) verify"))
        else:
            out.append(fail("audit chain", f"broken at record {result.first_bad_seq}: {result.problem}",
                            "treat it as an incident: keep this database as evidence, then see docs/OPERATIONS.md (audit verification failure)"))
        return out
    except sqlite3.DatabaseError as exc:
        return [fail("database", f"{path}: {exc}", "stop the node and restore the last backup: `agentd restore BACKUP`")]
    finally:
        conn.close()


def check_disk(ctx: Context) -> list[Check]:
    cfg = ctx.cfg
    folder = cfg.data_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    usage = shutil.disk_usage(folder)
    free_mb = usage.free / 2**20
    need = cfg.state.min_free_mb
    detail = f"{free_mb:.0f} MiB free of {usage.total / 2**20:.0f} MiB on the filesystem of {cfg.data_dir}"
    if free_mb < need:
        return [fail("disk", f"{detail}, below state.min_free_mb ({need:g})",
                     "free space (old logs, `journalctl --vacuum-size=100M`) or lower state.retention.max_db_mb; see docs/OPERATIONS.md (disk full)")]
    return [ok("disk", f"{detail} (minimum {need:g})")]


# -- broker ------------------------------------------------------------------------


def check_broker(ctx: Context) -> list[Check]:
    """A real connection: TCP, then the TLS handshake, then MQTT CONNECT/CONNACK (auth)."""
    import socket

    m = ctx.cfg.mqtt
    if not m.enabled:
        return [skip("broker", "mqtt.enabled is false")]
    where = f"{m.host}:{m.port}"
    password = None
    if m.username and m.password_file:
        try:
            password = Path(m.password_file).read_bytes().strip()
        except OSError as exc:
            return [fail("broker", f"{m.password_file}: cannot read the MQTT password file: {exc.strerror}",
                         f"make {m.password_file} readable by the service user (mode 0600)")]
    try:
        sock = socket.create_connection((m.host, m.port), timeout=BROKER_TIMEOUT_S)
    except OSError as exc:
        return [fail("broker", f"cannot reach {where}: {exc.strerror or exc}",
                     "start the broker (`systemctl start mosquitto`) or correct mqtt.host/mqtt.port; meanwhile the node decides offline and queues its outbox")]
    try:
        if m.tls is not None:
            try:
                ctx_tls = _tls_context(ctx.cfg)
                sock = ctx_tls.wrap_socket(sock, server_hostname=m.host)
            except ssl.SSLCertVerificationError as exc:
                return [fail("broker", f"{where}: TLS certificate not valid: {exc.verify_message or exc.reason}",
                             "set mqtt.tls.ca to the CA that signed the broker's certificate, and check the broker's name matches mqtt.host")]
            except (ssl.SSLError, OSError) as exc:
                return [fail("broker", f"{where}: TLS handshake failed: {exc}",
                             "check the broker's TLS listener and mqtt.tls.{ca,cert,key}")]
        rc = _mqtt_connect(sock, ctx.cfg, password)
    except OSError as exc:
        return [fail("broker", f"{where}: {exc}", "check the broker's log; it closed the connection during CONNECT")]
    finally:
        with contextlib.suppress(OSError):
            sock.close()
    if rc is None:
        return [fail("broker", f"{where}: no CONNACK within {BROKER_TIMEOUT_S:g} s", "is this port an MQTT listener? (TLS port without mqtt.tls, or the reverse?)")]
    if rc != 0:
        what = {1: "protocol version refused", 2: "client id refused", 3: "server unavailable", 4: "bad user name or password", 5: "not authorised"}
        return [fail("broker", f"{where}: CONNACK refused the connection ({what.get(rc, f'code {rc}')})",
                     "check mqtt.username, mqtt.password_file and the broker's ACL for this node")]
    return [ok("broker", f"{where}: connected{' over TLS' if m.tls else ''}, CONNACK accepted")]


def _tls_context(cfg: Config) -> ssl.SSLContext:
    tls = cfg.mqtt.tls
    assert tls is not None
    ctx = ssl.create_default_context(cafile=tls.ca) if tls.ca else ssl.create_default_context()
    if tls.cert:
        ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


def _mqtt_connect(sock: Any, cfg: Config, password: bytes | None) -> int | None:
    """Send an MQTT 3.1.1 CONNECT (clean session, its own client id) and read the CONNACK code."""
    m = cfg.mqtt

    def s(text: str | bytes) -> bytes:
        raw = text.encode() if isinstance(text, str) else text
        return len(raw).to_bytes(2, "big") + raw

    flags = 0x02
    payload = s(f"agentd-doctor-{cfg.node.id}-{os.getpid()}")
    if m.username:
        flags |= 0x80
        payload += s(m.username)
        if password is not None:
            flags |= 0x40
            payload += s(password)
    var = s("MQTT") + bytes([4, flags]) + (10).to_bytes(2, "big")
    body = var + payload
    length, n = b"", len(body)
    while True:
        byte, n = n % 128, n // 128
        length += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    sock.settimeout(BROKER_TIMEOUT_S)
    sock.sendall(b"\x10" + length + body)
    reply = b""
    with contextlib.suppress(TimeoutError):
        while len(reply) < 4:
            chunk = sock.recv(4 - len(reply))
            if not chunk:
                break
            reply += chunk
    if len(reply) < 4 or reply[0] != 0x20:
        return None
    with contextlib.suppress(OSError):
        sock.sendall(b"\xe0\x00")  # DISCONNECT
    return reply[3]


# -- clock and service ------------------------------------------------------------


def check_clock(ctx: Context) -> list[Check]:
    from agentd.state import queries

    now = time.time()
    fix = "enable time sync (`timedatectl set-ntp true`, or chrony) and check the RTC battery; restart agentd once the clock is right"
    if now < RELEASED_AT:
        return [fail("clock", f"system time {time.strftime('%Y-%m-%d', time.gmtime(now))} is before this agentd release", fix)]
    newest = None
    with contextlib.suppress(AgentdError, sqlite3.Error):
        conn = queries.open_readonly(ctx.cfg.data_dir)
        try:
            newest = conn.execute("SELECT MAX(ts) FROM (SELECT MAX(ts) AS ts FROM audit UNION ALL SELECT MAX(created_at) FROM decisions)").fetchone()[0]
        finally:
            conn.close()
    if newest is None:
        return [ok("clock", "after the release date; no stored record to compare with")]
    if now < newest - 5:
        return [fail("clock", f"system time is {newest - now:.0f} s behind the newest stored record (the clock went back)", fix)]
    if now - newest > CLOCK_JUMP_S:
        return [warn("clock", f"the newest stored record is {(now - newest) / 86400:.0f} days old: was the node off that long, or did the clock jump?", fix)]
    return [ok("clock", f"after the release date and {now - newest:.0f} s after the newest stored record")]


def check_service(ctx: Context) -> list[Check]:
    try:
        pid1 = Path("/proc/1/comm").read_text().strip()
    except OSError:
        pid1 = ""
    systemctl = shutil.which("systemctl")
    if pid1 != "systemd" or systemctl is None:
        return [skip("service", "systemd is not PID 1 here")]
    try:
        load = subprocess.run([systemctl, "show", "-p", "LoadState", "--value", "agentd"], capture_output=True, text=True, timeout=5, check=False)
        if load.stdout.strip() == "not-found":
            return [skip("service", "agentd.service is not installed (scripts/install.sh installs it)")]
        active = subprocess.run([systemctl, "is-active", "agentd"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [warn("service", f"systemctl did not answer: {exc}", "check systemd itself: `systemctl status`")]
    state = active.stdout.strip() or "unknown"
    if state == "active":
        return [ok("service", "agentd.service is active")]
    return [fail("service", f"agentd.service is {state}", "`journalctl -u agentd -n 50` shows why; then `systemctl start agentd`")]


NEEDS_CONFIG: tuple[tuple[str, Callable[[Context], list[Check]]], ...] = (
    ("keys", check_keys),
    ("models", check_models),
    ("database", check_database),
    ("disk", check_disk),
    ("broker", check_broker),
    ("clock", check_clock),
)


def run_checks(path: Path) -> list[Check]:
    """Every check, in order; a crash in one is reported as its failure and the rest still run."""
    ctx = Context(path=path)
    results = _guarded("config", check_config, ctx)
    for name, fn in NEEDS_CONFIG:
        if ctx.loaded is None:
            results.append(skip(name, "needs a valid config"))
        else:
            results.extend(_guarded(name, fn, ctx))
    results.extend(_guarded("runtimes", check_runtimes, ctx))
    results.extend(_guarded("service", check_service, ctx))
    return results


def _guarded(name: str, fn: Callable[[Context], list[Check]], ctx: Context) -> list[Check]:
    try:
        return fn(ctx)
    except Exception as exc:  # a doctor that dies on the first odd finding is no use; report it and go on
        return [fail(name, f"the check itself failed: {type(exc).__name__}: {exc}", "this is a bug in agentd doctor; please report it with this line")]
