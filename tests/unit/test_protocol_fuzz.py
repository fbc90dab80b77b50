"""Hostile bytes against the pieces tests/unit/test_protocol_properties.py does not cover:
the client's reply parser, the broker envelope and reply decoders, and the client's reply
resolver. Any bytes give a value or the one documented exception, never another one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from spark.broker.envelope import Envelope, decode_reply, reply_address
from spark.client.broker_client import BrokerClient
from spark.errors import InvalidRequestError, RpcError
from spark.protocol import ProtocolError, Response, parse_response

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
keys = st.sampled_from(
    [
        "id",
        "jsonrpc",
        "result",
        "error",
        "method",
        "params",
        "reply_to",
        "deadline",
        "idempotency_key",
        "state",
        "client",
        "enqueued_at",
        "code",
        "message",
        "data",
    ]
)
objects = st.dictionaries(
    keys, json_values | st.dictionaries(keys, json_values, max_size=4), max_size=6
)
blobs = st.one_of(
    st.binary(max_size=200),
    objects.map(orjson.dumps),
    st.lists(objects | json_values, max_size=5).map(orjson.dumps),
    json_values.map(orjson.dumps),
)


@FAST
@given(blobs)
@example(b"")
@example(b"[]")
@example(b'{"jsonrpc":"2.0","id":1,"result":1,"error":null}')
@example(b'[{"jsonrpc":"2.0","id":[1],"result":1}]')
def test_parse_response_any_bytes(data: bytes) -> None:
    try:
        parsed = parse_response(data)
    except ProtocolError:
        return
    for item in parsed if isinstance(parsed, list) else [parsed]:
        assert isinstance(item, Response)
        assert item.id is None or type(item.id) in (str, int, float)


@FAST
@given(blobs)
@example(b'{"id":"1","method":"m","params":5}')
@example(b'{"id":"1","method":"m","deadline":"soon"}')
@example(b'{"id":"1","method":"m","reply_to":[1]}')
def test_envelope_decode_any_bytes(data: bytes) -> None:
    try:
        env = Envelope.decode(data)
    except InvalidRequestError:
        return
    assert isinstance(env.id, str) and isinstance(env.method, str)
    assert env.params is None or isinstance(env.params, dict | list)
    # What decodes re-encodes and decodes to the same envelope.
    again = Envelope.decode(env.encode())
    assert (again.id, again.method, again.params, again.reply_to) == (
        env.id,
        env.method,
        env.params,
        env.reply_to,
    )


@FAST
@given(blobs)
def test_reply_address_any_bytes(data: bytes) -> None:
    address = reply_address(data)
    assert address is None or all(isinstance(x, str) for x in address)


@FAST
@given(blobs)
@example(b'{"id":"1","error":"not an object"}')
@example(b'{"id":"1","error":{"code":"x"}}')
def test_decode_reply_any_bytes(data: bytes) -> None:
    _rid, _result, error = decode_reply(data)
    assert error is None or isinstance(error, RpcError)


def _resolve_all(items: list[bytes]) -> list[Any]:
    """Feed replies to a client's resolver the way its reader does; return the outcomes
    of two waiting callers ("a" and "b")."""

    async def run() -> list[Any]:
        client = BrokerClient("memory://fuzz-resolve")
        loop = asyncio.get_running_loop()
        futs = {rid: loop.create_future() for rid in ("a", "b")}
        client._pending.update(futs)
        for item in items:
            client._resolve(item)
        return [f.result() if f.done() and not f.exception() else None for f in futs.values()]

    return asyncio.run(run())


@settings(FAST, max_examples=60)
@given(st.lists(blobs, max_size=4))
def test_client_resolver_survives_garbage_with_a_hashable_id(items: list[bytes]) -> None:
    safe = []
    for item in items:
        try:
            doc = orjson.loads(item)
        except orjson.JSONDecodeError:
            safe.append(item)
            continue
        if not isinstance(doc, dict) or isinstance(doc.get("id"), str | int | float | None):
            safe.append(item)
    _resolve_all([*safe, b'{"id":"a","result":1}', b'{"id":"b","result":2}'])


def test_client_resolver_survives_an_unhashable_reply_id() -> None:
    assert _resolve_all([b'{"id":["x"],"result":0}', b'{"id":"a","result":1}']) == [1, None]
