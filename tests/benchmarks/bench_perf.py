"""The performance table: every way in, next to the limit it is measured against.

    python tests/benchmarks/bench_perf.py [--rounds 3] [--quick] [--loops asyncio,uvloop]

Starts its own redis-server and, per event loop, one process for each server measured:

- a bare aiohttp JSON echo handler (the reference for HTTP);
- `RpcNode.start_server()` with no broker URL (in-process);
- `spark-edge` + one `spark-worker` over Redis;
- a naive redis-py worker (XREADGROUP -> LPUSH reply; the client: XADD + one BLPOP reader),
  the floor for the redis transport; and `spark-worker` behind `transport="redis"`.

Every row is measured in each of `--rounds` rounds, its reference in the same round just
before it, so machine noise falls on both; the table shows the median of the rounds (and of
the per-round ratios). The client runs in this process: on a small machine client and
servers share the cores, so read the ratios rather than the absolute figures.

Throughput: `--calls` calls with 200 in flight. Latency: p50/p99 of calls made one after
another; a row's latency ratio compares it with its reference measured taking turns with it,
call by call, so that the noise of a shared machine falls on both alike. The scale curves
add worker processes, calls in flight and payload sizes; the memory figures are resident-set
growth of the serving processes.

The table is printed and written to tests/benchmarks/results/latest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support.*

import aiohttp
import orjson
import redis.asyncio as aioredis

from spark.aio import cancel_and_wait
from support.processes import env as child_env
from support.processes import live_workers
from support.redis_server import RedisServer, free_port, wait_until

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "latest.md"
TARGET = "support.services:LabRpcNode"
PARAMS = {"order": 42, "items": ["a", "b", "c"], "note": "x" * 64}
INFLIGHT = 200

Call = Callable[[], Awaitable[None]]


# -- measuring ----------------------------------------------------------------------------


@dataclass
class Sample:
    rate: float
    p50: float
    p99: float


#: Seconds one figure may take before the run stops with an error naming it.
FIGURE_LIMIT = 120.0


async def load(call: Call, calls: int, inflight: int) -> Sample:
    """`calls` calls with `inflight` at once: calls/s and per-call latency (ms)."""
    async with asyncio.timeout(FIGURE_LIMIT):
        return await _load(call, calls, inflight)


async def _load(call: Call, calls: int, inflight: int) -> Sample:
    todo = iter(range(calls))
    times: list[float] = []

    async def lane() -> None:
        for _ in todo:
            t = time.perf_counter()
            await call()
            times.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(inflight)))
    rate = calls / (time.perf_counter() - started)
    times.sort()
    return Sample(rate, _pct(times, 50), _pct(times, 99))


async def interleaved(ref: Call, call: Call, calls: int) -> tuple[Sample, Sample]:
    """Latency of `call` and of its reference `ref`, one call at a time, taking turns (which
    goes first alternates): the machine's noise of the moment falls on both alike."""
    async with asyncio.timeout(FIGURE_LIMIT):
        times: dict[Call, list[float]] = {ref: [], call: []}
        started = time.perf_counter()
        for i in range(calls):
            for fn in (ref, call) if i % 2 == 0 else (call, ref):
                t = time.perf_counter()
                await fn()
                times[fn].append(time.perf_counter() - t)
        rate = 2 * calls / (time.perf_counter() - started)
    samples = []
    for fn in (ref, call):
        ts = sorted(times[fn])
        samples.append(Sample(rate, _pct(ts, 50), _pct(ts, 99)))
    return samples[0], samples[1]


def _pct(sorted_times: list[float], p: int) -> float:
    i = min(len(sorted_times) - 1, max(0, round(len(sorted_times) * p / 100) - 1))
    return sorted_times[i] * 1000


@dataclass
class Row:
    """One line of the table: samples of each round, and what it is compared with."""

    section: str
    name: str
    reference: str | None = None
    #: Targets: throughput at least `min_rate` x the reference, p50 at most `max_p50` x.
    min_rate: float | None = None
    max_p50: float | None = None
    load: list[Sample] = field(default_factory=list)
    seq: list[Sample] = field(default_factory=list)
    #: The reference's latency measured taking turns with this row's (see `interleaved`).
    ref_seq: list[Sample] = field(default_factory=list)
    #: CPU microseconds per call during the loaded run: (serving processes, this client).
    cpu: list[tuple[float, float]] = field(default_factory=list)
    note: str = ""


