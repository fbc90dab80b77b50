"""`spark` (the operator CLI) on the embedded broker: in-process, no sockets."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from typing import Any

import orjson
import pytest

from spark.broker import Envelope, ServiceQueue, admin, connect
from spark.broker.keys import ServiceKeys
from spark.cli import operator
from spark.cli.operator import amain, main
from spark.nodes.rpc import RpcNode
from spark.runtime.dev import DevServer
from spark.runtime.worker import run_worker
from support.polling import eventually as wait_for


class ToolRpcNode(RpcNode):
    """Service "tool": records what ran."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: list[tuple[str, Any]] = []

    async def rpc_echo(self, params, context):
        self.seen.append(("echo", params))
        return params

    async def rpc_mark(self, params, context):
        self.seen.append(("mark", params))
        return {"ok": True}


@pytest.fixture
async def redis(memory_url):
    r = connect(memory_url)
    yield r
    await r.aclose()


@pytest.fixture
async def serve(memory_url):
    """Start an in-process worker for a node; stopped (drained) at teardown."""
    stops: list[tuple[asyncio.Event, asyncio.Task]] = []

    async def start(node: Any, **options: Any) -> Any:
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(
            run_worker(node, url=memory_url, stop=stop, ready=ready, **options)
        )
        await asyncio.wait_for(ready.wait(), 5)
        stops.append((stop, task))
        return node

    yield start
    for stop, task in stops:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def dead_letter(redis, service: str, envelopes: list[Envelope], error: str = "boom"):
    """Dead-letter `envelopes` the way a worker does: read, then ServiceQueue.dead_letter."""
    q = ServiceQueue(redis, service)
    await q.ensure_group()
    await q.enqueue([e.encode() for e in envelopes])
    entries = await q.read(redis, "op-test", len(envelopes), 10)
    for entry in entries:
        entry.deliveries = 4
        await q.dead_letter(entry, {"code": -32004, "message": error}, "op-test")
    return [x.id for x in await admin.dead_letters(redis, service)]


def out_json(capsys) -> Any:
    return orjson.loads(capsys.readouterr().out)


