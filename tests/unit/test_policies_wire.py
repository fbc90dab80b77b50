"""Wire pieces of cancellation and per-request options (no sockets)."""

from __future__ import annotations

import orjson
import pytest

from spark.broker import cancel
from spark.broker.notify import decode
from spark.protocol import parse_body
from spark.runtime.edge.core import MAX_IDEMPOTENCY_KEY, request_options


def test_cancel_message_round_trip_through_the_notification_decoder():
    items = [cancel.CancelItem("client-1", "7", None), cancel.CancelItem("client-1", None, "k")]
    note = decode("spark:{svc}:cancel", cancel.message(items))
    assert note is not None and note.method == cancel.METHOD
    assert cancel.parse(note.params) == items


@pytest.mark.parametrize(
    "params",
    [
        None,
        [],
        {"requests": "x"},
        {"requests": [["c", None, None]]},
        {"requests": [[1, "2", None]]},
        {"requests": [["c", 2, None]]},
        {"requests": [["c", "2"]]},
    ],
)
def test_malformed_cancel_items_are_skipped(params):
    assert cancel.parse(params) == []


def body(*docs):
    return orjson.dumps(list(docs) if len(docs) > 1 else docs[0])


def test_request_options_read_only_the_spark_member():
    plain = body({"jsonrpc": "2.0", "method": "a", "id": 1})
    assert request_options(plain, parse_body(plain)) is None
    one = body({"jsonrpc": "2.0", "method": "a", "id": 1, "spark": {"timeout": 1.5}})
    assert request_options(one, parse_body(one)) == [(1.5, None, None)]
    batch = body(
        {"jsonrpc": "2.0", "method": "a", "id": 1, "spark": {"idempotency_key": "k1"}},
        {"not": "a request"},
        {"jsonrpc": "2.0", "method": "n", "spark": {"timeout": 0.2}},
        {"jsonrpc": "2.0", "method": "b", "id": 2},
    )
    assert request_options(batch.decode(), parse_body(batch)) == [
        (None, "k1", None),
        (0.2, None, None),
        (None, None, None),
    ]
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    traced = body(
        {"jsonrpc": "2.0", "method": "a", "id": 1, "spark": {"trace": {"traceparent": parent}}}
    )
    assert request_options(traced, parse_body(traced)) == [(None, None, {"traceparent": parent})]


@pytest.mark.parametrize(
    "member",
    [
        {"timeout": -1},
        {"timeout": 0},
        {"timeout": True},
        {"timeout": "5"},
        {"idempotency_key": ""},
        {"idempotency_key": 5},
        {"idempotency_key": "x" * (MAX_IDEMPOTENCY_KEY + 1)},
        {"trace": "00-not-an-object"},
        {"trace": {"traceparent": 5}},
        "not an object",
    ],
)
def test_bad_request_options_are_ignored(member):
    data = body({"jsonrpc": "2.0", "method": "a", "id": 1, "spark": member})
    assert request_options(data, parse_body(data)) == [(None, None, None)]
