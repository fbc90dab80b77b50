"""spark.protocol against the JSON-RPC 2.0 spec, byte for byte where encoding is deterministic.

Spec texts below are copied from https://www.jsonrpc.org/specification (section 7,
"Examples"). Expected bytes are the spec's text made compact (orjson keeps member order),
so the comparison is exact bytes, not just equal structures.
"""

from __future__ import annotations

import ast
import pathlib
from typing import Any

import orjson
import pytest

import spark.protocol as protocol
from spark import errors
from spark.protocol import (
    Parsed,
    ProtocolError,
    Request,
    Response,
    encode_batch,
    encode_error,
    encode_message,
    encode_notification,
    encode_reply,
    encode_request,
    encode_response,
    parse_body,
    parse_response,
)
from spark.protocol._json import _deeper_than


def compact(text: str) -> bytes:
    """The spec's text without insignificant whitespace, members in the same order."""
    return orjson.dumps(orjson.loads(text))


# A reference server with the spec examples' methods: what a dispatcher would do.
def _subtract(params: Any) -> Any:
    if isinstance(params, dict):
        return params["minuend"] - params["subtrahend"]
    return params[0] - params[1]


METHODS = {
    "subtract": _subtract,
    "sum": sum,
    "get_data": lambda params: ["hello", 5],
    "update": lambda params: None,
    "notify_hello": lambda params: None,
    "notify_sum": lambda params: None,
}


def dispatch(request: Request) -> Any:
    handler = METHODS.get(request.method)
    if handler is None or request.is_reserved:
        return errors.MethodNotFoundError()
    return handler(request.params)


def serve(body: bytes | str) -> bytes | None:
    parsed = parse_body(body)
    return encode_reply(parsed, [dispatch(r) for r in parsed.requests])


def error_item(item: Request | Response) -> dict[str, Any]:
    assert isinstance(item, Response)
    assert item.error is not None
    return item.error


# --- spec section 7, one test per example -------------------------------------------------


@pytest.mark.parametrize(
    ("request_text", "response_text"),
    [
        (
            '{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}',
            '{"jsonrpc": "2.0", "result": 19, "id": 1}',
        ),
        (
            '{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}',
            '{"jsonrpc": "2.0", "result": -19, "id": 2}',
        ),
    ],
)
def test_spec_positional_params(request_text: str, response_text: str) -> None:
    assert serve(request_text.encode()) == compact(response_text)
    req = parse_body(request_text).items[0]
    assert isinstance(req, Request)
    assert encode_request(req.method, req.params, id=req.id) == compact(request_text)


@pytest.mark.parametrize(
    ("request_text", "response_text"),
    [
        (
            '{"jsonrpc": "2.0", "method": "subtract", '
            '"params": {"subtrahend": 23, "minuend": 42}, "id": 3}',
            '{"jsonrpc": "2.0", "result": 19, "id": 3}',
        ),
        (
            '{"jsonrpc": "2.0", "method": "subtract", '
            '"params": {"minuend": 42, "subtrahend": 23}, "id": 4}',
            '{"jsonrpc": "2.0", "result": 19, "id": 4}',
        ),
    ],
)
def test_spec_named_params(request_text: str, response_text: str) -> None:
    assert serve(request_text.encode()) == compact(response_text)
    req = parse_body(request_text).items[0]
    assert isinstance(req, Request)
    assert list(req.params) == list(orjson.loads(request_text)["params"])  # order kept
    assert encode_request(req.method, req.params, id=req.id) == compact(request_text)


@pytest.mark.parametrize(
    "request_text",
    [
        '{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}',
        '{"jsonrpc": "2.0", "method": "foobar"}',
    ],
)
def test_spec_notification(request_text: str) -> None:
    parsed = parse_body(request_text.encode())
    (req,) = parsed.items
    assert isinstance(req, Request)
    assert req.is_notification
    assert parsed.requests == [req]
    assert serve(request_text.encode()) is None
    assert encode_notification(req.method, req.params) == compact(request_text)
    assert encode_message(req) == compact(request_text)


def test_spec_non_existent_method() -> None:
    body = b'{"jsonrpc": "2.0", "method": "foobar", "id": "1"}'
    expected = (
        '{"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"}'
    )
    assert serve(body) == compact(expected)


def test_spec_invalid_json() -> None:
    body = b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]'
    expected = '{"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}'
    parsed = parse_body(body)
    assert parsed.is_batch is False
    assert parsed.requests == []
    assert serve(body) == compact(expected)


