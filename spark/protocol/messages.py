"""JSON-RPC 2.0 messages as plain typed values.

They are mutable slotted dataclasses rather than frozen ones because one is built for every
request on the hot path and frozen dataclasses pay for `object.__setattr__` in `__init__`.
Errors stay in their wire form (a dict) inside `Response`: most are forwarded untouched, and
`unwrap()` builds the exception only when someone actually wants to raise it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

from spark.errors import InternalError, RpcError

JSONRPC_VERSION = "2.0"

#: Method names starting with this are reserved by the spec for rpc-internal methods. The
#: protocol layer parses them like any other method; a dispatcher should answer them with
#: -32601 (Method not found), which is what "only `rpc_*` methods are callable" gives anyway.
RESERVED_PREFIX = "rpc."

#: What the spec allows as a request id. A bool is an int to Python but not an id.
Id: TypeAlias = str | int | float | None
Params: TypeAlias = dict[str, Any] | list[Any] | None


class ProtocolError(InternalError):
    """A peer sent something that is not a JSON-RPC 2.0 response.

    It is an `InternalError` (-32603) so that callers catching `RpcError` see it like any
    other failed call, while code that cares can tell a broken peer from a remote error.
    """

    default_message = "Malformed JSON-RPC response"


@dataclass(slots=True)
class Request:
    """A call (or a notification, which expects no reply).

    `is_notification` is a field, not `id is None`, because the spec makes `"id": null` a
    request that must be answered, unlike a missing `id`.
    """

    method: str
    params: Params = None
    id: Id = None
    is_notification: bool = False

    @classmethod
    def notification(cls, method: str, params: Params = None) -> Request:
        return cls(method, params, None, True)

    @property
    def is_reserved(self) -> bool:
        return self.method.startswith(RESERVED_PREFIX)

    def to_dict(self) -> dict[str, Any]:
        # Key order follows the spec's examples so encoded bytes match them exactly.
        doc: dict[str, Any] = {"jsonrpc": JSONRPC_VERSION, "method": self.method}
        if self.params is not None:
            doc["params"] = self.params
        if not self.is_notification:
            doc["id"] = self.id
        return doc


@dataclass(slots=True)
class Response:
    """A reply: `error` set means failure, otherwise `result` (which may be None) is the value."""

    id: Id
    result: Any = None
    error: dict[str, Any] | None = None

    @classmethod
    def from_error(cls, id: Id, error: RpcError | dict[str, Any]) -> Response:
        return cls(id, None, error.to_dict() if isinstance(error, RpcError) else error)

    @property
    def is_error(self) -> bool:
        return self.error is not None

    def raise_for_error(self) -> None:
        if self.error is not None:
            raise RpcError.from_dict(self.error)

    def unwrap(self) -> Any:
        """The result, or the remote error raised as the most specific `RpcError` subclass."""
        if self.error is not None:
            raise RpcError.from_dict(self.error)
        return self.result

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"jsonrpc": JSONRPC_VERSION, "error": self.error, "id": self.id}
        return {"jsonrpc": JSONRPC_VERSION, "result": self.result, "id": self.id}


@dataclass(slots=True)
class Parsed:
    """What the server got in one body.

    `items` keeps the body's order: each is either a valid `Request` or a ready error
    `Response` for an item that could not be read. `requests` lists just the valid requests
    (notifications included) in the same order, so a dispatcher can run them and hand the
    outcomes back to `encode_reply`. `is_batch` says which reply shape the spec requires: a
    body-level failure (bad JSON, empty array, limits) is answered with a single object.
    """

    is_batch: bool
    items: list[Request | Response]
    requests: list[Request] = field(default_factory=list)