class Table:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Row] = {}
        self.memory: list[tuple[str, str]] = []

    def row(self, section: str, name: str, **kw) -> Row:
        key = (section, name)
        if key not in self.rows:
            self.rows[key] = Row(section, name, **kw)
        return self.rows[key]

    def ratios(self, row: Row) -> tuple[float | None, float | None]:
        """Median over rounds of (rate / reference rate, p50 / reference p50)."""
        if row.reference is None:
            return None, None
        ref = self.rows[(row.section, row.reference)]
        rate = [a.rate / b.rate for a, b in zip(row.load, ref.load, strict=False)]
        p50 = [a.p50 / b.p50 for a, b in zip(row.seq, row.ref_seq or ref.seq, strict=False)]
        return (
            statistics.median(rate) if rate else None,
            statistics.median(p50) if p50 else None,
        )

    def render(self, header: str) -> str:
        out = [header, ""]
        section = None
        for row in self.rows.values():
            if row.section != section:
                section = row.section
                out += [
                    "",
                    f"### {section}",
                    "",
                    "| path | calls/s | p99 ms (loaded) | p50 ms (1 in flight) "
                    "| p99 ms (1 in flight) | server CPU µs/call | client CPU µs/call "
                    "| throughput vs ref | p50 vs ref | target | met |",
                    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
                ]
            out.append(self._line(row))
        if self.memory:
            out += ["", "### memory", "", "| what | figure |", "|---|---|"]
            out += [f"| {what} | {figure} |" for what, figure in self.memory]
        return "\n".join(out) + "\n"

    def _line(self, row: Row) -> str:
        def med(samples: list[Sample], attr: str, fmt: str) -> str:
            values = [getattr(s, attr) for s in samples]
            return format(statistics.median(values), fmt) if values else "-"

        rate_x, p50_x = self.ratios(row)
        target, met = [], []
        if row.min_rate is not None:
            target.append(f"≥{row.min_rate:g}x")
            met.append(rate_x is not None and rate_x >= row.min_rate)
        if row.max_p50 is not None:
            target.append(f"p50 ≤{row.max_p50:g}x")
            met.append(p50_x is not None and p50_x <= row.max_p50)
        name = row.name + (f" ({row.note})" if row.note else "")
        ref_p50 = ""
        if row.ref_seq:
            ref_p50 = f" ({statistics.median(r.p50 for r in row.ref_seq):.3f} ms)"
        server = statistics.median(c[0] for c in row.cpu) if row.cpu else None
        client = statistics.median(c[1] for c in row.cpu) if row.cpu else None
        return (
            f"| {name} | {med(row.load, 'rate', ',.0f')} | {med(row.load, 'p99', '.2f')} "
            f"| {med(row.seq, 'p50', '.3f')} | {med(row.seq, 'p99', '.3f')} "
            f"| {'-' if server is None else f'{server:.0f}'} "
            f"| {'-' if client is None else f'{client:.0f}'} "
            f"| {'-' if rate_x is None else f'{rate_x:.2f}x'} "
            f"| {'-' if p50_x is None else f'{p50_x:.2f}x{ref_p50}'} "
            f"| {', '.join(target) or '-'} "
            f"| {'-' if not met else ('yes' if all(met) else 'NO')} |"
        )


# -- processes ----------------------------------------------------------------------------


def _wait_port(proc: subprocess.Popen, port: int, what: str) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        return False

    wait_until(up, timeout=30, what=f"{what} listening")