def test_spec_invalid_request_object() -> None:
    body = b'{"jsonrpc": "2.0", "method": 1, "params": "bar"}'
    expected = (
        '{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}'
    )
    assert serve(body) == compact(expected)


def test_spec_batch_invalid_json() -> None:
    body = b"""[
  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
  {"jsonrpc": "2.0", "method"
]"""
    expected = '{"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}'
    assert parse_body(body).is_batch is False
    assert serve(body) == compact(expected)


def test_spec_empty_array() -> None:
    expected = (
        '{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}'
    )
    parsed = parse_body(b"[]")
    assert parsed.is_batch is False  # one error object, not an (empty) array
    assert serve(b"[]") == compact(expected)


def test_spec_invalid_batch_not_empty() -> None:
    expected = """[
  {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}
]"""
    assert parse_body(b"[1]").is_batch is True
    assert serve(b"[1]") == compact(expected)


def test_spec_invalid_batch() -> None:
    expected = """[
  {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
  {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
  {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}
]"""
    assert serve(b"[1,2,3]") == compact(expected)


SPEC_BATCH = """[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
    ]"""


def test_spec_rpc_call_batch() -> None:
    expected = """[
        {"jsonrpc": "2.0", "result": 7, "id": "1"},
        {"jsonrpc": "2.0", "result": 19, "id": "2"},
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
        {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
        {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}
    ]"""
    parsed = parse_body(SPEC_BATCH.encode())
    assert parsed.is_batch is True
    assert len(parsed.items) == 6
    assert [r.method for r in parsed.requests] == [
        "sum",
        "notify_hello",
        "subtract",
        "foo.get",
        "get_data",
    ]
    assert [r.is_notification for r in parsed.requests] == [False, True, False, False, False]
    assert serve(SPEC_BATCH.encode()) == compact(expected)


def test_spec_rpc_call_batch_all_notifications() -> None:
    body = b"""[
        {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}
    ]"""
    parsed = parse_body(body)
    assert parsed.is_batch is True
    assert len(parsed.requests) == 2
    assert serve(body) is None


def test_spec_batch_request_encoding() -> None:
    requests = [
        Request("sum", [1, 2, 4], "1"),
        Request.notification("notify_hello", [7]),
        Request("subtract", [42, 23], "2"),
    ]
    expected = compact(
        """[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"}
    ]"""
    )
    assert encode_batch(requests) == expected


# --- error codes ---------------------------------------------------------------------------

ERROR_CLASSES = [
    (errors.ParseError, -32700),
    (errors.InvalidRequestError, -32600),
    (errors.MethodNotFoundError, -32601),
    (errors.InvalidParamsError, -32602),
    (errors.InternalError, -32603),
    (errors.RpcTimeoutError, -32001),
    (errors.OverloadedError, -32002),
    (errors.ServiceUnavailableError, -32003),
    (errors.DeadLetteredError, -32004),
    (errors.UnauthorizedError, -32005),
    (errors.CancelledError, -32006),
    (errors.RequestTooLargeError, -32007),
]


@pytest.mark.parametrize(("klass", "code"), ERROR_CLASSES)
def test_every_error_code_round_trips(klass: type[errors.RpcError], code: int) -> None:
    exc = klass()
    body = encode_error(7, exc)
    message = orjson.dumps(exc.message).decode()
    assert (
        body == f'{{"jsonrpc":"2.0","error":{{"code":{code},"message":{message}}},"id":7}}'.encode()
    )
    response = parse_response(body)
    assert isinstance(response, Response)
    assert response.is_error
    with pytest.raises(klass) as info:
        response.unwrap()
    assert type(info.value) is klass
    assert info.value.code == code
    with pytest.raises(klass):
        response.raise_for_error()


@pytest.mark.parametrize(("klass", "code"), ERROR_CLASSES)
def test_error_data_only_when_present(klass: type[errors.RpcError], code: int) -> None:
    assert b"data" not in encode_error(1, klass("boom"))
    body = encode_error(1, klass("boom", {"field": "x"}))
    assert (
        body
        == (
            f'{{"jsonrpc":"2.0","error":{{"code":{code},"message":"boom",'
            f'"data":{{"field":"x"}}}},"id":1}}'
        ).encode()
    )
    response = parse_response(body)
    assert isinstance(response, Response)
    with pytest.raises(klass) as info:
        response.unwrap()
    assert info.value.data == {"field": "x"}
    assert info.value.message == "boom"


