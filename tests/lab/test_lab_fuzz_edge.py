"""Item 5: fuzzing a live spark-edge (separate process) with a live worker behind it.

Every answer is a valid JSON-RPC response (status 200, or 204 for notifications only) or a
4xx; over WebSocket every message is answered with valid JSON-RPC (or, for a frame the
WebSocket protocol itself refuses, the connection is closed with 1007/1009). The edge and
the worker stay up, and a valid request afterwards succeeds. A hand-written corpus of
hostile bodies runs first, then hypothesis with a bounded number of examples.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.lab import TARGET, EdgeProcess, report
from support.processes import WorkerProcess

pytestmark = pytest.mark.timeout(180)

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)

UNREACHABLE_METHODS = [
    "__init__",
    "process_message",
    "stop_server",
    "start_server",
    "__class__",
    "dispatch",
    "handle_rpc",
    "list_methods",
    "rpc.other",
    "rpc_echo",
    "_count",
    "redis",
    "__getattribute__",
    "invoke",
    "process",
    "broadcast_notification",
]


def req(method: Any, params: Any = None, id: Any = 1, **extra: Any) -> dict:
    doc = {"jsonrpc": "2.0", "method": method, "id": id, **extra}
    if params is not None:
        doc["params"] = params
    return doc


def dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def corpus() -> list[tuple[str, bytes, dict[str, str]]]:
    """(name, body, headers): hostile bodies an edge must answer without falling over."""
    j = {"Content-Type": "application/json"}
    deep = b"[" * 100_000 + b"]" * 100_000
    deep_params = b'{"jsonrpc":"2.0","method":"echo","id":1,"params":' + b'{"a":' * 5000
    deep_params += b"1" + b"}" * 5000 + b"}"
    items: list[tuple[str, bytes, dict[str, str]]] = [
        ("empty", b"", j),
        ("open brace", b"{", j),
        ("null", b"null", j),
        ("number", b"1", j),
        ("string", b'"x"', j),
        ("empty batch", b"[]", j),
        ("batch of numbers", b"[1,2,3]", j),
        ("empty object", b"{}", j),
        ("method number", dumps(req(1)), j),
        ("method null", dumps(req(None)), j),
        ("method list", dumps(req(["echo"])), j),
        ("params string", dumps(req("echo", "str")), j),
        ("params number", dumps(req("echo", 5)), j),
        ("params true", dumps(req("echo", True)), j),
        ("jsonrpc 1.0", dumps({**req("echo"), "jsonrpc": "1.0"}), j),
        ("jsonrpc number", dumps({**req("echo"), "jsonrpc": 2.0}), j),
        ("no jsonrpc", dumps({"method": "echo", "id": 1}), j),
        ("deep brackets", deep, j),
        ("deep params", deep_params, j),
        (
            "huge body",
            b'{"jsonrpc":"2.0","method":"echo","id":1,"params":["' + b"a" * (2 << 20) + b'"]}',
            j,
        ),
        ("giant batch", dumps([req("echo", [i], id=i) for i in range(10_000)]), j),
        ("batch of 101", dumps([req("echo", [i], id=i) for i in range(101)]), j),
        ("id 2**70", b'{"jsonrpc":"2.0","method":"echo","id":' + str(2**70).encode() + b"}", j),
        ("id -2**64", b'{"jsonrpc":"2.0","method":"echo","id":' + str(-(2**64)).encode() + b"}", j),
        ("id float", dumps(req("echo", id=1.5)), j),
        ("id 1e308", b'{"jsonrpc":"2.0","method":"echo","id":1e308}', j),
        ("id 1e999", b'{"jsonrpc":"2.0","method":"echo","id":1e999}', j),
        ("id -0.0", b'{"jsonrpc":"2.0","method":"echo","id":-0.0}', j),
        ("id list", dumps(req("echo", id=[1])), j),
        ("id object", dumps(req("echo", id={"a": 1})), j),
        ("id true", dumps(req("echo", id=True)), j),
        ("id false", dumps(req("echo", id=False)), j),
        ("id long string", dumps(req("echo", id="i" * 100_000)), j),
        ("id empty string", dumps(req("echo", id="")), j),
        ("invalid utf-8", b'{"jsonrpc":"2.0","method":"echo","params":["\xff\xfe"],"id":1}', j),
        ("invalid utf-8 method", b'{"jsonrpc":"2.0","method":"ec\xc0ho","id":1}', j),
        ("lone surrogate", b'{"jsonrpc":"2.0","method":"echo","params":["\\ud800"],"id":1}', j),
        ("NaN", b'{"jsonrpc":"2.0","method":"echo","params":[NaN],"id":1}', j),
        ("Infinity", b'{"jsonrpc":"2.0","method":"echo","params":[Infinity],"id":1}', j),
        ("duplicate keys", b'{"jsonrpc":"2.0","method":"echo","method":"fail","id":1}', j),
        ("BOM", b"\xef\xbb\xbf" + dumps(req("echo", [1])), j),
        ("nul bytes", b"\x00" * 1000, j),
        ("trailing garbage", dumps(req("echo", [1])) + b"garbage", j),
        ("two documents", dumps(req("echo", [1])) + dumps(req("echo", [2])), j),
        ("text/plain", dumps(req("echo", [1])), {"Content-Type": "text/plain"}),
        ("form", b"a=1&b=2", {"Content-Type": "application/x-www-form-urlencoded"}),
        (
            "multipart",
            b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--\r\n",
            {"Content-Type": "multipart/form-data; boundary=x"},
        ),
        ("no content type", dumps(req("echo", [1])), {}),
        ("notification only batch", dumps([{"jsonrpc": "2.0", "method": "echo"}] * 3), j),
        (
            "spark member hostile",
            dumps(req("echo", [1], spark={"timeout": -1, "idempotency_key": 5})),
            j,
        ),
        (
            "spark member nan",
            b'{"jsonrpc":"2.0","method":"echo","id":1,"spark":{"timeout":1e999}}',
            j,
        ),
        ("null method name", dumps(req("echo\x00")), j),
        ("path method", dumps(req("../echo")), j),
        ("long method", dumps(req("m" * 100_000)), j),
        ("result member", dumps({"jsonrpc": "2.0", "result": 1, "id": 1}), j),
        (
            "error member",
            dumps({"jsonrpc": "2.0", "error": {"code": 1, "message": "x"}, "id": 1}),
            j,
        ),
    ]
    items += [(f"reach {m}", dumps(req(m, {})), j) for m in UNREACHABLE_METHODS]
    return items


# -- answers -------------------------------------------------------------------------------


def check_item(item: Any) -> None:
    assert isinstance(item, dict), item
    assert item.get("jsonrpc") == "2.0", item
    assert "id" in item, item
    assert item["id"] is None or type(item["id"]) in (str, int, float), item
    assert ("result" in item) != ("error" in item), item
    if "error" in item:
        err = item["error"]
        assert isinstance(err, dict) and type(err.get("code")) is int, item
        assert type(err.get("message")) is str, item


def check_http(status: int, body: bytes) -> Any:
    """A valid JSON-RPC answer (200/204) or a 4xx; returns the parsed body."""
    assert status in (200, 204) or 400 <= status < 500, (status, body[:200])
    if status == 204:
        assert body == b""
        return None
    if status >= 400:
        try:
            doc = json.loads(body)
        except ValueError:
            return None  # a 4xx from the HTTP layer itself
        check_item(doc)
        return doc
    doc = json.loads(body)
    if isinstance(doc, list):
        assert doc, "empty batch answer"
        for item in doc:
            check_item(item)
    else:
        check_item(doc)
    return doc


class HttpProbe:
    def __init__(self, port: int, path: str = "/lab"):
        self.port, self.path = port, path
        self.conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.request("POST", self.path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                return resp.status, data
            except (http.client.HTTPException, ConnectionError):
                # The edge may close a connection after a refused body (413): reconnect once.
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# -- a WebSocket client in a background loop (hypothesis tests are synchronous) -------------


class WsProbe:
    """Sends one message, then a probe request; returns every message before the probe's
    answer, or ("closed", code) when the edge closed the connection."""

    def __init__(self, url: str):
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.n = 0
        self.reconnects = 0

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _connect(self) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession()
        if self.ws is None or self.ws.closed:
            if self.ws is not None:
                self.reconnects += 1
            self.ws = await self.session.ws_connect(self.url, max_msg_size=0)

    async def _exchange(self, data: bytes | str, binary: bool) -> Any:
        await self._connect()
        assert self.ws is not None
        self.n += 1
        probe = f"probe-{self.n}"
        try:
            if binary:
                await self.ws.send_bytes(data if isinstance(data, bytes) else data.encode())
            else:
                await self.ws.send_str(data if isinstance(data, str) else data.decode())
            await self.ws.send_str(json.dumps(req("echo", {"p": self.n}, id=probe)))
        except (ConnectionError, RuntimeError):
            # The edge cut the connection while we were still sending (a refused huge
            # message): no close code reached us. Drop this socket; the next exchange
            # reconnects.
            code, ws, self.ws = self.ws.close_code, self.ws, None
            await ws.close()
            return ("closed", code)
        seen = []
        async with asyncio.timeout(20):
            while True:
                msg = await self.ws.receive()
                if msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.ERROR,
                ):
                    return ("closed", self.ws.close_code)
                doc = json.loads(msg.data)
                items = doc if isinstance(doc, list) else [doc]
                if any(isinstance(i, dict) and i.get("id") == probe for i in items):
                    assert items == [{"jsonrpc": "2.0", "result": {"p": self.n}, "id": probe}]
                    return seen
                seen.append(doc)

    def exchange(self, data: bytes | str, binary: bool = False) -> Any:
        return self.run(self._exchange(data, binary))

    async def _close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()

    def close(self) -> None:
        self.run(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def check_ws(answers: Any) -> None:
    if isinstance(answers, tuple):
        # Refused by the WebSocket layer: invalid UTF-8 (1007), too big (1009); the client
        # may see the cut as abnormal (1006), or get no code at all when the edge cut the
        # connection while the client was still sending (None).
        assert answers[0] == "closed" and answers[1] in (None, 1006, 1007, 1009), answers
        return
    for doc in answers:
        if isinstance(doc, list):
            assert doc
            for item in doc:
                check_item(item)
        else:
            check_item(doc)


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(redis_server):
    import redis

    url = redis_server.url.replace("/0", "/5")  # a database of its own for the module
    redis.Redis.from_url(url).flushdb()
    worker = WorkerProcess(TARGET, url, service="lab").wait_ready()
    edge = EdgeProcess(url).start()
    http_probe = HttpProbe(edge.port)
    ws_probe = WsProbe(f"ws://127.0.0.1:{edge.port}/lab/ws")
    try:
        yield edge, worker, http_probe, ws_probe
    finally:
        http_probe.close()
        ws_probe.close()
        edge.stop()
        worker.stop()


def assert_still_serving(live) -> None:
    edge, worker, http_probe, ws_probe = live
    assert edge.alive, "the edge died"
    assert worker.proc.poll() is None, "the worker died"
    status, body = http_probe.post(dumps(req("echo", {"still": "up"}, id="after")))
    assert (status, json.loads(body)) == (
        200,
        {"jsonrpc": "2.0", "result": {"still": "up"}, "id": "after"},
    )
    assert ws_probe.exchange(dumps(req("echo", {"w": 1}, id="ws-after"))) == [
        {"jsonrpc": "2.0", "result": {"w": 1}, "id": "ws-after"}
    ]


# -- tests -----------------------------------------------------------------------------------


def test_hand_written_corpus_over_http_and_websocket(live):
    _edge, _worker, http_probe, ws_probe = live
    statuses: dict[int, int] = {}
    started = time.monotonic()
    for name, body, headers in corpus():
        status, answer = http_probe.post(body, headers)
        statuses[status] = statuses.get(status, 0) + 1
        try:
            doc = check_http(status, answer)
        except AssertionError as exc:
            raise AssertionError(f"HTTP {name!r}: {exc}") from exc
        if name.startswith("reach "):
            assert doc["error"]["code"] == -32601, (name, doc)
        for binary in (False, True):
            if name.startswith("invalid utf-8") and not binary:
                # A TEXT frame of bytes that are not UTF-8 (send_str cannot make one).
                answers = ws_probe.run(_raw_text_frame(ws_probe, body))
            else:
                answers = ws_probe.exchange(body, binary=binary)
            try:
                check_ws(answers)
            except AssertionError as exc:
                raise AssertionError(f"WS {name!r} binary={binary}: {exc}") from exc
    report(
        "fuzz_corpus",
        cases=len(corpus()),
        http_statuses=dict(sorted(statuses.items())),
        ws_reconnects=ws_probe.reconnects,
        seconds=time.monotonic() - started,
    )
    assert_still_serving(live)


async def _raw_text_frame(ws_probe: WsProbe, body: bytes) -> Any:
    """Invalid UTF-8 in a TEXT frame (aiohttp's send_str cannot make one)."""
    await ws_probe._connect()
    ws = ws_probe.ws
    assert ws is not None
    try:
        await ws._writer.send_frame(body, aiohttp.WSMsgType.TEXT)
    except (ConnectionError, RuntimeError):
        return ("closed", ws.close_code)
    ws_probe.n += 1
    probe = f"probe-{ws_probe.n}"
    await ws.send_str(json.dumps(req("echo", {"p": ws_probe.n}, id=probe)))
    seen = []
    async with asyncio.timeout(20):
        while True:
            msg = await ws.receive()
            if msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.ERROR,
            ):
                return ("closed", ws.close_code)
            doc = json.loads(msg.data)
            if isinstance(doc, dict) and doc.get("id") == probe:
                return seen
            seen.append(doc)


