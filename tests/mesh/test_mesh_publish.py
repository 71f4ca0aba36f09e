"""A periodic MQTT publish loop stops when cancelled, even when the cancel meets a finished publish.

The client below injects that one fault: it waits for its publish confirmation with
``asyncio.wait_for``, as aiomqtt does, and the test completes the confirmation and cancels
the task in the same instant.
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from agentd.mesh.transport import publish_in_loop


class _Client:
    """Publishes like aiomqtt: the confirmation is awaited through asyncio.wait_for."""

    def __init__(self) -> None:
        self.confirm: asyncio.Future[None] | None = None
        self.published = 0

    async def publish(self, name: str, payload: bytes, qos: int = 0) -> None:
        self.confirm = asyncio.get_running_loop().create_future()
        await asyncio.wait_for(self.confirm, timeout=10)
        self.published += 1


async def _cancel_as_it_completes(client: _Client, task: asyncio.Task[None]) -> None:
    for _ in range(10):  # let the task reach its wait for the confirmation
        await asyncio.sleep(0)
    assert client.confirm is not None and not client.confirm.done()
    client.confirm.set_result(None)
    task.cancel()
    for _ in range(20):
        await asyncio.sleep(0)


async def test_the_loop_helper_re_raises_the_cancel() -> None:
    client = _Client()

    async def loop() -> None:
        while True:
            await publish_in_loop(client, "t", b"x", qos=0)

    task = asyncio.create_task(loop())
    await _cancel_as_it_completes(client, task)
    assert task.done()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_without_it_the_cancel_is_lost_on_python_3_11() -> None:
    client = _Client()

    async def loop() -> None:
        while True:
            await client.publish("t", b"x")

    task = asyncio.create_task(loop())
    await _cancel_as_it_completes(client, task)
    if sys.version_info < (3, 12):  # 3.12 rewrote wait_for; the fault is 3.11's
        assert not task.done()  # the loop runs on: this is what hung the daemon on SIGTERM
        assert client.published == 1
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
