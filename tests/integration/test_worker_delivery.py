"""Delivery semantics of `spark-worker` processes against a real redis-server."""

from __future__ import annotations

import asyncio
import signal
import time

import orjson
import pytest

from spark.broker import Envelope, ServiceQueue, connect
from spark.broker.keys import GROUP, ServiceKeys, reply_key
from spark.client.broker_client import BrokerClient
from spark.errors import DeadLetteredError, InternalError, MethodNotFoundError, RpcTimeoutError
from support.polling import eventually as poll
from support.processes import WorkerProcess

pytestmark = pytest.mark.integration

TARGET = "support.services:LabRpcNode"


@pytest.fixture
async def client(redis_url):
    c = BrokerClient(redis_url)
    yield c
    await c.aclose()


@pytest.fixture
async def redis(redis_url):
    r = connect(redis_url)
    yield r
    await r.aclose()


@pytest.fixture
def workers(redis_url):
    started: list[WorkerProcess] = []

    def start(*args: str, service: str = "lab", ready: bool = True) -> WorkerProcess:
        w = WorkerProcess(TARGET, redis_url, *args, service=service)
        started.append(w)
        if ready:
            w.wait_ready()
        return w

    yield start
    for w in started:
        w.stop()


async def pending_of(redis, service="lab") -> int:
    info = await redis.xpending(ServiceKeys.for_service(service).requests, GROUP)
    return info["pending"]


@pytest.mark.topologies()
async def test_calls_answered_acked_and_deleted(workers, client, redis):
    workers()
    results = await asyncio.gather(*(client.call("lab", "echo", {"i": i}) for i in range(200)))
    assert results == [{"i": i} for i in range(200)]
    keys = ServiceKeys.for_service("lab")
    # Acknowledged right after the reply is written (never before): the last replies can
    # reach us a moment ahead of their acks.
    await poll(lambda: _is_zero(pending_of(redis)), what="every entry acknowledged")
    assert await redis.xlen(keys.requests) == 0  # finished entries are deleted: no growth


async def test_replies_read_are_trimmed_once_the_client_is_idle(workers, client, redis):
    workers()
    for i in range(3):  # one after another: not trimmed between them (a round trip each)
        assert await client.call("lab", "echo", {"i": i}) == {"i": i}
    key = reply_key(client.client_id)
    # Idle: trimmed after IDLE_TRIM_SECONDS, and the reader still answers calls after.
    await poll(lambda: _is_zero(redis.xlen(key)), what="replies trimmed when idle")
    assert await client.call("lab", "echo", {"i": 3}) == {"i": 3}


async def test_errors_are_json_rpc_errors(workers, client):
    workers()
    with pytest.raises(InternalError) as info:
        await client.call("lab", "fail", {})
    assert "always fails" not in str(info.value.to_dict())  # no traceback or message leak
    with pytest.raises(MethodNotFoundError):
        await client.call("lab", "__init__", {})
    with pytest.raises(MethodNotFoundError):
        await client.call("lab", "stop_server", {})


async def test_plain_node_served_as_process(redis_url, client):
    w = WorkerProcess("support.services:UpperNode", redis_url, service="upper").wait_ready()
    try:
        assert await client.call("upper", "process", {"text": "abc"}) == {"text": "ABC"}
        with pytest.raises(MethodNotFoundError):
            await client.call("upper", "other", {})
    finally:
        w.stop()


async def test_not_acked_until_reply_written(workers, client, redis):
    """A reply that cannot be written leaves the entry pending; once it can, it is answered."""
    await redis.set(reply_key(client.client_id), "not a list")  # RPUSH now fails: WRONGTYPE
    workers("--reclaim-after", "0.5")
    call = asyncio.create_task(client.call("lab", "echo", {"x": 1}, timeout=20))
    await poll(lambda: pending_of(redis), what="entry delivered")
    # The worker keeps retrying the write and renewing its lease; the entry stays pending.
    # Six renewals (each resets the entry's idle time; one every reclaim-after / 3) span
    # twice --reclaim-after, long enough for a lost lease to be reclaimed.
    requests = ServiceKeys.for_service("lab").requests
    renewals, last_idle = 0, -1

    async def renewed_six_times() -> bool:
        nonlocal renewals, last_idle
        (entry,) = await redis.xpending_range(requests, GROUP, "-", "+", 10)
        idle = entry["time_since_delivered"]
        renewals += idle < last_idle
        last_idle = idle
        return renewals >= 6

    await poll(renewed_six_times, timeout=15, what="six lease renewals", interval=0.01)
    (entry,) = await redis.xpending_range(requests, GROUP, "-", "+", 10)
    assert entry["times_delivered"] == 1  # renewed, never reclaimed
    assert await pending_of(redis) == 1
    assert not call.done()
    await redis.delete(reply_key(client.client_id))
    assert await call == {"x": 1}
    await poll(lambda: _is_zero(pending_of(redis)), what="ack after the reply")


async def _is_zero(aw) -> bool:
    return (await aw) == 0


@pytest.mark.topologies()
async def test_sigkill_mid_request_is_reclaimed_and_answered_once(workers, client, redis):
    doomed = workers("--reclaim-after", "1")
    call = asyncio.create_task(
        client.call("lab", "sleep", {"seconds": 1.5, "count": "k1"}, timeout=30)
    )
    await poll(lambda: redis.get("lab:runs:k1"), what="first run started")
    doomed.kill()
    survivor = workers("--reclaim-after", "1")
    result = await call
    assert result["pid"] == survivor.pid
    assert result["runs"] == 2  # at-least-once: the dead worker's run, then the reclaim
    await poll(lambda: _is_zero(pending_of(redis)), what="reclaimed entry acknowledged")


