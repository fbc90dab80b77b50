"""Resilience policies for any node of a graph (a `RemoteRpcProxyNode` or a local node).

- `CircuitBreaker` (closed / open / half-open) and `CircuitBreakerNode(inner, breaker)`:
  after `failure_threshold` consecutive failures calls are refused at once with
  `CircuitOpenError` for `reset_timeout` seconds; then `half_open_max_calls` trial calls go
  through, and `success_threshold` successes close the circuit again (a failure re-opens
  it). What counts as a failure is `is_failure(exc)`: by default transport failures,
  timeouts, and the server errors that say the service is unwell (internal error,
  overloaded, unavailable, dead-lettered); an answer such as "invalid params" or "method not
  found" shows the service is up and counts as a success. A breaker may also sit directly
  on a proxy: `RemoteRpcProxyConfig(circuit_breaker=CircuitBreaker(...))`.
- `FallbackNode(primary, fallback)`: the primary's output, or when it raises, the
  fallback's output with the primary's error recorded in the output message's metadata
  (`metadata["fallback"]`) and in a `policy.fallback.used` event.
- `TimeoutNode(inner, timeout)`: `RpcTimeoutError` (also a builtin `TimeoutError`) when the
  inner node takes longer, or the value of `on_timeout(context)` when one is given. Remote
  calls made inside inherit the budget (`spark.context.deadline_scope`), so the service
  stops working on them at the same moment.
- `RateLimiter` (token bucket) and `RateLimitNode(inner, limiter, max_wait=...)`: waits for
  a token up to `max_wait` seconds, else raises `RateLimitedError`.

Every policy reports on the graph's event bus (topics under `policy.`): circuit
`policy.circuit.opened` / `.half_open` / `.closed` / `.rejected`, `policy.fallback.used`,
`policy.timeout`, `policy.rate_limited`. The breaker and the limiter are plain objects with
an injectable clock, usable outside graphs (`await breaker.call(fn, ...)`) and shareable by
several nodes (one breaker per remote service, say).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from spark.context import deadline_scope
from spark.errors import (
    DeadLetteredError,
    InternalError,
    OverloadedError,
    RpcError,
    RpcTimeoutError,
    ServiceUnavailableError,
    TransportError,
)
from spark.nodes.base import Node
from spark.nodes.types import ExecutionContext, NodeMessage

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "CircuitBreaker",
    "CircuitBreakerNode",
    "CircuitOpenError",
    "FallbackNode",
    "RateLimitNode",
    "RateLimitedError",
    "RateLimiter",
    "TimeoutNode",
    "Transition",
    "default_is_failure",
    "error_info",
]

T = TypeVar("T")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

TOPIC_PREFIX = "policy"


class CircuitOpenError(ServiceUnavailableError):
    """Refused without calling: the circuit is open (the service failed too often)."""

    default_message = "Circuit breaker open"
    #: Retrying at once would be refused again; the breaker decides when to try.
    retryable: ClassVar[bool] = False


class RateLimitedError(OverloadedError):
    """Refused without calling: the rate limit allows no call within the allowed wait."""

    default_message = "Rate limit exceeded"


def error_info(exc: BaseException) -> dict[str, Any]:
    """An exception as JSON-able facts (for events and output metadata)."""
    info: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, RpcError):
        info["code"] = exc.code
        info["message"] = exc.message
        if exc.data is not None:
            info["data"] = exc.data
    return info


_UNWELL = (InternalError, OverloadedError, ServiceUnavailableError, DeadLetteredError)


def default_is_failure(exc: BaseException) -> bool:
    """Does `exc` say the service is unwell (rather than that it refused this request)?"""
    if isinstance(exc, CircuitOpenError):
        return False
    if isinstance(exc, (TimeoutError, TransportError, ConnectionError, *_UNWELL)):
        return True
    if isinstance(exc, RpcError):
        # Anything else the server answered (invalid params, not found, unauthorized,
        # cancelled, application codes): the service is up and working.
        return False
    # A local node raising an ordinary exception: it failed.
    return isinstance(exc, Exception)


@dataclass(frozen=True, slots=True)
class Transition:
    breaker: str
    old: str
    new: str
    #: Consecutive failures when it happened.
    failures: int
    #: What the last failure was (None when closing).
    error: dict[str, Any] | None = None

    @property
    def topic(self) -> str:
        name = {OPEN: "opened", HALF_OPEN: "half_open", CLOSED: "closed"}[self.new]
        return f"{TOPIC_PREFIX}.circuit.{name}"

    def payload(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "breaker": self.breaker,
            "from": self.old,
            "to": self.new,
            "failures": self.failures,
        }
        if self.error is not None:
            doc["error"] = self.error
        return doc


TransitionCallback = Callable[[Transition], Awaitable[None] | None]


class CircuitBreaker:
    """A closed / open / half-open circuit breaker for async calls.

    Safe to share between concurrent tasks of one event loop: every state change happens
    between awaits. `clock` (monotonic seconds) is injectable for tests.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 60.0,
        *,
        half_open_max_calls: int = 1,
        success_threshold: int = 1,
        is_failure: Callable[[BaseException], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "circuit",
    ):
        if failure_threshold < 1 or half_open_max_calls < 1 or success_threshold < 1:
            raise ValueError("thresholds and half_open_max_calls must be >= 1")
        if reset_timeout < 0:
            raise ValueError("reset_timeout must be >= 0")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.half_open_max_calls = half_open_max_calls
        self.success_threshold = success_threshold
        self.is_failure = is_failure or default_is_failure
        self.clock = clock
        self.name = name
        self._state = CLOSED
        self._failures = 0
        self._successes = 0
        self._trials = 0
        self._opened_at = 0.0
        self._last_error: dict[str, Any] | None = None
        self._listeners: list[TransitionCallback] = []
        #: Counters for observation: calls let through, refused, failed; times opened.
        self.calls = 0
        self.rejected = 0
        self.failed = 0
        self.opened = 0

    # -- observation -----------------------------------------------------------------

    @property
    def state(self) -> str:
        """The state a call made now would see (open turns half-open after reset_timeout)."""
        if self._state == OPEN and self.clock() - self._opened_at >= self.reset_timeout:
            return HALF_OPEN
        return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures counted so far."""
        return self._failures

    def retry_after(self) -> float:
        """Seconds until an open circuit lets a trial call through (0 when not open)."""
        if self._state != OPEN:
            return 0.0
        return max(0.0, self.reset_timeout - (self.clock() - self._opened_at))

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "failures": self._failures,
            "retry_after": self.retry_after(),
            "calls": self.calls,
            "rejected": self.rejected,
            "failed": self.failed,
            "opened": self.opened,
            "last_error": self._last_error,
        }

    def listen(self, callback: TransitionCallback) -> None:
        """Call `callback(transition)` (sync or async) on every state change."""
        self._listeners.append(callback)

    def reset(self) -> None:
        """Back to closed with no failures counted (no transition is reported)."""
        self._state, self._failures, self._successes, self._trials = CLOSED, 0, 0, 0

    # -- calling ---------------------------------------------------------------------

    async def call(
        self,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        on_transition: TransitionCallback | None = None,
        **kwargs: Any,
    ) -> T:
        """`await fn(*args, **kwargs)` through the breaker; `CircuitOpenError` when open.

        `on_transition` is told of the state changes this call caused (after the
        breaker's own listeners), before the result or error is returned.
        """
        changes: list[Transition] = []
        try:
            self._enter(changes)
        except CircuitOpenError:
            await self._report(changes, on_transition)
            raise
        trial = self._state == HALF_OPEN
        try:
            result = await fn(*args, **kwargs)
        except asyncio.CancelledError:
            if trial:
                self._trials -= 1  # the trial never finished: let another one go
            raise
        except BaseException as exc:
            if self.is_failure(exc):
                self._failure(exc, trial, changes)
            else:
                self._success(trial, changes)
            await self._report(changes, on_transition)
            raise
        self._success(trial, changes)
        await self._report(changes, on_transition)
        return result

    def _move(self, new: str, changes: list[Transition]) -> None:
        old, self._state = self._state, new
        if new == OPEN:
            self._opened_at = self.clock()
            self.opened += 1
        if new in (HALF_OPEN, CLOSED):
            self._trials = 0
            self._successes = 0
        if new == CLOSED:
            self._failures = 0
        changes.append(
            Transition(
                self.name, old, new, self._failures, None if new == CLOSED else self._last_error
            )
        )

    def _enter(self, changes: list[Transition]) -> None:
        if self._state == OPEN and self.clock() - self._opened_at >= self.reset_timeout:
            self._move(HALF_OPEN, changes)
        if self._state == OPEN or (
            self._state == HALF_OPEN and self._trials >= self.half_open_max_calls
        ):
            self.rejected += 1
            raise CircuitOpenError(
                f"circuit {self.name!r} is open",
                data={
                    "breaker": self.name,
                    "retry_after": round(self.retry_after(), 3),
                    "last_error": self._last_error,
                },
            )
        self.calls += 1
        if self._state == HALF_OPEN:
            self._trials += 1

    def _failure(self, exc: BaseException, trial: bool, changes: list[Transition]) -> None:
        self.failed += 1
        self._failures += 1
        self._last_error = error_info(exc)
        if self._state == HALF_OPEN and trial:
            self._move(OPEN, changes)
        elif self._state == CLOSED and self._failures >= self.failure_threshold:
            self._move(OPEN, changes)

    def _success(self, trial: bool, changes: list[Transition]) -> None:
        if self._state == CLOSED:
            self._failures = 0
        elif self._state == HALF_OPEN and trial:
            self._successes += 1
            if self._successes >= self.success_threshold:
                self._move(CLOSED, changes)

    async def _report(
        self, changes: list[Transition], on_transition: TransitionCallback | None
    ) -> None:
        for change in changes:
            for callback in [*self._listeners, on_transition]:
                if callback is None:
                    continue
                result = callback(change)
                if inspect.isawaitable(result):
                    await result


class RateLimiter:
    """A token bucket: `rate` calls per second on average, bursts of up to `burst`.

    Waiting callers reserve their token before sleeping, so they are served in order and
    the limit holds under concurrency. `clock` (monotonic seconds) and `sleep` are
    injectable for tests.
    """

    def __init__(
        self,
        rate: float,
        burst: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        name: str = "rate",
    ):
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1, round(rate)))
        if self.burst < 1:
            raise ValueError("burst must be >= 1")
        self.clock = clock
        self.sleep = sleep
        self.name = name
        self._tokens = self.burst
        self._updated = clock()
        #: Calls let through at once, after a wait, and refused.
        self.immediate = 0
        self.delayed = 0
        self.rejected = 0

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    @property
    def tokens(self) -> float:
        """Tokens available now (negative: calls already waiting for future tokens)."""
        self._refill()
        return self._tokens

    def reserve(self, max_wait: float | None = None) -> float | None:
        """Take a token; returns the seconds to wait before using it, or None (refused)
        when that would be longer than `max_wait` (None: any wait)."""
        self._refill()
        wait = 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate
        if max_wait is not None and wait > max_wait:
            self.rejected += 1
            return None
        self._tokens -= 1
        if wait > 0:
            self.delayed += 1
        else:
            self.immediate += 1
        return wait

    def try_acquire(self) -> bool:
        return self.reserve(0.0) is not None

    async def acquire(self, max_wait: float | None = None) -> float:
        """Wait for a token (up to `max_wait`); returns the seconds waited.

        Raises `RateLimitedError` when no token comes within `max_wait`.
        """
        wait = self.reserve(max_wait)
        if wait is None:
            raise RateLimitedError(
                f"rate limit {self.name!r} ({self.rate:g}/s) exceeded",
                data={"limiter": self.name, "rate": self.rate},
            )
        if wait > 0:
            try:
                await self.sleep(wait)
            except asyncio.CancelledError:
                self._tokens += 1  # give the reservation back
                raise
        return wait

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rate": self.rate,
            "burst": self.burst,
            "tokens": self.tokens,
            "immediate": self.immediate,
            "delayed": self.delayed,
            "rejected": self.rejected,
        }


# -- nodes ---------------------------------------------------------------------------------


class _PolicyNode(Node):
    """A node that runs other nodes: they share its graph (and so its event bus)."""

    async def _run(self, node: Node, context: ExecutionContext) -> Any:
        if self.graph is not None:
            node.graph = self.graph
        elif self._event_bus is not None and node._event_bus is None:
            node.event_bus = self._event_bus
        return await node.invoke(context)


class CircuitBreakerNode(_PolicyNode):
    """Runs `inner` through a circuit breaker (given, or made from `breaker_options`)."""

    def __init__(
        self,
        inner: Node,
        breaker: CircuitBreaker | None = None,
        *,
        name: str | None = None,
        breaker_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(name=name or f"CircuitBreaker({inner.name})", **kwargs)
        self.inner = inner
        self.breaker = breaker or CircuitBreaker(name=inner.name, **(breaker_options or {}))

    async def process(self, context: ExecutionContext) -> Any:
        try:
            return await self.breaker.call(
                self._run, self.inner, context, on_transition=self._transition
            )
        except CircuitOpenError as exc:
            await self.publish_event(
                f"{TOPIC_PREFIX}.circuit.rejected",
                {"breaker": self.breaker.name, "retry_after": exc.data["retry_after"]},
            )
            raise

    async def _transition(self, change: Transition) -> None:
        await self.publish_event(change.topic, change.payload())


class FallbackNode(_PolicyNode):
    """`primary`'s output; when it raises (and `should_fallback(exc)`), `fallback`'s output.

    The fallback's output message carries `metadata["fallback"] = {"used": True, "primary":
    name, "primary_error": {...}}`; `last_primary_error` keeps the exception. When the
    fallback fails too, its exception propagates with the primary's as its cause.
    """

    def __init__(
        self,
        primary: Node,
        fallback: Node,
        *,
        should_fallback: Callable[[BaseException], bool] | None = None,
        name: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(name=name or f"Fallback({primary.name}->{fallback.name})", **kwargs)
        self.primary = primary
        self.fallback = fallback
        self.should_fallback = should_fallback or (lambda exc: True)
        self.last_primary_error: BaseException | None = None
        self.fallbacks_used = 0

    async def process(self, context: ExecutionContext) -> Any:
        try:
            return await self._run(self.primary, context)
        except Exception as exc:
            if not self.should_fallback(exc):
                raise
            primary_exc = exc
        self.last_primary_error = primary_exc
        self.fallbacks_used += 1
        info = error_info(primary_exc)
        await self.publish_event(
            f"{TOPIC_PREFIX}.fallback.used",
            {"primary": self.primary.name, "fallback": self.fallback.name, "error": info},
        )
        try:
            out = await self._run(self.fallback, context)
        except Exception as exc:
            exc.add_note(f"fallback {self.fallback.name!r} failed after primary failed")
            raise exc from primary_exc
        message = NodeMessage.coerce(out)
        metadata = dict(message.metadata)
        metadata["fallback"] = {"used": True, "primary": self.primary.name, "primary_error": info}
        return NodeMessage(content=message.content, metadata=metadata)


class TimeoutNode(_PolicyNode):
    """Runs `inner` for at most `timeout` seconds (remote calls inside inherit the budget)."""

    def __init__(
        self,
        inner: Node,
        timeout: float,
        *,
        on_timeout: Callable[[ExecutionContext], Any] | None = None,
        name: str | None = None,
        **kwargs: Any,
    ):
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        super().__init__(name=name or f"Timeout({inner.name})", **kwargs)
        self.inner = inner
        self.timeout = timeout
        self.on_timeout = on_timeout
        self.timeouts = 0

    async def process(self, context: ExecutionContext) -> Any:
        try:
            with deadline_scope(time.time() + self.timeout):
                async with asyncio.timeout(self.timeout):
                    return await self._run(self.inner, context)
        except TimeoutError as exc:
            self.timeouts += 1
            await self.publish_event(
                f"{TOPIC_PREFIX}.timeout",
                {"node": self.inner.name, "timeout": self.timeout, "error": error_info(exc)},
            )
            if self.on_timeout is None:
                raise RpcTimeoutError(
                    f"{self.inner.name!r} did not finish within {self.timeout:g}s",
                    data={"node": self.inner.name, "timeout": self.timeout},
                ) from exc
            result = self.on_timeout(context)
            if inspect.isawaitable(result):
                result = await result
            return result


class RateLimitNode(_PolicyNode):
    """Runs `inner` once the limiter allows; waits up to `max_wait` (None: as long as needed)."""

    def __init__(
        self,
        inner: Node,
        limiter: RateLimiter,
        *,
        max_wait: float | None = None,
        name: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(name=name or f"RateLimit({inner.name})", **kwargs)
        self.inner = inner
        self.limiter = limiter
        self.max_wait = max_wait

    async def process(self, context: ExecutionContext) -> Any:
        try:
            waited = await self.limiter.acquire(self.max_wait)
        except RateLimitedError:
            await self.publish_event(
                f"{TOPIC_PREFIX}.rate_limited",
                {"limiter": self.limiter.name, "node": self.inner.name, "rejected": True},
            )
            raise
        if waited > 0:
            await self.publish_event(
                f"{TOPIC_PREFIX}.rate_limited",
                {
                    "limiter": self.limiter.name,
                    "node": self.inner.name,
                    "rejected": False,
                    "waited": waited,
                },
            )
        return await self._run(self.inner, context)
