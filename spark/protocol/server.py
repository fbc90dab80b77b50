"""Server side: a request body in, typed requests out; outcomes in, the reply body out.

Nothing here raises on bad input: every way a body can be wrong becomes a ready error
`Response`, so a worker or the edge cannot be killed by what a client sends.

Where the spec is silent:
- A batch larger than `max_batch` or a body nested deeper than `max_depth` is answered
  with one -32007 (Request too large) error, id null, data naming the limit: a server limit,
  not an invalid request, so a client can tell "split it" from "fix it".
- An integer outside the 64-bit range is a -32700 (data.reason says why): it cannot be
  read exactly, and reading it inexactly would change ids and params silently.
- Errors for malformed input carry no `data` (the spec's own examples, byte for byte, and
  nothing of the input is echoed back).
- `"params": null` is invalid (-32600): the spec allows only an object or an array, or no
  member at all. Duplicate members: the last one wins (orjson). Extra members are ignored.
- Invalid items are answered even when they carry no id (with id null), as in the spec's
  examples; only valid notifications go unanswered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from spark.errors import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    InternalError,
    RequestTooLargeError,
    RpcError,
)
from spark.protocol._json import load
from spark.protocol.messages import JSONRPC_VERSION, Id, Parsed, Request, Response

_ID_TYPES = (str, int, float)


def _invalid(id: Id) -> Response:
    return Response(id, None, {"code": INVALID_REQUEST, "message": "Invalid Request"})


def _read_request(obj: Any) -> Request | Response:
    if type(obj) is not dict:
        return _invalid(None)
    if "id" in obj:
        rid = obj["id"]
        # `type(...) in` rather than isinstance: a bool is an int, but not a valid id.
        if rid is not None and type(rid) not in _ID_TYPES:
            return _invalid(None)
        is_notification = False
    else:
        rid = None
        is_notification = True
    method = obj.get("method")
    if obj.get("jsonrpc") != JSONRPC_VERSION or type(method) is not str:
        return _invalid(rid)
    params = obj.get("params")
    if params is None:
        if "params" in obj:
            return _invalid(rid)
    elif type(params) is not dict and type(params) is not list:
        return _invalid(rid)
    return Request(method, params, rid, is_notification)


def parse_body(
    data: bytes | bytearray | memoryview | str, *, max_batch: int = 100, max_depth: int = 64
) -> Parsed:
    """Read one request body (a single request or a batch). Never raises on bad input."""
    try:
        doc = load(data, max_depth)
    except RpcError as exc:
        return Parsed(False, [Response(None, None, exc.to_dict())], [])
    if type(doc) is list:
        size = len(doc)
        if size == 0:
            return Parsed(False, [_invalid(None)], [])
        if size > max_batch:
            err = RequestTooLargeError("Batch too large", {"max_batch": max_batch, "size": size})
            return Parsed(False, [Response(None, None, err.to_dict())], [])
        items: list[Request | Response] = []
        requests: list[Request] = []
        for obj in doc:
            item = _read_request(obj)
            items.append(item)
            if type(item) is Request:
                requests.append(item)
        return Parsed(True, items, requests)
    item = _read_request(doc)
    return Parsed(False, [item], [item] if type(item) is Request else [])


def _outcome_doc(id: Id, outcome: Any) -> dict[str, Any]:
    if isinstance(outcome, Response):
        # The request's id wins: a worker answers under its own id, the client knows this one.
        if outcome.error is not None:
            return {"jsonrpc": JSONRPC_VERSION, "error": outcome.error, "id": id}
        return {"jsonrpc": JSONRPC_VERSION, "result": outcome.result, "id": id}
    if isinstance(outcome, RpcError):
        return {"jsonrpc": JSONRPC_VERSION, "error": outcome.to_dict(), "id": id}
    if isinstance(outcome, BaseException):
        # Never leak an unexpected exception's text to a client.
        return {"jsonrpc": JSONRPC_VERSION, "error": InternalError().to_dict(), "id": id}
    return {"jsonrpc": JSONRPC_VERSION, "result": outcome, "id": id}


def encode_reply(parsed: Parsed, outcomes: Sequence[Any]) -> bytes | None:
    """The body to send back for `parsed`, or None when nothing must be sent.

    `outcomes` has one entry per `parsed.requests` (notifications included, their entry is
    ignored), in order: a result value, an `RpcError`, a `Response`, or any other exception
    (answered as a bare -32603) - what `asyncio.gather(..., return_exceptions=True)` gives.
    A result may be an `orjson.Fragment` to embed JSON that is already encoded. A result
    that cannot be encoded becomes a -32603 for that request alone.
    """
    if len(outcomes) != len(parsed.requests):
        raise ValueError(f"{len(parsed.requests)} requests but {len(outcomes)} outcomes")
    docs: list[dict[str, Any]] = []
    index = 0
    for item in parsed.items:
        if isinstance(item, Request):
            outcome = outcomes[index]
            index += 1
            if not item.is_notification:
                docs.append(_outcome_doc(item.id, outcome))
        else:
            docs.append(item.to_dict())
    if not docs:
        return None
    body: Any = docs if parsed.is_batch else docs[0]
    try:
        return orjson.dumps(body)
    except TypeError:
        pass
    # Slow path, only after a failure: encode one by one and replace the ones that fail.
    parts = []
    for doc in docs:
        try:
            parts.append(orjson.Fragment(orjson.dumps(doc)))
        except TypeError:
            err = {"code": INTERNAL_ERROR, "message": "Response is not JSON-serializable"}
            doc_id = doc["id"]
            parts.append(orjson.Fragment(orjson.dumps(Response(doc_id, None, err).to_dict())))
    return orjson.dumps(parts if parsed.is_batch else parts[0])
