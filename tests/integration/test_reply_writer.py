"""The worker's reply writer against real Redis: one script call per batch on one Redis (and
Sentinel), two pipelines on a cluster; either way an entry is acknowledged only once its
reply is written."""

from __future__ import annotations

import pytest

from spark.broker import ServiceQueue, connect, replies
from spark.broker.connection import is_cluster
from spark.broker.envelope import encode_result
from spark.broker.keys import GROUP, reply_key
from spark.runtime.reply_writer import Done, ReplyWriter
from support.redis_server import RedisServer

pytestmark = pytest.mark.integration

ENVELOPES = [b'{"id":"1","method":"m"}', b'{"id":"2","method":"m"}', b'{"id":"3","method":"m"}']


async def _read_three(redis, queue: ServiceQueue):
    await queue.ensure_group()
    await queue.enqueue(ENVELOPES)
    entries = await queue.read(redis, "c1", 10, 10)
    assert len(entries) == 3
    return entries


async def _pending(redis, queue: ServiceQueue) -> set[bytes]:
    rows = await redis.xpending_range(queue.keys.requests, GROUP, "-", "+", 100)
    return {r["message_id"] for r in rows}


@pytest.mark.topologies()
async def test_a_batch_is_replied_stored_and_finished(redis_url):
    redis = connect(redis_url)
    try:
        queue = ServiceQueue(redis, "svc")
        e1, e2, e3 = await _read_three(redis, queue)
        writer = ReplyWriter("svc", reply_ttl=60, idempotency_ttl=60)
        writer.open(redis)
        key = queue.keys.result("k")
        done = [
            Done(e1, "client-a", encode_result("1", 1), deadline=1e12),
            Done(e2, "client-b", encode_result("2", 2), key, True, 1e12, b"stored"),
            Done(e3, None, None, deadline=1e12),  # a notification: nothing to send
        ]
        assert await writer._write(done) == [True, True, True]
        assert writer.processed == 3
        got_a = await replies.read(redis, "client-a", replies.START, 0.01)
        got_b = await replies.read(redis, "client-b", replies.START, 0.01)
        assert [r for _, r in got_a] == [encode_result("1", 1)]
        assert [r for _, r in got_b] == [encode_result("2", 2)]
        assert 0 < await redis.ttl(reply_key("client-a")) <= 60
        assert await redis.get(key) == b"stored"
        assert 0 < await redis.ttl(key) <= 60
        assert await redis.xlen(queue.keys.requests) == 0
        assert await _pending(redis, queue) == set()
        assert int(await redis.get(queue.keys.backlog_bytes)) == 0
    finally:
        await redis.aclose()


@pytest.mark.topologies()
async def test_an_unwritable_reply_leaves_its_entry_pending_and_finishes_the_others(redis_url):
    redis = connect(redis_url)
    try:
        queue = ServiceQueue(redis, "svc")
        e1, e2, e3 = await _read_three(redis, queue)
        # Something that is not a stream sits where client-b's replies go: XADD fails there.
        await redis.set(reply_key("client-b"), b"not a stream")
        writer = ReplyWriter("svc", reply_ttl=60, idempotency_ttl=60)
        writer.open(redis)
        done = [
            Done(e1, "client-a", encode_result("1", 1), deadline=1e12),
            Done(e2, "client-b", encode_result("2", 2), deadline=1e12),
            Done(e3, None, None, deadline=1e12),
        ]
        assert await writer._write(done) == [True, False, True]
        assert await _pending(redis, queue) == {e2.entry_id}
        assert await redis.xlen(queue.keys.requests) == 1
        # Only the finished entries left the byte count.
        assert int(await redis.get(queue.keys.backlog_bytes)) == len(ENVELOPES[1])
        # Written twice (a retry after a lost answer): the script subtracts nothing twice.
        # (A cluster's two pipelines do; that drift heals when the stream next empties.)
        assert await writer._write(done[:1]) == [True]
        if not is_cluster(redis):
            assert int(await redis.get(queue.keys.backlog_bytes)) == len(ENVELOPES[1])
        await redis.delete(reply_key("client-b"))
        assert await writer._write(done[1:2]) == [True]
        assert await _pending(redis, queue) == set()
        if not is_cluster(redis):
            assert int(await redis.get(queue.keys.backlog_bytes)) == 0
    finally:
        await redis.aclose()


async def test_replies_refused_by_a_full_redis_leave_their_entries_pending():
    """maxmemory reached under noeviction: XADD is refused (OOM) while XACK would not be;
    the entries whose reply was refused stay pending, the notification's is finished."""
    server = RedisServer().start()
    redis = connect(server.url)
    try:
        queue = ServiceQueue(redis, "svc")
        e1, e2, e3 = await _read_three(redis, queue)
        writer = ReplyWriter("svc", reply_ttl=60, idempotency_ttl=60)
        writer.open(redis)
        done = [
            Done(e1, "client-a", encode_result("1", 1), deadline=1e12),
            Done(e2, "client-a", encode_result("2", 2), deadline=1e12),
            Done(e3, None, None, deadline=1e12),
        ]
        await redis.config_set("maxmemory-policy", "noeviction")
        await redis.config_set("maxmemory", "1")
        try:
            assert await writer._write(done) == [False, False, True]
        finally:
            await redis.config_set("maxmemory", "0")
        assert await _pending(redis, queue) == {e1.entry_id, e2.entry_id}
        assert await redis.exists(reply_key("client-a")) == 0
        assert await writer._write(done[:2]) == [True, True]
        assert await _pending(redis, queue) == set()
        got = await replies.read(redis, "client-a", replies.START, 0.01)
        assert [r for _, r in got] == [encode_result("1", 1), encode_result("2", 2)]
    finally:
        await redis.aclose()
        server.cleanup()
