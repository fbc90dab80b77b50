"""What observability costs: calls/s through Redis to one spark-worker process with tracing
off, with the OpenTelemetry API only, with the SDK recording every span or a 10% sample, and
with the worker's Prometheus metrics served and scraped every second.

Each configuration runs in fresh processes (a client process and a worker process; tracing is
decided when spark.tracing is imported), three rounds interleaved, median reported. Targets
(issue 14): tracing off costs <= 2% (nothing is imported: the hooks are one flag test each),
tracing on <= 15%, metrics <= 5%; ratios are against "off" measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
sys.path.insert(0, str(TESTS))

from support.redis_server import RedisServer, free_port, wait_until  # noqa: E402

CONFIGS = {
    # name: (environment, worker arguments, scrape metrics)
    "off": ({"SPARK_TRACING": "off"}, [], False),
    "otel api only": ({}, [], False),
    "otel sdk, all recorded": ({"SPARK_BENCH_SDK": "1"}, [], False),
    "otel sdk, 10% sampled": ({"SPARK_BENCH_SDK": "0.1"}, [], False),
    "metrics (scraped 1/s)": ({"SPARK_TRACING": "off"}, ["--metrics-port"], True),
}


# -- run inside the worker and client processes -----------------------------------------------


def _install_sdk() -> None:
    """The SDK with a batching processor and an exporter that drops spans (what recording
    costs, without an exporter's network I/O)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    class Drop(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    ratio = float(os.environ.get("SPARK_BENCH_SDK") or 1)
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
    # A queue large enough that no span is dropped (dropping logs a warning per span).
    provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=100_000))
    trace.set_tracer_provider(provider)


def echo_node():
    """spark-worker target: the SDK first when asked, then a node that echoes."""
    from spark.nodes.rpc import RpcNode

    if os.environ.get("SPARK_BENCH_SDK"):
        _install_sdk()

    class EchoRpcNode(RpcNode):
        async def rpc_echo(self, params, context):
            return params

    return EchoRpcNode()


async def _client(url: str, service: str, calls: int, in_flight: int) -> float:
    from spark.client.broker_client import BrokerClient

    if os.environ.get("SPARK_BENCH_SDK"):
        _install_sdk()
    async with BrokerClient(url) as client:
        sem = asyncio.Semaphore(in_flight)

        async def one(i: int) -> None:
            async with sem:
                await client.call(service, "echo", {"i": i}, timeout=60)

        await asyncio.gather(*(one(i) for i in range(500)))  # warm up
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(calls)))
        return calls / (time.perf_counter() - started)


