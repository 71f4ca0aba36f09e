"""``agentd model card``: write a model's input card from the data it was trained on.

The training data is a JSON Lines file, one row a line: either the row's fields as an
object, or an ``agentd eval`` line (``{"data": {...}, ...}``), whose ``data`` is used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agentd.errors import InputError
from agentd.stages.card import build_card
from agentd.stages.loading import file_sha256
from agentd.trust.untrusted import parse_json

MAX_LINE_BYTES = 1 << 20
MAX_ROWS = 10_000_000


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The training rows of a JSON Lines file; InputError naming file:line for a bad one."""
    rows: list[dict[str, Any]] = []
    try:
        with path.open("rb") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if len(rows) >= MAX_ROWS:
                    raise InputError(f"{path}: more than {MAX_ROWS} rows")
                try:
                    obj = parse_json(line, max_bytes=MAX_LINE_BYTES, what=f"{path}:{n}")
                except InputError as exc:
                    raise InputError(f"{path}:{n}: {exc}") from exc
                row = obj.get("data", obj) if isinstance(obj, dict) else None
                if not isinstance(row, dict):
                    raise InputError(f"{path}:{n}: a row is a JSON object of fields (or an eval line with \"data\")")
                rows.append(row)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    return rows


def write_card(model: str, inputs: list[str], data: Path, out: Path, *, k: int, quantile: float) -> dict[str, Any]:
    """Build the card for ``model`` (its ``inputs``, in order) from ``data`` and write it to ``out``."""
    rows = read_rows(data)
    try:
        card = build_card(rows, inputs, model=model, k=k, quantile=quantile)
    except ValueError as exc:
        raise InputError(f"{data}: {exc}") from exc
    out.write_text(json.dumps(card, separators=(",", ":")) + "\n", encoding="utf-8")
    return {"model": model, "card": str(out), "card_sha256": file_sha256(out), "samples": card["samples"], "inputs": inputs,
            "reference_rows": len(card["joint"]["points"]), "threshold": card["joint"]["threshold"],
            "ranges": {f: [card["fields"][f]["min"], card["fields"][f]["max"]] for f in inputs}}