def test_server_error_code_without_class_and_custom_code() -> None:
    response = parse_response(encode_error(1, {"code": -32050, "message": "custom"}))
    assert isinstance(response, Response)
    with pytest.raises(errors.ServerError) as info:
        response.unwrap()
    assert info.value.code == -32050
    response = parse_response(encode_error(1, {"code": 42, "message": "app"}))
    assert isinstance(response, Response)
    with pytest.raises(errors.RpcError) as info2:
        response.unwrap()
    assert info2.value.code == 42


def test_encode_error_from_dict_is_forwarded_as_is() -> None:
    err = {"code": -32601, "message": "Method not found", "data": [1]}
    assert encode_error("x", err) == (
        b'{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found","data":[1]},'
        b'"id":"x"}'
    )


def test_protocol_error_is_internal_error() -> None:
    assert issubclass(ProtocolError, errors.InternalError)
    assert ProtocolError().code == -32603


# --- ids -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        (b'"abc"', "abc"),
        (b'""', ""),
        (b'"\\u65e5\\u672c"', "日本"),
        ('"日本"'.encode(), "日本"),
        (b"0", 0),
        (b"-1", -1),
        (b"9223372036854775807", 2**63 - 1),
        (b"-9223372036854775808", -(2**63)),
        (b"18446744073709551615", 2**64 - 1),
        (b"1.5", 1.5),
        (b"1.0", 1.0),
        (b"-0.25", -0.25),
        (b"1.5e+300", 1.5e300),
        (b"null", None),
    ],
)
def test_ids_preserved_exactly(literal: bytes, value: Any) -> None:
    body = b'{"jsonrpc":"2.0","method":"get_data","id":' + literal + b"}"
    (req,) = parse_body(body).items
    assert isinstance(req, Request)
    assert req.id == value
    assert type(req.id) is type(value)
    assert req.is_notification is False
    reply = serve(body)
    assert reply is not None
    expected_id = orjson.dumps(value)
    assert reply == b'{"jsonrpc":"2.0","result":["hello",5],"id":' + expected_id + b"}"
    # The id goes back as the very bytes it came in as (\u escapes aside: same string).
    if b"\\u" not in literal:
        assert expected_id == literal


def test_exponent_id_keeps_its_value() -> None:
    # 1e2 and 100.0 are the same JSON number; the reply carries the value, written as orjson does.
    (req,) = parse_body(b'{"jsonrpc":"2.0","method":"m","id":1e2}').items
    assert isinstance(req, Request)
    assert req.id == 100.0
    assert type(req.id) is float
    assert encode_response(req.id, 1) == b'{"jsonrpc":"2.0","result":1,"id":100.0}'


def test_null_id_is_a_request_and_absent_id_is_a_notification() -> None:
    (with_null,) = parse_body(b'{"jsonrpc":"2.0","method":"get_data","id":null}').items
    (without,) = parse_body(b'{"jsonrpc":"2.0","method":"get_data"}').items
    assert isinstance(with_null, Request)
    assert isinstance(without, Request)
    assert with_null.id is None
    assert with_null.is_notification is False
    assert without.is_notification is True
    assert serve(b'{"jsonrpc":"2.0","method":"get_data","id":null}') == (
        b'{"jsonrpc":"2.0","result":["hello",5],"id":null}'
    )
    assert serve(b'{"jsonrpc":"2.0","method":"get_data"}') is None
    assert encode_request("m", id=None) == b'{"jsonrpc":"2.0","method":"m","id":null}'
    assert encode_notification("m") == b'{"jsonrpc":"2.0","method":"m"}'


@pytest.mark.parametrize("literal", [b"true", b"false", b"{}", b'{"a":1}', b"[]", b"[1]"])
def test_invalid_id_types_get_null_id(literal: bytes) -> None:
    body = b'{"jsonrpc":"2.0","method":"m","id":' + literal + b"}"
    (item,) = parse_body(body).items
    assert error_item(item)["code"] == -32600
    assert isinstance(item, Response)
    assert item.id is None
    assert serve(body) == (
        b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":null}'
    )


# --- request validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params_literal", "expected"),
    [
        (None, None),
        (b"[]", []),
        (b"{}", {}),
        (b"[1,[2,[3]],{}]", [1, [2, [3]], {}]),
        (b'{"a":{"b":[null,true,1.5,"x"]}}', {"a": {"b": [None, True, 1.5, "x"]}}),
    ],
)
def test_params_shapes(params_literal: bytes | None, expected: Any) -> None:
    body = b'{"jsonrpc":"2.0","method":"m","id":1'
    if params_literal is not None:
        body += b',"params":' + params_literal
    (req,) = parse_body(body + b"}").items
    assert isinstance(req, Request)
    assert req.params == expected
    assert type(req.params) is type(expected)


