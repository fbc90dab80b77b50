"""Spark's wire additions (spark.protocol.wire) and reading what a WebSocket edge sends."""

from __future__ import annotations

import math

import orjson
import pytest

from spark.errors import InvalidParamsError, RpcError
from spark.protocol import ProtocolError, Request, Response, parse_messages
from spark.protocol.wire import (
    SPARK_MEMBER,
    decode_reply,
    encode_error,
    encode_result,
    read_spark_member,
    retag_reply,
    spark_member,
)

# -- the WebSocket request member ------------------------------------------------------------


def test_the_member_a_client_writes_is_the_one_the_edge_reads():
    doc = Request("m", {"a": 1}, 7).to_dict()
    doc[SPARK_MEMBER] = spark_member(2.5, "order-1")
    sent = orjson.loads(orjson.dumps(doc))
    assert read_spark_member(sent, max_key_length=200) == (2.5, "order-1", None)
    doc[SPARK_MEMBER] = spark_member(-3)  # a budget already spent still says "a little"
    assert read_spark_member(doc, max_key_length=200) == (0.001, None, None)
    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    doc[SPARK_MEMBER] = spark_member(1, None, trace)
    assert read_spark_member(doc, max_key_length=200) == (1, None, trace)


@pytest.mark.parametrize(
    "member",
    [
        None,
        "x",
        {"timeout": True},
        {"timeout": 0},
        {"timeout": -1},
        {"timeout": math.inf},
        {"timeout": "5"},
        {"idempotency_key": ""},
        {"idempotency_key": 5},
        {"idempotency_key": "k" * 201},
        {"trace": "00-not-an-object"},
        {"trace": {"traceparent": 5}},
        {"trace": {"traceparent": "x" * 129}},
    ],
)
def test_an_invalid_member_leaves_the_connections_defaults(member):
    assert read_spark_member({SPARK_MEMBER: member}, max_key_length=200) == (None, None, None)


def test_no_member_and_no_object():
    assert read_spark_member({"method": "m"}, max_key_length=200) == (None, None, None)
    assert read_spark_member([1, 2], max_key_length=200) == (None, None, None)


# -- what a WebSocket edge sends ----------------------------------------------------------------


def test_replies_and_notifications_in_one_message_keep_their_order():
    body = (
        b'[{"jsonrpc":"2.0","result":1,"id":1},'
        b'{"jsonrpc":"2.0","method":"progress","params":{"done":1}},'
        b'{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params"},"id":"b"}]'
    )
    first, note, err = parse_messages(body)
    assert first == Response(1, 1)
    assert note == Request.notification("progress", {"done": 1})
    assert isinstance(err, Response) and err.id == "b"
    with pytest.raises(InvalidParamsError):
        err.unwrap()


def test_a_single_reply_or_notification():
    assert parse_messages('{"jsonrpc":"2.0","result":null,"id":3}') == [Response(3, None)]
    assert parse_messages(b'{"jsonrpc":"2.0","method":"tick"}') == [Request.notification("tick")]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b"42",
        b'{"jsonrpc":"2.0","result":1,"id":["x"]}',  # an id no caller can have
        b'{"jsonrpc":"2.0","result":1,"id":true}',
        b'{"jsonrpc":"2.0","method":7}',
        b'{"jsonrpc":"1.0","method":"tick"}',
        b'{"jsonrpc":"2.0","method":"tick","params":"scalar"}',
        b'[{"jsonrpc":"2.0","result":1,"id":1}, 5]',  # one bad item: the whole message
    ],
)
def test_anything_else_is_a_protocol_error(body):
    with pytest.raises(ProtocolError):
        parse_messages(body)


# -- broker replies ---------------------------------------------------------------------------


def test_broker_replies_round_trip():
    assert decode_reply(encode_result("r-1", {"a": [1]})) == ("r-1", {"a": [1]}, None)
    rid, result, error = decode_reply(encode_error("r-2", InvalidParamsError("no", data={"x": 1})))
    assert (rid, result) == ("r-2", None)
    assert isinstance(error, InvalidParamsError) and error.data == {"x": 1}
    assert decode_reply(retag_reply(encode_result("r-1", 5), "r-9")) == ("r-9", 5, None)


def test_a_broker_error_whose_data_is_not_json_keeps_code_and_message():
    rid, _, error = decode_reply(encode_error("r-3", InvalidParamsError("bad", data={1j})))
    assert rid == "r-3" and isinstance(error, InvalidParamsError) and error.message == "bad"
    assert error.data == {"note": "data not JSON"}


@pytest.mark.parametrize("raw", [b"", b"[]", b'{"result":1}', b'{"id":1,"result":1}'])
def test_a_malformed_broker_reply(raw):
    rid, result, error = decode_reply(raw)
    assert rid is None and result is None and isinstance(error, RpcError)
