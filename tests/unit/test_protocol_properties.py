"""Properties of spark.protocol: hostile input never raises, valid messages round-trip."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spark.protocol import (
    Request,
    Response,
    encode_batch,
    encode_error,
    encode_notification,
    encode_reply,
    encode_request,
    encode_response,
    parse_body,
    parse_response,
)
from spark.protocol._json import INT_MAX, INT_MIN, _deeper_than

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(st.characters(codec="utf-8"), max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(INT_MIN, INT_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=16,
)
ids = (
    st.none()
    | st.integers(INT_MIN, INT_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
params = (
    st.none() | st.lists(json_values, max_size=4) | st.dictionaries(text, json_values, max_size=4)
)
# Objects that look like requests but get every member wrong now and then.
request_like = st.dictionaries(
    st.sampled_from(["jsonrpc", "method", "params", "id", "extra"]),
    st.sampled_from(["2.0", "1.0", "m", "rpc.x"]).map(str) | json_values,
    max_size=5,
)
bodies = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
    request_like.map(orjson.dumps),
    st.lists(request_like | json_values, max_size=6).map(orjson.dumps),
    json_values.map(orjson.dumps),
)


def check_error_response(item: Response) -> None:
    assert item.error is not None
    assert type(item.error["code"]) is int
    assert type(item.error["message"]) is str
    assert item.id is None or type(item.id) in (str, int, float)


@FAST
@given(bodies, st.integers(1, 10), st.integers(1, 70))
def test_any_body_parses_to_requests_or_error_responses(
    body: bytes, max_batch: int, max_depth: int
) -> None:
    parsed = parse_body(body, max_batch=max_batch, max_depth=max_depth)
    assert parsed.items
    assert parsed.requests == [i for i in parsed.items if isinstance(i, Request)]
    for item in parsed.items:
        if isinstance(item, Request):
            assert type(item.method) is str
            assert item.params is None or type(item.params) in (dict, list)
            assert item.id is None or type(item.id) in (str, int, float)
            assert not (item.is_notification and item.id is not None)
        else:
            assert isinstance(item, Response)
            check_error_response(item)
    # Whatever came in, what goes out is a valid JSON-RPC response body (or nothing).
    reply = encode_reply(parsed, [r.params for r in parsed.requests])
    if reply is None:
        assert all(isinstance(i, Request) and i.is_notification for i in parsed.items)
        return
    responses = parse_response(reply)
    if parsed.is_batch:
        assert isinstance(responses, list)
        expected = [i for i in parsed.items if not (isinstance(i, Request) and i.is_notification)]
        assert [r.id for r in responses] == [i.id for i in expected]
    else:
        assert isinstance(responses, Response)


@FAST
@given(st.text(max_size=200))
def test_any_text_parses(body: str) -> None:
    parsed = parse_body(body)
    assert parsed.items
    for item in parsed.items:
        if isinstance(item, Response):
            check_error_response(item)


@FAST
@given(text, params, ids | st.just(...))
def test_valid_requests_round_trip(method: str, params: Any, id: Any) -> None:
    if id is ...:
        body = encode_notification(method, params)
        expected = Request.notification(method, params)
    else:
        body = encode_request(method, params, id=id)
        expected = Request(method, params, id)
    parsed = parse_body(body)
    assert parsed.is_batch is False
    assert parsed.items == [expected]
    assert parsed.requests == [expected]
    (item,) = parsed.items
    assert type(item.id) is type(expected.id)
    # The same request inside a batch comes back the same, and the bytes re-encode exactly.
    batch = parse_body(b"[" + body + b"," + body + b"]")
    assert batch.is_batch is True
    assert batch.items == [expected, expected]
    assert encode_batch(batch.items) == b"[" + body + b"," + body + b"]"


@FAST
@given(ids, json_values, st.booleans(), st.integers(-40000, 40000), text)
def test_responses_round_trip(id: Any, value: Any, is_error: bool, code: int, message: str) -> None:
    if is_error:
        error = {"code": code, "message": message}
        if value is not None:
            error["data"] = value
        body = encode_error(id, error)
        expected = Response(id, None, error)
    else:
        body = encode_response(id, value)
        expected = Response(id, value)
    assert parse_response(body) == expected
    assert parse_response(b"[" + body + b"]") == [expected]


def reference_depth(doc: Any) -> int:
    if isinstance(doc, dict):
        return 1 + max((reference_depth(v) for v in doc.values()), default=0)
    if isinstance(doc, list):
        return 1 + max((reference_depth(v) for v in doc), default=0)
    return 0


tricky_text = st.text(st.sampled_from('[]{}"\\ a\n'), max_size=8)
tricky_values = st.recursive(
    st.none() | st.integers(INT_MIN, INT_MAX) | tricky_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky_text, inner, max_size=3),
    max_leaves=20,
)


@FAST
@given(tricky_values)
def test_byte_level_depth_agrees_with_a_tree_walk(doc: Any) -> None:
    data = orjson.dumps(doc)
    depth = reference_depth(doc)
    assert _deeper_than(data, depth) is False
    if depth > 0:
        assert _deeper_than(data, depth - 1) is True
