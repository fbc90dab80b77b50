"""Client side: a response body in, validated `Response`s out.

A peer that breaks the protocol is a bug on its side, so unlike the server side this raises
(`ProtocolError`, a -32603) instead of building an answer. A batch with one malformed item
is rejected whole: its ids can no longer be trusted to match the requests.
"""

from __future__ import annotations

from typing import Any

from spark.errors import RpcError
from spark.protocol._json import load
from spark.protocol.messages import JSONRPC_VERSION, ProtocolError, Request, Response

_ID_TYPES = (str, int, float)


def _bad(reason: str) -> ProtocolError:
    return ProtocolError(f"Malformed JSON-RPC response: {reason}")


def _read_response(obj: Any) -> Response:
    if type(obj) is not dict:
        raise _bad("not an object")
    if obj.get("jsonrpc") != JSONRPC_VERSION:
        raise _bad('jsonrpc is not "2.0"')
    if "id" not in obj:
        raise _bad("no id")
    rid = obj["id"]
    if rid is not None and type(rid) not in _ID_TYPES:
        raise _bad("id is not a string, number or null")
    has_result = "result" in obj
    if "error" not in obj:
        if not has_result:
            raise _bad("neither result nor error")
        return Response(rid, obj["result"])
    if has_result:
        raise _bad("both result and error")
    error = obj["error"]
    if type(error) is not dict:
        raise _bad("error is not an object")
    if type(error.get("code")) is not int:
        raise _bad("error code is not an integer")
    if type(error.get("message")) is not str:
        raise _bad("error message is not a string")
    return Response(rid, None, error)


def _read_notification(obj: dict[str, Any]) -> Request:
    if obj.get("jsonrpc") != JSONRPC_VERSION:
        raise _bad('notification jsonrpc is not "2.0"')
    method, params = obj["method"], obj.get("params")
    if type(method) is not str:
        raise _bad("notification method is not a string")
    if params is not None and type(params) not in (dict, list):
        raise _bad("notification params are not an object or an array")
    return Request.notification(method, params)


def _load(data: bytes | bytearray | memoryview | str) -> Any:
    try:
        return load(data, None)
    except RpcError as exc:
        cause = exc.__cause__
        detail = str(cause) if cause is not None else exc.message
        raise ProtocolError(
            f"Malformed JSON-RPC response: not readable JSON ({detail})", exc.data
        ) from exc


def parse_response(data: bytes | bytearray | memoryview | str) -> Response | list[Response]:
    """Read a reply body: one `Response`, or a list for a batch (in the server's order).

    Matching batch replies to requests is by id, which the caller owns; the spec lets the
    server answer a batch in any order.
    """
    doc = _load(data)
    if type(doc) is list:
        if not doc:
            raise _bad("empty batch")
        return [_read_response(obj) for obj in doc]
    return _read_response(doc)


def parse_messages(data: bytes | bytearray | memoryview | str) -> list[Response | Request]:
    """Read a message from a peer that both answers and notifies (an edge over WebSocket):
    its responses and notifications (`Request`s without id), in the message's order.

    Like `parse_response`, a message holding anything else is rejected whole.
    """
    doc = _load(data)
    items = doc if type(doc) is list else [doc]
    if not items:
        raise _bad("empty batch")
    return [
        _read_notification(obj)
        if type(obj) is dict and "method" in obj and "id" not in obj
        else _read_response(obj)
        for obj in items
    ]
