"""Resilience policies with an injected clock (no sleeps): breaker, limiter, nodes, retry waits."""

from __future__ import annotations

import asyncio
import time

import pytest

from spark.context import deadline_scope, inherited_deadline
from spark.errors import (
    InvalidParamsError,
    MethodNotFoundError,
    RpcConnectionError,
    RpcTimeoutError,
    ServiceUnavailableError,
)
from spark.graphs import Graph
from spark.nodes import Node
from spark.nodes.policies import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    CircuitBreakerNode,
    CircuitOpenError,
    FallbackNode,
    RateLimitedError,
    RateLimiter,
    RateLimitNode,
    TimeoutNode,
    default_is_failure,
)
from spark.nodes.rpc_client import RemoteRpcProxyConfig, RemoteRpcProxyNode, _retryable


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Flaky(Node):
    """Raises `errors` in turn, then answers {"ok": n}."""

    def __init__(self, *errors, **kwargs):
        super().__init__(**kwargs)
        self.errors = list(errors)
        self.calls = 0

    async def process(self, context):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return {"ok": self.calls}


class Sleeper(Node):
    def __init__(self, seconds, **kwargs):
        super().__init__(**kwargs)
        self.seconds = seconds
        self.seen_deadline = None

    async def process(self, context):
        self.seen_deadline = inherited_deadline()
        await asyncio.sleep(self.seconds)
        return {"slept": self.seconds}


def record(graph):
    events = []
    graph.event_bus.subscribe("policy.*", lambda e: events.append((e.topic, e.payload)))
    return events


# -- retries (the seed's configuration) --------------------------------------------------


def test_seed_retry_configuration_waits_1_2_4_seconds():
    config = RemoteRpcProxyConfig(
        endpoint="http://unreliable-service:8000",
        request_timeout=30.0,
        max_retries=3,
        retry_backoff_factor=2.0,  # 1s, 2s, 4s
        retry_on_timeout=True,
    )
    assert config.retry_waits() == [1.0, 2.0, 4.0]
    # The call's deadline leaves room for every attempt and wait.
    assert config.call_budget() == 30.0 * 4 + 7.0
    # The proxy's tenacity policy computes the same waits.
    proxy = RemoteRpcProxyNode(config=config)
    retrying = proxy._retrying(time.time() + 1000)

    class State:
        def __init__(self, n):
            self.attempt_number = n

    assert [retrying.wait(State(n)) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]


def test_retry_defaults_and_caps():
    config = RemoteRpcProxyConfig()
    assert config.max_retries == 0 and config.call_budget() == config.request_timeout
    capped = RemoteRpcProxyConfig(max_retries=6, retry_initial_delay=0.5, retry_max_delay=5)
    assert capped.retry_waits() == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert RemoteRpcProxyConfig(max_retries=2, total_timeout=3.0).call_budget() == 3.0
    jittered = RemoteRpcProxyConfig(max_retries=1, retry_jitter=0.5)
    assert jittered.retry_waits() == [1.0]  # jitter is added at run time only


def test_what_is_retried():
    on_timeout = _retryable(RemoteRpcProxyConfig(retry_on_timeout=True))
    not_on_timeout = _retryable(RemoteRpcProxyConfig(retry_on_timeout=False))
    assert on_timeout(RpcTimeoutError()) and not not_on_timeout(RpcTimeoutError())
    for check in (on_timeout, not_on_timeout):
        assert check(RpcConnectionError("refused"))
        assert check(ServiceUnavailableError())
        assert not check(InvalidParamsError())
        assert not check(MethodNotFoundError())
        assert not check(CircuitOpenError())


# -- circuit breaker ----------------------------------------------------------------------


async def fail_with(exc):
    raise exc


async def ok():
    return "ok"


async def test_breaker_opens_after_threshold_and_half_opens_after_reset():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=10, clock=clock, name="svc")
    seen = []
    breaker.listen(lambda t: seen.append((t.old, t.new)))
    for _ in range(2):
        with pytest.raises(ServiceUnavailableError):
            await breaker.call(fail_with, ServiceUnavailableError())
    assert breaker.state == CLOSED and breaker.failures == 2
    # A success resets the count of consecutive failures.
    assert await breaker.call(ok) == "ok"
    assert breaker.failures == 0
    for _ in range(3):
        with pytest.raises(ServiceUnavailableError):
            await breaker.call(fail_with, ServiceUnavailableError())
    assert breaker.state == OPEN and seen == [(CLOSED, OPEN)]
    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(ok)
    assert info.value.data["retry_after"] == 10 and info.value.code == -32003
    assert breaker.rejected == 1
    clock.advance(9.9)
    assert breaker.state == OPEN and breaker.retry_after() == pytest.approx(0.1)
    clock.advance(0.1)
    assert breaker.state == HALF_OPEN
    assert await breaker.call(ok) == "ok"
    assert breaker.state == CLOSED
    assert seen == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    assert breaker.snapshot()["opened"] == 1