class Processes:
    """Every process started, stopped together."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=child_env())
        self.procs.append(proc)
        return proc

    def server(self, kind: str, loop: str, *extra: str) -> tuple[subprocess.Popen, str]:
        port = free_port()
        cmd = [sys.executable, str(HERE / "servers.py"), kind, str(port), "--loop", loop, *extra]
        proc = self.start(cmd)
        _wait_port(proc, port, kind)
        return proc, f"http://127.0.0.1:{port}/"

    def worker(self, url: str, service: str, loop: str, *extra: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "spark.cli.worker", TARGET, "--redis", url]
        cmd += ["--service", service, "--loop", loop, "--concurrency", "256", *extra]
        return self.start(cmd)

    def edge(self, url: str, service: str, loop: str) -> tuple[subprocess.Popen, str]:
        port = free_port()
        cmd = [sys.executable, "-m", "spark.cli.edge", "--redis", url, "--port", str(port)]
        cmd += ["--default-service", service, "--loop", loop, "--ws-max-inflight", "10000"]
        cmd += ["--ws-max-outbox", "10000"]
        proc = self.start(cmd)
        _wait_port(proc, port, "spark-edge")
        return proc, f"http://127.0.0.1:{port}/"

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (`pids`; None for this one)."""
    total = 0.0
    for pid in pids:
        if pid is None:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            total += usage.ru_utime + usage.ru_stime
            continue
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def rss_kib(pid: int) -> int:
    """Resident set of a process and its children (a worker supervisor's processes), in KiB."""
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


# -- clients ------------------------------------------------------------------------------


def http_client(session: aiohttp.ClientSession, url: str, params=PARAMS) -> Call:
    body = orjson.dumps({"jsonrpc": "2.0", "method": "echo", "params": params, "id": 1})
    headers = {"Content-Type": "application/json"}

    async def call() -> None:
        async with session.post(url, data=body, headers=headers) as resp:
            reply = await resp.read()
        if b'"result"' not in reply:
            raise RuntimeError(f"unexpected reply: {reply[:200]!r}")

    return call


def proxy_client(url: str, service: str, params=PARAMS):
    from spark.nodes.rpc_client import RemoteRpcProxyConfig, RemoteRpcProxyNode
    from spark.nodes.types import ExecutionContext, NodeMessage

    proxy = RemoteRpcProxyNode(
        RemoteRpcProxyConfig(endpoint=url, transport="redis", service=service)
    )

    async def call() -> None:
        ctx = ExecutionContext(inputs=NodeMessage(content={"method": "echo", "params": params}))
        await proxy.process(ctx)

    return proxy, call


class RawFloor:
    """The naive redis-py round trip: XADD a request id, a worker LPUSHes it back, one BLPOP
    reader per client resolves futures. What most Redis task queues reduce to (it carries
    no params and decodes nothing: the floor, as measured since issue 3)."""

    def __init__(self, url: str, stream: str):
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=64)
        self.redis = aioredis.Redis(connection_pool=pool)
        self.blocking = aioredis.Redis.from_url(url)
        self.stream = stream
        self.key = f"raw:reply:{uuid.uuid4().hex}"
        self.pending: dict[bytes, asyncio.Future] = {}
        self.seq = 0
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            try:
                got = await self.blocking.blpop([self.key], timeout=1)
            except (ConnectionError, OSError, aioredis.RedisError) as exc:
                print(f"floor reader: {type(exc).__name__}: {exc}; reading again", flush=True)
                continue
            if got:
                fut = self.pending.pop(got[1], None)
                if fut:
                    fut.set_result(got[1])

    async def call(self) -> None:
        self.seq += 1
        rid = str(self.seq).encode()
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        await self.redis.xadd(self.stream, {"i": rid, "r": self.key})
        await fut

    async def aclose(self) -> None:
        await cancel_and_wait(self.reader)
        await self.redis.aclose()
        await self.blocking.aclose()


def raw_worker(url: str, stream: str) -> None:
    """The floor's worker (its own process): read a batch, LPUSH each reply, XACK."""

    async def main() -> None:
        r = aioredis.Redis.from_url(url)
        await r.delete(stream)
        await r.xgroup_create(stream, "g", id="0", mkstream=True)
        await r.set(f"{stream}:ready", 1)
        while True:
            got = await r.xreadgroup("g", "w", {stream: ">"}, count=200, block=200)
            if not got:
                continue
            pipe = r.pipeline(transaction=False)
            ids = []
            for mid, fields in got[0][1]:
                pipe.lpush(fields[b"r"], fields[b"i"])
                ids.append(mid)
            pipe.xack(stream, "g", *ids)
            await pipe.execute()

    asyncio.run(main())


