"""One exception tree for the whole library.

`RpcError` carries a JSON-RPC error (code, message, data) and is what a caller sees when
the remote side answered with an error. Transport failures (no connection, no answer in
time) are `TransportError`s. Timeouts are both an `RpcError` (code -32001, so a worker can
answer with one) and a builtin `TimeoutError` (so `except asyncio.TimeoutError` keeps working
around a proxy call).

This module imports nothing of ours: every layer may use it.
"""

from __future__ import annotations

from typing import Any, ClassVar

# JSON-RPC 2.0 reserved codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# Server errors, -32000..-32099 (implementation-defined, named here once).
TIMEOUT = -32001
OVERLOADED = -32002
SERVICE_UNAVAILABLE = -32003
DEAD_LETTERED = -32004
UNAUTHORIZED = -32005
CANCELLED = -32006
REQUEST_TOO_LARGE = -32007

SERVER_ERROR_MIN = -32099
SERVER_ERROR_MAX = -32000


class SparkError(Exception):
    """Base of every exception raised by this library."""


class RpcError(SparkError):
    """A JSON-RPC error object as an exception."""

    code: ClassVar[int] = INTERNAL_ERROR
    default_message: ClassVar[str] = "Internal error"
    #: Retrying the same request may succeed (the server said so by its code).
    retryable: ClassVar[bool] = False

    def __init__(self, message: str | None = None, data: Any = None, *, code: int | None = None):
        self.message = message if message is not None else self.default_message
        self.data = data
        if code is not None:
            # Instance attribute shadows the class default for codes without their own class.
            self.code = code  # type: ignore[misc]
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err

    @classmethod
    def from_dict(cls, error: Any) -> RpcError:
        """Build the most specific exception for an error object received from a peer."""
        if not isinstance(error, dict):
            return InternalError("Malformed error object", data={"error": error})
        code = error.get("code")
        message = error.get("message")
        if not isinstance(message, str):
            message = str(message)
        data = error.get("data")
        klass = _BY_CODE.get(code) if isinstance(code, int) else None
        if klass is None:
            if isinstance(code, int) and SERVER_ERROR_MIN <= code <= SERVER_ERROR_MAX:
                return ServerError(message, data, code=code)
            return RpcError(message, data, code=code if isinstance(code, int) else INTERNAL_ERROR)
        return klass(message, data)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code}, message={self.message!r}, data={self.data!r})"
        )

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class ParseError(RpcError):
    code = PARSE_ERROR
    default_message = "Parse error"


class InvalidRequestError(RpcError):
    code = INVALID_REQUEST
    default_message = "Invalid Request"


class MethodNotFoundError(RpcError):
    code = METHOD_NOT_FOUND
    default_message = "Method not found"


class InvalidParamsError(RpcError):
    code = INVALID_PARAMS
    default_message = "Invalid params"


class InternalError(RpcError):
    code = INTERNAL_ERROR
    default_message = "Internal error"


class ServerError(RpcError):
    """An implementation-defined server error (-32000..-32099)."""

    code = SERVER_ERROR_MAX
    default_message = "Server error"


class RpcTimeoutError(ServerError, TimeoutError):
    """The request's deadline passed before an answer."""

    code = TIMEOUT
    default_message = "Request timed out"


class OverloadedError(ServerError):
    code = OVERLOADED
    default_message = "Service overloaded"
    retryable = True


class ServiceUnavailableError(ServerError):
    code = SERVICE_UNAVAILABLE
    default_message = "Service unavailable"
    retryable = True


class DeadLetteredError(ServerError):
    code = DEAD_LETTERED
    default_message = "Request dead-lettered"


class UnauthorizedError(ServerError):
    code = UNAUTHORIZED
    default_message = "Unauthorized"


class CancelledError(ServerError):
    """The caller gave up and the server cancelled the handler."""

    code = CANCELLED
    default_message = "Request cancelled"


class RequestTooLargeError(ServerError):
    code = REQUEST_TOO_LARGE
    default_message = "Request too large"


_BY_CODE: dict[int, type[RpcError]] = {
    k.code: k
    for k in (
        ParseError,
        InvalidRequestError,
        MethodNotFoundError,
        InvalidParamsError,
        InternalError,
        RpcTimeoutError,
        OverloadedError,
        ServiceUnavailableError,
        DeadLetteredError,
        UnauthorizedError,
        CancelledError,
        RequestTooLargeError,
    )
}


class TransportError(SparkError):
    """The request could not be delivered or its answer could not be received."""


class RpcConnectionError(TransportError, ConnectionError):
    """No connection to the broker or edge (refused, reset, DNS, TLS)."""
