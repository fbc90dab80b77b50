"""Messages to bytes.

Output is compact orjson with members in the spec examples' order (jsonrpc, method, params,
id / jsonrpc, result|error, id), so bytes are deterministic and comparable in tests.
Values orjson cannot encode (sets, ints beyond 64 bits, lone surrogates) raise
`TypeError` (orjson.JSONEncodeError) here: these helpers encode what the caller built, and
only `encode_reply` on the server side turns such failures into error responses.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from spark.errors import RpcError
from spark.protocol.messages import JSONRPC_VERSION, Id, Params, Request, Response

_dumps = orjson.dumps


def encode_request(method: str, params: Params = None, *, id: Id) -> bytes:
    doc: dict[str, Any] = {"jsonrpc": JSONRPC_VERSION, "method": method}
    if params is not None:
        doc["params"] = params
    doc["id"] = id
    return _dumps(doc)


def encode_notification(method: str, params: Params = None) -> bytes:
    doc: dict[str, Any] = {"jsonrpc": JSONRPC_VERSION, "method": method}
    if params is not None:
        doc["params"] = params
    return _dumps(doc)


def encode_response(id: Id, result: Any) -> bytes:
    return _dumps({"jsonrpc": JSONRPC_VERSION, "result": result, "id": id})


def encode_error(id: Id, error: RpcError | dict[str, Any]) -> bytes:
    """`error` may be an exception or an error object already in wire form (forwarded as is)."""
    err = error.to_dict() if isinstance(error, RpcError) else error
    return _dumps({"jsonrpc": JSONRPC_VERSION, "error": err, "id": id})


def encode_message(message: Request | Response) -> bytes:
    return _dumps(message.to_dict())


def encode_batch(items: Iterable[Request | Response | None]) -> bytes | None:
    """A batch body, or None when there is nothing to send.

    None entries are skipped so a server can pass one slot per request with None for the
    notifications; the spec forbids answering with an empty array. Notification *requests*
    are real messages and are sent, so a client's all-notification batch is not empty.
    """
    docs = [item.to_dict() for item in items if item is not None]
    return _dumps(docs) if docs else None