@pytest.mark.parametrize("literal", [b"null", b'"bar"', b"1", b"1.5", b"true", b"false"])
def test_invalid_params_keep_the_id(literal: bytes) -> None:
    body = b'{"jsonrpc":"2.0","method":"m","params":' + literal + b',"id":"7"}'
    (item,) = parse_body(body).items
    assert isinstance(item, Response)
    assert item.id == "7"
    assert serve(body) == (
        b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":"7"}'
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"method":"m","id":3}',
        b'{"jsonrpc":"1.0","method":"m","id":3}',
        b'{"jsonrpc":2.0,"method":"m","id":3}',
        b'{"jsonrpc":"2.0 ","method":"m","id":3}',
        b'{"jsonrpc":null,"method":"m","id":3}',
        b'{"jsonrpc":"2.0","id":3}',
        b'{"jsonrpc":"2.0","method":null,"id":3}',
        b'{"jsonrpc":"2.0","method":1,"id":3}',
        b'{"jsonrpc":"2.0","method":["m"],"id":3}',
    ],
)
def test_invalid_request_members_keep_a_valid_id(body: bytes) -> None:
    (item,) = parse_body(body).items
    assert isinstance(item, Response)
    assert error_item(item) == {"code": -32600, "message": "Invalid Request"}
    assert item.id == 3


def test_invalid_notification_shaped_items_are_still_answered() -> None:
    body = b'[{"jsonrpc":"1.0","method":"m"},{"jsonrpc":"2.0","method":"update"}]'
    assert serve(body) == (
        b'[{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":null}]'
    )


def test_extra_members_are_ignored_and_duplicates_last_wins() -> None:
    (req,) = parse_body(
        b'{"jsonrpc":"2.0","method":"a","method":"b","id":1,"x":{"y":2},"meta":null}'
    ).items
    assert req == Request("b", None, 1, False)


def test_reserved_and_odd_method_names_parse() -> None:
    (req,) = parse_body(b'{"jsonrpc":"2.0","method":"rpc.discover","id":1}').items
    assert isinstance(req, Request)
    assert req.is_reserved
    assert serve(b'{"jsonrpc":"2.0","method":"rpc.discover","id":1}') == (
        b'{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":1}'
    )
    (empty,) = parse_body(b'{"jsonrpc":"2.0","method":"","id":1}').items
    assert empty == Request("", None, 1)
    assert not empty.is_reserved


@pytest.mark.parametrize("body", [b"1", b'"x"', b"null", b"true", b"1.5"])
def test_top_level_scalars_are_invalid_requests(body: bytes) -> None:
    parsed = parse_body(body)
    assert parsed.is_batch is False
    (item,) = parsed.items
    assert error_item(item)["code"] == -32600


def test_non_object_batch_items() -> None:
    parsed = parse_body(b'[null,"x",[],[{"jsonrpc":"2.0","method":"m","id":1}],true]')
    assert parsed.is_batch is True
    assert [error_item(i)["code"] for i in parsed.items] == [-32600] * 5
    assert all(isinstance(i, Response) and i.id is None for i in parsed.items)


# --- odd shapes ----------------------------------------------------------------------------


def test_whitespace_everywhere() -> None:
    body = b' \t\r\n{ "jsonrpc" :\n"2.0" ,\t"method" : "subtract" , "params" : [ 42 , 23 ] ,'
    body += b' "id" : 1 }\n\n'
    assert serve(body) == b'{"jsonrpc":"2.0","result":19,"id":1}'
    assert serve(b"\n[ " + body + b" ]\r\n") == b'[{"jsonrpc":"2.0","result":19,"id":1}]'


def test_unicode_escaped_and_raw_are_the_same() -> None:
    raw = '{"jsonrpc":"2.0","method":"héllo","params":{"k":"日本 🎉"},"id":"ü"}'.encode()
    escaped = (
        b'{"jsonrpc":"2.0","method":"h\\u00e9llo","params":{"k":"\\u65e5\\u672c '
        b'\\ud83c\\udf89"},"id":"\\u00fc"}'
    )
    assert parse_body(raw) == parse_body(escaped)
    (req,) = parse_body(raw).items
    assert req == Request("héllo", {"k": "日本 🎉"}, "ü")
    assert encode_message(req) == raw


