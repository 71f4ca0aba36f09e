"""Doctor check of the MQTT broker: a real connection (TCP, TLS handshake, MQTT CONNECT/CONNACK)."""

from __future__ import annotations

import contextlib
import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd.ops.doctor.findings import Check, Context, fail, ok, skip

if TYPE_CHECKING:
    from agentd.config.schema import Config

BROKER_TIMEOUT_S = 3.0


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
