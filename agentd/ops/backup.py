"""Backup and restore of a node's database (`agentd backup`, `agentd restore`).

A backup holds ``agentd.db`` (copied with SQLite's online backup API, so it is one
consistent snapshot even while the daemon writes), ``node.pub`` (the node's public key)
and ``manifest.json`` (node, fleet, config SHA-256, the database's SHA-256, the audit
head), signed with the node key in ``manifest.sig``. It is a directory, or the same three
files in a tar archive. The node's private key is deliberately not in it: keep that in
your key escrow (docs/OPERATIONS.md).

Restore refuses a backup whose manifest or audit chain does not verify and a node that
is running, and keeps the database it replaces as ``agentd.db.replaced-<time>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd import __version__
from agentd.errors import InputError, StateError, TrustError, Unreachable
from agentd.stages.loading import file_sha256
from agentd.state import queries
from agentd.trust.audit import Bound
from agentd.trust.canonical import canonical
from agentd.trust.keys import load_key, verify

if TYPE_CHECKING:
    from agentd.config.loader import LoadedConfig

FORMAT = 1
FILES = ("manifest.json", "manifest.sig", "node.pub", "agentd.db")
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
MAX_MANIFEST_BYTES = 64 * 1024


def _is_tar(path: Path) -> bool:
    return path.name.endswith(TAR_SUFFIXES)


def create_backup(loaded: LoadedConfig, dest: Path) -> dict[str, Any]:
    """Write a backup of the node to ``dest`` (a new directory or a .tar/.tar.gz/.tgz file).

    The copy is verified (integrity and audit chain) before it is reported; returns the manifest.
    """
    cfg = loaded.config
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        raise InputError(f"{dest} already exists; choose a new path (a backup never overwrites another)")
    source = queries.db_path(cfg.data_dir)
    if not source.exists():
        raise StateError(f"{source}: no database to back up yet")
    key = load_key(cfg.data_dir)
    parent = dest.parent if _is_tar(dest) else dest
    parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(prefix=".agentd-backup-", dir=dest.parent if _is_tar(dest) else dest) as tmp:
        work = Path(tmp)
        copy = work / "agentd.db"
        _online_copy(source, copy)
        conn = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
        try:
            result = queries.verify_audit(conn, trusted_key=key.public_b64, bound=_bound(loaded))
            if not result.ok:
                raise StateError(f"the node's audit chain does not verify (record {result.first_bad_seq}: {result.problem});"
                                 " run `agentd audit verify` and see docs/OPERATIONS.md before backing it up")
            head = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone() or (0, "")
            decisions = conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
        finally:
            conn.close()
        manifest = {
            "format": FORMAT,
            "node": cfg.node.id,
            "fleet": cfg.node.fleet,
            "created_at": round(time.time(), 3),
            "agentd_version": __version__,
            "config_sha256": loaded.sha256,
            "public_key": key.public_b64,
            "lifecycle": {"stage": cfg.lifecycle.stage, "release": cfg.lifecycle.release},
            "database": {"file": "agentd.db", "bytes": copy.stat().st_size, "sha256": file_sha256(copy)},
            "decisions": decisions,
            "audit": {"records": result.records, "checkpoints": result.checkpoints, "head_seq": head[0], "head_hash": head[1]},
        }
        (work / "manifest.json").write_bytes(canonical(manifest))
        (work / "manifest.sig").write_text(key.sign(canonical(manifest)) + "\n")
        (work / "node.pub").write_text(key.public_b64 + "\n")
        for name in FILES:  # a backup holds every decision: readable by its owner only
            os.chmod(work / name, 0o600)
            with (work / name).open("rb") as fh:
                os.fsync(fh.fileno())
        if _is_tar(dest):
            part = dest.with_name(dest.name + ".part")
            part.touch(mode=0o600)
            with tarfile.open(part, "w:gz" if dest.name.endswith((".gz", ".tgz")) else "w") as tar:
                for name in FILES:
                    tar.add(work / name, arcname=name)
            os.replace(part, dest)
        else:
            for name in FILES:
                os.replace(work / name, dest / name)
    return manifest


def _bound(loaded: LoadedConfig) -> Bound:
    """The tail bound of a chain that has no chained checkpoint yet: the config's."""
    return Bound(loaded.config.state.checkpoint_every, loaded.config.state.checkpoint_interval_s)


