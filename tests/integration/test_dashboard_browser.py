"""The edge's dashboard in a real browser (Playwright driving Debian's Chromium): a service,
its workers and its calls show up as they happen, without a reload; dead letters are
replayed and purged with the buttons, which need the token."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from playwright.async_api import expect

from spark.broker import Envelope, ServiceQueue
from spark.broker.queue import Entry
from spark.client.broker_client import BrokerClient
from spark.runtime.edge import EdgeConfig, EdgeServer
from support.browser import chromium_page
from support.polling import eventually
from support.processes import WorkerProcess

pytestmark = pytest.mark.integration

TOKEN = "dash-token"
SERVICE = "lab"
SCREENSHOT = os.environ.get("SPARK_DASHBOARD_SCREENSHOT")


@pytest.fixture
async def edge(redis_url):
    config = EdgeConfig(redis_url=redis_url, port=0, auth_tokens=[TOKEN])
    server = await EdgeServer(config).start()
    yield server
    await server.stop()


@pytest.fixture
def worker(redis_url):
    w = WorkerProcess(
        "support.services:LabRpcNode", redis_url, "--heartbeat", "0.2", service=SERVICE
    ).wait_ready()
    yield w
    w.stop()


async def dead_letter(redis_url: str, request_id: str) -> None:
    """A request that failed for good, as a worker leaves it in the dead-letter stream."""
    redis = aioredis.Redis.from_url(redis_url)
    try:
        queue = ServiceQueue(redis, SERVICE)
        env = Envelope(id=request_id, method="count", params={"key": request_id})
        error = {"code": -32010, "message": "delivered 3 times without an answer"}
        await queue.dead_letter(Entry(b"0-1", env.encode(), 4), error, "gone-worker")
    finally:
        await redis.aclose()


async def test_dashboard_shows_services_workers_and_calls_live(redis_url, edge, worker):
    async with chromium_page() as page:
        await page.goto(f"{edge.url}/dashboard?token={TOKEN}")
        await expect(page.get_by_test_id("connection")).to_have_text("live")
        card = page.locator(f'[data-testid="service"][data-service="{SERVICE}"]')
        await expect(card.get_by_test_id("service-name")).to_have_text(SERVICE)
        row = card.locator(f'[data-testid="worker"]:has-text("{worker.pid}")')
        await expect(row).to_have_count(1)
        # Methods come from rpc.discover before anyone called them.
        await expect(card.locator('[data-testid="method"][data-method="sleep"]')).to_have_count(1)
        served = card.get_by_test_id("stat-served").locator(".value")
        processed = row.get_by_test_id("worker-processed")
        # Served so far: the dashboard's own rpc.discover, once its heartbeat reported it.
        await expect(served).to_have_text("1")
        await expect(processed).to_have_text("1")

        async with BrokerClient(redis_url) as client:
            for i in range(25):
                await client.call(SERVICE, "echo", {"i": i}, timeout=10)
        # The page updates by itself (no reload): served calls, per-method calls, the rate.
        await expect(served).to_have_text("26")
        echo = card.locator('[data-testid="method"][data-method="echo"]')
        await expect(echo.locator("td").nth(1)).to_have_text("25")
        await expect(processed).to_have_text("26")
        await expect(card.get_by_test_id("stat-rate")).not_to_have_text("0.0")

        await dead_letter(redis_url, "dl-replay")
        await dead_letter(redis_url, "dl-purge")
        letters = card.get_by_test_id("dead-letter")
        await expect(letters).to_have_count(2)
        await expect(card.get_by_test_id("dead-letters")).to_contain_text(
            "delivered 3 times without an answer"
        )
        if SCREENSHOT:
            await page.screenshot(path=SCREENSHOT, full_page=True)

        purged = letters.nth(1)
        purged_id = await purged.get_attribute("data-id")
        await purged.get_by_role("button", name="Purge").click()
        await expect(card.locator(f'[data-id="{purged_id}"]')).to_have_count(0)
        await expect(letters).to_have_count(1)

        await letters.first.get_by_role("button", name="Replay").click()
        await expect(card.get_by_test_id("no-dead-letters")).to_be_visible()

    # The replayed request ran (its handler counts runs under its key); the purged one did not.
    redis = aioredis.Redis.from_url(redis_url)
    try:
        await eventually(lambda: redis.get("lab:runs:dl-replay"), what="the replayed request run")
        assert await redis.get("lab:runs:dl-purge") is None
    finally:
        await redis.aclose()


async def test_dashboard_needs_the_token(edge, redis_url):
    async with aiohttp.ClientSession() as http:
        for path in ("/dashboard", "/dashboard/state", "/dashboard/events"):
            async with http.get(edge.url + path) as resp:
                assert resp.status == 401, path
            async with http.get(f"{edge.url}{path}?token=wrong") as resp:
                assert resp.status == 401, path
        async with http.post(
            f"{edge.url}/dashboard/dlq/{SERVICE}/purge", data=orjson.dumps({"all": True})
        ) as resp:
            assert resp.status == 401
        async with http.get(f"{edge.url}/dashboard/state?token={TOKEN}") as resp:
            assert resp.status == 200
            assert "services" in await resp.json()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with http.post(
            f"{edge.url}/dashboard/dlq/{SERVICE}/purge", data=b'{"ids": "x"}', headers=auth
        ) as resp:
            assert resp.status == 400


async def test_state_on_the_embedded_broker():
    """`spark dev` and `start_server()` run on the embedded broker: the dashboard too."""
    from spark.runtime.worker import run_worker
    from support.services import LabRpcNode

    url = "memory://dashboard-embedded"
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_worker(LabRpcNode(), service=SERVICE, url=url, stop=stop, ready=ready)
    )
    await asyncio.wait_for(ready.wait(), 10)
    try:
        async with EdgeServer(EdgeConfig(redis_url=url, port=0)) as edge:
            async with BrokerClient(url) as client:
                await client.call(SERVICE, "echo", {}, timeout=10)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{edge.url}/dashboard/state") as resp:
                    state = await resp.json()
                async with http.get(f"{edge.url}/dashboard") as resp:
                    assert resp.status == 200
                    assert "dashboard.js" in await resp.text()
                async with http.get(f"{edge.url}/dashboard/static/dashboard.js") as resp:
                    assert resp.status == 200
                    assert resp.content_type == "application/javascript"
                async with http.get(f"{edge.url}/dashboard/static/nope.js") as resp:
                    assert resp.status == 404
    finally:
        stop.set()
        await task
    (svc,) = state["services"]
    assert svc["service"] == SERVICE and svc["workers"] == 1
    assert "echo" in {m["name"] for m in svc["api"]["methods"]}


async def test_event_stream_pushes_states_and_ends_with_the_edge(redis_url, worker):
    server = await EdgeServer(EdgeConfig(redis_url=redis_url, port=0)).start()
    stopped = False
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/dashboard/events") as resp:
                assert resp.headers["Content-Type"] == "text/event-stream"
                states = []
                while len(states) < 2:  # the page redraws on each of these
                    line = await resp.content.readline()
                    if line.startswith(b"data: "):
                        states.append(orjson.loads(line[6:]))
                assert states[1]["at"] > states[0]["at"]
                assert SERVICE in {s["service"] for s in states[1]["services"]}
                await server.stop()
                stopped = True
                # The stream ends (rather than holding the edge's shutdown until its timeout).
                await asyncio.wait_for(resp.content.read(), 30)
                assert resp.content.at_eof()
    finally:
        if not stopped:
            await server.stop()
