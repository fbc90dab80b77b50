"""`start_server()` without a broker URL serves in-process (no broker between edge and node),
and answers exactly as the same node served through a broker (edge + in-process worker on
the embedded broker): every test runs both ways and checks the same answers, over real
HTTP and WebSocket connections."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import orjson
import pytest

from spark.errors import RpcError
from spark.nodes.rpc import RpcNode
from spark.runtime.server import NodeServer

pytestmark = pytest.mark.integration


class SemanticsRpcNode(RpcNode):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.runs: dict[str, int] = {}
        self.hooks: list[str] = []
        self.running = 0
        self.most_running = 0
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()
        self.noted = asyncio.Event()

    async def on_start(self):
        self.hooks.append("start")

    async def on_stop(self):
        self.hooks.append("stop")

    async def before_request(self, method, params, context):
        if method == "refused":
            raise RpcError("refused by before_request", code=-32050)

    async def after_request(self, method, result, context):
        if method == "replaced":
            return {"replaced": True}
        return None

    async def rpc_echo(self, params, context):
        return params

    async def rpc_replaced(self, params, context):
        return {"replaced": False}

    async def rpc_refused(self, params, context):
        return "never"

    async def rpc_count(self, params, context):
        key = params["key"]
        self.runs[key] = self.runs.get(key, 0) + 1
        return {"runs": self.runs[key]}

    async def rpc_count_slowly(self, params, context):
        key = params["key"]
        self.runs[key] = self.runs.get(key, 0) + 1
        runs = self.runs[key]
        await asyncio.sleep(0.2)  # the handler's work, slow enough for repeats to overlap it
        return {"runs": runs}

    async def rpc_slow(self, params, context):
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self.started.set()
        try:
            await asyncio.sleep(params.get("seconds", 5.0))
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        finally:
            self.running -= 1
        return {"slept": True}

    async def rpc_not_json(self, params, context):
        return {"a set": {1, 2}}

    async def rpc_boom(self, params, context):
        raise ValueError("secret detail")

    async def rpc_deadline(self, params, context):
        return {"has_deadline": context.metadata["rpc"]["deadline"] is not None}

    async def rpc_note(self, params, context):
        self.noted.set()

    async def rpc_tell_me(self, params, context):
        await self.send_notification_to_client(
            context.metadata["rpc"]["client_id"], "progress", {"step": params["step"]}
        )
        await self.broadcast_notification("everyone", {"n": 1})
        return "told"


MODES = ["in-process", "broker"]


@pytest.fixture(params=MODES)
async def served(request, memory_url, monkeypatch):
    """(node, base URL, NodeServer): the node on a free port, in-process or through a broker."""
    monkeypatch.delenv("SPARK_REDIS_URL", raising=False)
    redis_url = None if request.param == "in-process" else memory_url
    node = SemanticsRpcNode(port=0, redis_url=redis_url, service="sem")
    server = NodeServer(node, worker_options={"concurrency": 2}, max_backlog=50)
    await server.start()
    assert server.in_process is (request.param == "in-process")
    try:
        yield node, server.endpoint, server
    finally:
        await server.stop()


async def post(base: str, body, headers=None, path: str = "/"):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with aiohttp.ClientSession() as http:
        async with http.post(base + path, data=data, headers=headers) as resp:
            raw = await resp.read()
            return resp.status, (orjson.loads(raw) if raw else None)


def call(method, params=None, id=1):
    doc = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        doc["params"] = params
    return doc


async def test_results_errors_and_hooks_answer_alike(served):
    node, base, _mode = served
    assert (await post(base, call("echo", {"x": [1, "two"]}))) == (
        200,
        {"jsonrpc": "2.0", "result": {"x": [1, "two"]}, "id": 1},
    )
    _, body = await post(base, call("echo", [1, 2]))
    assert body["error"]["code"] == -32602  # array params bind positionally: too many
    _, body = await post(base, call("missing"))
    assert body["error"]["code"] == -32601
    _, body = await post(base, call("refused"))
    assert body["error"] == {"code": -32050, "message": "refused by before_request"}
    _, body = await post(base, call("replaced"))
    assert body["result"] == {"replaced": True}
    _, body = await post(base, call("boom"))
    assert body["error"]["code"] == -32603
    assert "secret" not in orjson.dumps(body).decode()
    _, body = await post(base, call("not_json"))
    assert body["error"]["code"] == -32603
    _, body = await post(base, call("deadline"))
    assert body["result"] == {"has_deadline": True}
    assert node.hooks == ["start"]


async def test_rpc_discover_answers_alike(served):
    _node, base, _mode = served
    _, body = await post(base, call("rpc.discover"))
    doc = body["result"]
    assert doc["info"]["title"] == "sem"
    assert "echo" in {m["name"] for m in doc["methods"]}


async def test_on_stop_runs_after_the_server_stops(memory_url, monkeypatch):
    monkeypatch.delenv("SPARK_REDIS_URL", raising=False)
    for redis_url in (None, memory_url):
        node = SemanticsRpcNode(port=0, redis_url=redis_url)
        await node.start_server()
        assert node.hooks == ["start"]
        await node.stop_server()
        assert node.hooks == ["start", "stop"]


async def test_a_batch_is_answered_alike(served):
    _node, base, _mode = served
    batch = [
        call("echo", {"a": 1}, id="x"),
        {"jsonrpc": "2.0", "method": "note"},
        {"jsonrpc": "2.0", "id": 5},
        call("missing", id=7),
    ]
    status, body = await post(base, batch)
    assert status == 200
    assert body[0] == {"jsonrpc": "2.0", "result": {"a": 1}, "id": "x"}
    assert body[1] == {
        "jsonrpc": "2.0",
        "error": {"code": -32600, "message": "Invalid Request"},
        "id": 5,
    }
    assert body[2]["id"] == 7 and body[2]["error"]["code"] == -32601
    assert len(body) == 3


async def test_a_notification_runs_and_gets_no_answer(served):
    node, base, _mode = served
    status, body = await post(base, {"jsonrpc": "2.0", "method": "note"})
    assert (status, body) == (204, None)
    await asyncio.wait_for(node.noted.wait(), 10)


async def test_a_handler_past_its_deadline_is_answered_with_a_timeout(served):
    _node, base, _mode = served
    _, body = await post(base, call("slow", {"seconds": 5}), {"X-Spark-Timeout": "0.3"})
    assert body["error"]["code"] == -32001


async def test_an_idempotency_key_runs_the_handler_once(served):
    node, base, _mode = served
    headers = {"Idempotency-Key": "order-1"}
    first = await post(base, call("count", {"key": "k"}), headers)
    again = await post(base, call("count", {"key": "k"}, id=2), headers)
    assert first[1]["result"] == {"runs": 1}
    assert again[1] == {"jsonrpc": "2.0", "result": {"runs": 1}, "id": 2}
    other = await post(base, call("count", {"key": "k"}), {"Idempotency-Key": "order-2"})
    assert other[1]["result"] == {"runs": 2}
    assert node.runs == {"k": 2}


async def test_a_repeat_while_the_first_runs_waits_for_its_answer(served):
    node, base, _server = served
    headers = {"Idempotency-Key": "order-9"}
    both = await asyncio.gather(
        post(base, call("count_slowly", {"key": "s"}), headers),
        post(base, call("count_slowly", {"key": "s"}, id=2), headers),
    )
    assert [body["result"] for _, body in both] == [{"runs": 1}, {"runs": 1}]
    assert node.runs == {"s": 1}


async def test_another_service_has_no_workers(served):
    _node, base, _mode = served
    _, body = await post(base, call("echo", {}), path="/elsewhere")
    assert body["error"]["code"] == -32003


async def test_concurrency_is_bounded_by_the_worker_options(served):
    node, base, _mode = served
    calls = [asyncio.create_task(post(base, call("slow", {"seconds": 0.2}))) for _ in range(5)]
    answers = await asyncio.gather(*calls)
    assert all(body["result"] == {"slept": True} for _, body in answers)
    assert node.most_running == 2  # concurrency=2: never more at once


async def test_an_http_client_that_goes_away_cancels_its_handler(served):
    node, base, _mode = served

    async def abandon():
        async with aiohttp.ClientSession() as http:
            async with http.post(base, data=orjson.dumps(call("slow", {"seconds": 30}))):
                pass

    caller = asyncio.create_task(abandon())
    await asyncio.wait_for(node.started.wait(), 10)
    caller.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(node.cancelled.wait(), 10)


async def test_websocket_calls_and_notifications_reach_the_caller(served):
    _node, base, _mode = served
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(base + "/ws") as ws:
            await ws.send_bytes(orjson.dumps(call("tell_me", {"step": 3}, id=9)))
            seen = []
            while len(seen) < 3:
                seen.append(orjson.loads((await ws.receive(timeout=10)).data))
    notes = [m for m in seen if "id" not in m]
    answers = [m for m in seen if "id" in m]
    assert answers == [{"jsonrpc": "2.0", "result": "told", "id": 9}]
    assert sorted(notes, key=lambda m: m["method"]) == [
        {"jsonrpc": "2.0", "method": "everyone", "params": {"n": 1}},
        {"jsonrpc": "2.0", "method": "progress", "params": {"step": 3}},
    ]


async def test_a_closed_websocket_cancels_its_handlers(served):
    node, base, _mode = served
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(base + "/ws") as ws:
            await ws.send_bytes(orjson.dumps(call("slow", {"seconds": 30})))
            await asyncio.wait_for(node.started.wait(), 10)
    await asyncio.wait_for(node.cancelled.wait(), 10)


async def test_health_names_the_service(served):
    _node, base, _server = served
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/health") as resp:
            doc = await resp.json()
    assert resp.status == 200
    assert doc["services"] == {"sem": 1}
    assert doc["status"] == "ok"


async def test_stop_lets_a_request_in_flight_finish(served):
    node, base, server = served
    pending = asyncio.create_task(post(base, call("slow", {"seconds": 0.3})))
    await asyncio.wait_for(node.started.wait(), 10)
    await server.stop()
    assert (await pending)[1]["result"] == {"slept": True}
    assert node.hooks == ["start", "stop"]
