"""NotificationListener on every topology: channels added and dropped while it runs (what an
edge does as WebSocket clients come and go; sharded channels on a cluster)."""

from __future__ import annotations

import pytest

from spark.broker import connect, notify
from spark.broker.keys import ServiceKeys, client_channel
from spark.broker.notify import NotificationListener
from support.polling import eventually

pytestmark = [pytest.mark.integration, pytest.mark.topologies()]


async def test_channels_added_and_dropped_while_running(redis_url):
    got: list[notify.Notification] = []
    redis = connect(redis_url)
    services = [f"svc{i}" for i in range(6)]  # spread over the shards of a cluster
    listener = await NotificationListener(redis_url, got.append).start()
    try:
        assert await listener.add(*(ServiceKeys.for_service(s).notify for s in services))
        assert await listener.add(client_channel("c1"))
        for s in services:
            await notify.publish(redis, s, None, "hello")
        await notify.publish(redis, "svc0", "c1", "direct")
        await eventually(lambda: len(got) == len(services) + 1, what="every notification")
        assert {(n.service, n.method, n.client_id) for n in got} == {
            *((s, "hello", None) for s in services),
            ("svc0", "direct", "c1"),
        }

        # Dropped: nothing more from it. Dropped and added straight back (a service's last
        # WebSocket client left and a new one came): still subscribed.
        got.clear()
        listener.discard(ServiceKeys.for_service("svc1").notify, client_channel("c1"))
        listener.discard(ServiceKeys.for_service("svc2").notify)
        assert await listener.add(ServiceKeys.for_service("svc2").notify)
        await eventually(
            lambda: _numsub(redis, ServiceKeys.for_service("svc1").notify, 0),
            what="svc1 unsubscribed",
        )
        assert await _numsub(redis, client_channel("c1"), 0)
        assert await _numsub(redis, ServiceKeys.for_service("svc2").notify, 1)
        receivers = {s: await notify.publish(redis, s, None, "again") for s in services[1:4]}
        assert receivers == {"svc1": 0, "svc2": 1, "svc3": 1}
        assert await notify.publish(redis, "svc0", "c1", "gone") == 0
        await eventually(lambda: len(got) == 2, what="svc2 and svc3")
        assert sorted(n.service for n in got) == ["svc2", "svc3"]
        assert listener.connections == 1  # all of it without reconnecting
    finally:
        await listener.aclose()
        await redis.aclose()


async def _numsub(redis, channel: str, expected: int) -> bool:
    from spark.broker.connection import is_cluster

    if is_cluster(redis):
        counts = await redis.pubsub_shardnumsub(
            channel, target_nodes=redis.get_node_from_key(channel)
        )
    else:
        counts = await redis.pubsub_numsub(channel)
    return (
        dict((k.decode() if isinstance(k, bytes) else k, v) for k, v in counts)[channel] == expected
    )
