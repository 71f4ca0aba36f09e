"""Safe YAML loading that keeps line numbers and refuses oversized files and alias bombs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from agentd.errors import ConfigError

try:  # the C loader is much faster; fall back where libyaml is absent
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on the PyYAML build
    _Loader = yaml.SafeLoader

MAX_BYTES = 1024 * 1024
MAX_NODES = 100_000

Loc = tuple[str | int, ...]


@dataclass
class YamlDoc:
    """A parsed YAML document and the line (1-based) of every key/item in it."""

    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    source: str = "<string>"

    def where(self, loc: Loc) -> str:
        """``file:line`` for the deepest known prefix of ``loc``."""
        for n in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:n]))
            if line is not None:
                return f"{self.source}:{line}"
        return self.source


def load_yaml(text: str | bytes, *, source: str = "<string>", max_bytes: int = MAX_BYTES) -> YamlDoc:
    """Parse one YAML document safely.

    Refuses input over ``max_bytes`` before parsing, and documents whose alias
    expansion would exceed ``MAX_NODES`` nodes (a "billion laughs" bomb) before
    constructing them.
    """
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > max_bytes:
        raise ConfigError(f"{source}: file is {len(raw)} bytes, over the limit of {max_bytes} bytes")
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    loader = _Loader(decoded)
    try:
        node = loader.get_single_node()
        if node is None:
            return YamlDoc(data=None, source=source)
        lines: dict[Loc, int] = {}
        _walk(node, (), lines, [0], source)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{line}: invalid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(f"{source}: YAML nests too deeply (recursive alias?); refusing to load it") from exc
    finally:
        loader.dispose()
    return YamlDoc(data=data, lines=lines, source=source)


def _walk(node: yaml.Node, loc: Loc, lines: dict[Loc, int], count: list[int], source: str) -> None:
    count[0] += 1
    if count[0] > MAX_NODES:
        raise ConfigError(
            f"{source}: YAML expands to more than {MAX_NODES} nodes (alias bomb?); refusing to load it"
        )
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
            lines[(*loc, key)] = key_node.start_mark.line + 1
            _walk(value_node, (*loc, key), lines, count, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*loc, i), lines, count, source)