def test_str_bytes_bytearray_memoryview_inputs_agree() -> None:
    text = SPEC_BATCH
    data = text.encode()
    expected = parse_body(data)
    assert parse_body(text) == expected
    assert parse_body(bytearray(data)) == expected
    assert parse_body(memoryview(data)) == expected


def test_wrong_input_type_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        parse_body(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"\xff\xfe",
        b'{"jsonrpc":"2.0","method":"\xc3\x28","id":1}',  # invalid UTF-8 in a string
        b'{"jsonrpc":"2.0","method":"\xed\xa0\x80","id":1}',  # encoded surrogate
        b'{"jsonrpc":"2.0","method":"\\ud800","id":1}',  # escaped lone surrogate
        b'\xef\xbb\xbf{"jsonrpc":"2.0","method":"m","id":1}',  # BOM
        b'{"jsonrpc":"2.0","method":"m","id":1} x',
        b'{"jsonrpc":"2.0","method":"m","id":1}{}',
        b'{"jsonrpc":"2.0","method":"m","id":NaN}',
        b'{"jsonrpc":"2.0","method":"m","id":Infinity}',
        b'{"jsonrpc":"2.0","method":"m","id":1e400}',
        b"{'jsonrpc':'2.0'}",
        b'{"a":1,}',
        b"\x00",
    ],
)
def test_unreadable_bodies_are_parse_errors(body: bytes) -> None:
    parsed = parse_body(body)
    assert parsed.is_batch is False
    assert parsed.requests == []
    assert serve(body) == (
        b'{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}'
    )


def test_str_with_lone_surrogate_is_a_parse_error() -> None:
    (item,) = parse_body('{"jsonrpc":"2.0","method":"\ud800","id":1}').items
    assert error_item(item)["code"] == -32700


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","method":"m","id":18446744073709551616}',
        b'{"jsonrpc":"2.0","method":"m","id":-9223372036854775809}',
        b'{"jsonrpc":"2.0","method":"m","params":[1,{"a":123456789012345678901234567890}],"id":1}',
        b'[{"jsonrpc":"2.0","method":"m","id":1},{"jsonrpc":"2.0","method":"m","id":99999999999999999999}]',
    ],
)
def test_integers_beyond_64_bits_are_rejected_not_rounded(body: bytes) -> None:
    parsed = parse_body(body)
    assert parsed.is_batch is False
    (item,) = parsed.items
    assert error_item(item) == {
        "code": -32700,
        "message": "Parse error",
        "data": {"reason": "integer outside the 64-bit range"},
    }
    assert isinstance(item, Response)
    assert item.id is None


@pytest.mark.parametrize(
    ("body", "params"),
    [
        (
            b'{"jsonrpc":"2.0","method":"m","params":["123456789012345678901234567890"],"id":1}',
            None,
        ),
        (b'{"jsonrpc":"2.0","method":"m","params":["a\\"123456789012345678901234"],"id":1}', None),
        (b'{"jsonrpc":"2.0","method":"m","params":[1234567890123456789012.5],"id":1}', None),
        (b'{"jsonrpc":"2.0","method":"m","params":[12345678901234567890123e-3],"id":1}', None),
        (b'{"jsonrpc":"2.0","method":"m","params":[1e-0000000000000000000001],"id":1}', [0.1]),
        (b'{"jsonrpc":"2.0","method":"m","params":[0.1234567890123456789012345],"id":1}', None),
        (b'{"jsonrpc":"2.0","method":"m","params":[18446744073709551615],"id":1}', [2**64 - 1]),
    ],
)
def test_long_digit_runs_that_are_not_wide_integers(body: bytes, params: Any) -> None:
    (item,) = parse_body(body).items
    assert isinstance(item, Request)
    assert item.params == (params if params is not None else orjson.loads(body)["params"])


# --- limits --------------------------------------------------------------------------------


def nested_request(levels: int) -> bytes:
    """A request whose body nests `levels` containers (the request object counts as one)."""
    inner = levels - 1
    return b'{"jsonrpc":"2.0","method":"m","params":' + b"[" * inner + b"]" * inner + b',"id":1}'


def test_depth_limit_boundary() -> None:
    ok = parse_body(nested_request(64))
    assert isinstance(ok.items[0], Request)
    too_deep = parse_body(nested_request(65))
    assert too_deep.is_batch is False
    (item,) = too_deep.items
    assert error_item(item) == {
        "code": -32007,
        "message": "Request nested too deeply",
        "data": {"max_depth": 64},
    }
    assert isinstance(parse_body(nested_request(10), max_depth=10).items[0], Request)
    assert isinstance(parse_body(nested_request(11), max_depth=10).items[0], Response)


