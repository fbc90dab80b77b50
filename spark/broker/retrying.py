"""Back off and retry while Redis is unreachable, for long-lived loops."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_random_exponential,
)

from spark.broker import UNREACHABLE

log = logging.getLogger("spark.broker")

P = ParamSpec("P")
T = TypeVar("T")


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    if state.attempt_number in (1, 10) or state.attempt_number % 50 == 0:
        log.warning("redis unreachable (%s: %s); retrying", type(exc).__name__, exc)


def while_unreachable(max_wait: float = 2.0) -> AsyncRetrying:
    """Retry forever on connection errors (the caller's loop decides when to stop)."""
    return AsyncRetrying(
        retry=retry_if_exception_type(UNREACHABLE),
        wait=wait_random_exponential(multiplier=0.05, max=max_wait),
        stop=stop_never,
        before_sleep=_log_retry,
        reraise=True,
    )


async def until_reachable(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """`await fn(*args, **kwargs)`, retried while Redis is unreachable.

    The first attempt runs without tenacity's machinery: this sits on the hot path of
    every reply, and Redis is reachable nearly always.
    """
    try:
        return await fn(*args, **kwargs)
    except UNREACHABLE as exc:
        log.warning("redis unreachable (%s: %s); retrying", type(exc).__name__, exc)
    async for attempt in while_unreachable():
        with attempt:
            return await fn(*args, **kwargs)
    raise AssertionError("unreachable")  # pragma: no cover - stop_never: only ends by returning
