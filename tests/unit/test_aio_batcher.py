"""spark.aio.Batcher: a submitter that sends its own item still honours its cancellation."""

from __future__ import annotations

import asyncio

import pytest

from spark.aio import Batcher


async def test_a_cancellation_swallowed_by_the_send_is_honoured():
    """redis-py can catch a CancelledError that lands while it reads an answer and return
    normally; the submitter must still end cancelled, not go on as if nothing happened."""
    sending = asyncio.Event()

    async def send(items: list[str]) -> list[str]:
        sending.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass  # what redis-py does when the cancel lands mid-read
        return [f"sent {item}" for item in items]

    batcher: Batcher[str, str] = Batcher(send)
    after = []

    async def submitter() -> None:
        await batcher.submit("a")
        after.append("went on")  # a caller would now wait for a reply that never comes

    task = asyncio.create_task(submitter())
    await sending.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert after == []
    assert not batcher.busy  # the next submit sends at once


async def test_items_submitted_during_a_send_go_out_together():
    batches: list[list[int]] = []
    first_sent = asyncio.Event()
    release = asyncio.Event()

    async def send(items: list[int]) -> list[int]:
        batches.append(items)
        first_sent.set()
        await release.wait()
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(send)
    first = asyncio.create_task(batcher.submit(1))
    await first_sent.wait()
    rest = [asyncio.create_task(batcher.submit(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0)
    release.set()
    assert await first == 10
    assert [await t for t in rest] == [20, 30, 40]
    assert batches == [[1], [2, 3, 4]]