# -- one event loop's servers and clients ----------------------------------------------------


class Setup:
    """The servers for one event loop, and this process's clients for them."""

    def __init__(self, procs: Processes, url: str, loop: str, args, redis_pid: int | None):
        self.procs, self.url, self.loop, self.args = procs, url, loop, args
        self.redis_pid = redis_pid
        self.service = f"bench-{loop}"
        self.stream = f"raw:{loop}:requests"

    def start_servers(self) -> None:
        procs, url, loop = self.procs, self.url, self.loop
        self.bare_proc, self.bare_url = procs.server("bare", loop)
        self.node_proc, self.node_url = procs.server("node", loop)
        self.worker_proc = procs.worker(url, self.service, loop)
        wait_until(lambda: live_workers(url, self.service) >= 1, timeout=30, what="worker")
        self.edge_proc, self.edge_url = procs.edge(url, self.service, loop)
        cmd = [sys.executable, __file__, "--raw-worker", url, self.stream, "--loop", loop]
        self.floor_proc = procs.start(cmd)
        probe = __import__("redis").Redis.from_url(url)
        wait_until(lambda: probe.get(f"{self.stream}:ready"), timeout=30, what="raw worker")
        probe.close()

    async def open_clients(self) -> None:
        # Connections stay open between rounds: opening 200 at once during a measurement
        # overflows the server's accept backlog, and a dropped SYN costs a 1 s retransmit.
        connector = aiohttp.TCPConnector(limit=INFLIGHT, keepalive_timeout=600)
        self.session = aiohttp.ClientSession(connector=connector)
        self.bare = http_client(self.session, self.bare_url)
        self.node = http_client(self.session, self.node_url)
        self.edge = http_client(self.session, self.edge_url)
        self.proxy, self.redis = proxy_client(self.url, self.service)
        self.floor = RawFloor(self.url, self.stream)
        for call in (self.bare, self.node, self.edge, self.redis, self.floor.call):
            await load(call, 2 * INFLIGHT, INFLIGHT)  # warm up: connections, caches, scripts

    async def close_clients(self) -> None:
        await self.session.close()
        await self.proxy.aclose()
        await self.floor.aclose()

    async def round(self, table: Table) -> None:
        """One round of the headline rows, on clients opened for it.

        Clients live within one round: the event loops take turns, and a redis-py reader
        left blocked in a loop that is not running may not survive until it runs again.
        """
        await self.open_clients()
        try:
            await self.headline(table)
        finally:
            await self.close_clients()

    async def headline(self, table: Table) -> None:
        """The headline rows, each just after its reference."""
        a = self.args
        http = f"HTTP, aiohttp client ({self.loop})"
        worker, redis_pid = self.worker_proc.pid, self.redis_pid
        rows = [
            (http, "bare aiohttp JSON echo handler", self.bare, [self.bare_proc.pid], {}),
            (
                http,
                "start_server(), in-process",
                self.node,
                [self.node_proc.pid],
                {"reference": "bare aiohttp JSON echo handler", "min_rate": 0.8, "max_p50": 1.3},
            ),
            (
                http,
                "spark-edge + spark-worker over Redis",
                self.edge,
                [self.edge_proc.pid, worker, redis_pid],
                {"reference": "bare aiohttp JSON echo handler", "min_rate": 0.7},
            ),
        ]
        redis = f"redis transport ({self.loop})"
        rows += [
            (redis, "naive redis-py floor", self.floor.call, [self.floor_proc.pid, redis_pid], {}),
            (
                redis,
                "proxy transport=redis + 1 spark-worker",
                self.redis,
                [worker, redis_pid],
                {"reference": "naive redis-py floor", "min_rate": 2.0, "max_p50": 1.2},
            ),
        ]
        calls = {(section, name): call for section, name, call, _servers, _kw in rows}
        for section, name, call, servers, kw in rows:
            row = table.row(section, name, **kw)
            print(f"  {section}: {name}", flush=True)
            await load(call, INFLIGHT, INFLIGHT)  # every connection open and warm
            before = cpu_seconds(servers), cpu_seconds([None])
            row.load.append(await load(call, a.calls, INFLIGHT))
            after = cpu_seconds(servers), cpu_seconds([None])
            per_call = 1e6 / a.calls
            row.cpu.append(((after[0] - before[0]) * per_call, (after[1] - before[1]) * per_call))
            if row.reference is None:
                row.seq.append(await load(call, a.sequential, 1))
            else:
                ref_sample, sample = await interleaved(
                    calls[(section, row.reference)], call, a.sequential
                )
                row.ref_seq.append(ref_sample)
                row.seq.append(sample)


