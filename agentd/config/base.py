"""Shared pieces of the config schema: names, paths, the strict base model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    ValidationInfo,
)

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


FALLBACK_REASONS = (
    "timeout",
    "low_confidence",
    "invalid_output",
    "model_error",
    "model_missing",
    "circuit_open",
    "overloaded",
    "mode_rules_only",
)


MODES = ("auto", "rules_only", "observe", "manual")


DEFAULT_CONFIG_PATHS = (Path("/etc/agentd/agentd.yaml"), Path("config/agentd.yaml"))


def _name(value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise ValueError(f"{value!r} must match [a-z0-9][a-z0-9_-]{{0,62}}")
    return value


def _resolve(value: str, info: ValidationInfo) -> str:
    base = (info.context or {}).get("base")
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return str(path)


Name = Annotated[str, AfterValidator(_name)]


ConfigPath = Annotated[str, AfterValidator(_resolve)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