async def test_half_open_failure_reopens_and_trials_are_limited():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=5, clock=clock)
    with pytest.raises(RpcTimeoutError):
        await breaker.call(fail_with, RpcTimeoutError())
    clock.advance(5)
    gate = asyncio.Event()

    async def slow():
        await gate.wait()
        raise RpcConnectionError("still down")

    trial = asyncio.create_task(breaker.call(slow))
    await asyncio.sleep(0)
    assert breaker.state == HALF_OPEN
    # Only one trial at a time: the others are refused while it runs.
    with pytest.raises(CircuitOpenError):
        await breaker.call(ok)
    gate.set()
    with pytest.raises(RpcConnectionError):
        await trial
    assert breaker.state == OPEN and breaker.opened == 2


async def test_cancelled_trial_lets_another_trial_through():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1, clock=clock)
    with pytest.raises(RpcConnectionError):
        await breaker.call(fail_with, RpcConnectionError("x"))
    clock.advance(1)
    trial = asyncio.create_task(breaker.call(asyncio.sleep, 10))
    await asyncio.sleep(0)
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    assert await breaker.call(ok) == "ok"
    assert breaker.state == CLOSED


async def test_answers_that_are_not_failures_do_not_trip_the_breaker():
    breaker = CircuitBreaker(failure_threshold=1)
    for exc in (InvalidParamsError(), MethodNotFoundError()):
        with pytest.raises(type(exc)):
            await breaker.call(fail_with, exc)
    assert breaker.state == CLOSED
    assert default_is_failure(RuntimeError("local bug"))
    assert not default_is_failure(CircuitOpenError())
    custom = CircuitBreaker(failure_threshold=1, is_failure=lambda e: isinstance(e, KeyError))
    with pytest.raises(RuntimeError):
        await custom.call(fail_with, RuntimeError())
    assert custom.state == CLOSED
    with pytest.raises(KeyError):
        await custom.call(fail_with, KeyError())
    assert custom.state == OPEN


async def test_breaker_node_publishes_state_changes_on_the_graph_bus():
    clock = Clock()
    inner = Flaky(RpcConnectionError("a"), RpcConnectionError("b"), name="Remote")
    node = CircuitBreakerNode(
        inner, CircuitBreaker(failure_threshold=2, reset_timeout=3, clock=clock, name="remote")
    )
    graph = Graph(start=node)
    events = record(graph)
    for _ in range(2):
        with pytest.raises(RpcConnectionError):
            await graph.run({})
    with pytest.raises(CircuitOpenError):
        await graph.run({})
    assert inner.calls == 2
    clock.advance(3)
    assert (await graph.run({})).content == {"ok": 3}
    assert [t for t, _ in events] == [
        "policy.circuit.opened",
        "policy.circuit.rejected",
        "policy.circuit.half_open",
        "policy.circuit.closed",
    ]
    opened = events[0][1]
    assert opened["breaker"] == "remote" and opened["failures"] == 2
    assert opened["error"]["type"] == "RpcConnectionError"


# -- fallback, timeout, rate limit ----------------------------------------------------------


async def test_fallback_records_the_primary_error():
    primary = Flaky(ServiceUnavailableError("primary down"), name="Primary")
    fallback = Flaky(name="Backup")
    node = FallbackNode(primary, fallback)
    graph = Graph(start=node)
    events = record(graph)
    out = await graph.run({})
    assert out.content == {"ok": 1}
    assert out.metadata["fallback"]["primary"] == "Primary"
    assert out.metadata["fallback"]["primary_error"]["code"] == -32003
    assert events == [
        (
            "policy.fallback.used",
            {
                "primary": "Primary",
                "fallback": "Backup",
                "error": {
                    "type": "ServiceUnavailableError",
                    "message": "primary down",
                    "code": -32003,
                },
            },
        )
    ]
    # The primary answering: its output as is, no event.
    out = await graph.run({})
    assert out.content == {"ok": 2} and "fallback" not in out.metadata
    assert node.fallbacks_used == 1


