"""JSON-RPC 2.0 without I/O: bytes in, typed messages out; messages in, bytes out.

Imports only `spark.errors` and orjson, so every layer (worker, edge, proxy) shares one
reading of the spec and it can be tested byte for byte. See `server` for the choices made
where the spec is silent, and `wire` for what Spark adds on the wire (headers, the WebSocket
request member, the broker's reply format).
"""

from spark.protocol.client import parse_messages, parse_response
from spark.protocol.encode import (
    encode_batch,
    encode_error,
    encode_message,
    encode_notification,
    encode_request,
    encode_response,
)
from spark.protocol.messages import (
    JSONRPC_VERSION,
    RESERVED_PREFIX,
    Id,
    Params,
    Parsed,
    ProtocolError,
    Request,
    Response,
)
from spark.protocol.server import encode_reply, parse_body

__all__ = [
    "JSONRPC_VERSION",
    "RESERVED_PREFIX",
    "Id",
    "Params",
    "Parsed",
    "ProtocolError",
    "Request",
    "Response",
    "encode_batch",
    "encode_error",
    "encode_message",
    "encode_notification",
    "encode_reply",
    "encode_request",
    "encode_response",
    "parse_body",
    "parse_messages",
    "parse_response",
]
