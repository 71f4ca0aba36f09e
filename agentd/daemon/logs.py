"""One JSON object per line on stderr (journald), with the lifecycle fields on every line."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_STATIC: dict[str, Any] = {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_STATIC,
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def setup(level: str = "info", **static: Any) -> None:
    """Route the ``agentd`` logger to stderr as JSON lines; ``static`` fields go on every line."""
    _STATIC.clear()
    _STATIC.update({k: v for k, v in static.items() if v is not None})
    logger = logging.getLogger("agentd")
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