def test_depth_counts_the_batch_level() -> None:
    assert isinstance(parse_body(b"[" + nested_request(63) + b"]").items[0], Request)
    (item,) = parse_body(b"[" + nested_request(64) + b"]").items
    assert error_item(item)["code"] == -32007


@pytest.mark.parametrize("levels", [1025, 5000, 100_000])
def test_hostile_depth_is_a_clean_error(levels: int) -> None:
    for body in (b"[" * levels + b"]" * levels, b'{"a":' * levels + b"1" + b"}" * levels):
        (item,) = parse_body(body).items
        assert error_item(item)["code"] == -32007
    # Unterminated: not JSON at all, but still no RecursionError.
    (item,) = parse_body(b"[" * levels).items
    assert error_item(item)["code"] in (-32700, -32007)


def test_depth_beyond_orjson_limit_with_a_high_max_depth() -> None:
    (item,) = parse_body(nested_request(1500), max_depth=5000).items
    assert error_item(item)["code"] == -32007
    assert isinstance(parse_body(nested_request(900), max_depth=5000).items[0], Request)


def test_brackets_inside_strings_do_not_count() -> None:
    params = ["[" * 200, "{" * 100 + '\\"' + "]" * 50, "\\\\" + "[" * 70, {"k[[[": '"]]]'}]
    body = orjson.dumps({"jsonrpc": "2.0", "method": "m", "params": params, "id": 1})
    (req,) = parse_body(body).items
    assert isinstance(req, Request)
    assert req.params == params


def _reference_depth(doc: Any) -> int:
    if isinstance(doc, dict):
        return 1 + max((_reference_depth(v) for v in doc.values()), default=0)
    if isinstance(doc, list):
        return 1 + max((_reference_depth(v) for v in doc), default=0)
    return 0


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {},
        [[], [[]], {"a": [{}]}],
        ["]]]]", "[[[[", {"\\": "\\\\", '"': '"[]"'}],
        [{"a": ['x\\"[', ["\\\\]"]]}, '"{{{{'],
        {"": {"": {"": {"": "[{" * 10}}}},
    ],
)
def test_byte_level_depth_matches_a_tree_walk(doc: Any) -> None:
    data = orjson.dumps(doc)
    depth = _reference_depth(doc)
    assert _deeper_than(data, depth) is False
    if depth > 0:
        assert _deeper_than(data, depth - 1) is True


def test_batch_limit_boundary() -> None:
    one = b'{"jsonrpc":"2.0","method":"sum","params":[1],"id":1}'
    ok = parse_body(b"[" + b",".join([one] * 100) + b"]")
    assert ok.is_batch is True
    assert len(ok.requests) == 100
    over = parse_body(b"[" + b",".join([one] * 101) + b"]")
    assert over.is_batch is False
    assert over.requests == []
    (item,) = over.items
    assert error_item(item) == {
        "code": -32007,
        "message": "Batch too large",
        "data": {"max_batch": 100, "size": 101},
    }
    assert encode_reply(over, []) == (
        b'{"jsonrpc":"2.0","error":{"code":-32007,"message":"Batch too large",'
        b'"data":{"max_batch":100,"size":101}},"id":null}'
    )
    assert parse_body(b"[" + one + b"," + one + b"]", max_batch=1).is_batch is False


# --- server-side reply assembly ------------------------------------------------------------


def test_single_request_batch_keeps_the_array_shape() -> None:
    assert serve(b'[{"jsonrpc":"2.0","method":"get_data","id":1}]') == (
        b'[{"jsonrpc":"2.0","result":["hello",5],"id":1}]'
    )