# hypothesis: JSON-ish documents that get members wrong, raw bytes, odd ids and methods.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
methods = st.sampled_from(
    ["echo", "sleep", "count", "fail", "nope", *UNREACHABLE_METHODS]
) | st.text(max_size=30)
request_like = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2]) | json_values,
        "method": methods | json_values,
        "params": json_values,
        "id": json_values,
    },
)


def encode(doc: Any) -> bytes:
    try:
        return orjson.dumps(doc)
    except TypeError:  # integers past 64 bits: write them by hand
        return json.dumps(doc).encode()


fuzz_bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")),
    request_like.map(encode),
    st.lists(request_like | json_values, max_size=8).map(encode),
    json_values.map(encode),
)


@FUZZ
@given(body=fuzz_bodies)
def test_hypothesis_http(live, body):
    _edge, _worker, http_probe, _ws = live
    status, answer = http_probe.post(body, {"Content-Type": "application/json"})
    check_http(status, answer)


@FUZZ
@given(body=fuzz_bodies, binary=st.booleans())
def test_hypothesis_websocket(live, body, binary):
    _edge, _worker, _http, ws_probe = live
    if not binary:
        try:
            body.decode()
        except UnicodeDecodeError:
            binary = True  # invalid UTF-8 text frames are covered by the corpus
    check_ws(ws_probe.exchange(body, binary=binary))


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_undecodable_content_encoding_is_a_4xx(live, encoding):
    _edge, _worker, http_probe, _ws = live
    status, body = http_probe.post(
        dumps(req("echo", [1])), {"Content-Type": "application/json", "Content-Encoding": encoding}
    )
    report(f"bad_content_encoding[{encoding}]", status=status, body=body[:80])
    http_probe.close()
    check_http(status, body)


def test_gzip_bomb_is_refused_by_size(live):
    import gzip

    _edge, _worker, http_probe, _ws = live
    bomb = gzip.compress(b'"' + b"a" * (64 << 20) + b'"')
    status, body = http_probe.post(
        bomb, {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    http_probe.close()
    report("gzip_bomb", compressed=len(bomb), inflated=64 << 20, status=status)
    assert status == 413
    check_http(status, body)


def test_still_serving_after_the_fuzz(live):
    assert_still_serving(live)
    edge, worker, _h, ws_probe = live
    report(
        "fuzz_after",
        edge_alive=edge.alive,
        worker_alive=worker.proc.poll() is None,
        ws_reconnects=ws_probe.reconnects,
    )