# -- scale curves and memory (default loop only) ------------------------------------------


async def curves(setup: Setup, table: Table, extra: dict[int, str], args) -> None:
    section = "scale curves (redis transport; p99 under that load)"
    print(f"  {section}", flush=True)
    for n, service in ((1, setup.service), *extra.items()):
        proxy, call = proxy_client(setup.url, service)
        try:
            await load(call, 200, 20)
            name = f"{n} worker process{'es' if n > 1 else ''}, {INFLIGHT} in flight"
            table.row(section, name).load.append(await load(call, args.calls, INFLIGHT))
        finally:
            await proxy.aclose()
    proxy, call = proxy_client(setup.url, setup.service)
    try:
        await load(call, 200, 20)
        for inflight in (1, 10, 100, 200):
            calls = args.sequential if inflight == 1 else args.calls
            row = table.row(section, f"1 worker, {inflight} in flight")
            row.load.append(await load(call, calls, inflight))
    finally:
        await proxy.aclose()
    for label, size, calls in (("100 B", 100, 2000), ("10 KB", 10_000, 1000), ("1 MB", 2**20, 40)):
        calls = max(10, calls * args.calls // 3000)
        params = {"data": "x" * (size - 12)}  # the params' JSON is `size` bytes
        proxy, call = proxy_client(setup.url, setup.service, params)
        try:
            row = table.row(section, f"1 worker, payload {label} each way, 10 in flight")
            row.load.append(await load(call, calls, 10))
        finally:
            await proxy.aclose()


async def memory(setup: Setup, table: Table) -> None:
    """Resident-set growth of spark-edge per idle WebSocket, and of spark-edge and the worker
    per request in flight (sleeping handlers, all on one WebSocket)."""
    sockets = 300
    edge_pid = setup.edge_proc.pid
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        before = rss_kib(edge_pid)
        conns = [await session.ws_connect(setup.edge_url + "ws") for _ in range(sockets)]
        await asyncio.sleep(0.5)  # let the edge finish registering them
        grown = rss_kib(edge_pid) - before
        for ws in conns:
            await ws.close()
    table.memory.append(
        ("spark-edge, per idle WebSocket", f"{grown / sockets:.1f} KiB ({sockets} sockets)")
    )

    inflight = 1000
    procs = Processes()
    service = f"mem-{setup.loop}"
    try:
        worker = procs.worker(setup.url, service, setup.loop, "--concurrency", str(inflight))
        wait_until(lambda: live_workers(setup.url, service) >= 1, timeout=30, what="worker")
        edge, edge_url = procs.edge(setup.url, service, setup.loop)
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(edge_url + "ws")
            await ws.send_bytes(orjson.dumps({"jsonrpc": "2.0", "method": "echo", "id": 0}))
            await ws.receive(timeout=30)
            await asyncio.sleep(0.3)
            edge0, worker0 = rss_kib(edge.pid), rss_kib(worker.pid)
            for i in range(inflight):
                params = {"seconds": 3.0}
                await ws.send_bytes(
                    orjson.dumps({"jsonrpc": "2.0", "method": "sleep", "params": params, "id": i})
                )
            await asyncio.sleep(1.5)  # every request read and running (they sleep 3 s)
            edge1, worker1 = rss_kib(edge.pid), rss_kib(worker.pid)
            answered = 0
            while answered < inflight:
                await ws.receive(timeout=30)
                answered += 1
            await ws.close()
    finally:
        procs.stop()
    table.memory.append(
        (
            "per request in flight (1,000 sleeping handlers over one WebSocket)",
            f"spark-edge {(edge1 - edge0) / inflight:.2f} KiB, "
            f"spark-worker {(worker1 - worker0) / inflight:.2f} KiB",
        )
    )


# -- the run ------------------------------------------------------------------------------


def runner_for(loop: str) -> asyncio.Runner:
    if loop == "uvloop":
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


def machine() -> str:
    load1 = os.getloadavg()[0]
    return (
        f"{os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, load average {load1:.1f} at the start"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=3000, help="calls per throughput figure")
    p.add_argument("--sequential", type=int, default=300, help="calls per latency figure")
    p.add_argument("--loops", default=None, help="asyncio,uvloop (default: what is installed)")
    p.add_argument("--quick", action="store_true", help="1 round, fewer calls, no curves")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--raw-worker", nargs=2, metavar=("URL", "STREAM"), help=argparse.SUPPRESS)
    p.add_argument("--loop", default="asyncio", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.raw_worker:
        if args.loop == "uvloop":
            import uvloop

            uvloop.install()
        raw_worker(*args.raw_worker)
        return 0
    if args.quick:
        args.rounds, args.calls, args.sequential = 1, 1000, 100
    loops = (args.loops or "asyncio,uvloop").split(",")
    if importlib.util.find_spec("uvloop") is None:
        if args.loops and "uvloop" in loops:
            raise SystemExit("uvloop is not installed: pip install -e '.[speed]'")
        loops = [lp for lp in loops if lp != "uvloop"]

    os.environ.setdefault("SPARK_LOG_LEVEL", "WARNING")
    os.environ.pop("SPARK_REDIS_URL", None)  # start_server() must see no broker URL
    started = time.perf_counter()
    header = (
        f"# Benchmarks\n\n`make bench` ({machine()}); median of {args.rounds} round(s); "
        f"{args.calls} calls per throughput figure at {INFLIGHT} in flight unless said, "
        f"{args.sequential} sequential calls per latency figure; every ratio against the "
        "reference row measured in the same round (latency: taking turns with it, call by "
        "call; its p50 then in brackets). CPU µs/call: user + system time per call "
        "during the loaded run, of the serving processes (the edge row: spark-edge + "
        "spark-worker + redis-server; the redis rows: their worker + redis-server) and of the "
        "benchmark's own client process. On 2 shared cores throughput follows the sum of "
        "both, which is what the ratios compare."
    )
    table = Table()
    redis = RedisServer().start()
    procs = Processes()
    runners: dict[str, asyncio.Runner] = {}
    setups: dict[str, Setup] = {}
    try:
        for loop in loops:
            setups[loop] = Setup(procs, redis.url, loop, args, redis.pid)
            setups[loop].start_servers()
        extra = {}
        if not args.quick:
            for n in (2, 4):
                service = f"bench-{loops[0]}-x{n}"
                procs.worker(redis.url, service, loops[0], "--processes", str(n))
                extra[n] = service
            for service in extra.values():
                wait_until(lambda s=service: live_workers(redis.url, s) >= 1, 60, what=service)
        for loop in loops:
            runners[loop] = runner_for(loop)
        for i in range(args.rounds):
            print(f"round {i + 1}/{args.rounds} ...", flush=True)
            for loop in loops:
                runners[loop].run(setups[loop].round(table))
            if not args.quick:
                runners[loops[0]].run(curves(setups[loops[0]], table, extra, args))
        if not args.quick:
            try:
                runners[loops[0]].run(memory(setups[loops[0]], table))
            except Exception as exc:  # the throughput table is worth printing regardless
                table.memory.append(("memory figures", f"failed: {type(exc).__name__}: {exc}"))
    finally:
        for runner in runners.values():
            runner.close()
        procs.stop()
        redis.cleanup()
    text = table.render(header)
    text += f"\n({time.perf_counter() - started:.0f} s)\n"
    print("\n" + text)
    if not args.no_write and not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        print(f"written to {RESULTS.relative_to(HERE.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
