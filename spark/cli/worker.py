"""`spark-worker TARGET`: serve a node's methods from its service's Redis stream.

TARGET is `module:Class` (an RpcNode or a plain Node, instantiated without arguments) or
`module:factory`. The service name defaults to the class name without its `RpcNode` /
`Node` / `Service` suffix, in kebab case (`CustomerRpcNode` -> `customer`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from spark.broker import connect, registry
from spark.broker.connection import describe
from spark.broker.keys import ServiceKeys
from spark.cli.common import (
    REDIS_HELP,
    Parser,
    UsageError,
    add_loop_argument,
    broker_url,
    cli_redis_url,
    install_stop_signals,
    listen_error,
    load_target,
    log_level,
    positive,
    run,
    service_name,
    setup_logging,
    usage_exit,
)
from spark.logs import add_format_argument
from spark.runtime.supervisor import INDEX_ENV, Supervisor
from spark.runtime.worker import WorkerConfig, run_worker, service_of

_DEFAULTS = WorkerConfig(service="-")
METRICS_PORT_ENV = "SPARK_METRICS_PORT"


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="spark-worker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", help="module:Class or module:factory")
    p.add_argument(
        "--service", type=service_name, help="service name (default: derived from the class name)"
    )
    p.add_argument("--redis", type=broker_url, help=REDIS_HELP)
    p.add_argument(
        "--concurrency",
        type=positive(int),
        default=_DEFAULTS.concurrency,
        help="handlers running at once per process (default %(default)s)",
    )
    p.add_argument(
        "--processes",
        type=positive(int),
        default=1,
        help="worker processes under one supervisor (default %(default)s)",
    )
    p.add_argument(
        "--reclaim-after",
        type=positive(float),
        default=_DEFAULTS.reclaim_after,
        help="seconds before a dead worker's requests are taken over (default %(default)s)",
    )
    p.add_argument(
        "--max-deliveries",
        type=positive(int),
        default=_DEFAULTS.max_deliveries,
        help="deliveries before a request is dead-lettered (default %(default)s)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=_DEFAULTS.grace,
        help="seconds SIGTERM waits for in-flight requests (default %(default)s)",
    )
    p.add_argument(
        "--heartbeat",
        type=positive(float),
        default=_DEFAULTS.heartbeat_interval,
        help="seconds between heartbeats (default %(default)s)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 0 when a live worker of the service has a fresh heartbeat, else 1",
    )
    p.add_argument(
        "--expose-errors",
        action="store_true",
        help="answer a handler's crash with its exception type and message in the error's "
        "data (default: only 'Internal error'; the traceback is in the log either way)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on PORT (default: $SPARK_METRICS_PORT, else off); "
        "with --processes N, process i serves on PORT+i",
    )
    p.add_argument(
        "--metrics-host", default="0.0.0.0", help="address for --metrics-port (default %(default)s)"
    )
    add_loop_argument(p)
    p.add_argument("--log-level", type=log_level, help="debug, info (default), warning, error")
    add_format_argument(p)
    return p


async def _check(url: str, service: str) -> int:
    redis = connect(url, max_connections=1)
    try:
        live = await registry.live_count(redis, ServiceKeys.for_service(service))
    except Exception as exc:
        print(f"{service}: broker unreachable at {describe(url)}: {exc}", file=sys.stderr)
        return 2
    finally:
        await redis.aclose()
    print(f"{service}: {live} live worker(s)")
    return 0 if live > 0 else 1


async def _serve(target, args, url: str, metrics_port: int | None) -> None:
    stop = asyncio.Event()
    install_stop_signals(asyncio.get_running_loop(), stop.set)
    await run_worker(
        target,
        service=args.service,
        url=url,
        stop=stop,
        concurrency=args.concurrency,
        reclaim_after=args.reclaim_after,
        max_deliveries=args.max_deliveries,
        grace=args.grace,
        heartbeat_interval=args.heartbeat,
        metrics_port=metrics_port,
        metrics_host=args.metrics_host,
    )


def _metrics_port(port: int | None) -> int | None:
    """--metrics-port (else $SPARK_METRICS_PORT), shifted by this process's slot under a
    supervisor."""
    if port is None and os.environ.get(METRICS_PORT_ENV):
        try:
            port = int(os.environ[METRICS_PORT_ENV])
        except ValueError:
            raise UsageError(f"${METRICS_PORT_ENV} must be a port number") from None
    if port is None or port == 0:
        return port
    return port + int(os.environ.get(INDEX_ENV) or 0)


async def _supervise(argv: list[str], args) -> int:
    sup = Supervisor(argv, args.processes, grace=args.grace)
    install_stop_signals(asyncio.get_running_loop(), sup.stop)
    return await sup.run()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    try:
        setup_logging(args.log_level, args.log_format)
        metrics_port = _metrics_port(args.metrics_port)
        url = cli_redis_url(args.redis)
        target = load_target(args.target)
        if args.expose_errors:
            target.expose_errors = True
        service = service_of(target, args.service)
    except UsageError as exc:
        return usage_exit("spark-worker", exc)
    if args.check:
        return run(_check(url, service), args.loop)
    if args.processes > 1:
        child = [sys.executable, "-m", "spark.cli.worker", *argv, "--processes", "1"]
        return run(_supervise(child, args), args.loop)
    try:
        run(_serve(target, args, url, metrics_port), args.loop)
    except OSError as exc:
        # The only port a worker listens on is --metrics-port.
        message = listen_error(exc, args.metrics_host, metrics_port or 0)
        if message is None:
            raise
        return usage_exit("spark-worker", message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
