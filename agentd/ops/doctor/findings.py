"""What a doctor check reports (``Check``), and the ``Context`` the checks share."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from agentd.config.loader import LoadedConfig
    from agentd.config.schema import Config

Status = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, how it went, and (unless ok) the one-line fix."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warn", detail, fix)


def skip(name: str, detail: str) -> Check:
    return Check(name, "skip", detail)


@dataclass
class Context:
    """What the checks share: the config path and, if it loaded, the config."""

    path: Path
    loaded: LoadedConfig | None = None

    @property
    def cfg(self) -> Config:
        assert self.loaded is not None
        return self.loaded.config
