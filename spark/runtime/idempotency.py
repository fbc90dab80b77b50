"""The idempotency gate: a key means at most one completed run while its reply is stored.

A request with a key claims it with a RUNNING marker (bound to the request's fingerprint)
before its handler runs. A repeat of the same request waits for the stored reply; a
different request reusing the key is refused. The marker's lease is renewed with the
entry's (see `LeaseKeeper`), so a handler longer than the lease is not run twice.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis

from spark.broker import replies
from spark.broker.keys import ServiceKeys
from spark.errors import InvalidRequestError, RpcError, RpcTimeoutError

#: How often a repeat checks for the first run's reply: from FIRST_POLL, doubling up to
#: MAX_POLL seconds.
FIRST_POLL = 0.02
MAX_POLL = 0.25


class IdempotencyGate:
    def __init__(self, redis: aioredis.Redis, keys: ServiceKeys, lease: float):
        self.redis = redis
        self.keys = keys
        #: Seconds a marker lives unless renewed.
        self.lease = lease
        #: Markers held by running requests: entry id -> (key, marker).
        self._markers: dict[bytes, tuple[str, bytes]] = {}
        #: Keys claimed by requests now answering: entry id -> key (released if cancelled).
        self._claimed: dict[bytes, str] = {}

    def key_for(self, idempotency_key: str) -> str:
        return self.keys.result(idempotency_key)

    async def claim(
        self, idempotency_key: str, method: str, params: Any, entry_id: bytes, deadline: float
    ) -> tuple[str, bytes, bytes | RpcError | None]:
        """(Redis key, fingerprint, outcome); outcome None: run the handler (the key is ours
        until `finished`), bytes: the stored reply, RpcError: refused or gave up waiting."""
        key = self.key_for(idempotency_key)
        digest = replies.fingerprint(method, params)
        marker = replies.running_marker(digest, entry_id)
        wait = FIRST_POLL
        while True:
            stored = await replies.claim_idempotency(self.redis, key, marker, self.lease)
            if stored is None or stored == marker:
                self._markers[entry_id] = (key, marker)
                self._claimed[entry_id] = key
                return key, digest, None
            running, bound_to, rest = replies.read_claim(stored)
            if bound_to is not None and bound_to != digest:
                return (
                    key,
                    digest,
                    InvalidRequestError(
                        "idempotency key already used for a different request",
                        data={"idempotency_key": idempotency_key},
                    ),
                )
            if not running:
                return key, digest, rest
            # The same request runs elsewhere: wait for its reply, not run it twice.
            if time.time() >= deadline:
                return (
                    key,
                    digest,
                    RpcTimeoutError(
                        "an earlier request with this idempotency key is still running"
                    ),
                )
            await asyncio.sleep(wait)
            wait = min(wait * 2, MAX_POLL)

    def ran(self, entry_id: bytes) -> None:
        """The handler finished: its marker needs no more renewing (the reply replaces it)."""
        self._markers.pop(entry_id, None)

    def claimed(self, entry_id: bytes) -> str | None:
        return self._claimed.get(entry_id)

    def forget(self, entry_id: bytes) -> None:
        self._markers.pop(entry_id, None)
        self._claimed.pop(entry_id, None)

    async def renew(self) -> None:
        markers = list(self._markers.values())
        if markers:
            await replies.renew_claims(self.redis, markers, self.lease)
