"""spark.aio.timeout keeps asyncio.timeout's contract."""

from __future__ import annotations

import asyncio

import pytest

from spark.aio import timeout


async def test_the_block_raises_timeout_error_when_the_delay_passes():
    with pytest.raises(TimeoutError):
        with timeout(0.01) as scope:
            await asyncio.Event().wait()
    assert scope.expired()
    assert asyncio.current_task().cancelling() == 0


async def test_a_block_that_finishes_in_time_is_left_alone():
    with timeout(10) as scope:
        await asyncio.sleep(0)
    assert not scope.expired()


async def test_a_cancellation_from_elsewhere_goes_through():
    entered = asyncio.Event()

    async def waits():
        with timeout(10):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(waits())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_swallowed_expiry_leaves_no_pending_cancellation():
    with timeout(0.01) as scope:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass
    assert scope.expired()
    await asyncio.sleep(0)  # would raise CancelledError if one were still pending
