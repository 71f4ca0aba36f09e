"""Finding, reading and validating a config file; errors name file, line and key."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ValidationError,
)

from agentd.config.base import DEFAULT_CONFIG_PATHS
from agentd.config.schema import _MODEL_BY_TAG, Config
from agentd.config.yamlsafe import MAX_BYTES, YamlDoc, load_yaml
from agentd.errors import ConfigError


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config with where it came from."""

    config: Config
    path: Path
    sha256: str
    doc: YamlDoc

    def where(self, *loc: str | int) -> str:
        """``file:line`` of a key path, for error messages."""
        return self.doc.where(tuple(loc))


def find_config(path: str | os.PathLike[str] | None) -> Path:
    """The config to use: the given path, $AGENTD_CONFIG, /etc/agentd/agentd.yaml, ./config/agentd.yaml."""
    if path:
        return Path(path)
    env = os.environ.get("AGENTD_CONFIG")
    if env:
        return Path(env)
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.exists():
            return candidate
    raise ConfigError(
        "no config file: pass --config PATH, set AGENTD_CONFIG, or create /etc/agentd/agentd.yaml"
    )


def load_config(path: str | os.PathLike[str], *, max_bytes: int = MAX_BYTES) -> LoadedConfig:
    """Read, parse and validate a config file; ConfigError with file:line and key on any problem."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror}") from exc
    return parse_config(raw, source=str(p), base=p.resolve().parent, max_bytes=max_bytes)


def parse_config(
    raw: bytes | str, *, source: str = "<string>", base: Path | None = None, max_bytes: int = MAX_BYTES
) -> LoadedConfig:
    """Validate config text; ``base`` is where relative paths resolve."""
    data = raw.encode() if isinstance(raw, str) else raw
    doc = load_yaml(data, source=source, max_bytes=max_bytes)
    if not isinstance(doc.data, dict):
        raise ConfigError(f"{source}: the config must be a YAML mapping at the top level")
    try:
        config = Config.model_validate(doc.data, context={"base": base or Path.cwd()})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, doc)) from exc
    return LoadedConfig(config=config, path=Path(source), sha256=hashlib.sha256(data).hexdigest(), doc=doc)


def format_validation_error(exc: ValidationError, doc: YamlDoc) -> str:
    """One line per pydantic error: ``file:line key.path: message``."""
    out = []
    for err in exc.errors(include_url=False):
        raw = tuple(err["loc"])
        loc = tuple(p for i, p in enumerate(raw) if not _is_union_tag(raw, i))
        key = _dotted(loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            known = _known_keys(raw[:-1])
            if known:
                msg += f" (known: {', '.join(known)})"
        out.append(f"{doc.where(loc)} {key}: {msg}")
    return "\n".join(out)


def _is_union_tag(loc: tuple[str | int, ...], i: int) -> bool:
    """pydantic puts the discriminator value after ``models[i]``; it is not a key of the file."""
    return i >= 2 and loc[i - 2] == "models" and isinstance(loc[i - 1], int) and loc[i] in _MODEL_BY_TAG


def _dotted(loc: tuple[str | int, ...]) -> str:
    s = ""
    for part in loc:
        s += f"[{part}]" if isinstance(part, int) else (f".{part}" if s else str(part))
    return s


def _known_keys(parent: tuple[str | int, ...]) -> list[str]:
    model: type[BaseModel] | None = Config
    for i, part in enumerate(parent):
        if model is None or isinstance(part, int):
            continue
        if _is_union_tag(parent, i):
            model = _MODEL_BY_TAG[str(part)]
            continue
        info = model.model_fields.get(str(part))
        if info is None:
            return []
        model = _model_of(info.annotation)
    return list(model.model_fields) if model else []


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found:
            return found
    return None