def _micro() -> float:
    """Microseconds observability adds to one call, client and worker side together: the
    client's span and context injection, the worker's span, counting and code check."""
    from spark import tracing
    from spark.broker import Envelope
    from spark.context import CallInfo
    from spark.runtime.observe import WorkerObserver

    if os.environ.get("SPARK_BENCH_SDK"):
        _install_sdk()
    observer = WorkerObserver("svc", "worker")
    call = CallInfo(request_id="1", service="svc", method="echo")
    answer = (b'{"id":"1","result":{"i":1}}', True)

    async def invoke():
        return answer

    async def one() -> None:
        span, trace = tracing.start_client("svc", "echo", "1") if tracing.ENABLED else (None, None)
        env = Envelope(id="1", method="echo", trace=trace)
        await observer.run(env, call, invoke())
        if span is not None:
            tracing.end_client(span, None)

    async def bare() -> None:
        Envelope(id="1", method="echo")
        await invoke()

    async def timed(f, n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            await f()
        return time.perf_counter() - started

    async def main() -> float:
        n = 20000
        await timed(one, 1000)
        return (await timed(one, n) - await timed(bare, n)) / n * 1e6

    return asyncio.run(main())


# -- the orchestrator ---------------------------------------------------------------------------


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_TRACING", "SPARK_BENCH_SDK")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(TESTS), env.get("PYTHONPATH", "")])
    env["SPARK_LOG_LEVEL"] = "WARNING"
    return {**env, **extra}


def _live(url: str, service: str) -> bool:
    import redis

    r = redis.Redis.from_url(url)
    try:
        return r.zcount(f"spark:{{{service}}}:workers", time.time(), "+inf") > 0
    finally:
        r.close()


def _scrape_forever(port: int, stop: float) -> subprocess.Popen:
    code = (
        "import time, urllib.request\n"
        f"while time.time() < {stop}:\n"
        "    try:\n"
        f"        urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=2).read()\n"
        "    except OSError:\n"
        "        pass\n"
        "    time.sleep(1)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code])


def measure(url: str, name: str, calls: int, in_flight: int, concurrency: int) -> float:
    extra, worker_args, scrape = CONFIGS[name]
    service = "bench-" + "".join(c if c.isalnum() else "-" for c in name).strip("-")[:40]
    args = list(worker_args)
    port = None
    if "--metrics-port" in args:
        port = free_port()
        args[args.index("--metrics-port") :] = ["--metrics-port", str(port)]
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "spark.cli.worker", "bench_observability:echo_node"),
            *("--redis", url, "--service", service, "--concurrency", str(concurrency), *args),
        ],
        env=_env(extra),
    )
    scraper = None
    try:
        wait_until(lambda: _live(url, service), timeout=30, what=f"worker for {name}")
        if scrape:
            scraper = _scrape_forever(port, time.time() + 600)
        out = subprocess.run(
            [
                *(sys.executable, __file__, "--client", url, "--service", service),
                *("-n", str(calls), "--in-flight", str(in_flight)),
            ],
            env=_env(extra),
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        return float(out.stdout.strip().splitlines()[-1])
    finally:
        if scraper is not None:
            scraper.kill()
            scraper.wait()
        worker.terminate()
        worker.wait(timeout=60)


def micro(name: str) -> float:
    extra, _args, _scrape = CONFIGS[name]
    out = subprocess.run(
        [sys.executable, __file__, "--micro"],
        env=_env(extra),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return float(out.stdout.strip().splitlines()[-1])


def run(url: str, calls: int, in_flight: int, concurrency: int, rounds: int) -> None:
    added = {name: micro(name) for name in CONFIGS if not CONFIGS[name][2]}
    results: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(rounds):
        for name in CONFIGS:
            results[name].append(measure(url, name, calls, in_flight, concurrency))
    base = statistics.median(results["off"])
    print(
        f"observability overhead: {calls} calls, {in_flight} in flight, median of {rounds} rounds"
    )
    print(f"  {'':26}{'calls/s':>10}{'vs off':>9}{'us/call':>9}   rounds")
    for name, rates in results.items():
        rate = statistics.median(rates)
        cost = 1 - rate / base
        rounds_text = " ".join(f"{r:.0f}" for r in rates)
        us = f"{added[name]:.1f}" if name in added else "-"
        print(f"  {name:26}{rate:>10.0f}{-cost * 100:>+8.1f}%{us:>9}   {rounds_text}")
    print(
        "  us/call: CPU time observability adds to one call (client + worker side), measured\n"
        f"  alone; one call costs about {1e6 / base:.0f} us of wall time at the 'off' rate.\n"
        "  Targets: off <= 2%, tracing on <= 15%, metrics <= 5%."
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--redis", help="use this Redis instead of starting one")
    p.add_argument("-n", type=int, default=5000)
    p.add_argument("--in-flight", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=64, help="worker handler slots")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    p.add_argument("--service", help=argparse.SUPPRESS)
    p.add_argument("--micro", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.micro:
        print(f"{_micro():.3f}")
        return 0
    if args.client:
        rate = asyncio.run(_client(args.client, args.service, args.n, args.in_flight))
        print(f"{rate:.1f}")
        return 0
    server = None if args.redis else RedisServer().start()
    try:
        run(args.redis or server.url, args.n, args.in_flight, args.concurrency, args.rounds)
    finally:
        if server:
            server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
