"""The ``metrics:`` section: the loopback Prometheus endpoint and the MQTT snapshot."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from agentd.config.base import _Model


def _loopback(value: str) -> str:
    if value not in ("127.0.0.1", "::1", "localhost"):
        raise ValueError(f"{value!r}: the metrics endpoint listens on loopback only (127.0.0.1, ::1 or localhost)")
    return value


class MetricsConfig(_Model):
    enabled: bool = False
    host: Annotated[str, AfterValidator(_loopback)] = "127.0.0.1"
    port: int = Field(default=9464, ge=1, le=65535)
    mqtt_interval_s: float = Field(default=60.0, ge=0, le=86400)  # 0: no snapshot on MQTT

    @model_validator(mode="after")
    def _check(self) -> MetricsConfig:
        if 0 < self.mqtt_interval_s < 1:
            raise ValueError("mqtt_interval_s must be 0 (off) or at least 1 second")
        return self

