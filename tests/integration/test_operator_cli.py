"""`spark` (the operator CLI) as a process, against a real redis-server and real workers."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import aiohttp
import pytest
import redis as sync_redis

from spark.broker import Envelope, ServiceQueue, admin, connect
from spark.broker.keys import ServiceKeys
from spark.broker.queue import Entry
from spark.client.broker_client import BrokerClient
from spark.errors import DeadLetteredError
from spark.nodes.rpc import RpcNode
from spark.runtime.dev import DevServer
from spark.runtime.edge import EdgeConfig, EdgeServer
from support.polling import eventually as poll
from support.processes import WorkerProcess, env
from support.redis_cluster import sync_client
from support.redis_server import free_port, wait_until

pytestmark = pytest.mark.integration

TARGET = "support.services:LabRpcNode"
CLI = [sys.executable, "-m", "spark.cli.operator"]


def spark(*args: str, stdin=subprocess.DEVNULL, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], env=env(), stdin=stdin, capture_output=True, text=True, timeout=timeout
    )


async def aspark(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """The CLI as a subprocess, without blocking the test's event loop."""
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        env=env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def workers(redis_url):
    started: list[WorkerProcess] = []

    def start(*args: str, service: str = "lab", count: int = 1) -> WorkerProcess:
        w = WorkerProcess(TARGET, redis_url, *args, service=service).wait_ready(count)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


@pytest.fixture
async def redis(redis_url):
    r = connect(redis_url)
    yield r
    await r.aclose()


def runs(url: str, key: str) -> int:
    client = sync_client(url)
    try:
        return int(client.get(f"lab:runs:{key}") or 0)
    finally:
        client.close()


# -- call -----------------------------------------------------------------------------------------