# -- usage errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["call", "svc", "m", "42"], "object or array"),
        (["call", "svc", "m", "{nope"], "not valid JSON"),
        (["call", "svc", "m", "{}", "--header", "Authorization: x"], "--edge"),
        (["call", "svc", "m", "--edge", "http://h:1", "--redis", "redis://h"], "not both"),
        (["call", "svc", "m", "--edge", "ftp://h:1"], "http"),
        (["call", "svc", "m", "--edge", "http://h:1", "--header", "nocolon"], "Name: value"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_service_name_and_missing_replay_choice_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["status", "bad name!"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["dlq", "replay", "svc"])  # neither --id nor --all
    assert exc.value.code == 2


def test_unreachable_broker_exits_2(capsys):
    url = "redis://127.0.0.1:1/0"
    assert main(["status", "--redis", url]) == 2
    assert "cannot reach the broker" in capsys.readouterr().err
    assert main(["call", "svc", "m", "--redis", url]) == 2
    assert "cannot reach the broker" in capsys.readouterr().err
    assert main(["dlq", "list", "svc", "--redis", url]) == 2


# -- call ------------------------------------------------------------------------------------------


async def test_call_prints_result(serve, memory_url, capsys):
    await serve(ToolRpcNode())
    assert await amain(["call", "tool", "echo", '{"a": [1, 2]}', "--redis", memory_url]) == 0
    assert out_json(capsys) == {"a": [1, 2]}
    argv = ["call", "tool", "echo", '{"b": 1}', "--compact", "--redis", memory_url]
    assert await amain(argv) == 0
    assert capsys.readouterr().out == '{"b":1}\n'


async def test_call_error_exits_1_with_error_object(serve, memory_url, capsys):
    await serve(ToolRpcNode())
    assert await amain(["call", "tool", "nope", "--redis", memory_url]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert orjson.loads(captured.err)["code"] == -32601


async def test_call_without_workers_fails_fast(memory_url, capsys):
    started = time.monotonic()
    assert await amain(["call", "tool", "echo", "{}", "--redis", memory_url]) == 1
    assert time.monotonic() - started < 2
    err = orjson.loads(capsys.readouterr().err)
    assert err["code"] == -32003
    assert "no live workers" in err["message"]
    assert await amain(["call", "tool", "echo", "{}", "--notify", "--redis", memory_url]) == 1


async def test_notify_runs_without_answer(serve, memory_url, capsys):
    node = await serve(ToolRpcNode())
    argv = ["call", "tool", "mark", '{"n": 1}', "--notify", "--redis", memory_url]
    assert await amain(argv) == 0
    assert capsys.readouterr().out == ""
    await wait_for(lambda: ("mark", {"n": 1}) in node.seen, what="notification run")


# -- status ----------------------------------------------------------------------------------------


async def test_status_counts(redis, memory_url, capsys):
    q = ServiceQueue(redis, "idle")
    await q.ensure_group()
    await q.enqueue([Envelope(id=str(i), method="m").encode() for i in range(5)])
    entries = await q.read(redis, "c1", 2, 10)
    await q.dead_letter(entries[0], {"code": -32004, "message": "x"}, "c1")
    # A stream that no worker ever created a group for still shows its backlog.
    await ServiceQueue(redis, "nogroup").enqueue([Envelope(id="1", method="m").encode()])

    argv = ["status", "idle", "nogroup", "--json", "--redis", memory_url]
    assert await amain(argv) == 0
    rows = {r["service"]: r for r in out_json(capsys)}
    idle = rows["idle"]
    assert {k: idle[k] for k in ("workers", "inflight", "backlog", "pending", "dead", "rate")} == {
        "workers": 0,
        "inflight": 0,
        "backlog": 4,
        "pending": 1,
        "dead": 1,
        "rate": None,
    }
    assert idle["worker_list"] == [] and idle["methods"] == [] and idle["error_rate"] is None
    # The oldest unfinished request was enqueued just now (measured on the broker's clock).
    assert 0 <= idle["oldest_age"] < 60
    assert rows["nogroup"]["backlog"] == 1 and rows["nogroup"]["pending"] == 0

    assert await amain(["status", "--redis", memory_url]) == 0  # known services: "idle"
    text = capsys.readouterr().out
    assert text.splitlines()[0].split() == [
        "SERVICE",
        "WORKERS",
        "INFLIGHT",
        "BACKLOG",
        "PENDING",
        "DEAD",
        "REQ/S",
        "ERR%",
        "P50",
        "P99",
        "OLDEST",
    ]
    assert text.splitlines()[1].split()[:10] == [
        "idle",
        "0",
        "0",
        "4",
        "1",
        "1",
        "-",
        "-",
        "-",
        "-",
    ]
    assert text.splitlines()[1].split()[10].endswith("s")  # its age, e.g. 0.1s


async def test_status_empty_broker(memory_url, capsys):
    assert await amain(["status", "--redis", memory_url]) == 0
    assert "no services" in capsys.readouterr().out


async def test_status_measures_throughput(serve, memory_url, capsys):
    await serve(ToolRpcNode(), heartbeat_interval=0.1)
    from spark.client.broker_client import BrokerClient

    async with BrokerClient(memory_url) as client:
        running = True

        async def load() -> None:
            while running:
                await asyncio.gather(*(client.call("tool", "echo", [i]) for i in range(20)))

        loader = asyncio.create_task(load())
        try:
            argv = ["status", "tool", "--json", "--sample", "5", "--redis", memory_url]
            assert await amain(argv) == 0
        finally:
            running = False
            await loader
    (row,) = out_json(capsys)
    assert row["workers"] == 1
    assert row["rate"] is not None and row["rate"] > 0


def test_throughput_meter():
    meter = admin.ThroughputMeter()
    meter.observe("s", {"w1": {"processed": 10, "at": 100.0}, "w2": {"processed": 0, "at": 100.5}})
    assert meter.rate("s") is None
    assert not meter.known("s", ["w1", "w2"])
    meter.observe("s", {"w1": {"processed": 10, "at": 100.0}, "w2": {"processed": 0, "at": 100.5}})
    assert meter.rate("s") is None  # same heartbeats: nothing learnt
    meter.observe("s", {"w1": {"processed": 30, "at": 102.0}, "w2": {"processed": 5, "at": 101.5}})
    assert meter.known("s", ["w1", "w2"])
    assert meter.rate("s") == pytest.approx(10 + 5)
    meter.observe("s", {"w2": {"processed": 5, "at": 101.5}})  # w1 left
    assert meter.rate("s") == pytest.approx(5)
    meter.observe("s", {"w2": {"processed": 2, "at": 103.0}})  # restarted counter: no rate
    assert meter.rate("s") == pytest.approx(5)


# -- dlq -------------------------------------------------------------------------------------------


async def test_dlq_list(redis, memory_url, capsys):
    envs = [Envelope(id=f"r{i}", method="mark", params={"i": i}, reply_to="gone") for i in range(3)]
    ids = await dead_letter(redis, "tool", envs, error="the handler crashed")
    await redis.xadd(ServiceKeys.for_service("tool").dead, {b"e": b"not json", b"error": b"{}"})

    assert await amain(["dlq", "list", "tool", "--json", "--redis", memory_url]) == 0
    rows = out_json(capsys)
    assert [r["id"] for r in rows[:3]] == ids
    assert rows[0]["method"] == "mark" and rows[0]["params"] == {"i": 0}
    assert rows[0]["deliveries"] == 4
    assert rows[0]["error"] == {"code": -32004, "message": "the handler crashed"}
    assert rows[0]["at"] == pytest.approx(time.time(), abs=60)
    assert rows[3]["replayable"] is False and rows[3]["raw"] == "not json"

    assert await amain(["dlq", "list", "tool", "--count", "2", "--redis", memory_url]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].split() == ["ID", "METHOD", "DELIVERIES", "WHEN", "ERROR"]
    assert ids[0] in lines[1] and "mark" in lines[1] and "the handler crashed" in lines[1]
    assert "(2 of 4" in text
    # Each error in full below the table.
    assert f'{ids[0]}  {{"code":-32004,"message":"the handler crashed"}}' in lines

    assert await amain(["dlq", "list", "other", "--redis", memory_url]) == 1
    assert "unknown service 'other'" in capsys.readouterr().err
    await ServiceQueue(redis, "other").ensure_group()  # known, with nothing dead-lettered
    assert await amain(["dlq", "list", "other", "--redis", memory_url]) == 0
    assert "no dead letters" in capsys.readouterr().out


async def test_dlq_replay_all_runs_them_as_notifications(redis, serve, memory_url, capsys):
    envs = [
        Envelope(id=f"r{i}", method="mark", params={"i": i}, reply_to="gone", deadline=1.0)
        for i in range(250)
    ]
    await dead_letter(redis, "tool", envs)
    bad = await redis.xadd(ServiceKeys.for_service("tool").dead, {b"e": b"not json"})

    argv = ["dlq", "replay", "tool", "--all", "--timeout", "60", "--json", "--redis", memory_url]
    assert await amain(argv) == 0
    captured = capsys.readouterr()
    report = orjson.loads(captured.out)
    assert report["replayed"] == 250
    assert report["malformed"] == [bad.decode()]
    assert "replaying tool: 251/251" in captured.err  # progress counter
    keys = ServiceKeys.for_service("tool")
    assert await redis.xlen(keys.dead) == 1  # only the malformed one stays
    rows = await redis.xrange(keys.requests, count=1)
    env = Envelope.decode(rows[0][1][b"e"])
    assert env.reply_to is None and env.client is None
    assert env.method == "mark" and env.params == {"i": 0}
    assert env.deadline == pytest.approx(time.time() + 60, abs=10)

    node = await serve(ToolRpcNode())
    await wait_for(lambda: len(node.seen) == 250, what="replayed requests run")
    assert sorted(p["i"] for _m, p in node.seen) == list(range(250))


async def test_dlq_replay_ids_and_missing(redis, memory_url, capsys):
    ids = await dead_letter(redis, "tool", [Envelope(id=f"r{i}", method="m") for i in range(3)])
    argv = ["dlq", "replay", "tool", "--id", ids[1], "--id", "1-1", "--redis", memory_url]
    assert await amain(argv) == 1  # one id unknown
    captured = capsys.readouterr()
    assert "replayed 1 request" in captured.out
    assert "no dead letter 1-1" in captured.err
    remaining = [x.id for x in await admin.dead_letters(redis, "tool")]
    assert remaining == [ids[0], ids[2]]
    assert await redis.xlen(ServiceKeys.for_service("tool").requests) == 1


async def test_dlq_replay_stops_at_full_backlog(redis, memory_url, capsys):
    ids = await dead_letter(redis, "tool", [Envelope(id=f"r{i}", method="m") for i in range(5)])
    await ServiceQueue(redis, "tool").enqueue([Envelope(id="x", method="m").encode()])
    argv = ["dlq", "replay", "tool", "--all", "--max-backlog", "3", "--json", "--redis", memory_url]
    assert await amain(argv) == 1
    captured = capsys.readouterr()
    report = orjson.loads(captured.out)
    assert report["replayed"] == 2 and report["backlog_full"] and report["left"] == 3
    assert "backlog of tool is full" in captured.err
    assert [x.id for x in await admin.dead_letters(redis, "tool")] == ids[2:]
    assert await redis.xlen(ServiceKeys.for_service("tool").requests) == 3


async def test_replay_of_gone_dead_letter_is_not_duplicated(redis):
    ids = await dead_letter(redis, "tool", [Envelope(id="r", method="m")])
    letters = await admin.dead_letters(redis, "tool")
    first, second = admin.ReplayReport(), admin.ReplayReport()
    replayer = admin.Replayer(redis, "tool")
    await replayer.move(letters, first)
    await replayer.move(letters, second)  # a second operator with the same listing
    assert [d for d, _e in first.replayed] == ids
    assert second.replayed == [] and second.missing == ids
    assert await redis.xlen(ServiceKeys.for_service("tool").requests) == 1


async def test_dlq_purge(redis, memory_url, capsys, monkeypatch):
    ids = await dead_letter(redis, "tool", [Envelope(id=f"r{i}", method="m") for i in range(4)])
    dead = ServiceKeys.for_service("tool").dead

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert await amain(["dlq", "purge", "tool", "--redis", memory_url]) == 2
    assert "--yes" in capsys.readouterr().err
    assert await redis.xlen(dead) == 4

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Tty("n\n"))
    assert await amain(["dlq", "purge", "tool", "--redis", memory_url]) == 1
    assert "delete all 4 dead letter(s) of tool? [y/N] nothing deleted" in capsys.readouterr().err
    assert await redis.xlen(dead) == 4
    monkeypatch.setattr("sys.stdin", Tty("y\n"))
    argv = ["dlq", "purge", "tool", "--id", ids[0], "--json", "--redis", memory_url]
    assert await amain(argv) == 0
    assert out_json(capsys) == {"deleted": 1}
    assert await amain(["dlq", "purge", "tool", "--yes", "--redis", memory_url]) == 0
    assert "deleted 3 dead letter(s)" in capsys.readouterr().out
    assert await redis.xlen(dead) == 0
    assert await amain(["dlq", "purge", "tool", "--yes", "--redis", memory_url]) == 0
    assert "no dead letters" in capsys.readouterr().out


# -- helpers and dev -------------------------------------------------------------------------------


def test_progress_without_tty_writes_counter_lines():
    stream = io.StringIO()
    p = operator.Progress("replaying x", stream)
    p.count(1, 3)
    p.count(2, 3)  # throttled
    p.count(3, 3)  # the last one always shows
    p.done()
    assert stream.getvalue() == "replaying x: 1/3\nreplaying x: 3/3\n"


def test_dev_server_checks_its_nodes():
    with pytest.raises(ValueError, match="at least one"):
        DevServer([])
    with pytest.raises(ValueError, match="same service: tool"):
        DevServer([ToolRpcNode(), ToolRpcNode()])
    server = DevServer([ToolRpcNode(), ToolRpcNode(service="other")], port=0)
    assert server.services == ["tool", "other"]
    assert server.url == "memory://"


# -- forget ----------------------------------------------------------------------------------------


async def test_forget_removes_a_dead_service(redis, serve, memory_url, capsys):
    await ServiceQueue(redis, "gone").ensure_group()
    await redis.sadd("spark:services", "gone")
    assert await amain(["forget", "gone", "--redis", memory_url]) == 0
    assert "forgot gone" in capsys.readouterr().out
    assert await amain(["status", "--json", "--sample", "0", "--redis", memory_url]) == 0
    assert "gone" not in {r["service"] for r in out_json(capsys)}
    assert await amain(["forget", "gone", "--redis", memory_url]) == 1
    assert "unknown service 'gone'" in capsys.readouterr().err


async def test_forget_keeps_what_would_be_lost_and_live_services(redis, serve, memory_url, capsys):
    queue = ServiceQueue(redis, "busy")
    await queue.ensure_group()
    await redis.sadd("spark:services", "busy")
    await queue.enqueue([Envelope(id="1", method="m").encode()])
    assert await amain(["forget", "busy", "--redis", memory_url]) == 1
    assert "still holds 1 request(s)" in capsys.readouterr().err
    assert await amain(["forget", "busy", "--purge", "--json", "--redis", memory_url]) == 0
    report = out_json(capsys)
    assert report["forgotten"] and report["deleted_requests"] == 1
    assert await redis.exists(ServiceKeys.for_service("busy").requests) == 0

    await serve(ToolRpcNode())
    assert await amain(["forget", "tool", "--redis", memory_url]) == 1
    assert "1 live worker(s)" in capsys.readouterr().err
