"""The shapes of Redis replies on the broker's connections, for the type checker.

redis-py annotates each command with the union of every shape it can answer (RESP2 or
RESP3, bytes or decoded str). The broker's connections (`connection.connect`) are RESP2
without decoding, so each reply has one shape: the broker casts a reply to the alias below
where it reads one. Casts only; nothing is converted or checked at run time.
"""

from __future__ import annotations

from typing import TypedDict

#: An entry's fields.
Fields = dict[bytes, bytes]
#: XRANGE / XREVRANGE: (id, fields) per entry.
Entries = list[tuple[bytes, Fields]]
#: XCLAIM / XAUTOCLAIM: as Entries, but an entry deleted meanwhile has no fields.
ClaimedEntries = list[tuple[bytes, Fields | None]]
#: XREAD / XREADGROUP (new entries): (stream, entries) per stream; None when the block timed out.
StreamsReply = list[tuple[bytes, Entries]] | None


class PendingRow(TypedDict):
    """One row of XPENDING with a range."""

    message_id: bytes
    consumer: bytes
    time_since_delivered: int
    times_delivered: int