def _online_copy(source: Path, target: Path) -> None:
    """SQLite's online backup API: one consistent snapshot, while writers carry on."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    except sqlite3.Error as exc:
        raise StateError(f"{source}: backup failed: {exc}") from exc
    finally:
        dst.close()
        src.close()


@contextlib.contextmanager
def _opened(path: Path, scratch: Path) -> Iterator[Path]:
    """The backup's files in a directory: ``path`` itself, or a tar unpacked into ``scratch``."""
    if path.is_dir():
        yield path
        return
    if not _is_tar(path) and not tarfile.is_tarfile(path):
        raise InputError(f"{path}: not a backup (a directory or a .tar/.tar.gz made by `agentd backup`)")
    out = scratch / "unpacked"
    out.mkdir()
    try:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name not in FILES or not member.isfile():
                    raise InputError(f"{path}: unexpected member {member.name[:100]!r}; not a backup made by `agentd backup`")
                # plain files with known names only (checked above); the "data" filter where this Python has it
                if hasattr(tarfile, "data_filter"):
                    tar.extract(member, out, filter="data")
                else:
                    tar.extract(member, out)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read the archive: {exc}") from exc
    yield out


def check_backup(folder: Path, *, node: str) -> dict[str, Any]:
    """Verify a backup's manifest, signature, database hash, integrity and audit chain; its manifest."""
    for name in FILES:
        if not (folder / name).is_file():
            raise InputError(f"{folder}: {name} is missing; not a complete backup")
    raw = (folder / "manifest.json").read_bytes()
    if len(raw) > MAX_MANIFEST_BYTES:
        raise InputError(f"{folder}/manifest.json is over {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(raw)
        public_key, expected_db = str(manifest["public_key"]), str(manifest["database"]["sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{folder}/manifest.json is not a backup manifest: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise InputError(f"backup format {manifest.get('format')!r} is not supported (this agentd reads format {FORMAT})")
    if not verify(public_key, canonical(manifest), (folder / "manifest.sig").read_text().strip()):
        raise TrustError("the backup's manifest signature does not verify: the manifest was altered; refusing it")
    if manifest.get("node") != node:
        raise InputError(f"the backup is of node {manifest.get('node')!r}, this config is node {node!r}; restore it on that node")
    db = folder / "agentd.db"
    actual = file_sha256(db)
    if actual != expected_db:
        raise TrustError(f"the backup's database does not match its manifest (sha256 {actual[:16]}..., manifest says"
                         f" {expected_db[:16]}...): it was altered or damaged; refusing it")
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchmany(3)]
        if rows != ["ok"]:
            raise StateError(f"the backup's database is damaged: {'; '.join(map(str, rows))}; refusing it")
        result = queries.verify_audit(conn, trusted_key=public_key)
    except sqlite3.DatabaseError as exc:
        raise StateError(f"the backup's database cannot be read: {exc}; refusing it") from exc
    finally:
        conn.close()
    if not result.ok:
        raise TrustError(f"the backup's audit chain does not verify (record {result.first_bad_seq}: {result.problem}); refusing it")
    return dict(manifest)


def restore_backup(loaded: LoadedConfig, path: Path, *, force: bool = False, timeout_s: float = 5.0) -> dict[str, Any]:
    """Replace the node's database with a verified backup; the node must be stopped.

    Where a broker is configured the peers are asked first for the heads of this node they
    witnessed (``ops.fleet_audit.restore_check``): a backup older than one of them, or no
    answer, is refused unless ``force``; what they said is kept in the restore record."""
    from agentd.control.client import request
    from agentd.ops.fleet_audit import restore_check

    cfg = loaded.config
    try:
        request(cfg.socket_path, {"op": "ping"}, timeout_s=3)
    except Unreachable:
        pass
    else:
        raise StateError(f"node {cfg.node.id} is running (socket {cfg.socket_path}); stop it first with"
                         " `systemctl stop agentd` (or SIGTERM its `agentd run`), then run restore again")
    target = queries.db_path(cfg.data_dir)
    users = _processes_using(target)
    if users:
        raise StateError(f"{target} is open in process(es) {', '.join(map(str, users))} (a running node, or `agentd decide`);"
                         " stop it first with `systemctl stop agentd`, then run restore again")
    cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    with tempfile.TemporaryDirectory(prefix=".agentd-restore-", dir=cfg.data_dir) as tmp:
        scratch = Path(tmp)
        with _opened(path, scratch) as folder:
            manifest = check_backup(folder, node=cfg.node.id)
            _check_node_key(cfg.data_dir, str(manifest["public_key"]))
            staged = scratch / "agentd.db.new"
            shutil.copyfile(folder / "agentd.db", staged)
        with staged.open("rb") as fh:
            os.fsync(fh.fileno())
        fleet = restore_check(cfg, staged, target, load_key(cfg.data_dir), force=force, timeout_s=timeout_s)
        replaced, head, nonces = None, None, 0
        if target.exists():
            replaced = target.with_name(f"{target.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
            _online_copy(target, replaced)  # with whatever its WAL held
            head = _audit_head(replaced)
            nonces = _keep_nonces(replaced, staged)  # a command refused as replayed before stays refused after
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                target.with_name(target.name + suffix).unlink()
        os.replace(staged, target)
    dir_fd = os.open(cfg.data_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    restored = {"seq": manifest["audit"]["records"], "backup_created_at": manifest["created_at"]}
    record = {"from": head, "to": restored, "nonces_kept": nonces, "by": _local_user(), "replaced": str(replaced) if replaced else None,
              "forced": force, "fleet": fleet}
    asyncio.run(_record_restore(loaded, record))
    return {
        "database": str(target),
        "replaced": str(replaced) if replaced else None,
        "restore_record": record,
        "node": manifest["node"],
        "backup_created_at": manifest["created_at"],
        "audit_records": manifest["audit"]["records"],
        "decisions": manifest["decisions"],
    }


def _audit_head(db: Path) -> dict[str, Any] | None:
    """Where the replaced database's audit trail ended: its last record's seq and hash."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT seq, hash, ts FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    except sqlite3.DatabaseError:
        return None
    finally:
        conn.close()
    return None if row is None else {"seq": row[0], "hash": row[1], "ts": row[2]}


def _keep_nonces(old: Path, staged: Path) -> int:
    """Carry every command nonce of the replaced database into the restored one: nonces never roll
    back, so a restore cannot make a fleet command that was refused as a replay acceptable again."""
    conn = sqlite3.connect(staged)
    try:
        conn.execute("ATTACH DATABASE ? AS old", (f"file:{old}?mode=ro",))
        before = conn.execute("SELECT COUNT(*) FROM nonces").fetchone()[0]
        conn.execute("INSERT OR IGNORE INTO nonces (id, expires_at) SELECT id, expires_at FROM old.nonces")
        conn.commit()
        kept = int(conn.execute("SELECT COUNT(*) FROM nonces").fetchone()[0]) - int(before)
        conn.execute("DETACH DATABASE old")
    except sqlite3.DatabaseError as exc:
        raise StateError(f"cannot carry the command nonces into the restored database: {exc}; nothing was replaced") from exc
    finally:
        conn.close()
    with staged.open("rb") as fh:
        os.fsync(fh.fileno())
    return kept


async def _record_restore(loaded: LoadedConfig, body: dict[str, Any]) -> None:
    """The restore is history, not a rewind: a signed audit record of it (from which head to which),
    sealed by the checkpoint the store signs as it closes."""
    from agentd.state.store import open_store

    store = open_store(loaded, load_key(loaded.config.data_dir))
    async with store:
        await store.audit("restore", body)


def _local_user() -> str:
    import getpass

    return f"local:{getpass.getuser()}(uid={os.getuid()})"


def _processes_using(db: Path) -> list[int]:
    """Processes that hold the database (or its WAL) open, from /proc; those we may not inspect are missed.

    The socket ping misses a daemon whose socket lives elsewhere (systemd's RUNTIME_DIRECTORY).
    """
    names = {str(db.resolve()) + suffix for suffix in ("", "-wal", "-shm")}
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        if proc.name == str(os.getpid()):
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in names:
                        found.append(int(proc.name))
                        break
    return sorted(found)


def _check_node_key(data_dir: Path, public_key: str) -> None:
    """The box must hold the key that signed the backup's checkpoints, or verify would fail after restore."""
    from agentd.errors import AgentdError

    try:
        current = load_key(data_dir).public_b64
    except AgentdError as exc:
        raise TrustError(f"{exc}; a restore needs the node key that signed the backup (public key {public_key}):"
                         " copy keys/node.key from your key escrow first (mode 0600)") from exc
    if current != public_key:
        raise TrustError(f"this box's node key ({current[:12]}...) is not the one that signed the backup ({public_key[:12]}...);"
                         " copy the node's keys/node.key from your key escrow first (docs/OPERATIONS.md, restore)")
