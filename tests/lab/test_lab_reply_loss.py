"""A reply whose delivery is cut in transit is read again, not lost.

Found by test_lab_redis_restart: during a Redis restart under load, batches of accepted,
executed and answered requests timed out at their callers. The AOF showed the worker's
RPUSH of each reply followed by the client's BLPOP / `LPOP 512`, whose answers the
shutdown never sent. This reproduces it deterministically: a proxy drops the one answer
carrying a reply and cuts the connection (what a Redis restart or a network failure does).
"""

from __future__ import annotations

import time

import pytest

from spark.broker import replies
from spark.broker.envelope import encode_result
from spark.client.broker_client import BrokerClient
from support.lab import TcpProxy, apoll, report

pytestmark = pytest.mark.timeout(60)


async def test_reply_survives_a_connection_cut_while_it_is_delivered(redis_url, redis_server):
    import redis.asyncio as aioredis

    proxy = await TcpProxy(redis_server.port).start()
    client = BrokerClient(proxy.url)
    r = aioredis.Redis.from_url(redis_url)
    try:
        import asyncio

        call = asyncio.create_task(
            client.call("nobody", "echo", {}, timeout=4, request_id="lost-reply-1")
        )
        # The request is queued (no worker serves "nobody"); the reader is blocked reading.
        await apoll(lambda: r.xlen("spark:{nobody}:requests"), what="request enqueued")
        proxy.lose_answer_with(b"lost-reply-1")
        # What a worker does: write the reply for the client.
        await replies.push(r, [(client.client_id, encode_result("lost-reply-1", {"ok": 1}))])
        started = time.monotonic()
        outcome = await asyncio.gather(call, return_exceptions=True)
        report(
            "reply_loss",
            answers_lost_in_transit=len(proxy.lost),
            outcome=type(outcome[0]).__name__,
            waited_s=time.monotonic() - started,
        )
        assert proxy.lost, "the proxy never saw the reply go by"
        assert outcome[0] == {"ok": 1}
    finally:
        await client.aclose()
        await r.aclose()
        await proxy.aclose()
