"""What Spark adds to JSON-RPC on the wire, in one place for the client and the edge.

Over HTTP a call's budget, idempotency key and W3C trace context (`traceparent`,
`tracestate`) travel in request headers. Over WebSocket the headers belong to the
connection, so each request object carries them in an extra member, `"spark": {"timeout":
seconds, "idempotency_key": key, "trace": {"traceparent": ...}}` (JSON-RPC peers ignore
unknown members); the edge names the connection's client id in a handshake response header.

Behind the edge, a worker answers on the broker in a reply format of its own: our request id
(the caller's JSON-RPC id never leaves the caller) with `result` or `error`, and no
`jsonrpc` member.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from spark.errors import RpcError

#: HTTP: seconds the caller still waits (the edge never allows more than its own limit).
TIMEOUT_HEADER = "X-Spark-Timeout"
#: The query parameter that may stand in for TIMEOUT_HEADER (WebSocket handshakes from
#: browsers cannot set headers).
TIMEOUT_QUERY = "timeout"
#: HTTP: the call's idempotency key.
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: WebSocket handshake response: the client id of the connection.
CLIENT_ID_HEADER = "X-Spark-Client-Id"
#: WebSocket (and any body): the extra request member with per-request options.
SPARK_MEMBER = "spark"
#: W3C trace context: HTTP header names, and the keys of a carrier (the `trace` of the
#: SPARK_MEMBER and of a broker envelope).
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

#: A W3C trace context carrier: {"traceparent": ..., "tracestate": ...}.
Carrier = dict[str, str]
#: Per request: its own timeout (seconds), idempotency key and trace context, None when not
#: given.
RequestOptions = tuple[float | None, str | None, Carrier | None]


def spark_member(
    timeout: float, idempotency_key: str | None = None, trace: Carrier | None = None
) -> dict[str, Any]:
    """The SPARK_MEMBER value for a request with `timeout` seconds left."""
    member: dict[str, Any] = {"timeout": round(max(timeout, 0.001), 3)}
    if idempotency_key:
        member["idempotency_key"] = idempotency_key
    if trace:
        member["trace"] = trace
    return member


def read_trace(value: Any) -> Carrier | None:
    """A trace context carrier received from outside, or None when it is missing or junk
    (a bad one costs the trace, never the request)."""
    if not isinstance(value, dict):
        return None
    parent = value.get(TRACEPARENT)
    if not isinstance(parent, str) or len(parent) > 128:
        return None
    carrier = {TRACEPARENT: parent}
    state = value.get(TRACESTATE)
    if isinstance(state, str) and len(state) <= 512:
        carrier[TRACESTATE] = state
    return carrier


def read_spark_member(request_doc: Any, max_key_length: int) -> RequestOptions:
    """(timeout, idempotency key, trace) from a request object's SPARK_MEMBER; what is
    missing or invalid is None (the request then runs with the connection's defaults)."""
    member = request_doc.get(SPARK_MEMBER) if isinstance(request_doc, dict) else None
    timeout = key = trace = None
    if isinstance(member, dict):
        value = member.get("timeout")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(value) and value > 0:
                timeout = float(value)
        value = member.get("idempotency_key")
        if isinstance(value, str) and 0 < len(value) <= max_key_length:
            key = value
        trace = read_trace(member.get("trace"))
    return timeout, key, trace


# -- broker replies ----------------------------------------------------------------------------


def encode_result(request_id: str, result: Any) -> bytes:
    return orjson.dumps({"id": request_id, "result": result})


def encode_error(request_id: str, error: RpcError) -> bytes:
    try:
        return orjson.dumps({"id": request_id, "error": error.to_dict()})
    except TypeError:
        # The error's data is not JSON: the caller still gets the code and message.
        doc = {"code": error.code, "message": error.message, "data": {"note": "data not JSON"}}
        return orjson.dumps({"id": request_id, "error": doc})


def retag_reply(stored: bytes, request_id: str) -> bytes:
    """A stored reply (idempotency) answered under the id of the request that repeats it."""
    doc = orjson.loads(stored)
    doc["id"] = request_id
    return orjson.dumps(doc)


def decode_reply(raw: bytes) -> tuple[str | None, Any, RpcError | None]:
    """(request id, result, error) of a reply; a malformed one gives (None, None, error)."""
    try:
        doc = orjson.loads(raw)
        rid = doc["id"]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return None, None, RpcError("malformed reply")
    if not isinstance(rid, str):
        return None, None, RpcError("malformed reply id")
    if "error" in doc:
        return rid, None, RpcError.from_dict(doc["error"])
    return rid, doc.get("result"), None