def test_reply_outcome_kinds() -> None:
    parsed = parse_body(
        b"["
        b'{"jsonrpc":"2.0","method":"a","id":1},'
        b'{"jsonrpc":"2.0","method":"b","id":2},'
        b'{"jsonrpc":"2.0","method":"c","id":3},'
        b'{"jsonrpc":"2.0","method":"d","id":4},'
        b'{"jsonrpc":"2.0","method":"e"},'
        b'{"jsonrpc":"2.0","method":"f","id":6},'
        b'{"jsonrpc":"2.0","method":"g","id":7},'
        b'{"jsonrpc":"2.0","method":"h","id":8}'
        b"]"
    )
    outcomes = [
        {"ok": True},
        errors.InvalidParamsError("bad", {"field": "x"}),
        ValueError("secret internals"),
        Response("worker-own-id", {"r": 1}),
        "ignored for a notification",
        Response("worker-own-id", None, {"code": -32001, "message": "Request timed out"}),
        orjson.Fragment(b'{"pre":"encoded"}'),
        None,
    ]
    assert encode_reply(parsed, outcomes) == (
        b"["
        b'{"jsonrpc":"2.0","result":{"ok":true},"id":1},'
        b'{"jsonrpc":"2.0","error":{"code":-32602,"message":"bad","data":{"field":"x"}},"id":2},'
        b'{"jsonrpc":"2.0","error":{"code":-32603,"message":"Internal error"},"id":3},'
        b'{"jsonrpc":"2.0","result":{"r":1},"id":4},'
        b'{"jsonrpc":"2.0","error":{"code":-32001,"message":"Request timed out"},"id":6},'
        b'{"jsonrpc":"2.0","result":{"pre":"encoded"},"id":7},'
        b'{"jsonrpc":"2.0","result":null,"id":8}'
        b"]"
    )


def test_unencodable_result_fails_only_its_own_request() -> None:
    parsed = parse_body(
        b'[{"jsonrpc":"2.0","method":"a","id":1},{"jsonrpc":"2.0","method":"b","id":2},'
        b'{"jsonrpc":"2.0","method":"c","id":3}]'
    )
    reply = encode_reply(parsed, [{1, 2}, "fine", 2**70])
    assert reply == (
        b"["
        b'{"jsonrpc":"2.0","error":{"code":-32603,"message":"Response is not JSON-serializable"},'
        b'"id":1},'
        b'{"jsonrpc":"2.0","result":"fine","id":2},'
        b'{"jsonrpc":"2.0","error":{"code":-32603,"message":"Response is not JSON-serializable"},'
        b'"id":3}'
        b"]"
    )
    single = parse_body(b'{"jsonrpc":"2.0","method":"a","id":"s"}')
    assert encode_reply(single, [object()]) == (
        b'{"jsonrpc":"2.0","error":{"code":-32603,"message":"Response is not JSON-serializable"},'
        b'"id":"s"}'
    )
    bad_data = encode_reply(single, [errors.InvalidParamsError(data={1, 2})])
    assert bad_data is not None
    assert orjson.loads(bad_data)["error"]["code"] == -32603


def test_reply_needs_one_outcome_per_request() -> None:
    parsed = parse_body(b'{"jsonrpc":"2.0","method":"a","id":1}')
    with pytest.raises(ValueError, match="outcomes"):
        encode_reply(parsed, [])


def test_reply_for_parsed_built_by_hand() -> None:
    req = Request("m", None, 5)
    assert encode_reply(Parsed(False, [req], [req]), [1]) == b'{"jsonrpc":"2.0","result":1,"id":5}'
    assert encode_reply(Parsed(True, [], []), []) is None


# --- encoding helpers ----------------------------------------------------------------------


def test_encode_helpers_exact_bytes() -> None:
    assert encode_request("m", [1], id=1) == b'{"jsonrpc":"2.0","method":"m","params":[1],"id":1}'
    assert encode_request("m", {"a": None}, id="x") == (
        b'{"jsonrpc":"2.0","method":"m","params":{"a":null},"id":"x"}'
    )
    assert encode_request("m", id=1) == b'{"jsonrpc":"2.0","method":"m","id":1}'
    assert encode_notification("m", []) == b'{"jsonrpc":"2.0","method":"m","params":[]}'
    assert encode_response(1, None) == b'{"jsonrpc":"2.0","result":null,"id":1}'
    assert encode_response(None, [1, "a"]) == b'{"jsonrpc":"2.0","result":[1,"a"],"id":null}'
    assert encode_message(Response(2, 3)) == b'{"jsonrpc":"2.0","result":3,"id":2}'
    assert encode_message(Response.from_error(2, errors.CancelledError())) == (
        b'{"jsonrpc":"2.0","error":{"code":-32006,"message":"Request cancelled"},"id":2}'
    )
    assert encode_message(Request("m", [1], 9)) == encode_request("m", [1], id=9)
    assert encode_message(Request.notification("m", [1])) == encode_notification("m", [1])


def test_encode_helpers_raise_type_error_for_unencodable_values() -> None:
    with pytest.raises(TypeError):
        encode_response(1, {1, 2})
    with pytest.raises(TypeError):
        encode_request("m", [2**64], id=1)


