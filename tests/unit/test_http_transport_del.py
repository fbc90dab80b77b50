"""A transport whose constructor failed is still collected quietly (no unraisable error)."""

from __future__ import annotations

import gc
import sys

import pytest

from spark.client.http import HttpTransport
from spark.client.websocket import WebSocketTransport


@pytest.mark.parametrize("cls", [HttpTransport, WebSocketTransport])
def test_del_after_a_failed_constructor_is_silent(cls, monkeypatch):
    unraisable: list = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    failed = False
    try:
        cls("ftp://not-http")  # raises before `_session` is set
    except ValueError:
        failed = True  # the traceback (holding the half-built transport) is dropped here
    assert failed
    gc.collect()
    assert unraisable == []


def test_del_of_an_unused_transport_is_silent(monkeypatch):
    unraisable: list = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    transport = HttpTransport("http://127.0.0.1:1")
    del transport
    gc.collect()
    assert unraisable == []
