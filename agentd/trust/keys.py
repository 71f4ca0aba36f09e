"""Ed25519 node keys and signatures, and the pinned public key the audit trail is verified against.

The pin (``keys/node.pub``) is the node's public key written outside the database when the key
is created or by `agentd keys init`; `agentd audit verify` checks the trail against it (or against
``trust.audit_public_key``, or ``--public-key``), never against whatever key the database names.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import nacl.bindings as sodium
import nacl.exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agentd.errors import TrustError
from agentd.files import replace_atomically, write_synced
from agentd.trust.canonical import b64

KEY_FILE = "node.key"
PIN_FILE = "node.pub"
MAX_KEY_FILE = 64 * 1024


@dataclass(frozen=True)
class NodeKey:
    """The node's Ed25519 identity.

    The key file is read and written with ``cryptography`` (PKCS#8 PEM); signatures are made
    and checked with libsodium (PyNaCl): the writer thread signs each decision's envelope, and
    libsodium's signature of one takes 23 µs where ``cryptography``'s takes 33
    (``scripts/bench_signing.py``; both let go of the GIL while they compute). Ed25519
    signatures are deterministic, so both libraries give the same bytes.
    """

    private: Ed25519PrivateKey
    path: Path
    _secret: bytes = field(init=False, repr=False, compare=False)  # libsodium's form: seed and public key

    def __post_init__(self) -> None:
        seed = self.private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        object.__setattr__(self, "_secret", sodium.crypto_sign_seed_keypair(seed)[1])

    @property
    def public_b64(self) -> str:
        return b64(self._secret[32:])

    def sign(self, data: bytes) -> str:
        """Base64 Ed25519 signature of ``data``."""
        return b64(sodium.crypto_sign(bytes(data), self._secret)[:64])


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    """Parse a base64 raw 32-byte Ed25519 public key."""
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError) as exc:
        raise TrustError(f"not a base64 raw Ed25519 public key: {text[:60]!r}") from exc


def verify(public_b64: str, data: bytes, signature_b64: str) -> bool:
    """True when ``signature_b64`` is a valid signature of ``data`` by ``public_b64`` (libsodium's
    check, stricter than OpenSSL's: it also refuses small-order and non-canonical keys and a
    small-order R, which no honest signer produces)."""
    try:
        sig = base64.b64decode(signature_b64, validate=True)
        public = base64.b64decode(public_b64, validate=True)
        if len(sig) != 64 or len(public) != 32:
            return False
        sodium.crypto_sign_open(sig + data, public)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


def key_path(data_dir: Path) -> Path:
    return data_dir / "keys" / KEY_FILE


def load_key(data_dir: Path) -> NodeKey:
    """Load the node key; TrustError if it is missing, unreadable or readable by others."""
    return load_key_file(key_path(data_dir))


def load_key_file(path: Path) -> NodeKey:
    """Load an Ed25519 private key file (a node's or an operator's); it must be mode 0600."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise TrustError(f"{path}: no such key file; create one with `agentd keys init`") from exc
    if st.st_mode & 0o077:
        raise TrustError(
            f"{path}: key file mode is {oct(st.st_mode & 0o777)}, must be 0600; run `chmod 600 {path}`"
        )
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, OSError) as exc:
        raise TrustError(f"{path}: cannot read node key: {exc}") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise TrustError(f"{path}: not an Ed25519 private key")
    return NodeKey(private=private, path=path)


def create_key(data_dir: Path) -> tuple[NodeKey, bool]:
    """Load the node key, creating it (mode 0600) and its pin if absent. Returns (key, created)."""
    key, created = create_key_file(key_path(data_dir))
    if created:
        write_pin(data_dir, key.public_b64)
    return key, created


def pin_path(data_dir: Path) -> Path:
    return data_dir / "keys" / PIN_FILE


def write_pin(data_dir: Path, public_b64: str) -> bool:
    """Pin ``public_b64`` as the key the audit trail is verified against; False if a pin exists already.

    An existing pin is never replaced here (a different one means the key changed: see
    docs/OPERATIONS.md, key rotation).
    """
    path = pin_path(data_dir)
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    replace_atomically(path, public_b64.encode("ascii") + b"\n", 0o644)
    return True


def public_key_from(source: str) -> tuple[str, str]:
    """``(key, where)`` from a base64 public key, a key file (`node.pub`), a backup manifest or a backup folder."""
    path = Path(source)
    if path.is_dir():
        path = path / "manifest.json" if (path / "manifest.json").is_file() else path / PIN_FILE
    if not path.is_file():
        public_key_from_b64(source)
        return source, "--public-key"
    try:
        text = path.read_bytes()[:MAX_KEY_FILE].decode().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TrustError(f"{path}: cannot read a public key: {exc}") from exc
    if text.startswith("{"):
        try:
            text = str(json.loads(text)["public_key"])
        except (ValueError, KeyError, TypeError) as exc:
            raise TrustError(f"{path}: not a backup manifest with a public_key member") from exc
    public_key_from_b64(text)
    return text, str(path)


def pinned_key(data_dir: Path, configured: str | None) -> tuple[str, str]:
    """The key to verify the audit trail against, and where it came from: ``trust.audit_public_key``,
    else the pin file. TrustError, saying how to pin one, when there is neither."""
    if configured:
        public_key_from_b64(configured)
        return configured, "trust.audit_public_key"
    path = pin_path(data_dir)
    if path.is_file():
        return public_key_from(str(path))
    raise TrustError(
        f"no public key to verify the audit trail against: {path} does not exist and trust.audit_public_key is not set;"
        " run `agentd keys init` on the node (it pins keys/node.pub), set trust.audit_public_key, or pass --public-key"
    )


def create_key_file(path: Path) -> tuple[NodeKey, bool]:
    """Load the key at ``path``, creating it (mode 0600) if absent. Returns (key, created)."""
    if path.exists():
        return load_key_file(path), False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_suffix(".tmp")
    write_synced(tmp, pem, 0o600)
    try:
        os.link(tmp, path)  # fails if another process created the key meanwhile
    except FileExistsError:
        os.unlink(tmp)
        return load_key_file(path), False
    os.unlink(tmp)
    return NodeKey(private=private, path=path), True