def test_encode_batch() -> None:
    assert encode_batch([]) is None
    assert encode_batch([None, None]) is None
    assert encode_batch(
        [Response(1, "a"), None, Response.from_error(None, errors.ParseError())]
    ) == (
        b'[{"jsonrpc":"2.0","result":"a","id":1},'
        b'{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}]'
    )
    # A client's batch of notifications is still something to send.
    assert encode_batch(iter([Request.notification("a"), Request.notification("b")])) == (
        b'[{"jsonrpc":"2.0","method":"a"},{"jsonrpc":"2.0","method":"b"}]'
    )


# --- client side ---------------------------------------------------------------------------


def test_parse_response_shapes() -> None:
    assert parse_response(b'{"jsonrpc":"2.0","result":19,"id":1}') == Response(1, 19)
    assert parse_response('{"jsonrpc":"2.0","result":null,"id":"a"}') == Response("a", None)
    ok = parse_response(b'{"jsonrpc":"2.0","result":null,"id":"a"}')
    assert isinstance(ok, Response)
    assert not ok.is_error
    assert ok.unwrap() is None
    ok.raise_for_error()
    err = parse_response(
        b'{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error","x":1},"id":null,"y":2}'
    )
    assert err == Response(None, None, {"code": -32700, "message": "Parse error", "x": 1})
    batch = parse_response(
        b'[{"jsonrpc":"2.0","result":7,"id":"1"},'
        b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":null}]'
    )
    assert isinstance(batch, list)
    assert batch[0].unwrap() == 7
    with pytest.raises(errors.InvalidRequestError):
        batch[1].unwrap()


def test_server_replies_are_valid_responses() -> None:
    reply = serve(SPEC_BATCH)
    assert reply is not None
    responses = parse_response(reply)
    assert isinstance(responses, list)
    assert [r.id for r in responses] == ["1", "2", None, "5", "9"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"\xff",
        b"[]",
        b"1",
        b"null",
        b'"x"',
        b'{"result":1,"id":1}',
        b'{"jsonrpc":"1.0","result":1,"id":1}',
        b'{"jsonrpc":"2.0","result":1}',
        b'{"jsonrpc":"2.0","id":1}',
        b'{"jsonrpc":"2.0","result":1,"error":{"code":1,"message":"m"},"id":1}',
        b'{"jsonrpc":"2.0","result":1,"error":null,"id":1}',
        b'{"jsonrpc":"2.0","result":1,"id":true}',
        b'{"jsonrpc":"2.0","result":1,"id":[1]}',
        b'{"jsonrpc":"2.0","error":"boom","id":1}',
        b'{"jsonrpc":"2.0","error":null,"id":1}',
        b'{"jsonrpc":"2.0","error":{"message":"m"},"id":1}',
        b'{"jsonrpc":"2.0","error":{"code":"1","message":"m"},"id":1}',
        b'{"jsonrpc":"2.0","error":{"code":1.5,"message":"m"},"id":1}',
        b'{"jsonrpc":"2.0","error":{"code":true,"message":"m"},"id":1}',
        b'{"jsonrpc":"2.0","error":{"code":1},"id":1}',
        b'{"jsonrpc":"2.0","error":{"code":1,"message":2},"id":1}',
        b'[{"jsonrpc":"2.0","result":1,"id":1},{"jsonrpc":"2.0","id":2}]',
        b'[{"jsonrpc":"2.0","result":1,"id":1},2]',
        b'{"jsonrpc":"2.0","result":18446744073709551616,"id":1}',
        b"[" * 2000 + b"]" * 2000,
    ],
)
def test_malformed_responses_raise_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_response(body)
    assert isinstance(info.value, errors.InternalError)
    assert info.value.code == -32603
    assert "Malformed JSON-RPC response" in info.value.message


def test_response_round_trip() -> None:
    for response in (
        Response(1, {"a": [1, 2.5, None]}),
        Response("x", None),
        Response(None, None, {"code": -32001, "message": "Request timed out", "data": {"s": 1}}),
        Response(2.5, "ok"),
    ):
        assert parse_response(encode_message(response)) == response


# --- layering ------------------------------------------------------------------------------


def test_protocol_imports_only_errors_orjson_and_stdlib() -> None:
    allowed = {"__future__", "re", "dataclasses", "typing", "collections.abc", "orjson", "math"}
    package = pathlib.Path(protocol.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                ours = name == "spark.errors" or name.startswith("spark.protocol")
                assert ours or name in allowed, f"{path.name} imports {name}"


def test_public_api() -> None:
    for name in protocol.__all__:
        assert hasattr(protocol, name)
