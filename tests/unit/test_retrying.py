"""The one retry policy (spark.broker.retrying): what it retries, how often it logs, stopping."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from spark.broker.retrying import Backoff, OutageLog, Stopped


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_is_logged_at_a_steady_rate(caplog):
    clock = Clock()
    outage = OutageLog("heartbeat", logging.getLogger("test.retrying"), every=5.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.retrying"):
        # 100 s of failures every 0.6 s: one line at once, then one per 5 s, not 167.
        for _ in range(167):
            outage.failed(RedisConnectionError("down"))
            clock.now += 0.6
        outage.recovered()
    lines = [r.getMessage() for r in caplog.records]
    assert 20 <= len(lines) <= 22
    assert lines[0].startswith("heartbeat failed (ConnectionError: down)")
    assert "still failing after" in lines[1]
    assert lines[-1].startswith("heartbeat recovered after 100.")
    assert outage.failures == 0


def test_recovery_without_failures_says_nothing(caplog):
    outage = OutageLog("reads", logging.getLogger("test.retrying"))
    with caplog.at_level(logging.WARNING, logger="test.retrying"):
        outage.recovered()
    assert caplog.records == []


@pytest.mark.parametrize(
    "error",
    [
        RedisConnectionError("down"),
        OutOfMemoryError("OOM"),
        ReadOnlyError("replica"),
        ResponseError("UNBLOCKED the stream key no longer exists"),
        OSError("reset"),
    ],
)
async def test_any_redis_error_is_retried(error):
    attempts = []

    async def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise error
        return "ok"

    backoff = Backoff("op", base=0.001, max_wait=0.001)
    assert await backoff.call(flaky) == "ok"
    assert len(attempts) == 3
    assert not backoff.failing


async def test_a_bug_is_not_retried():
    attempts = []

    async def buggy():
        attempts.append(1)
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        await Backoff("op", base=0.001).call(buggy)
    assert attempts == [1]


async def test_stopping_ends_the_retries():
    stopping = asyncio.Event()
    attempts = []

    async def down():
        attempts.append(1)
        if len(attempts) == 3:
            stopping.set()
        raise RedisConnectionError("down")

    with pytest.raises(Stopped):
        await Backoff("start", base=0.001, max_wait=0.001, stopping=stopping).call(down)
    assert len(attempts) == 3


async def test_cancellation_is_never_swallowed():
    started = asyncio.Event()

    async def down():
        started.set()
        raise RedisConnectionError("down")

    task = asyncio.create_task(Backoff("op", base=10.0, max_wait=10.0).call(down))
    await started.wait()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_until_not_none_waits_for_an_answer_and_gives_up_in_time():
    from spark.broker.retrying import until_not_none

    answers = iter([None, None, "free"])

    async def busy_then_free():
        return next(answers)

    assert await until_not_none(busy_then_free, within=10, base=0.001, max_wait=0.001) == "free"

    async def always_busy():
        return None

    assert await until_not_none(always_busy, within=0.05, base=0.001, max_wait=0.01) is None


def test_wait_after_is_the_policys_jittered_exponential_wait():
    backoff = Backoff("x", base=0.05, max_wait=5.0)
    for failures in range(1, 12):
        ceiling = min(5.0, 0.05 * 2 ** (failures - 1))
        waits = [backoff.wait_after(failures) for _ in range(50)]
        assert all(0 <= w <= ceiling for w in waits), failures
        assert len(set(waits)) > 1  # jittered: callers that failed together spread out