async def test_fallback_failing_too_raises_its_error_caused_by_the_primarys():
    node = FallbackNode(
        Flaky(RpcConnectionError("p")), Flaky(RpcTimeoutError("f")), should_fallback=None
    )
    with pytest.raises(RpcTimeoutError) as info:
        await Graph(start=node).run({})
    assert isinstance(info.value.__cause__, RpcConnectionError)
    picky = FallbackNode(
        Flaky(InvalidParamsError()),
        Flaky(),
        should_fallback=lambda e: not isinstance(e, InvalidParamsError),
    )
    with pytest.raises(InvalidParamsError):
        await Graph(start=picky).run({})


async def test_timeout_node_raises_or_answers_and_scopes_the_deadline():
    sleeper = Sleeper(5, name="Slow")
    node = TimeoutNode(sleeper, 0.05)
    graph = Graph(start=node)
    events = record(graph)
    started = time.time()
    with pytest.raises(RpcTimeoutError) as info:
        await graph.run({})
    ended = time.time()
    assert isinstance(info.value, TimeoutError)
    assert ended - started < 2.5  # the 0.05 s budget, not the node's 5 s
    assert started + 0.05 <= sleeper.seen_deadline <= ended + 0.05  # the scope's deadline
    assert events[0][0] == "policy.timeout" and events[0][1]["node"] == "Slow"
    cached = TimeoutNode(Sleeper(5), 0.05, on_timeout=lambda ctx: {"cached": True})
    assert (await Graph(start=cached).run({})).content == {"cached": True}
    fast = TimeoutNode(Sleeper(0), 1)
    assert (await Graph(start=fast).run({})).content == {"slept": 0}


def test_deadline_scope_only_shortens():
    assert inherited_deadline() is None
    with deadline_scope(100.0) as outer:
        assert outer == 100.0 and inherited_deadline() == 100.0
        with deadline_scope(200.0) as inner:
            assert inner == 100.0
        with deadline_scope(50.0):
            assert inherited_deadline() == 50.0
        assert inherited_deadline() == 100.0
    assert inherited_deadline() is None


async def test_rate_limiter_token_bucket():
    clock = Clock()
    slept = []

    async def sleep(seconds):
        slept.append(seconds)
        clock.advance(seconds)

    limiter = RateLimiter(rate=2, burst=2, clock=clock, sleep=sleep)
    assert limiter.try_acquire() and limiter.try_acquire()
    assert not limiter.try_acquire()
    assert await limiter.acquire() == pytest.approx(0.5)
    with pytest.raises(RateLimitedError):
        await limiter.acquire(max_wait=0.1)
    clock.advance(10)
    assert limiter.tokens == 2  # never more than the burst
    snap = limiter.snapshot()
    assert (snap["immediate"], snap["delayed"], snap["rejected"]) == (2, 1, 2)


async def test_rate_limiter_reservations_are_fair_under_concurrency():
    clock = Clock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # time stands still: all six wait at once
        slept.append(seconds)
        await asyncio.sleep(0)

    limiter = RateLimiter(rate=50, burst=1, clock=clock, sleep=sleep)
    waits = await asyncio.gather(*(limiter.acquire() for _ in range(6)))
    # One at once, then one every 20 ms, in the order they asked.
    assert waits == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08, 0.1])
    assert slept == pytest.approx(waits[1:])


async def test_rate_limit_node_events():
    clock = Clock()

    async def sleep(seconds):
        clock.advance(seconds)

    limiter = RateLimiter(rate=1, burst=1, clock=clock, sleep=sleep, name="one-per-second")
    waits = RateLimitNode(Flaky(name="Api"), limiter)
    graph = Graph(start=waits)
    events = record(graph)
    await graph.run({})
    await graph.run({})
    assert events == [
        (
            "policy.rate_limited",
            {"limiter": "one-per-second", "node": "Api", "rejected": False, "waited": 1.0},
        )
    ]
    refuses = Graph(start=RateLimitNode(Flaky(name="Api"), limiter, max_wait=0))
    events = record(refuses)
    with pytest.raises(RateLimitedError):
        await refuses.run({})
    assert events[0][1]["rejected"] is True


async def test_policies_compose():
    clock = Clock()
    remote = Flaky(*[RpcConnectionError("down")] * 10, name="Remote")
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=60, clock=clock)
    node = FallbackNode(CircuitBreakerNode(TimeoutNode(remote, 1), breaker), Flaky(name="Cache"))
    graph = Graph(start=node)
    events = record(graph)
    for _ in range(4):
        out = await graph.run({})
        assert out.metadata["fallback"]["used"]
    # Two failures opened the breaker; the next two never reached the remote node.
    assert remote.calls == 2
    assert out.metadata["fallback"]["primary_error"]["type"] == "CircuitOpenError"
    assert "policy.circuit.opened" in [t for t, _ in events]
