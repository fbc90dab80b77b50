"""`spark-worker TARGET`: serve a node's methods from its service's Redis stream.

TARGET is `module:Class` (an RpcNode or a plain Node, instantiated without arguments) or
`module:factory`. The service name defaults to the class name without its `RpcNode` /
`Node` / `Service` suffix, in kebab case (`CustomerRpcNode` -> `customer`).

Health checks: with --health-dir (or $SPARK_HEALTH_DIR) every worker process records its
own worker id there while it runs, and `spark-worker --check` (no TARGET needed, nothing is
imported or built) passes only when every worker process recorded there has a fresh
heartbeat in Redis: a container's check tests its own workers, not its service's. Without
a health directory, --check passes when any worker of the service is live.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

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
HEALTH_DIR_ENV = "SPARK_HEALTH_DIR"


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="spark-worker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", nargs="?", help="module:Class or module:factory")
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
        help="exit 0 when this host's worker processes (see --health-dir) have fresh "
        "heartbeats, else 1 (2: broker unreachable)",
    )
    p.add_argument(
        "--health-dir",
        default=os.environ.get(HEALTH_DIR_ENV) or None,
        help=f"where each worker process records its worker id (default ${HEALTH_DIR_ENV})",
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def own_workers(health_dir: str, service: str | None = None) -> list[dict]:
    """The records of worker processes still running (a killed one leaves a stale file)."""
    found = []
    for path in sorted(Path(health_dir).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or not _pid_alive(int(record.get("pid", 0))):
            continue
        if service is None or record.get("service") == service:
            found.append(record)
    return found


async def _check(url: str, service: str | None, health_dir: str | None) -> int:
    redis = connect(url, max_connections=1)
    try:
        if health_dir is None:
            live = await registry.live_count(redis, ServiceKeys.for_service(service))
            print(f"{service}: {live} live worker(s)")
            return 0 if live > 0 else 1
        records = own_workers(health_dir, service)
        if not records:
            print(f"no running worker process recorded in {health_dir}")
            return 1
        stale = [
            r["worker"]
            for r in records
            if not await registry.is_live(redis, ServiceKeys.for_service(r["service"]), r["worker"])
        ]
    except Exception as exc:
        print(
            f"{service or 'worker'}: broker unreachable at {describe(url)}: {exc}", file=sys.stderr
        )
        return 2
    finally:
        await redis.aclose()
    if stale:
        print(f"no fresh heartbeat from {', '.join(stale)}")
        return 1
    print(f"{len(records)} worker process(es) live: {', '.join(r['worker'] for r in records)}")
    return 0


def write_record(health_dir: str, service: str, consumer: str) -> Path:
    """This process's worker id, for `--check` (removed when the process ends cleanly)."""
    Path(health_dir).mkdir(parents=True, exist_ok=True)
    record = Path(health_dir) / f"{os.getpid()}.json"
    record.write_text(json.dumps({"service": service, "worker": consumer, "pid": os.getpid()}))
    return record


async def _serve(target, args, url: str, consumer: str, metrics_port: int | None) -> None:
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
        consumer=consumer,
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
        if args.check and (args.health_dir or args.service):
            # Nothing imported or built: a health check must stay cheap.
            return run(_check(url, args.service, args.health_dir), args.loop)
        if args.target is None:
            parser().error("TARGET is required (except for --check with --service or --health-dir)")
        target = load_target(args.target)
        if args.expose_errors:
            target.expose_errors = True
        service = service_of(target, args.service)
    except UsageError as exc:
        return usage_exit("spark-worker", exc)
    if args.check:
        return run(_check(url, service, None), args.loop)
    if args.processes > 1:
        child = [sys.executable, "-m", "spark.cli.worker", *argv, "--processes", "1"]
        return run(_supervise(child, args), args.loop)
    consumer = WorkerConfig(service=service).consumer
    record = write_record(args.health_dir, service, consumer) if args.health_dir else None
    try:
        run(_serve(target, args, url, consumer, metrics_port), args.loop)
    except OSError as exc:
        # The only port a worker listens on is --metrics-port.
        message = listen_error(exc, args.metrics_host, metrics_port or 0)
        if message is None:
            raise
        return usage_exit("spark-worker", message)
    finally:
        if record is not None:
            record.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
