"""The request envelope that travels on a service's stream, and the reply that comes back.

A stream entry has one field, `e`, holding the envelope as JSON. The envelope carries our
own request id (unique per client; the caller's JSON-RPC id never leaves the caller), the
client to reply to, the request's budget, optional idempotency key and state namespace, and
the caller's W3C trace context (`trace`: `{"traceparent": ..., "tracestate": ...}`, see
`spark.protocol.wire.read_trace`). The reply's format is wire knowledge shared with the
client: it lives in `spark.protocol.wire` (re-exported here).

The budget travels relative (`timeout`, seconds left when the request was enqueued, as
gRPC's `grpc-timeout`): a worker counts it from the time in the stream entry's id, which is
Redis's clock, so clocks that differ between hosts do not shorten or stretch it. The absolute
`deadline` is still written for producers and workers that predate `timeout`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from spark.errors import InvalidRequestError
from spark.protocol.wire import (
    decode_reply,
    encode_error,
    encode_result,
    read_trace,
    retag_reply,
)

__all__ = [
    "FIELD",
    "Envelope",
    "decode_reply",
    "encode_error",
    "encode_result",
    "reply_address",
    "retag_reply",
]

FIELD = b"e"
#: Longest budget a request may have (a day): a deadline of 1e300 would overflow timers.
MAX_TIMEOUT = 86_400.0


@dataclass(slots=True)
class Envelope:
    id: str
    method: str
    params: Any = None
    #: Client id to send the reply to; None for a notification (no reply).
    reply_to: str | None = None
    #: Absolute deadline, seconds since the epoch (the caller's clock).
    deadline: float | None = None
    idempotency_key: str | None = None
    state: str | None = None
    enqueued_at: float | None = None
    #: Client that notifications about this call target (a WebSocket connection behind the
    #: edge); None means `reply_to`.
    client: str | None = None
    #: Seconds the request had left when it was enqueued (see the module docstring).
    timeout: float | None = None
    #: The caller's W3C trace context (spark.tracing); None when it sent none.
    trace: dict[str, str] | None = None

    def encode(self) -> bytes:
        doc: dict[str, Any] = {"id": self.id, "method": self.method}
        if self.params is not None:
            doc["params"] = self.params
        if self.reply_to is not None:
            doc["reply_to"] = self.reply_to
        if self.deadline is not None:
            doc["deadline"] = self.deadline
        if self.idempotency_key is not None:
            doc["idempotency_key"] = self.idempotency_key
        if self.state is not None:
            doc["state"] = self.state
        if self.enqueued_at is not None:
            doc["enqueued_at"] = self.enqueued_at
        if self.client is not None:
            doc["client"] = self.client
        if self.timeout is not None:
            doc["timeout"] = self.timeout
        if self.trace is not None:
            doc["trace"] = self.trace
        return orjson.dumps(doc)

    @classmethod
    def decode(cls, raw: bytes) -> Envelope:
        """Parse an envelope; anything malformed is an InvalidRequestError (dead-lettered)."""
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestError("envelope is not JSON") from exc
        if not isinstance(doc, dict):
            raise InvalidRequestError("envelope is not an object")
        rid, method = doc.get("id"), doc.get("method")
        if not isinstance(rid, str) or not isinstance(method, str):
            raise InvalidRequestError("envelope needs string id and method")
        params = doc.get("params")
        if params is not None and not isinstance(params, dict | list):
            raise InvalidRequestError("params must be an object or an array")
        deadline, timeout = doc.get("deadline"), doc.get("timeout")
        for name, value in (("deadline", deadline), ("timeout", timeout)):
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if value is not None and not number:
                raise InvalidRequestError(f"{name} must be a number")
        for name in ("reply_to", "idempotency_key", "state", "client"):
            value = doc.get(name)
            if value is not None and not isinstance(value, str):
                raise InvalidRequestError(f"{name} must be a string")
        # Tracing is best effort: a foreign producer's odd value costs the trace only.
        trace = read_trace(doc.get("trace"))
        return cls(
            id=rid,
            method=method,
            params=params,
            reply_to=doc.get("reply_to"),
            deadline=deadline,
            idempotency_key=doc.get("idempotency_key"),
            state=doc.get("state"),
            enqueued_at=doc.get("enqueued_at"),
            client=doc.get("client"),
            timeout=timeout,
            trace=trace,
        )


#: Our envelopes start with the id and name reply_to right after the params (see `encode`).
_LEADING_ID = re.compile(rb'^\{"id":"((?:[^"\\]|\\.)*)"')
_REPLY_TO = re.compile(rb',"reply_to":"((?:[^"\\]|\\.)*)"')


def reply_address(raw: bytes) -> tuple[str, str] | None:
    """(request id, reply_to) of an envelope too malformed to decode, when they can be read.

    Lets a worker tell the caller its request was invalid instead of leaving it to time out.
    JSON nested deeper than the decoder allows is read as our encoder lays it out: the id
    first, and the last `reply_to` (the top-level one follows the params).
    """
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _address_by_layout(raw)
    if isinstance(doc, dict):
        rid, reply_to = doc.get("id"), doc.get("reply_to")
        if isinstance(rid, str) and isinstance(reply_to, str):
            return rid, reply_to
    return None


def _address_by_layout(raw: bytes) -> tuple[str, str] | None:
    first = _LEADING_ID.match(raw)
    last = None
    for last in _REPLY_TO.finditer(raw):  # noqa: B007 - the last match is the one wanted
        pass
    if first is None or last is None:
        return None
    try:
        return orjson.loads(b'"' + first.group(1) + b'"'), orjson.loads(b'"' + last.group(1) + b'"')
    except orjson.JSONDecodeError:
        return None
