"""agentd.yamlsafe: line numbers, size limit, alias bombs, bad bytes."""

from __future__ import annotations

import time

import pytest

from agentd.config.yamlsafe import MAX_NODES, load_yaml
from agentd.errors import ConfigError

DOC = """\
node:
  id: n1
skills:
  - name: a
    rules:
      - name: r0
      - name: r1
"""


def test_lines_of_keys_and_items() -> None:
    doc = load_yaml(DOC, source="cfg.yaml")
    assert doc.data["skills"][0]["rules"][1] == {"name": "r1"}
    assert doc.lines[("node",)] == 1
    assert doc.lines[("node", "id")] == 2
    assert doc.lines[("skills", 0)] == 4
    assert doc.lines[("skills", 0, "rules", 1)] == 7
    assert doc.where(("skills", 0, "rules", 1, "name")) == "cfg.yaml:7"


def test_where_falls_back_to_the_deepest_known_prefix() -> None:
    doc = load_yaml(DOC, source="cfg.yaml")
    assert doc.where(("skills", 0, "no_such_key", "deeper")) == "cfg.yaml:4"
    assert doc.where(("nothing",)) == "cfg.yaml:1"  # the document itself starts on line 1
    assert load_yaml("", source="e.yaml").where(("x",)) == "e.yaml"


def test_empty_document_is_none() -> None:
    assert load_yaml("").data is None
    assert load_yaml("# only a comment\n").data is None


def test_syntax_error_names_file_and_line() -> None:
    with pytest.raises(ConfigError, match=r"^bad\.yaml:3: invalid YAML"):
        load_yaml("a: 1\nb: [1, 2\nc: 3\n", source="bad.yaml")


def test_oversized_input_refused_before_parsing() -> None:
    text = "a: " + "x" * 2000
    with pytest.raises(ConfigError, match="over the limit of 1000 bytes"):
        load_yaml(text, source="big.yaml", max_bytes=1000)


def test_not_utf8_refused() -> None:
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_yaml(b"a: \xff\xfe\n", source="bin.yaml")


def test_alias_bomb_refused_quickly() -> None:
    # "Billion laughs": 9 levels of 9 aliases = 9**9 nodes once expanded.
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        refs = ", ".join([f"*l{i - 1}"] * 9)
        lines.append(f"l{i}: &l{i} [{refs}]")
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="alias bomb"):
        load_yaml("\n".join(lines), source="bomb.yaml")
    assert time.monotonic() - t0 < 5.0  # loose bound: refused before expanding


def test_node_limit_counts_plain_nodes_too() -> None:
    text = "[" + ", ".join(["1"] * (MAX_NODES + 10)) + "]"
    with pytest.raises(ConfigError, match=f"more than {MAX_NODES} nodes"):
        load_yaml(text, max_bytes=10 * 1024 * 1024)


def test_recursive_alias_refused() -> None:
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_yaml("a: &a [*a]\n", source="bad.yaml")


def test_unsafe_tags_refused() -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_yaml("a: !!python/object/apply:os.system ['true']\n")


def test_multiple_documents_refused() -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_yaml("a: 1\n---\nb: 2\n")
