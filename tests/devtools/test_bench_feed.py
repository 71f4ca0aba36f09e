"""The in-process bench's feed: a task per event, at most ``in_hand`` undecided, refilled at half."""

from __future__ import annotations

import asyncio
from typing import Any

from agentd.devtools.bench import feed


class _CountingEngine:
    def __init__(self) -> None:
        self.now = self.most = 0
        self.decided: list[str] = []

    async def decide(self, skill: str, data: dict[str, Any], *, event_id: str) -> None:
        self.now += 1
        self.most = max(self.most, self.now)
        for _ in range(int(data["turns"])):
            await asyncio.sleep(0)
        self.now -= 1
        self.decided.append(event_id)


async def test_feed_decides_every_event_with_at_most_in_hand_in_flight() -> None:
    engine = _CountingEngine()
    events = [{"turns": 3 + i % 7} for i in range(2500)]  # each stays a few turns of the loop
    await feed(engine, "s", events, in_hand=100)
    assert sorted(engine.decided) == sorted(f"bench-{i}" for i in range(2500))
    assert engine.most == 100  # the bound was reached, never passed
    assert engine.now == 0
