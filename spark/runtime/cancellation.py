"""Which running requests a caller's cancel is for: the worker's cancellation index.

Requests are indexed by (reply_to, request id) and by (reply_to, idempotency key) while
their handler may be cancelled. A cancel for a request not running here is remembered for
`memory` seconds (it may still be queued), so it is answered as cancelled without running.
No I/O: the worker feeds it cancel items and cancels the tasks it names.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from spark.broker.cancel import CancelItem

#: Seconds a cancel for a request this worker is not running is remembered; request ids
#: are never reused by a client, so this only bounds memory.
CANCEL_MEMORY = 120.0
#: Remembered cancels past which expired ones are swept at once.
SWEEP_ABOVE = 1000


class CancellationIndex:
    def __init__(
        self, *, memory: float = CANCEL_MEMORY, clock: Callable[[], float] = time.monotonic
    ):
        self.memory = memory
        self.clock = clock
        self._by_request: dict[tuple[str, str], bytes] = {}
        self._by_key: dict[tuple[str, str], set[bytes]] = {}
        #: Entries whose cancel was asked for (their task is being cancelled).
        self._requested: set[bytes] = set()
        #: (reply_to, id) of cancelled requests not running here -> forget after (clock).
        self._remembered: dict[tuple[str, str], float] = {}

    def track(self, entry_id: bytes, reply_to: str, request_id: str, key: str | None) -> None:
        self._by_request[(reply_to, request_id)] = entry_id
        if key is not None:
            self._by_key.setdefault((reply_to, key), set()).add(entry_id)

    def untrack(self, entry_id: bytes, reply_to: str, request_id: str, key: str | None) -> None:
        self._by_request.pop((reply_to, request_id), None)
        self._requested.discard(entry_id)
        if key is not None:
            group = self._by_key.get((reply_to, key))
            if group is not None:
                group.discard(entry_id)
                if not group:
                    del self._by_key[(reply_to, key)]

    def cancelled_before_running(self, reply_to: str, request_id: str) -> bool:
        """Whether a cancel for this request came before it was read (forgets it)."""
        return self._remembered.pop((reply_to, request_id), None) is not None

    def requested(self, entry_id: bytes) -> bool:
        """Whether this entry's task is being cancelled at its caller's request."""
        return entry_id in self._requested

    def apply(self, items: Iterable[CancelItem], running: Callable[[bytes], bool]) -> set[bytes]:
        """The running entries to cancel now for `items`; cancels of requests not running
        here are remembered. `running(entry_id)` says whether a task runs that entry."""
        now = self.clock()
        targets: set[bytes] = set()
        for item in items:
            if item.request_id is not None:
                entry_id = self._by_request.get((item.reply_to, item.request_id))
                if entry_id is not None:
                    targets.add(entry_id)
                else:
                    self._remembered[(item.reply_to, item.request_id)] = now + self.memory
            if item.idempotency_key is not None:
                targets |= self._by_key.get((item.reply_to, item.idempotency_key), set())
        fresh = {e for e in targets if e not in self._requested and running(e)}
        self._requested |= fresh
        remembered = self._remembered
        if len(remembered) > SWEEP_ABOVE or (remembered and now > min(remembered.values())):
            self._remembered = {k: t for k, t in remembered.items() if t > now}
        return fresh
