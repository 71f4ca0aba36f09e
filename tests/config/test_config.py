"""agentd.config: validation, error messages with file:line and key, path resolution, bad input."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentd.config.loader import find_config, load_config, parse_config
from agentd.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "agentd.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing ``needle``."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in text")


MINIMAL = """\
node:
  id: n1
  data_dir: /tmp/agentd-test
skills:
  - name: s
    input:
      temperature_c: {type: number}
    actions: [none, alert]
    deadline_ms: 100
    rules:
      - name: warm
        when: temperature_c > 0.0
        action: alert
      - name: fallback
        default: true
        action: none
"""


def test_minimal_config_loads_with_defaults(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, MINIMAL))
    cfg = loaded.config
    assert cfg.node.fleet == "default"
    assert cfg.lifecycle.stage == "dev"
    assert cfg.mqtt.port == 1883
    assert cfg.state.synchronous == "full"
    assert cfg.daemon.mode == "auto"
    assert cfg.metrics.enabled is False
    assert cfg.skill("s").deadline_ms == 100
    assert len(loaded.sha256) == 64
    assert loaded.where("skills", 0, "rules", 1) == f"{loaded.path}:14"


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL)).config
    with pytest.raises(Exception, match="frozen"):
        cfg.node.id = "other"  # type: ignore[misc]


# -- error messages ----------------------------------------------------------


def test_error_names_file_line_and_key(tmp_path: Path) -> None:
    text = MINIMAL.replace("deadline_ms: 100", "deadline_ms: -5")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    line = line_of(text, "deadline_ms")
    assert str(err.value).startswith(f"{path}:{line} skills[0].deadline_ms: ")
    assert "greater than 0" in str(err.value)


def test_every_error_gets_its_own_line(tmp_path: Path) -> None:
    text = MINIMAL.replace("deadline_ms: 100", "deadline_ms: fast").replace("id: n1", "id: N1")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    lines = str(err.value).splitlines()
    assert len(lines) == 2
    assert any(":2 node.id:" in line for line in lines)
    assert any(f":{line_of(text, 'deadline_ms')} skills[0].deadline_ms:" in line for line in lines)


def test_unknown_key_lists_the_known_ones(tmp_path: Path) -> None:
    text = MINIMAL.replace("  id: n1", "  id: n1\n  flet: acme")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    msg = str(err.value)
    assert ":3 node.flet: unknown key (known: id, fleet, data_dir)" in msg


def test_unknown_key_in_a_rule_lists_rule_keys(tmp_path: Path) -> None:
    text = MINIMAL.replace("        action: alert", "        action: alert\n        priority: 3")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert "skills[0].rules[0].priority: unknown key (known: name, when, action, default)" in str(err.value)


# Regression: the known keys of a delay/llama_cpp model used to list the ONNX model's keys.
def test_unknown_key_in_a_delay_model_lists_delay_keys(config_data: Any) -> None:
    data = config_data(model={"delay_msec": 5})
    with pytest.raises(ConfigError) as err:
        parse_config(dump(data))
    msg = str(err.value)
    assert "models[0].delay_msec: unknown key" in msg
    assert "delay_ms" in msg and "cancellable" in msg
    assert "sha256" not in msg


# Regression: backend tags ('onnx', 'delay', 'llama_cpp') used to be stripped anywhere in an error path.
def test_error_under_a_field_named_like_a_backend_keeps_its_key(config_data: Any) -> None:
    data = config_data(skill={"input": {"delay": {"type": "numbr"}}})
    with pytest.raises(ConfigError) as err:
        parse_config(dump(data))
    assert "skills[0].input.delay.type:" in str(err.value)


def test_model_error_location_skips_the_union_tag(config_data: Any) -> None:
    text = dump(config_data(model={"delay_ms": -1}))
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="c.yaml")
    assert f"c.yaml:{line_of(text, 'delay_ms')} models[0].delay_ms: " in str(err.value)


def test_unknown_backend_is_named(config_data: Any) -> None:
    with pytest.raises(ConfigError, match=r"models\[0\]: .*'tflite'.*'onnx', 'delay', 'llama_cpp'"):
        parse_config(dump(config_data(model={"backend": "tflite"})))


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"x\.yaml: the config must be a YAML mapping"):
        parse_config("- a\n- b\n", source="x.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        parse_config("", source="x.yaml")


def test_skills_are_required() -> None:
    with pytest.raises(ConfigError, match=r"skills: Field required"):
        parse_config("node: {id: n1}\n")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_names_refused(config_data: Any) -> None:
    for bad in ("Cold-Store", "-x", "a" * 64, "a b", ""):
        data = config_data(node={"id": bad})
        with pytest.raises(ConfigError, match=r"node\.id: "):
            parse_config(dump(data))


# Regression: NAME_RE used to end in '$' under re.match, letting one trailing newline through.
@pytest.mark.parametrize("key", ["id", "fleet"])
def test_names_with_a_trailing_newline_refused(config_data: Any, key: str) -> None:
    with pytest.raises(ConfigError, match=f"node.{key}: "):
        parse_config(dump(config_data(node={key: "cold-store-01\n"})))


# -- skill semantics -----------------------------------------------------------


def rules_without_default() -> list[dict[str, Any]]:
    return [{"name": "hot", "when": "temperature_c > 0.0", "action": "alert"}]


def test_default_rule_required(config_data: Any) -> None:
    text = dump(config_data(skill={"rules": rules_without_default()}))
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="c.yaml")
    msg = str(err.value)
    assert "skills[0]: " in msg and "need a default rule" in msg
    assert f"c.yaml:{line_of(text, '- name: freezer')}" in msg


def test_default_rule_must_be_last(config_data: Any) -> None:
    rules = [
        {"name": "d", "default": True, "action": "none"},
        {"name": "hot", "when": "temperature_c > 0.0", "action": "alert"},
    ]
    with pytest.raises(ConfigError, match="it must be the last rule"):
        parse_config(dump(config_data(skill={"rules": rules})))


def test_only_one_default_rule(config_data: Any) -> None:
    rules = [{"name": "d1", "default": True, "action": "none"}, {"name": "d2", "default": True, "action": "none"}]
    with pytest.raises(ConfigError, match="exactly one rule may be the default"):
        parse_config(dump(config_data(skill={"rules": rules})))


@pytest.mark.parametrize(
    ("skill", "where"),
    [
        ({"rules": [{"name": "d", "default": True, "action": "reboot"}]}, "rules[0].action"),
        ({"cascade": [{"model": "fast", "map": {"warn": "reboot"}}]}, "cascade[0].map.warn"),
        ({"guards": [{"name": "g", "when": "true", "action": "reboot"}]}, "guards[0].action"),
        ({"approval": {"actions": ["reboot"], "interim": "alert"}}, "approval.actions"),
        ({"approval": {"actions": ["shutdown"], "interim": "reboot"}}, "approval.interim"),
        ({"approval": {"on_timeout": "reboot"}}, "approval.on_timeout"),
        ({"approval": {"on_reject": "reboot"}}, "approval.on_reject"),
        ({"handlers": [{"action": "reboot"}]}, "handlers[0].action"),
    ],
)
def test_unknown_actions_refused(config_data: Any, skill: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(dump(config_data(skill=skill)))
    assert f"{where}: unknown action 'reboot' (known: none, alert, defrost, shutdown)" in str(err.value)


def test_approval_needs_an_interim_action(config_data: Any) -> None:
    data = config_data()
    data["skills"][0]["approval"] = {"actions": ["shutdown"]}
    with pytest.raises(ConfigError, match=r"approval\.interim is required"):
        parse_config(dump(data))


def test_duplicate_actions_refused(config_data: Any) -> None:
    with pytest.raises(ConfigError, match="actions must be unique"):
        parse_config(dump(config_data(skill={"actions": ["none", "alert", "none", "defrost", "shutdown"]})))


@pytest.mark.parametrize("field", ["action", "skill", "node", "event_id"])
def test_reserved_input_names_refused(config_data: Any, field: str) -> None:
    data = config_data(skill={"input": {field: {"type": "string"}}})
    with pytest.raises(ConfigError, match=f"input field '{field}' is a reserved name"):
        parse_config(dump(data))


def test_input_names_must_be_identifiers(config_data: Any) -> None:
    data = config_data(skill={"input": {"temp-c": {"type": "number"}}})
    with pytest.raises(ConfigError, match="not a valid identifier"):
        parse_config(dump(data))


def test_field_min_above_max_refused(config_data: Any) -> None:
    data = config_data(skill={"input": {"temperature_c": {"type": "number", "min": 5, "max": -5}}})
    with pytest.raises(ConfigError, match=r"input\.temperature_c: .*min 5\.0 is above max -5\.0"):
        parse_config(dump(data))


def test_cascade_model_must_be_declared(config_data: Any) -> None:
    with pytest.raises(ConfigError, match=r"cascade model 'ghost' is not declared under models \(declared: fast\)"):
        parse_config(dump(config_data(skill={"cascade": [{"model": "ghost"}]})))


def test_duplicate_model_and_skill_names_refused(config_data: Any) -> None:
    data = config_data()
    data["models"].append(dict(data["models"][0]))
    with pytest.raises(ConfigError, match="duplicate model names: fast"):
        parse_config(dump(data))
    data = config_data()
    data["skills"].append(dict(data["skills"][0]))
    with pytest.raises(ConfigError, match="duplicate skill names: freezer"):
        parse_config(dump(data))


def test_exec_handler_needs_argv(config_data: Any) -> None:
    data = config_data(skill={"handlers": [{"action": "alert", "type": "exec"}]})
    with pytest.raises(ConfigError, match="exec handler needs argv"):
        parse_config(dump(data))


def test_simulator_skill_must_exist(config_data: Any) -> None:
    data = config_data(daemon={"simulator": {"enabled": True, "skill": "ghost"}})
    with pytest.raises(ConfigError, match=r"daemon\.simulator\.skill 'ghost' is not a skill"):
        parse_config(dump(data))


def test_unknown_skill_lookup_names_known_skills(config_data: Any) -> None:
    cfg = parse_config(dump(config_data())).config
    with pytest.raises(ConfigError, match=r"unknown skill 'nope' \(known: freezer\)"):
        cfg.skill("nope")


# -- paths ---------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "etc" / "agentd"
    folder.mkdir(parents=True)
    text = MINIMAL.replace("data_dir: /tmp/agentd-test", "data_dir: ../../var") + (
        "mqtt:\n  tls:\n    ca: tls/ca.pem\n  password_file: secret.txt\n"
        "daemon:\n  socket: run/agentd.sock\n"
        "models:\n  - {name: m, backend: onnx, path: ../models/m.onnx, sha256: '" + "0" * 64 + "',"
        " inputs: [temperature_c], labels: [none, alert]}\n"
    )
    path = write(folder, text)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(os.path.relpath(path, elsewhere)).config
    assert Path(cfg.node.data_dir).resolve() == (tmp_path / "var").resolve()
    assert cfg.data_dir.resolve() == (tmp_path / "var").resolve()
    assert Path(cfg.mqtt.tls.ca).resolve() == (folder / "tls" / "ca.pem").resolve()  # type: ignore[union-attr]
    assert Path(cfg.mqtt.password_file).resolve() == (folder / "secret.txt").resolve()  # type: ignore[arg-type]
    assert cfg.socket_path.resolve() == (folder / "run" / "agentd.sock").resolve()
    assert Path(cfg.models[0].path).resolve() == (tmp_path / "etc" / "models" / "m.onnx").resolve()  # type: ignore[union-attr]


def test_absolute_paths_stay(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL)).config
    assert cfg.node.data_dir == "/tmp/agentd-test"


def test_parse_config_resolves_against_base(tmp_path: Path) -> None:
    text = MINIMAL.replace("data_dir: /tmp/agentd-test", "data_dir: var")
    cfg = parse_config(text, base=tmp_path).config
    assert Path(cfg.node.data_dir) == tmp_path / "var"


def test_find_config_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTD_CONFIG", str(tmp_path / "env.yaml"))
    assert find_config(tmp_path / "given.yaml") == tmp_path / "given.yaml"
    assert find_config(None) == tmp_path / "env.yaml"


# -- hostile input ---------------------------------------------------------------


def test_oversized_file_refused_quickly(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("w") as fh:
        fh.write(MINIMAL)
        for _ in range(2_000):  # ~2 MB of comment lines
            fh.write("# " + "x" * 1000 + "\n")
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"big\.yaml: file is \d+ bytes, over the limit of 1048576 bytes"):
        load_config(path)
    assert time.monotonic() - t0 < 2.0  # loose bound: it reads at most the limit


def test_alias_bomb_config_refused_quickly(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 9):  # 10**9 nodes once expanded
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    path = write(tmp_path, MINIMAL + "x-bomb:\n" + "".join(f"  {line}\n" for line in lines))
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="alias bomb"):
        load_config(path)
    assert time.monotonic() - t0 < 5.0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_arbitrary_text_raises_only_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_config_error(raw: bytes) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(raw)


_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
_keys = st.sampled_from(
    [
        "node",
        "id",
        "skills",
        "name",
        "input",
        "type",
        "rules",
        "when",
        "action",
        "default",
        "models",
        "backend",
        "delay",
        "onnx",
        "actions",
        "cascade",
        "model",
        "map",
        "approval",
        "x",
    ]
) | st.text(max_size=6)
_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4), max_leaves=20
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _values, max_size=6))
def test_arbitrary_yaml_structures_raise_only_config_error(data: dict[str, Any]) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(yaml.safe_dump(data))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    path=st.lists(
        st.sampled_from(["node", "skills", 0, "input", "rules", 1, "approval", "models", "cascade"]),
        min_size=1,
        max_size=4,
    ),
    value=_values,
)
def test_mutated_valid_config_raises_only_config_error(config_data: Any, path: list[Any], value: Any) -> None:
    data: Any = config_data()
    target = data
    for part in path[:-1]:
        try:
            target = target[part]
        except (KeyError, IndexError, TypeError):
            break
    is_dict = isinstance(target, dict)
    in_list = isinstance(target, list) and isinstance(path[-1], int) and path[-1] < len(target)
    if is_dict or in_list:
        target[path[-1]] = value
    with contextlib.suppress(ConfigError):
        parse_config(yaml.safe_dump(data))
