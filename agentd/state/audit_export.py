"""Exports of the audit trail that stay verifiable off the box (`agentd audit export`, `agentd audit verify --export`).

An export is JSON lines, in seq order: ``{"type": "record", seq, ts, kind, ref, body, prev_hash,
hash}`` per record, its ``body`` the record's stored canonical text spliced in byte for byte
(so the record hash can be checked from the export alone: RFC 8785 text parses back to the
same text), and ``{"type": "checkpoint", ...}`` (``trust.checkpoints.Checkpoint.as_dict``)
after the record each checkpoint covers, the one at ``--after`` first (it links this export's
checkpoints to the previous export's). A later checkpoint vouches, through the hash links, for
every record before it, so an export needs no anchor below its first record.

``verify_export`` checks one or more exports, with the node's database after them if given,
as one chain: overlapping records and checkpoints must be identical, and the whole must pass
``trust.audit.verify_chain`` against the pinned key. A line must be byte for byte what
`agentd audit export` writes (no member twice, the stored text as is), so that what a SIEM's
parser reads is what was verified; and exports alone must hold a checkpoint: hashes anyone can
compute, so records under no signature prove nothing.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence

from agentd.errors import InputError, TrustError
from agentd.state import queries
from agentd.state.audit_check import check_tables
from agentd.state.audit_log import read_checkpoints
from agentd.trust.audit import DEFAULT_BOUND, GENESIS, AuditRow, Bound, Checkpoint, VerifyResult, verify_chain
from agentd.trust.canonical import canonical

MAX_LINE = 16 * 2**20


def export_lines(conn: sqlite3.Connection, after: int = 0) -> Iterator[tuple[int | None, str]]:
    """The export's lines after record ``after``, from one snapshot: ``(record seq, line)``, None for a checkpoint's."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")  # the records and the checkpoints over them from the same snapshot
    try:
        cps = {c.seq: c for c in read_checkpoints(conn, "WHERE seq >= ?", (after,))}
        if after in cps:
            yield None, _cp_line(cps[after])
        for row in queries.iter_audit(conn, after):
            yield row.seq, _record_line(row)
            if row.seq in cps:
                yield None, _cp_line(cps[row.seq])
    finally:
        if own:
            conn.execute("ROLLBACK")


def _cp_line(cp: Checkpoint) -> str:
    return json.dumps({"type": "checkpoint", **cp.as_dict()}, separators=(",", ":"), ensure_ascii=False)


def _record_line(row: AuditRow) -> str:
    head = json.dumps({"type": "record", "seq": row.seq, "ts": row.ts, "kind": row.kind, "ref": row.ref},
                      separators=(",", ":"), ensure_ascii=False)
    tail = json.dumps({"prev_hash": row.prev_hash, "hash": row.hash}, separators=(",", ":"))
    return f'{head[:-1]},"body":{row.body},{tail[1:]}'


class AlteredLine(InputError):
    """A line that parses but is not what `agentd audit export` wrote: tampering, exit 1."""

    exit_code = 1


def _unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise AlteredLine(f"a member appears twice: {sorted(k for k in out if [p[0] for p in pairs].count(k) > 1)[:3]}")
    return out


def parse_export(name: str, lines: Iterable[str]) -> tuple[list[AuditRow], list[Checkpoint]]:
    """The records and checkpoints of an export; InputError naming ``name:line`` on anything else."""
    rows: list[AuditRow] = []
    cps: list[Checkpoint] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        if len(line) > MAX_LINE:
            raise InputError(f"{where}: a line of {len(line)} characters; at most {MAX_LINE}")
        try:
            obj = json.loads(line, object_pairs_hook=_unique)
            kind = obj.get("type", "record")  # an export from before issue 15 has records only, untyped
            if kind == "checkpoint":
                cps.append(Checkpoint.from_dict(obj))
                exact = _cp_line(cps[-1])
            elif kind == "record":
                ref = obj["ref"]
                rows.append(AuditRow(int(obj["seq"]), float(obj["ts"]), str(obj["kind"]), None if ref is None else str(ref),
                                     canonical(obj["body"]).decode(), str(obj["prev_hash"]), str(obj["hash"])))
                exact = _record_line(rows[-1])
            else:
                raise InputError(f"{where}: unknown line type {str(kind)[:40]!r} (known: record, checkpoint)")
        except AlteredLine as exc:
            raise AlteredLine(f"{where}: altered: {exc}") from exc
        except (ValueError, KeyError, TypeError, AttributeError, TrustError) as exc:
            raise InputError(f"{where}: not a line of `agentd audit export`: {exc}") from exc
        if "type" in obj and line.rstrip("\r\n") != exact:
            raise AlteredLine(f"{where}: altered: not byte for byte the line `agentd audit export` writes of this"
                              " record or checkpoint (its stored text differs)")
    return rows, cps


def verify_export(
    exports: Sequence[tuple[str, Iterable[str]]],
    *,
    trusted_key: str | None,
    bound: Bound = DEFAULT_BOUND,
    conn: sqlite3.Connection | None = None,
) -> VerifyResult:
    """Verify ``exports`` (``(name, lines)``), and the database ``conn`` after them, as one chain."""
    rows: dict[int, tuple[str, AuditRow]] = {}
    cps: dict[int, tuple[str, Checkpoint]] = {}
    try:
        sources: list[tuple[str, list[AuditRow], list[Checkpoint]]] = [(name, *parse_export(name, lines)) for name, lines in exports]
    except AlteredLine as exc:
        return VerifyResult(False, 0, 0, None, str(exc))
    if conn is not None:
        sources.append(("the database", list(queries.iter_audit(conn, 0)), read_checkpoints(conn)))
    for name, own_rows, own_cps in sources:
        for r in own_rows:
            if r.seq in rows and rows[r.seq][1] != r:
                return VerifyResult(False, 0, 0, r.seq, f"record {r.seq} differs between {rows[r.seq][0]} and {name}")
            rows.setdefault(r.seq, (name, r))
        for c in own_cps:
            if c.seq in cps and cps[c.seq][1] != c:
                return VerifyResult(False, 0, 0, c.seq, f"the checkpoint at record {c.seq} differs between {cps[c.seq][0]} and {name}")
            cps.setdefault(c.seq, (name, c))
    if not rows:
        raise InputError(f"{', '.join(n for n, _ in exports)}: no audit records in it")
    if conn is None and not cps:
        return VerifyResult(False, len(rows), 0, None, (
            f"{', '.join(n for n, _ in exports)}: no signed checkpoint in it: its hashes anyone can compute, so nothing"
            " in it is signed (verify it with the database, --with-database, or with the export that holds its checkpoints)"))
    ordered = [r for _, (_, r) in sorted(rows.items())]
    first = ordered[0]
    result = verify_chain(ordered, [c for _, c in cps.values()], base_seq=first.seq - 1,
                          base_hash=GENESIS if first.seq == 1 else first.prev_hash, trusted_key=trusted_key, bound=bound,
                          anchored=first.seq == 1)
    if result.ok and conn is not None:
        seq, problem = check_tables(conn)
        if problem is not None:
            return VerifyResult(False, result.records, result.checkpoints, seq, problem, result.tail, result.key, result.head)
    return result

