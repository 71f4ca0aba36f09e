"""Doctor checks of the node's storage: the database (quick_check), its audit chain, free disk."""

from __future__ import annotations

import shutil
import sqlite3

from agentd.errors import AgentdError
from agentd.ops.doctor.findings import Check, Context, fail, ok


def check_database(ctx: Context) -> list[Check]:
    from agentd.state import queries
    from agentd.trust.audit import Bound
    from agentd.trust.keys import pinned_key

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
            trusted, where = pinned_key(cfg.data_dir, cfg.trust.audit_public_key)
        except AgentdError as exc:
            out.append(fail("audit chain", str(exc), "run `agentd keys init` (it pins keys/node.pub) or set trust.audit_public_key"))
            return out
        result = queries.verify_audit(conn, trusted_key=trusted, bound=Bound(cfg.state.checkpoint_every, cfg.state.checkpoint_interval_s))
        if result.ok:
            tail = f"; unsigned tail {result.tail.records} record(s)" if result.tail else ""
            out.append(ok("audit chain", f"{result.records} record(s), {result.checkpoints} signed checkpoint(s) verify"
                                         f" against the key from {where}{tail}"))
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
