"""`agentd doctor` against real parts: a real node database and key, the real ONNX model
file, a real Mosquitto (plain and TLS, with certificates made here), and injected faults."""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import json
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.broker import Broker, free_port
from tests.integration.conftest import MANIFEST, REPO, cli, freezer_config

EVENT = '{"temperature_c": -19.0, "door_open_s": 3.0, "compressor_a": 5.2}'


def _node(tmp_path: Path, *, mqtt_port: int, **edit: Any) -> Path:
    """A node with a key, a database holding a decision, and its own copy of the model file."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    model = tmp_path / "model.onnx"
    shutil.copyfile(REPO / "models" / MANIFEST["file"], model)
    cfg = freezer_config(data, mqtt_port=mqtt_port)
    cfg["models"][0]["path"] = str(model)
    for section, values in edit.items():
        cfg.setdefault(section, {}).update(values)
    path = tmp_path / "agentd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = cli(path, "decide", "freezer_health", "--data", EVENT, "--id", "doctor-e1")
    assert r.returncode == 0, r.stderr
    return path


def _doctor(config: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    r = cli(config, "doctor", "--json")
    report = json.loads(r.stdout)
    assert report["ok"] is (r.returncode == 0)
    return r.returncode, {c["name"]: c for c in report["checks"]}


def test_a_healthy_node_passes(tmp_path: Path, broker: Broker) -> None:
    config = _node(tmp_path, mqtt_port=broker.port)
    rc, checks = _doctor(config)
    assert rc == 0, checks
    for name in ("config", "node key", "model freezer_anomaly", "database", "audit chain", "disk", "broker", "clock", "onnxruntime"):
        assert checks[name]["status"] == "ok", checks[name]
    assert "CONNACK accepted" in checks["broker"]["detail"]
    assert "CPUExecutionProvider" in checks["onnxruntime"]["detail"]
    assert checks["llama.cpp"]["status"] in ("ok",)  # optional: installed, or not needed by this config


def test_each_injected_fault_is_found_with_its_fix(tmp_path: Path) -> None:
    no_broker = free_port()
    free_mb = shutil.disk_usage(tmp_path).free / 2**20
    # "Full disk": ask for more free space than the filesystem has. The check reads the real
    # filesystem; only the threshold is moved, since filling a disk takes root and a tmpfs.
    config = _node(tmp_path, mqtt_port=no_broker, state={"min_free_mb": free_mb * 4})
    data = tmp_path / "data"
    (data / "keys" / "node.key").chmod(0o644)
    with (tmp_path / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    db = sqlite3.connect(data / "agentd.db")
    with db:
        db.execute("UPDATE decisions SET action = 'shutdown' WHERE event_id = 'doctor-e1'")
    db.close()

    rc, checks = _doctor(config)
    assert rc == 1
    assert checks["node key"]["status"] == "fail"
    assert "mode 0644" in checks["node key"]["detail"]
    assert checks["node key"]["fix"] == f"chmod 600 {data / 'keys' / 'node.key'}"
    assert checks["model freezer_anomaly"]["status"] == "fail"
    assert "SHA-256 mismatch" in checks["model freezer_anomaly"]["detail"]
    assert "sha256" in checks["model freezer_anomaly"]["fix"]
    assert checks["disk"]["status"] == "fail"
    assert "below state.min_free_mb" in checks["disk"]["detail"]
    assert checks["disk"]["fix"]
    assert checks["broker"]["status"] == "fail"
    assert f"cannot reach 127.0.0.1:{no_broker}" in checks["broker"]["detail"]
    assert "start the broker" in checks["broker"]["fix"]
    assert checks["audit chain"]["status"] == "fail"
    assert "edited" in checks["audit chain"]["detail"]
    # the faults did not stop the checks that have nothing to do with them
    for name in ("config", "database", "clock", "onnxruntime"):
        assert checks[name]["status"] == "ok", checks[name]

    human = cli(config, "doctor")
    assert human.returncode == 1
    assert f"fix: chmod 600 {data / 'keys' / 'node.key'}" in human.stdout
    assert "5 check(s) failed" in human.stdout


def test_an_invalid_config_fails_and_the_rest_is_skipped(tmp_path: Path) -> None:
    config = tmp_path / "agentd.yaml"
    config.write_text("node: {id: Not_Valid}\nskills: []\n")
    rc, checks = _doctor(config)
    assert rc == 1
    assert checks["config"]["status"] == "fail"
    assert "agentd config validate" in checks["config"]["fix"]
    assert checks["broker"]["status"] == "skip"
    assert checks["onnxruntime"]["status"] == "ok"  # independent of the config


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_broker_tls_with_the_wrong_ca_fails_and_the_right_ca_passes(tmp_path: Path) -> None:
    pem = serialization.Encoding.PEM
    ca_key, other_key, server_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _cert("it-ca", ca_key, None, ca=True)
    other_ca = _cert("it-other-ca", other_key, None, ca=True)
    server = _cert("127.0.0.1", server_key, ("it-ca", ca_key), ca=False)
    certs = tmp_path / "certs"
    certs.mkdir()
    ca_file = _write(certs / "ca.pem", ca.public_bytes(pem))
    other_file = _write(certs / "other-ca.pem", other_ca.public_bytes(pem))
    cert_file = _write(certs / "server.pem", server.public_bytes(pem))
    key_file = _write(certs / "server.key", server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    tls_port = free_port()
    # `user`: mosquitto started as root would switch to its own user, which cannot read these files
    b = Broker(folder=tmp_path, extra=f"user {getpass.getuser()}\nlistener {tls_port} 127.0.0.1\ncafile {ca_file}\ncertfile {cert_file}\nkeyfile {key_file}\n")
    b.start()
    try:
        (tmp_path / "wrong").mkdir()
        wrong = _node(tmp_path / "wrong", mqtt_port=tls_port, mqtt={"tls": {"ca": str(other_file)}})
        rc, checks = _doctor(wrong)
        assert rc == 1
        assert checks["broker"]["status"] == "fail"
        assert "TLS certificate not valid" in checks["broker"]["detail"]
        assert "mqtt.tls.ca" in checks["broker"]["fix"]

        (tmp_path / "right").mkdir()
        right = _node(tmp_path / "right", mqtt_port=tls_port, mqtt={"tls": {"ca": str(ca_file)}})
        rc, checks = _doctor(right)
        assert checks["broker"]["status"] == "ok", checks["broker"]
        assert "over TLS" in checks["broker"]["detail"]
        assert rc == 0, checks
    finally:
        b.stop()


def test_a_clock_behind_the_newest_record_fails(tmp_path: Path, broker: Broker) -> None:
    config = _node(tmp_path, mqtt_port=broker.port)
    rc, checks = _doctor(config)
    assert checks["clock"]["status"] == "ok"
    # A record stamped an hour ahead of the system clock: as if the clock went back by an hour since.
    db = sqlite3.connect(tmp_path / "data" / "agentd.db")
    with db:
        db.execute("UPDATE decisions SET created_at = created_at + 3600 WHERE event_id = 'doctor-e1'")
    db.close()
    rc, checks = _doctor(config)
    assert rc == 1
    assert checks["clock"]["status"] == "fail"
    assert "behind the newest stored record" in checks["clock"]["detail"]
    assert "timedatectl set-ntp true" in checks["clock"]["fix"]


def test_broker_auth_is_checked_with_a_real_connect(tmp_path: Path) -> None:
    passwd = tmp_path / "mosquitto.passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "node", "right-secret"], check=True, capture_output=True)
    passwd.chmod(0o600)
    port = free_port()
    b = Broker(folder=tmp_path, extra=f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n")
    b.start()
    try:
        for name, secret, expect in (("wrong", "wrong-secret", "fail"), ("right", "right-secret", "ok")):
            folder = tmp_path / name
            folder.mkdir()
            secret_file = folder / "mqtt.secret"
            secret_file.write_text(secret + "\n")
            secret_file.chmod(0o600)
            config = _node(folder, mqtt_port=port, mqtt={"username": "node", "password_file": str(secret_file)})
            _rc, checks = _doctor(config)
            assert checks["broker"]["status"] == expect, checks["broker"]
            assert checks["mqtt password file"]["status"] == "ok"
            if expect == "fail":
                assert "CONNACK refused the connection" in checks["broker"]["detail"]
                assert "mqtt.password_file" in checks["broker"]["fix"]
    finally:
        b.stop()