def test_call_through_redis(workers, redis_url):
    workers()
    done = spark("call", "lab", "echo", '{"a": 1, "b": [true, null]}', "--redis", redis_url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"a": 1, "b": [True, None]}

    done = spark("call", "lab", "fail", "{}", "--redis", redis_url)
    assert done.returncode == 1
    assert done.stdout == ""
    assert json.loads(done.stderr)["code"] == -32603

    done = spark("call", "lab", "no_such_method", "--redis", redis_url)
    assert done.returncode == 1
    assert json.loads(done.stderr)["code"] == -32601

    done = spark("call", "lab", "sleep", '{"seconds": 5}', "--timeout", "0.5", "--redis", redis_url)
    assert done.returncode == 1
    assert json.loads(done.stderr)["code"] == -32001

    done = spark("call", "lab", "count", '{"key": "cli-notify"}', "--notify", "--redis", redis_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    wait_until(lambda: runs(redis_url, "cli-notify") == 1, what="notification run")


def test_call_through_redis_env_and_errors(redis_url):
    # $SPARK_REDIS_URL is the default broker; no live worker fails fast with -32003.
    started = time.monotonic()
    done = subprocess.run(
        [*CLI, "call", "ghost", "echo", "{}"],
        env={**env(), "SPARK_REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    err = json.loads(done.stderr)
    assert err["code"] == -32003 and "no live workers" in err["message"]
    assert time.monotonic() - started < 10

    done = spark("call", "lab", "echo", "[1", "--redis", redis_url)
    assert done.returncode == 2 and "not valid JSON" in done.stderr
    done = spark("call", "lab", "echo", '"text"', "--redis", redis_url)
    assert done.returncode == 2 and "object or array" in done.stderr


def test_unreachable_broker_and_edge_exit_2():
    port = free_port()
    done = spark("call", "lab", "echo", "{}", "--redis", f"redis://127.0.0.1:{port}/0")
    assert done.returncode == 2 and "cannot reach the broker" in done.stderr
    done = spark("status", "--redis", f"redis://127.0.0.1:{port}/0")
    assert done.returncode == 2 and "cannot reach the broker" in done.stderr
    done = spark("call", "lab", "echo", "{}", "--edge", f"http://127.0.0.1:{port}")
    assert done.returncode == 2 and "cannot reach" in done.stderr


async def test_call_through_edge(workers, redis_url):
    workers()
    config = EdgeConfig(redis_url=redis_url, port=0, auth_tokens=["s3cret"])
    async with EdgeServer(config) as edge:
        code, out, err = await aspark("call", "lab", "echo", '{"via": "edge"}', "--edge", edge.url)
        assert code == 1
        assert json.loads(err)["code"] == -32005  # no token

        auth = ["--header", "Authorization: Bearer s3cret"]
        code, out, err = await aspark(
            "call", "lab", "echo", '{"via": "edge"}', "--edge", edge.url, *auth
        )
        assert code == 0, err
        assert json.loads(out) == {"via": "edge"}

        code, out, err = await aspark("call", "lab", "fail", "--edge", edge.url, *auth)
        assert code == 1 and json.loads(err)["code"] == -32603

        code, out, err = await aspark(
            "call", "lab", "count", '{"key": "edge-notify"}', "--notify", "--edge", edge.url, *auth
        )
        assert code == 0, err
        await poll(
            lambda: asyncio.to_thread(runs, redis_url, "edge-notify"), what="notification run"
        )


# -- status ---------------------------------------------------------------------------------------

FIGURES = ("service", "workers", "inflight", "backlog", "pending", "dead", "rate")


@pytest.mark.topologies("single", "cluster")
async def test_status_numbers(workers, redis_url, redis):
    workers("--heartbeat", "0.2", "--concurrency", "4")
    idle = ServiceQueue(redis, "idle")
    await idle.ensure_group()
    await idle.enqueue([Envelope(id=str(i), method="m").encode() for i in range(7)])
    entries = await idle.read(redis, "gone-worker", 3, 10)  # 3 delivered, never finished
    await idle.dead_letter(entries[0], {"code": -32004, "message": "x"}, "gone-worker")

    async with BrokerClient(redis_url) as client:
        running = True

        async def load() -> None:
            while running:
                await asyncio.gather(*(client.call("lab", "echo", {"i": i}) for i in range(50)))

        loader = asyncio.create_task(load())

        async def status_with_rate() -> dict | None:
            # A one-shot rate is the difference of two heartbeats; on a loaded machine both can
            # fall in an instant when no call finished, so ask again until a sample shows it.
            code, out, err = await aspark("status", "--json", "--redis", redis_url)
            assert code == 0, err
            rows = {r["service"]: r for r in json.loads(out)}
            return rows if rows.get("lab", {}).get("rate") else None

        try:
            rows = await poll(status_with_rate, timeout=60, what="a positive rate for lab")
        finally:
            running = False
            await loader
    assert set(rows) == {"lab", "idle"}
    assert {k: rows["idle"][k] for k in FIGURES} == {
        "service": "idle",
        "workers": 0,
        "inflight": 0,
        "backlog": 6,
        "pending": 2,
        "dead": 1,
        "rate": None,
    }
    assert rows["lab"]["workers"] == 1
    assert rows["lab"]["dead"] == 0
    assert rows["lab"]["rate"] > 0
    # Each worker, and per method its calls and latencies.
    (worker,) = rows["lab"]["worker_list"]
    assert worker["pid"] > 0 and worker["processed"] > 0 and worker["uptime"] >= 0
    echo = {m["method"]: m for m in rows["lab"]["methods"]}["echo"]
    assert echo["calls"] > 0 and 0 < echo["p50_ms"] <= echo["p99_ms"]
    assert rows["lab"]["error_rate"] == 0

    code, out, err = await aspark("status", "idle", "--sample", "0", "--redis", redis_url)
    assert code == 0, err
    assert out.splitlines()[1].split()[:7] == ["idle", "0", "0", "6", "2", "1", "-"]

    code, out, err = await aspark("status", "lab", "--sample", "0", "--redis", redis_url)
    assert code == 0, err
    assert "lab: workers" in out and "lab: methods" in out
    assert str(worker["pid"]) in out


@pytest.mark.topologies()
async def test_status_lists_services_of_every_shard(redis_url):
    """Services known only by their request streams (sent to before any worker started),
    spread over the shards of a cluster, are all listed."""
    names = [f"queued{i}" for i in range(6)]
    async with BrokerClient(redis_url) as client:
        for name in names:
            await client.notify(name, "m", {})
    code, out, err = await aspark("status", "--json", "--redis", redis_url)
    assert code == 0, err
    rows = {r["service"]: r for r in json.loads(out)}
    assert set(rows) == set(names)
    assert all(r["backlog"] == 1 and r["workers"] == 0 for r in rows.values())


async def test_status_watch_until_interrupted(redis_url, redis):
    await ServiceQueue(redis, "idle").ensure_group()
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "status",
        "--watch",
        "0.1",
        "--json",
        "--redis",
        redis_url,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            first = json.loads(await proc.stdout.readline())
            await ServiceQueue(redis, "idle").enqueue([Envelope(id="1", method="m").encode()])
            while json.loads(await proc.stdout.readline())[0]["backlog"] != 1:
                pass
        assert [{k: row[k] for k in FIGURES} for row in first] == [
            {
                "service": "idle",
                "workers": 0,
                "inflight": 0,
                "backlog": 0,
                "pending": 0,
                "dead": 0,
                "rate": None,
            }
        ]
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- dlq ------------------------------------------------------------------------------------------


@pytest.mark.topologies("single", "cluster")
async def test_dead_letters_list_replay_purge(workers, redis_url, redis):
    workers("--processes", "2", "--reclaim-after", "0.5", "--max-deliveries", "1", count=2)
    async with BrokerClient(redis_url) as client:
        with pytest.raises(DeadLetteredError):
            await client.call("lab", "crash", {"count": "crashes"}, timeout=30)
    # A dead letter of a request that will succeed when replayed (its caller is gone).
    # dead_letter acks and deletes the entry id it is given: one never enqueued is harmless.
    envelope = Envelope(
        id="old", method="count", params={"key": "replayed"}, reply_to="gone", deadline=1.0
    )
    await ServiceQueue(redis, "lab").dead_letter(
        Entry(b"1-1", envelope.encode(), deliveries=3),
        {"code": -32603, "message": "db down"},
        "operator-test",
    )

    code, out, err = await aspark("dlq", "list", "lab", "--json", "--redis", redis_url)
    assert code == 0, err
    listed = json.loads(out)
    assert [x["method"] for x in listed] == ["crash", "count"]
    assert listed[0]["deliveries"] == 2
    assert listed[0]["error"]["code"] == -32004
    assert listed[1]["error"]["message"] == "db down"

    code, out, err = await aspark("dlq", "list", "lab", "--redis", redis_url)
    assert code == 0 and "crash" in out and "db down" in out

    code, out, err = await aspark(
        "dlq", "replay", "lab", "--id", listed[1]["id"], "--redis", redis_url
    )
    assert code == 0, err
    assert "replayed 1 request" in out
    await poll(lambda: asyncio.to_thread(runs, redis_url, "replayed"), what="replayed request run")
    assert [x.method for x in await admin.dead_letters(redis, "lab")] == ["crash"]

    done = await asyncio.to_thread(spark, "dlq", "purge", "lab", "--redis", redis_url)
    assert done.returncode == 2 and "--yes" in done.stderr  # stdin is not a terminal
    code, out, err = await aspark("dlq", "purge", "lab", "--yes", "--redis", redis_url)
    assert code == 0 and "deleted 1 dead letter" in out
    assert await redis.xlen(ServiceKeys.for_service("lab").dead) == 0
    assert runs(redis_url, "crashes") == 1  # dead-lettered at its 2nd delivery, unrun


async def test_replay_all_shows_progress(redis_url, redis):
    q = ServiceQueue(redis, "batch")
    await q.ensure_group()
    await q.enqueue([Envelope(id=str(i), method="m").encode() for i in range(300)])
    for entry in await q.read(redis, "c", 300, 10):
        await q.dead_letter(entry, {"code": -32004, "message": "x"}, "c")
    code, out, err = await aspark("dlq", "replay", "batch", "--all", "--redis", redis_url)
    assert code == 0, err
    assert "replayed 300 request(s) of batch" in out
    assert "replaying batch: 300/300" in err
    assert await redis.xlen(q.keys.dead) == 0
    assert await redis.xlen(q.keys.requests) == 300


# -- dev ------------------------------------------------------------------------------------------


async def post(session: aiohttp.ClientSession, url: str, method: str, params) -> dict:
    body = {"jsonrpc": "2.0", "method": method, "params": params, "id": 1}
    async with session.post(url, json=body) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_spark_dev_process():
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "dev",
        TARGET,
        "support.services:UpperNode",
        "--port",
        str(port),
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        lines = []
        async with asyncio.timeout(30):
            while not lines or "Ctrl-C" not in lines[-1]:
                line = await proc.stdout.readline()
                assert line, f"spark dev exited: {(await proc.stderr.read()).decode()}"
                lines.append(line.decode())
        text = "".join(lines)
        base = f"http://127.0.0.1:{port}"
        assert "memory://" in text
        assert f"POST {base}/lab" in text and f"POST {base}/upper" in text
        async with aiohttp.ClientSession() as session:
            assert await post(session, f"{base}/lab", "echo", {"x": 1}) == {
                "jsonrpc": "2.0",
                "result": {"x": 1},
                "id": 1,
            }
            reply = await post(session, f"{base}/", "echo", {"default": True})
            assert reply["result"] == {"default": True}
            reply = await post(session, f"{base}/upper", "process", {"text": "hi"})
            assert reply["result"] == {"text": "HI"}
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
        assert "stopped" in (await proc.stderr.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


class DevRpcNode(RpcNode):
    async def rpc_hello(self, params, context):
        return {"hello": params["name"], "service": context.metadata["rpc"]["service"]}


async def test_dev_server_on_shared_redis(redis_url):
    """With a broker URL, `spark call`/`spark status` from elsewhere reach the dev services."""
    async with DevServer([DevRpcNode()], url=redis_url, port=0) as dev:
        assert dev.urls() == {"dev": f"{dev.endpoint}/dev"}
        async with aiohttp.ClientSession() as session:
            reply = await post(session, dev.endpoint, "hello", {"name": "edge"})
        assert reply["result"] == {"hello": "edge", "service": "dev"}
        code, out, err = await aspark(
            "call", "dev", "hello", '{"name": "cli"}', "--redis", redis_url
        )
        assert code == 0, err
        assert json.loads(out)["hello"] == "cli"
        code, out, err = await aspark(
            "status", "dev", "--json", "--sample", "0", "--redis", redis_url
        )
        assert json.loads(out)[0]["workers"] == 1
    r = sync_redis.Redis.from_url(redis_url)
    try:
        assert r.zcard("spark:{dev}:workers") == 0  # the worker left cleanly
    finally:
        r.close()
