"""The one retry policy of every loop that talks to Redis.

`Backoff` wraps tenacity: jittered exponential waits, a log line at a steady rate while an
operation keeps failing (the first failure at once, then one line every `log_every`
seconds with the count, and one when it recovers), cancellation never swallowed, and an
optional `stopping` event that ends the waiting at shutdown.

Background loops (heartbeat, lease, reclaim, the worker's read loop, the reply reader, the
notification listener) survive *any* Redis error (`REDIS_ERRORS`): a Redis refusing writes
(OOM, READONLY) or unblocking a read (UNBLOCKED) for a while must not kill them. A bug in
our own code (TypeError, KeyError...) is not retried: it propagates.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import RedisError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_result,
    stop_after_delay,
    stop_never,
    wait_random_exponential,
)

from spark.aio import reraise_cancellation
from spark.broker import UNREACHABLE

log = logging.getLogger("spark.broker")

T = TypeVar("T")

#: What a background loop survives: any error from Redis or the connection to it.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, *UNREACHABLE)

#: Seconds between two log lines about the same failing operation.
LOG_EVERY = 5.0


class Stopped(Exception):
    """The policy's `stopping` event was set while the operation was still failing."""


class OutageLog:
    """Says that an operation fails at a steady rate, however fast it is retried.

    The first failure is logged at once; while failures go on, one line per `every` seconds
    carries how many there were; the first success after failures says so.
    """

    def __init__(
        self,
        what: str,
        logger: logging.Logger = log,
        *,
        every: float = LOG_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.what = what
        self.logger = logger
        self.every = every
        self.clock = clock
        #: Consecutive failures, and when the outage began / was last reported.
        self.failures = 0
        self._since = 0.0
        self._reported = 0.0
        self._unreported = 0
        #: Lines logged (for tests and metrics).
        self.lines = 0

    def failed(self, exc: BaseException) -> None:
        now = self.clock()
        if self.failures == 0:
            self._since = now
        self.failures += 1
        self._unreported += 1
        if self.failures == 1:
            self._emit("%s failed (%s: %s); retrying", self.what, type(exc).__name__, exc)
        elif now - self._reported >= self.every:
            self._emit(
                "%s still failing after %.0fs (%d failures, %d since the last report; %s: %s)",
                self.what,
                now - self._since,
                self.failures,
                self._unreported,
                type(exc).__name__,
                exc,
            )
        else:
            return
        self._reported = now
        self._unreported = 0

    def recovered(self) -> None:
        if self.failures:
            self._emit(
                "%s recovered after %.1fs (%d failures)",
                self.what,
                self.clock() - self._since,
                self.failures,
            )
            self.failures = 0
            self._unreported = 0

    def _emit(self, fmt: str, *args: Any) -> None:
        self.lines += 1
        self.logger.warning(fmt, *args)


class Backoff:
    """Retry an operation on `retry_on` errors with jittered exponential waits.

    One `Backoff` per loop: it keeps the loop's `OutageLog`, so the log stays steady across
    many short episodes of failure. `call(fn)` returns `fn()`'s result once it succeeds;
    when `stopping` is set while it is still failing, it raises `Stopped`. Cancellation
    propagates (also when redis-py swallowed it: see `spark.aio.reraise_cancellation`).
    """

    def __init__(
        self,
        what: str,
        *,
        logger: logging.Logger = log,
        retry_on: tuple[type[BaseException], ...] = REDIS_ERRORS,
        base: float = 0.05,
        max_wait: float = 2.0,
        log_every: float = LOG_EVERY,
        stopping: asyncio.Event | None = None,
    ):
        self.retry_on = retry_on
        self.base = base
        self.max_wait = max_wait
        self.stopping = stopping
        self._waits = wait_random_exponential(multiplier=base, max=max_wait)
        self.log = OutageLog(what, logger, every=log_every)

    @property
    def failing(self) -> bool:
        return self.log.failures > 0

    def attempts(self) -> AsyncRetrying:
        """`async for attempt in backoff.attempts(): with attempt: ...` (tenacity's idiom)."""
        return AsyncRetrying(
            retry=retry_if_exception_type(self.retry_on),
            wait=self._waits,
            stop=self._stop,
            sleep=self._sleep,
            before_sleep=self._before_sleep,
            retry_error_callback=self._gave_up,
        )

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """`await fn(*args, **kwargs)`, retried until it succeeds.

        The first attempt runs without tenacity's machinery: this sits on hot paths (every
        reply written, every batch of replies read) and Redis answers nearly always.
        """
        try:
            result = await fn(*args, **kwargs)
        except self.retry_on as exc:
            reraise_cancellation()
            self.log.failed(exc)
            await self._sleep(self._wait(1))
        else:
            self.log.recovered()
            return result
        async for attempt in self.attempts():
            with attempt:
                result = await fn(*args, **kwargs)
        self.log.recovered()
        return result

    async def pause(self, exc: BaseException) -> None:
        """For loops that catch the error themselves: log it and wait before going on."""
        reraise_cancellation()
        self.log.failed(exc)
        await self._sleep(self._wait(self.log.failures))

    def succeeded(self) -> None:
        self.log.recovered()

    def wait_after(self, failures: int) -> float:
        """The policy's wait after the `failures`-th consecutive failure, for a caller that
        schedules its next attempt itself (a connection gate that many callers share)."""
        return self._wait(failures)

    def _wait(self, failures: int) -> float:
        """tenacity's wait after the `failures`-th consecutive failure."""
        state = RetryCallState(None, None, (), {})
        state.attempt_number = failures
        return self._waits(state)

    def _stop(self, state: RetryCallState) -> bool:
        return self.stopping is not None and self.stopping.is_set()

    def _before_sleep(self, state: RetryCallState) -> None:
        reraise_cancellation()
        if state.outcome is not None and state.outcome.failed:
            self.log.failed(state.outcome.exception())

    def _gave_up(self, state: RetryCallState) -> Any:
        exc = state.outcome.exception() if state.outcome is not None else None
        raise Stopped(f"{self.log.what}: stopping while it still fails") from exc

    async def _sleep(self, seconds: float) -> None:
        if self.stopping is None:
            await asyncio.sleep(seconds)
            return
        if self.stopping.is_set():
            return
        try:
            async with asyncio.timeout(seconds):
                await self.stopping.wait()
        except TimeoutError:
            pass


async def until_not_none(
    fn: Callable[[], Awaitable[T | None]], *, within: float, base: float, max_wait: float
) -> T | None:
    """`await fn()` again, with the same jittered exponential waits, while it answers None
    (something is busy: a lock held); None once `within` seconds passed. Errors propagate."""

    def gave_up(state: RetryCallState) -> None:
        return None

    retrying = AsyncRetrying(
        retry=retry_if_result(lambda result: result is None),
        wait=wait_random_exponential(multiplier=base, max=max_wait),
        stop=stop_after_delay(within),
        before_sleep=lambda state: reraise_cancellation(),
        retry_error_callback=gave_up,
    )
    return await retrying(fn)


def while_unreachable(max_wait: float = 2.0) -> AsyncRetrying:
    """Retry forever on connection errors only (kept for callers outside the runtime)."""
    return AsyncRetrying(
        retry=retry_if_exception_type(UNREACHABLE),
        wait=wait_random_exponential(multiplier=0.05, max=max_wait),
        stop=stop_never,
        reraise=True,
    )
