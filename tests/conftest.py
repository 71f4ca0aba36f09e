"""Shared fixtures: small real configs, node keys, and a helper to poll the store.

Everything is real: configs are YAML files written to ``tmp_path`` and loaded with
``load_config``; stores are SQLite files; keys are Ed25519 files. The models are
``delay`` stages (a synthetic backend that waits, then answers a fixed label).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentd.config.loader import LoadedConfig, load_config
from agentd.trust.keys import NodeKey, create_key

SKILL = "freezer"
MODELS = Path(__file__).resolve().parent.parent / "models"
# The text stages' model as the example loads it (scripts/get_minilm.py derives it from the packaged one).
MINILM = {"path": str(MODELS / "all-MiniLM-L6-v2.int8-matmul.onnx"),
          "sha256": "0d2e882439b463ee9de739b43b28dda82b2ef6bc3db0f9165fb694cdf32f1453",
          "tokenizer": str(MODELS / "all-MiniLM-L6-v2.tokenizer.json"),
          "tokenizer_sha256": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"}


def base_config(data_dir: Path) -> dict[str, Any]:
    """A small, valid config: one delay model and one freezer-like skill."""
    return {
        "node": {"id": "test-node", "fleet": "test-fleet", "data_dir": str(data_dir)},
        "lifecycle": {"stage": "dev", "release": "test-1"},
        "mqtt": {"enabled": False},
        "state": {"checkpoint_every": 1000},
        "daemon": {"mode": "auto", "drain_timeout_s": 2},
        "models": [
            {"name": "fast", "backend": "delay", "delay_ms": 1, "label": "warn", "confidence": 0.95},
        ],
        "skills": [
            {
                "name": SKILL,
                "input": {
                    "temperature_c": {"type": "number", "min": -60, "max": 60},
                    "door_open_s": {"type": "number", "min": 0, "max": 86400, "required": False},
                    "note": {"type": "string", "required": False, "max_length": 50},
                },
                "actions": ["none", "alert", "defrost", "shutdown"],
                "deadline_ms": 200,
                "cascade": [{"model": "fast", "min_confidence": 0.8, "map": {"warn": "alert"}}],
                "rules": [
                    {"name": "hot", "when": "temperature_c > 0.0", "action": "shutdown"},
                    {"name": "warm", "when": "temperature_c > -10.0", "action": "alert"},
                    {"name": "all_good", "default": True, "action": "none"},
                ],
                "guards": [],
                "approval": {"actions": ["shutdown"], "interim": "alert", "timeout_s": 900, "on_timeout": "alert"},
                "handlers": [
                    {"action": "alert", "type": "log"},
                    {"action": "shutdown", "type": "log"},
                ],
            }
        ],
    }


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge mappings; lists and scalars in ``over`` replace those in ``base``."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def config_dict(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """The base config with overrides; ``skill=`` merges into skills[0], ``model=`` into models[0]."""
    data = base_config(tmp_path / "data")
    skill = overrides.pop("skill", None)
    model = overrides.pop("model", None)
    data = _merge(data, overrides)
    if skill is not None:
        data["skills"][0] = _merge(data["skills"][0], skill)
    if model is not None:
        data["models"][0] = _merge(data["models"][0], model)
    return data


def make_config(tmp_path: Path, **overrides: Any) -> LoadedConfig:
    """Write the base config (with overrides) to ``tmp_path/config/agentd.yaml`` and load it."""
    folder = tmp_path / "config"
    folder.mkdir(exist_ok=True)
    path = folder / "agentd.yaml"
    path.write_text(yaml.safe_dump(config_dict(tmp_path, **overrides), sort_keys=False))
    return load_config(path)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def node_key(data_dir: Path) -> NodeKey:
    """This test's node key, created (0600) under the test's data_dir."""
    return create_key(data_dir)[0]


@pytest.fixture
def config_factory(tmp_path: Path) -> Callable[..., LoadedConfig]:
    """``config_factory(**overrides)``: make_config bound to this test's tmp_path."""

    def make(**overrides: Any) -> LoadedConfig:
        return make_config(tmp_path, **overrides)

    return make


async def wait_for(check: Callable[[], Awaitable[Any]], *, limit_s: float = 3.0, interval: float = 0.01) -> Any:
    """Poll ``check`` until it returns something truthy; fail the test after ``limit_s`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > end:
            pytest.fail(f"condition not met within {limit_s} s (last value: {value!r})")
        await asyncio.sleep(interval)


@pytest.fixture
def wait_until() -> Callable[..., Awaitable[Any]]:
    """The ``wait_for`` poller, for tests (``await wait_until(check, limit_s=...)``)."""
    return wait_for


@pytest.fixture
def config_data(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """``config_data(**overrides)``: the base config as a dict (for tests that edit or dump it)."""

    def make(**overrides: Any) -> dict[str, Any]:
        return config_dict(tmp_path, **overrides)

    return make
