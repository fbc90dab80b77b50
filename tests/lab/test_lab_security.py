"""Item 6: security.

Without a valid token nothing executes (HTTP single, batch, notification, WebSocket
handshake), checked with the `count` handler: its Redis counters stay unset. Mutual TLS
refuses clients without a trusted certificate (and nothing runs). Only `rpc_*` methods are
reachable. Payloads are never unpickled. Redis ACL users and `rediss://` work for workers,
edges and clients.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from spark.broker.keys import ServiceKeys
from spark.client.broker_client import BrokerClient
from spark.client.http import HttpTransport
from spark.client.websocket import WebSocketTransport
from spark.errors import MethodNotFoundError, RpcConnectionError, RpcError, UnauthorizedError
from spark.runtime.edge import EdgeConfig, EdgeServer
from support.certs import make_certs
from support.lab import TARGET, apoll, drained, own_redis, report
from support.processes import WorkerProcess
from support.redis_server import free_port

pytestmark = pytest.mark.timeout(120)

SPARK_DIR = Path(__file__).resolve().parents[2] / "spark"
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("lab-certs"))


@contextlib.asynccontextmanager
async def stack(url: str, **edge_options):
    """A worker process and an in-process edge on `url`."""
    worker = WorkerProcess(TARGET, url, service="lab")
    edge_options.setdefault("default_service", "lab")
    server = None
    try:
        await asyncio.to_thread(worker.wait_ready)
        server = await EdgeServer(EdgeConfig(redis_url=url, port=0, **edge_options)).start()
        yield server, worker
    finally:
        if server is not None:
            await server.stop()
        worker.stop()


def count(key: str, id: int | None = 1) -> dict:
    doc = {"jsonrpc": "2.0", "method": "count", "params": {"key": key}}
    if id is not None:
        doc["id"] = id
    return doc


async def settle(url: str, edge_url: str, headers: dict) -> None:
    """An authorised call through the edge, then an empty stream: anything enqueued before
    it has been read and finished."""
    async with aiohttp.ClientSession() as http:
        async with http.post(edge_url, data=orjson.dumps(count("sentinel")), headers=headers) as r:
            assert r.status == 200 and "result" in await r.json()
    await apoll(lambda: drained(url), timeout=15, what="stream drained")


async def unset(url: str, keys: list[str]) -> list[str]:
    r = aioredis.Redis.from_url(url)
    try:
        values = await r.mget([f"lab:runs:{k}" for k in keys])
    finally:
        await r.aclose()
    return [k for k, v in zip(keys, values, strict=True) if v is not None]


async def test_without_a_valid_token_nothing_executes(redis_url):
    async with stack(redis_url, auth_tokens=[TOKEN]) as (edge, _worker):
        url = edge.url
        bad_headers = [
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": f"bearer{TOKEN}"},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": f"Bearer {TOKEN[:-1]}"},
            {"Authorization": "Bearer "},
            {"X-Auth-Token": TOKEN},
        ]
        tried: list[str] = []
        statuses: dict[int, int] = {}
        async with aiohttp.ClientSession() as http:
            for i, headers in enumerate(bad_headers):
                bodies = {
                    f"single{i}": count(f"single{i}"),
                    f"batch{i}": [count(f"batch{i}", 1), count(f"batch{i}", 2)],
                    f"note{i}": count(f"note{i}", id=None),
                    f"notes{i}": [count(f"notes{i}", id=None)] * 2,
                }
                for key, body in bodies.items():
                    tried.append(key)
                    for target in (url, f"{url}/lab", f"{url}/lab?token={TOKEN}"):
                        async with http.post(target, data=orjson.dumps(body), headers=headers) as r:
                            statuses[r.status] = statuses.get(r.status, 0) + 1
                            assert r.status == 401, (key, target, r.status)
                            assert (await r.json())["error"]["code"] == -32005
                # WebSocket handshakes: refused before any message can be sent.
                for target in (f"{url}/ws", f"{url}/lab/ws", f"{url}/ws?token=wrong"):
                    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                        await http.ws_connect(target, headers=headers)
                    assert info.value.status == 401
            # Through the library's transports too.
            for kind in (HttpTransport, WebSocketTransport):
                async with kind(url, headers={"Authorization": "Bearer nope"}) as t:
                    with pytest.raises(UnauthorizedError):
                        await t.call("count", {"key": "transport"}, deadline=time.time() + 5)
            tried.append("transport")
        good = {"Authorization": f"Bearer {TOKEN}"}
        await settle(redis_url, url, good)
        executed = await unset(redis_url, tried)
        # Positive controls: the token works over HTTP, WebSocket header and ?token=.
        async with HttpTransport(url, headers=good) as t:
            assert (await t.call("count", {"key": "ok-http"}, deadline=time.time() + 5))[
                "runs"
            ] == 1
        async with WebSocketTransport(url, headers=good) as t:
            assert (await t.call("count", {"key": "ok-ws"}, deadline=time.time() + 5))["runs"] == 1
        async with WebSocketTransport(url, ws_endpoint=f"ws{url[4:]}/ws?token={TOKEN}") as t:
            assert (await t.call("count", {"key": "ok-q"}, deadline=time.time() + 5))["runs"] == 1
        report(
            "auth",
            refused_attempts=sum(statuses.values()),
            statuses=statuses,
            keys_checked=len(tried),
            executed_without_token=len(executed),
        )
        assert executed == []


async def test_mutual_tls_refuses_untrusted_clients_and_nothing_runs(redis_url, certs):
    tls = dict(ssl_certfile=certs.server_cert, ssl_keyfile=certs.server_key, ssl_ca_certs=certs.ca)
    async with stack(redis_url, **tls) as (edge, _worker):
        refused = 0
        for kind in (HttpTransport, WebSocketTransport):
            for extra in (
                {},
                {"ssl_certfile": certs.rogue_cert, "ssl_keyfile": certs.rogue_key},
                {"verify_ssl": False},
            ):
                async with kind(edge.url, ssl_ca_certs=certs.ca, **extra) as t:
                    with pytest.raises(RpcConnectionError):
                        await t.call("count", {"key": "mtls-bad"}, deadline=time.time() + 5)
                    refused += 1
        good = {"ssl_certfile": certs.client_cert, "ssl_keyfile": certs.client_key}
        for kind in (HttpTransport, WebSocketTransport):
            async with kind(edge.url, ssl_ca_certs=certs.ca, **good) as t:
                got = await t.call(
                    "count", {"key": f"mtls-{kind.__name__}"}, deadline=time.time() + 5
                )
                assert got["runs"] == 1
        await apoll(lambda: drained(redis_url), timeout=15, what="stream drained")
        executed = await unset(redis_url, ["mtls-bad"])
        report("mtls", refused=refused, executed_without_cert=len(executed))
        assert executed == []


async def test_only_rpc_methods_are_reachable(redis_url):
    names = [
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
        "rpc_count",
        "_count",
        "redis",
        "runtime",
        "invoke",
        "process",
        "broadcast_notification",
        "__dict__",
        "send_notification_to_client",
        "before_request",
        "after_request",
        "_handler",
        "__getattribute__",
        "__reduce__",
        "echo.__class__",
        "rpc.echo",
        "",
    ]
    async with stack(redis_url) as (edge, _worker):
        client = BrokerClient(redis_url)
        try:
            async with HttpTransport(edge.url) as http, WebSocketTransport(edge.url) as ws:
                for name in names:
                    for call in (
                        lambda n: client.call("lab", n, {}, timeout=5),
                        lambda n: http.call(n, {}, deadline=time.time() + 5),
                        lambda n: ws.call(n, {}, deadline=time.time() + 5),
                    ):
                        with pytest.raises(RpcError) as info:
                            await call(name)
                        assert info.value.code in (-32601, -32600), (name, info.value)
                        if name:
                            assert isinstance(info.value, MethodNotFoundError), (name, info.value)
                assert await http.call("echo", {"x": 1}, deadline=time.time() + 5) == {"x": 1}
        finally:
            await client.aclose()
        report("reachable_methods", refused=len(names) * 3)


def evil_pickle(path: str) -> bytes:
    """A protocol-0 pickle whose loading calls open(path, "w"): proof that something
    unpickled it. Written by hand, so that nothing in the repository imports pickle:
    GLOBAL builtins.open, MARK, two UNICODE args, TUPLE, REDUCE, STOP."""
    return b"c__builtin__\nopen\n(V" + path.encode() + b"\nVw\ntR."


async def test_payloads_are_never_unpickled(redis_url, tmp_path):
    marker = tmp_path / "unpickled"
    blob = evil_pickle(str(marker))
    async with stack(redis_url) as (edge, _worker):
        async with aiohttp.ClientSession() as http:
            # The raw pickle as the body: not JSON, a parse error.
            for ctype in (
                "application/json",
                "application/octet-stream",
                "application/python-pickle",
            ):
                async with http.post(edge.url, data=blob, headers={"Content-Type": ctype}) as r:
                    assert r.status == 200
                    assert (await r.json())["error"]["code"] == -32700
        async with HttpTransport(edge.url) as t:
            b64 = base64.b64encode(blob).decode()
            latin = blob.decode("latin-1")
            assert await t.call("echo", {"p": b64}, deadline=time.time() + 5) == {"p": b64}
            assert await t.call("echo", {"p": latin}, deadline=time.time() + 5) == {"p": latin}
        # A foreign producer writes a pickle straight into the stream: dead-lettered as data.
        r = aioredis.Redis.from_url(redis_url)
        try:
            keys = ServiceKeys.for_service("lab")
            await r.xadd(keys.requests, {"e": blob})
            await apoll(lambda: r.xlen(keys.dead), timeout=15, what="pickle dead-lettered")
            dead = await r.xrange(keys.dead)
            assert dead[0][1][b"e"] == blob
        finally:
            await r.aclose()
    report("pickle", marker_created=marker.exists(), dead_lettered=1)
    assert not marker.exists()


def test_no_module_under_spark_imports_pickle():
    banned = {
        "pickle",
        "cPickle",
        "_pickle",
        "dill",
        "cloudpickle",
        "jsonpickle",
        "shelve",
        "marshal",
    }
    offenders = []
    files = sorted(SPARK_DIR.rglob("*.py"))
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("__import__",):
                names = [a.value for a in node.args if isinstance(a, ast.Constant)]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value in banned:
                    names = [node.value]  # importlib.import_module("pickle") and friends
            offenders += [
                f"{path.relative_to(SPARK_DIR.parent)}:{node.lineno} {n}"
                for n in names
                if n.split(".")[0] in banned
            ]
    report("no_pickle", modules_scanned=len(files), offenders=len(offenders))
    assert len(files) > 20
    assert offenders == []


async def test_redis_acl_user_and_password(tmp_path):
    with own_redis() as server:
        admin = aioredis.Redis.from_url(server.url)
        await admin.execute_command("ACL", "SETUSER", "spark", "on", ">secret", "~*", "&*", "+@all")
        await admin.execute_command("ACL", "SETUSER", "default", "off")
        await admin.aclose()
        url = f"redis://spark:secret@127.0.0.1:{server.port}/0"
        async with stack(url) as (edge, _worker):
            client = BrokerClient(url)
            try:
                assert (await client.call("lab", "count", {"key": "acl"}, timeout=10))["runs"] == 1
            finally:
                await client.aclose()
            async with HttpTransport(edge.url) as t:
                assert (await t.call("count", {"key": "acl"}, deadline=time.time() + 10))[
                    "runs"
                ] == 2
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{edge.url}/health") as r:
                    assert r.status == 200
            refused = 0
            for bad in (
                f"redis://127.0.0.1:{server.port}/0",
                f"redis://spark:wrong@127.0.0.1:{server.port}/0",
                f"redis://nobody:secret@127.0.0.1:{server.port}/0",
            ):
                c = BrokerClient(bad)
                try:
                    with pytest.raises(RpcConnectionError):
                        await c.call("lab", "count", {"key": "acl-bad"}, timeout=5)
                    refused += 1
                finally:
                    await c.aclose()
        check = aioredis.Redis.from_url(url)
        try:
            assert await check.get("lab:runs:acl-bad") is None
        finally:
            await check.aclose()
        report("redis_acl", ok_calls=2, refused_urls=refused)


async def test_rediss_tls_to_redis(certs):
    tls_port = free_port()
    extra = [
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        certs.server_cert,
        "--tls-key-file",
        certs.server_key,
        "--tls-ca-cert-file",
        certs.ca,
        "--tls-auth-clients",
        "no",
    ]
    with own_redis(extra=extra) as server:
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={certs.ca}"
        async with stack(url) as (edge, _worker):
            client = BrokerClient(url)
            try:
                assert (await client.call("lab", "count", {"key": "tls"}, timeout=10))["runs"] == 1
            finally:
                await client.aclose()
            async with WebSocketTransport(edge.url) as t:
                assert (await t.call("count", {"key": "tls"}, deadline=time.time() + 10))[
                    "runs"
                ] == 2
            # Without the CA the server's certificate is not trusted.
            c = BrokerClient(f"rediss://127.0.0.1:{tls_port}/0")
            try:
                with pytest.raises(RpcConnectionError):
                    await c.call("lab", "echo", {}, timeout=5)
            finally:
                await c.aclose()
        # The runs the TLS clients recorded are there (read back over the plain port).
        plain = aioredis.Redis.from_url(server.url)
        try:
            assert int(await plain.get("lab:runs:tls")) == 2
        finally:
            await plain.aclose()
        report("rediss", ok_calls=2, untrusted_refused=1)
