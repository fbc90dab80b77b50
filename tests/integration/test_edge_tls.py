"""TLS and mutual TLS at the edge, with certificates made at test time (trustme)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time

import aiohttp
import pytest

from spark.client.http import HttpTransport
from spark.client.websocket import WebSocketTransport
from spark.errors import RpcConnectionError
from spark.runtime.edge import EdgeConfig, EdgeServer
from spark.runtime.worker import run_worker
from support.certs import make_certs
from support.services import LabRpcNode

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


@contextlib.asynccontextmanager
async def tls_edge(url: str, certs, *, mutual: bool):
    stop, ready = asyncio.Event(), asyncio.Event()
    worker = asyncio.create_task(
        run_worker(LabRpcNode(), service="lab", url=url, stop=stop, ready=ready)
    )
    await asyncio.wait_for(ready.wait(), 10)
    server = await EdgeServer(
        EdgeConfig(
            redis_url=url,
            port=0,
            default_service="lab",
            ssl_certfile=certs.server_cert,
            ssl_keyfile=certs.server_key,
            ssl_ca_certs=certs.ca if mutual else None,
        )
    ).start()
    try:
        yield server
    finally:
        await server.stop()
        stop.set()
        await worker


def soon() -> float:
    return time.time() + 10


@pytest.mark.parametrize("kind", [HttpTransport, WebSocketTransport])
async def test_tls(redis_url, certs, kind):
    async with tls_edge(redis_url, certs, mutual=False) as edge:
        assert edge.url.startswith("https://")
        async with kind(edge.url, ssl_ca_certs=certs.ca) as t:
            assert await t.call("echo", {"tls": 1}, deadline=soon()) == {"tls": 1}
        # Without our CA the server's certificate is not trusted...
        async with kind(edge.url) as t:
            with pytest.raises(RpcConnectionError):
                await t.call("echo", {}, deadline=soon())
        # ...unless verification is switched off explicitly.
        async with kind(edge.url, verify_ssl=False) as t:
            assert await t.call("echo", {"v": 0}, deadline=soon()) == {"v": 0}
        # Plain HTTP to the TLS port gets nowhere.
        async with kind(edge.url.replace("https", "http")) as t:
            with pytest.raises(RpcConnectionError):
                await t.call("echo", {}, deadline=soon())


@pytest.mark.parametrize("kind", [HttpTransport, WebSocketTransport])
async def test_mutual_tls_refuses_clients_without_a_valid_certificate(redis_url, certs, kind):
    async with tls_edge(redis_url, certs, mutual=True) as edge:
        async with kind(
            edge.url,
            ssl_ca_certs=certs.ca,
            ssl_certfile=certs.client_cert,
            ssl_keyfile=certs.client_key,
        ) as t:
            assert await t.call("echo", {"mtls": 1}, deadline=soon()) == {"mtls": 1}
        async with kind(edge.url, ssl_ca_certs=certs.ca) as t:
            with pytest.raises(RpcConnectionError):
                await t.call("echo", {}, deadline=soon())
        async with kind(
            edge.url,
            ssl_ca_certs=certs.ca,
            ssl_certfile=certs.rogue_cert,
            ssl_keyfile=certs.rogue_key,
        ) as t:
            with pytest.raises(RpcConnectionError):
                await t.call("echo", {}, deadline=soon())


async def test_mutual_tls_health_needs_a_certificate_too(redis_url, certs):
    async with tls_edge(redis_url, certs, mutual=True) as edge:
        ctx = ssl.create_default_context(cafile=certs.ca)
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError):
                async with http.get(f"{edge.url}/health", ssl=ctx) as resp:
                    await resp.read()
            ctx.load_cert_chain(certs.client_cert, certs.client_key)
            async with http.get(f"{edge.url}/health", ssl=ctx) as resp:
                assert resp.status == 200
