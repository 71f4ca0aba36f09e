"""Rotating the node key (`agentd keys rotate`, issue 15): history stays verifiable across it.

With the data folder's lock held (so no daemon runs), the new key is written beside the old
one as ``keys/node.key.new`` (0600, synced); the store, opened with the old key, appends a
``key_rotation`` record signed by both keys over its place in the chain, with a checkpoint at
it signed by the new key (``Store.rotate_key``, ``trust.checkpoints``); only then does the
new key replace ``keys/node.key`` and the pin ``keys/node.pub``. The old public key is kept as
``keys/retired/node-<time>.pub`` (exports made before the rotation hold no rotation record, and
verify with it), the old private key as ``keys/retired/node-<time>.key`` (0600) for the
operator to move to the key escrow. A crash between the commit and the rename leaves
``node.key.new``: running the command again finds the rotation in the chain and finishes it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd.errors import StateError
from agentd.files import replace_atomically
from agentd.state import queries
from agentd.trust.keys import create_key_file, key_path, load_key, load_key_file, pin_path

if TYPE_CHECKING:
    from agentd.config.loader import LoadedConfig


def _rotated_to(db: Path) -> str | None:
    """The new key of the chain's newest ``key_rotation`` record, if any."""
    if not db.exists():
        return None
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT body FROM audit WHERE kind = 'key_rotation' ORDER BY seq DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    return str(json.loads(row[0]).get("new")) if row else None


def rotate_node_key(loaded: LoadedConfig) -> dict[str, Any]:
    """Rotate the node key of a stopped node; returns the old and new public keys, the rotation's seq and the files."""
    from agentd.daemon.node import lock_data_dir
    from agentd.state.store import open_store

    cfg = loaded.config
    db = queries.db_path(cfg.data_dir)
    if not db.exists():
        raise StateError(f"{db}: no audit trail yet; a node that never ran needs no rotation (`agentd keys init` makes its key)")
    lock = lock_data_dir(cfg.data_dir)  # StateError while the daemon runs
    try:
        current, staged = key_path(cfg.data_dir), key_path(cfg.data_dir).with_name("node.key.new")
        old = load_key(cfg.data_dir)
        seq = None
        if staged.exists() and _rotated_to(db) == load_key_file(staged).public_b64:
            new = load_key_file(staged)  # committed before a crash: finish it
        else:
            staged.unlink(missing_ok=True)
            new, _ = create_key_file(staged)

            async def rotate() -> int:
                async with open_store(loaded, old) as store:
                    return await store.rotate_key(new)

            seq = asyncio.run(rotate())
        retired = cfg.data_dir / "keys" / "retired"
        retired.mkdir(mode=0o700, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        old_pub, old_key = retired / f"node-{stamp}.pub", retired / f"node-{stamp}.key"
        replace_atomically(old_pub, old.public_b64.encode("ascii") + b"\n", 0o644)
        os.link(current, old_key)
        os.replace(staged, current)
        replace_atomically(pin_path(cfg.data_dir), new.public_b64.encode("ascii") + b"\n", 0o644)
    finally:
        lock.close()
    return {"node": cfg.node.id, "old": old.public_b64, "new": new.public_b64, "seq": seq, "pin": str(pin_path(cfg.data_dir)),
            "retired_public_key": str(old_pub), "retired_private_key": str(old_key),
            "config_pins_old": cfg.trust.audit_public_key == old.public_b64}
