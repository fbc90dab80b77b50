"""The lease keeper: while a handler runs, nobody else takes its entry or its key.

Every `reclaim_after / 3` seconds it renews the idle time of the entries in flight (so live
workers do not reclaim them) and the lease of the idempotency markers they hold (so a
repeat waits for their reply instead of running the handler again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from spark.broker import ServiceQueue
from spark.broker.retrying import REDIS_ERRORS, Backoff
from spark.runtime.idempotency import IdempotencyGate

log = logging.getLogger("spark.worker")


class LeaseKeeper:
    def __init__(
        self,
        queue: ServiceQueue,
        consumer: str,
        gate: IdempotencyGate,
        in_flight: Callable[[], list[bytes]],
        *,
        reclaim_after: float,
    ):
        self.queue = queue
        self.consumer = consumer
        self.gate = gate
        self.in_flight = in_flight
        self.interval = max(reclaim_after / 3, 0.05)
        self.retry = Backoff("lease renewal", logger=log)

    async def renew(self) -> None:
        entries = self.in_flight()
        if entries:
            await self.queue.renew(self.consumer, entries)
            await self.gate.renew()

    async def run(self) -> None:
        """Renew forever (until cancelled), surviving any Redis error."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.renew()
            except REDIS_ERRORS as exc:
                await self.retry.pause(exc)
            else:
                self.retry.succeeded()
