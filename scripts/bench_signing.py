"""Ed25519 signing by cryptography and by libsodium (PyNaCl): µs a signature, and how much each
holds the GIL (how far it slows a pure-Python loop on another thread) (issue 17).

    .venv/bin/python scripts/bench_signing.py
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import nacl.bindings as sodium
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MESSAGE = b"x" * 1800  # about a decision's envelope
N = 20000


def spin(n: int = 5_000_000) -> float:
    t = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    return time.perf_counter() - t


def measure(name: str, sign: Callable[[], bytes], alone: float) -> None:
    t = time.perf_counter()
    for _ in range(N):
        sign()
    per = (time.perf_counter() - t) / N * 1e6
    stop = threading.Event()

    def signing() -> None:
        while not stop.is_set():
            sign()

    th = threading.Thread(target=signing)
    th.start()
    beside = spin()
    stop.set()
    th.join()
    print(f"{name:13s} {per:6.1f} µs a signature; a Python loop beside it takes {beside / alone:4.2f}x its time alone")


def main() -> None:
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    secret = sodium.crypto_sign_seed_keypair(seed)[1]
    assert sodium.crypto_sign(MESSAGE, secret)[:64] == key.sign(MESSAGE)  # the same signature
    alone = spin()
    measure("cryptography", lambda: key.sign(MESSAGE), alone)
    measure("libsodium", lambda: sodium.crypto_sign(MESSAGE, secret)[:64], alone)


if __name__ == "__main__":
    main()
