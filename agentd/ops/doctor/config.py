"""Doctor checks of the config and of the secret files it names: the node key, the MQTT TLS key and password file."""

from __future__ import annotations

import stat
from pathlib import Path

from agentd.errors import AgentdError
from agentd.ops.doctor.findings import Check, Context, fail, ok


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
