"""The worker's parts, each alone: cancellation index, idempotency gate, reply writer, lease
keeper (on the embedded broker)."""

from __future__ import annotations

import asyncio

import pytest

from spark.broker import ServiceQueue, connect, replies
from spark.broker.cancel import CancelItem
from spark.broker.envelope import encode_result
from spark.errors import InvalidRequestError, RpcTimeoutError
from spark.runtime.cancellation import CancellationIndex
from spark.runtime.idempotency import IdempotencyGate
from spark.runtime.lease import LeaseKeeper
from spark.runtime.reply_writer import Done, ReplyWriter
from support.polling import eventually


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# -- CancellationIndex -----------------------------------------------------------------------


def test_a_cancel_names_running_requests_by_id_and_by_key():
    index = CancellationIndex()
    index.track(b"1-1", "client", "r1", None)
    index.track(b"1-2", "client", "r2", "k")
    index.track(b"1-3", "client", "r3", "k")
    running = {b"1-1", b"1-2", b"1-3"}
    assert index.apply([CancelItem("client", "r1")], running.__contains__) == {b"1-1"}
    assert index.requested(b"1-1")
    # Asked twice: the second cancel names nothing new.
    assert index.apply([CancelItem("client", "r1")], running.__contains__) == set()
    by_key = index.apply([CancelItem("client", idempotency_key="k")], running.__contains__)
    assert by_key == {b"1-2", b"1-3"}
    # Another client's request with the same id is not touched.
    assert index.apply([CancelItem("other", "r1")], running.__contains__) == set()


def test_a_cancel_for_a_queued_request_is_remembered_for_a_while():
    clock = Clock()
    index = CancellationIndex(memory=10.0, clock=clock)
    assert index.apply([CancelItem("client", "later")], lambda e: False) == set()
    assert index.cancelled_before_running("client", "later")
    assert not index.cancelled_before_running("client", "later")  # forgotten once used
    index.apply([CancelItem("client", "old")], lambda e: False)
    clock.now = 11.0
    index.apply([CancelItem("client", "new")], lambda e: False)  # sweeps expired ones
    assert not index.cancelled_before_running("client", "old")
    assert index.cancelled_before_running("client", "new")


def test_untrack_forgets_everything_about_an_entry():
    index = CancellationIndex()
    index.track(b"1-1", "client", "r1", "k")
    index.apply([CancelItem("client", "r1")], lambda e: True)
    index.untrack(b"1-1", "client", "r1", "k")
    assert not index.requested(b"1-1")
    assert index.apply([CancelItem("client", idempotency_key="k")], lambda e: True) == set()


# -- IdempotencyGate -------------------------------------------------------------------------


@pytest.fixture
async def redis(memory_url):
    client = connect(memory_url)
    yield client
    await client.aclose()


async def test_the_gate_lets_one_request_run_and_refuses_other_content(redis, monkeypatch):
    looks = 0
    real_claim = replies.claim_idempotency

    async def counting_claim(*args, **kwargs):
        nonlocal looks
        looks += 1
        return await real_claim(*args, **kwargs)

    monkeypatch.setattr(replies, "claim_idempotency", counting_claim)
    queue = ServiceQueue(redis, "gate")
    gate = IdempotencyGate(redis, queue.keys, lease=5.0)
    key, digest, outcome = await gate.claim("k", "echo", {"a": 1}, b"1-1", deadline=1e12)
    assert outcome is None and gate.claimed(b"1-1") == key
    # A different request with the same key is refused at once, even while the first runs.
    _, _, refused = await gate.claim("k", "echo", {"a": 2}, b"1-2", deadline=1e12)
    assert isinstance(refused, InvalidRequestError)
    # The same request waits for the first run's reply.
    before = looks
    waiting = asyncio.create_task(gate.claim("k", "echo", {"a": 1}, b"1-3", deadline=1e12))
    # It looked, found the first run still going, and looked again: it waits, not answers.
    await eventually(lambda: looks >= before + 2, timeout=5, what="the repeat looking twice")
    assert not waiting.done()
    reply = encode_result("x", {"a": 1})
    await redis.set(key, replies.stored_value(digest, reply))
    assert (await waiting)[2] == reply


async def test_a_repeat_gives_up_waiting_at_its_deadline(redis):
    gate = IdempotencyGate(redis, ServiceQueue(redis, "gate").keys, lease=5.0)
    await gate.claim("k", "m", None, b"1-1", deadline=1e12)
    _, _, outcome = await gate.claim("k", "m", None, b"1-2", deadline=0.0)
    assert isinstance(outcome, RpcTimeoutError)


async def test_renewing_extends_only_markers_still_held(redis):
    gate = IdempotencyGate(redis, ServiceQueue(redis, "gate").keys, lease=0.5)
    key, _, _ = await gate.claim("k", "m", None, b"1-1", deadline=1e12)
    gate.lease = 60.0
    await gate.renew()
    assert await redis.pttl(key) > 10_000
    gate.ran(b"1-1")
    await redis.set(key, b"stored", px=1000)
    await gate.renew()  # nothing held any more: the stored reply keeps its own TTL
    assert await redis.pttl(key) <= 1000


# -- ReplyWriter and LeaseKeeper -------------------------------------------------------------


async def test_the_writer_replies_then_acknowledges(redis):
    queue = ServiceQueue(redis, "svc")
    await queue.ensure_group()
    await queue.enqueue([b'{"id":"1","method":"m"}'])
    (entry,) = await queue.read(redis, "c1", 10, 10)
    writer = ReplyWriter("svc", reply_ttl=60, idempotency_ttl=60)
    writer.open(redis)
    await writer.reply(Done(entry, "client", encode_result("1", 42), deadline=1e12))
    got = await replies.read(redis, "client", replies.START, 0.01)
    assert [r for _, r in got] == [encode_result("1", 42)]
    assert await redis.xlen(queue.keys.requests) == 0
    assert writer.processed == 1


async def test_the_lease_keeper_renews_entries_in_flight(redis):
    queue = ServiceQueue(redis, "svc")
    await queue.ensure_group()
    await queue.enqueue([b'{"id":"1","method":"m"}'])
    (entry,) = await queue.read(redis, "c1", 10, 10)
    gate = IdempotencyGate(redis, queue.keys, lease=5.0)
    keeper = LeaseKeeper(queue, "c1", gate, lambda: [entry.entry_id], reclaim_after=0.3)
    # The entry ages past 300 ms idle (Redis's clock, which the test cannot advance).
    assert await eventually(lambda: queue.reclaimable(300), timeout=5, what="300 ms idle")
    await keeper.renew()
    assert not await queue.reclaimable(300)