async def test_long_handler_is_not_reclaimed_while_its_worker_lives(workers, client, redis):
    """Lease renewal: a 3 s handler with --reclaim-after 0.5 and an idle second worker."""
    workers("--reclaim-after", "0.5")
    workers("--reclaim-after", "0.5")
    result = await client.call("lab", "sleep", {"seconds": 3, "count": "long"}, timeout=30)
    assert result["runs"] == 1
    assert int(await redis.get("lab:runs:long")) == 1
    await poll(lambda: _is_zero(pending_of(redis)), what="acknowledged after its reply")


@pytest.mark.topologies()
async def test_poison_request_is_dead_lettered_and_caller_told(redis_url, client, redis):
    pool = WorkerProcess(
        TARGET,
        redis_url,
        "--processes",
        "2",
        "--reclaim-after",
        "0.5",
        "--max-deliveries",
        "2",
        service="lab",
    )
    try:
        pool.wait_ready(count=2)
        poison = asyncio.create_task(client.call("lab", "crash", {"count": "poison"}, timeout=60))
        # Other requests keep flowing while the poison one goes round.
        for i in range(5):
            assert await client.call("lab", "echo", {"i": i}, timeout=30) == {"i": i}
        with pytest.raises(DeadLetteredError) as info:
            await poison
        assert info.value.data["deliveries"] == 2
        assert int(await redis.get("lab:runs:poison")) == 2
        dead = await redis.xrange(ServiceKeys.for_service("lab").dead)
        assert len(dead) == 1
        fields = dead[0][1]
        assert b"crash" in fields[b"e"]
        assert b"stopped before answering" in fields[b"error"]
        await poll(lambda: _is_zero(pending_of(redis)), what="nothing left pending")
    finally:
        pool.terminate()


async def test_expired_work_is_not_run_and_caller_stops_at_deadline(workers, client, redis):
    started = time.monotonic()
    with pytest.raises(RpcTimeoutError):
        await client.call("lab", "count", {"key": "late"}, timeout=0.3)
    assert time.monotonic() - started < 3  # at its 0.3 s deadline (no worker yet)
    workers()
    keys = ServiceKeys.for_service("lab")
    await poll(lambda: _is_zero(redis.xlen(keys.requests)), what="expired entry finished")
    assert await redis.get("lab:runs:late") is None
    # A hung handler is bounded by the deadline too; its answer is a timeout.
    with pytest.raises(RpcTimeoutError):
        await client.call("lab", "sleep", {"seconds": 30}, timeout=0.5)


@pytest.mark.topologies()
async def test_idempotency_key_runs_handler_once(workers, client, redis):
    workers()
    first = await client.call("lab", "count", {"key": "idem"}, idempotency_key="order-1")
    again = await client.call("lab", "count", {"key": "idem"}, idempotency_key="order-1")
    assert first == again
    concurrent = await asyncio.gather(
        *(
            client.call("lab", "sleep", {"seconds": 0.3, "count": "idem2"}, idempotency_key="o-2")
            for _ in range(5)
        )
    )
    assert all(r == concurrent[0] for r in concurrent)
    assert int(await redis.get("lab:runs:idem")) == 1
    assert int(await redis.get("lab:runs:idem2")) == 1


async def test_backpressure_reads_only_free_slots(workers, client, redis):
    workers("--concurrency", "2")
    calls = [
        asyncio.create_task(client.call("lab", "sleep", {"seconds": 0.3}, timeout=30))
        for _ in range(8)
    ]
    seen = []
    while not all(c.done() for c in calls):
        seen.append(await pending_of(redis))
        await asyncio.sleep(0.01)  # a sampling interval while the calls run, not a wait
    await asyncio.gather(*calls)
    assert max(seen) == 2


async def test_sigterm_drains_in_flight_and_exits_zero(workers, client, redis):
    w = workers("--grace", "10")
    calls = [
        asyncio.create_task(client.call("lab", "sleep", {"seconds": 1.0}, timeout=30))
        for _ in range(4)
    ]
    await poll(lambda: pending_of(redis), what="requests delivered")
    await poll(lambda: _at_least(pending_of(redis), 4), what="all four in flight")
    w.signal(signal.SIGTERM)
    await poll(lambda: _state_is(redis, "draining"), what="worker stopped reading")
    late = asyncio.create_task(client.call("lab", "echo", {"late": True}, timeout=30))
    code = await asyncio.to_thread(w.proc.wait, 15)
    assert code == 0
    results = await asyncio.gather(*calls)
    assert all(r["slept"] == 1.0 for r in results)
    assert await pending_of(redis) == 0
    # Enqueued after SIGTERM: not read by the stopping worker, served by the next one.
    assert not late.done()
    workers()
    assert await late == {"late": True}


async def _state_is(redis, state: str) -> bool:
    info = await redis.hgetall(ServiceKeys.for_service("lab").worker_info)
    return any(orjson.loads(v).get("state") == state for v in info.values())


async def _at_least(aw, n) -> bool:
    return (await aw) >= n


async def test_replies_of_vanished_clients_expire(workers, redis):
    workers()
    queue = ServiceQueue(redis, "lab")
    envelope = Envelope(
        id="1", method="echo", params={}, reply_to="vanished", deadline=time.time() + 30
    )
    await queue.enqueue([envelope.encode()])
    await poll(lambda: redis.exists(reply_key("vanished")), what="reply written")
    assert 0 < await redis.ttl(reply_key("vanished")) <= 300
