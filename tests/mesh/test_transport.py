"""agentd.mesh.transport: the receipt time paho stamps on a message survives aiomqtt's queue."""

from __future__ import annotations

import aiomqtt
import paho.mqtt.client as mqtt

from agentd.mesh.transport import received_at, stamp_arrivals


def test_messages_carry_the_time_paho_read_them() -> None:
    stamp_arrivals()
    stamp_arrivals()  # idempotent
    raw = mqtt.MQTTMessage(mid=7, topic=b"agentd/v1/f/nodes/n/events/s")
    raw.payload, raw.timestamp = b"{}", 1234.5
    m = aiomqtt.Message._from_paho_message(raw)
    assert received_at(m, default=9999.0) == 1234.5
    assert str(m.topic) == "agentd/v1/f/nodes/n/events/s" and m.mid == 7
    raw.timestamp = 0.0  # never stamped: the caller's clock
    assert received_at(aiomqtt.Message._from_paho_message(raw), default=9999.0) == 9999.0
