"""Read models for learning from labels: the labelled decisions of a skill, and the shadow
answers given on them (plain data; the decision layer does the arithmetic)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

# The latest label of each decision (an operator may correct a label).
_LATEST = 'SELECT decision_id, action, "by" FROM labels WHERE id IN (SELECT MAX(id) FROM labels GROUP BY decision_id)'


def labelled(conn: sqlite3.Connection, skill: str | None = None, *, limit: int = 10_000) -> list[tuple[dict[str, Any], str]]:
    """(decision record, labelled action) for the newest ``limit`` labelled decisions, oldest first; the
    record carries its latest label's author as ``_labelled_by``."""
    where, args = ("WHERE d.skill = ?", (skill,)) if skill is not None else ("", ())
    try:
        rows = conn.execute(
            f"SELECT d.record, l.action, l.by FROM ({_LATEST}) l JOIN decisions d ON d.id = l.decision_id {where}"
            " ORDER BY d.created_at DESC LIMIT ?", (*args, limit)).fetchall()
    except sqlite3.OperationalError as exc:  # a database from before labels existed
        if "no such table" in str(exc):
            return []
        raise
    return [({**json.loads(record), "_labelled_by": by}, action) for record, action, by in reversed(rows)]


def labelled_shadow_answers(conn: sqlite3.Connection, skill: str, *, limit: int = 10_000) -> list[dict[str, Any]]:
    """The shadow answers on a skill's labelled decisions: stage index, model, version, action,
    confidence, and the labelled action; newest ``limit``, oldest first."""
    try:
        rows = conn.execute(
            f"SELECT s.stage_index, s.model, s.version, s.action, s.confidence, l.action, s.decision_id FROM shadow_answers s"
            f" JOIN ({_LATEST}) l ON l.decision_id = s.decision_id WHERE s.skill = ? ORDER BY s.created_at DESC LIMIT ?",
            (skill, limit)).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    keys = ("stage_index", "model", "version", "action", "confidence", "label", "decision_id")
    return [dict(zip(keys, r, strict=True)) for r in reversed(rows)]
