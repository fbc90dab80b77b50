"""`spark`: the operator's command line.

  spark call SERVICE METHOD [PARAMS]    call a method (through Redis, or an edge with --edge)
  spark status [SERVICE...]             live workers, backlog, pending, dead letters, rate
  spark dlq list SERVICE                dead-lettered requests with their last error
  spark dlq replay SERVICE --id ID|--all   put dead letters back on the request stream
  spark dlq purge SERVICE               delete dead letters
  spark forget SERVICE [--purge]        remove a service that has no live workers
  spark dev TARGET...                   broker + workers + edge in one process

Exit codes: 0 done; 1 the service answered with a JSON-RPC error (printed as JSON on
stderr) or the operation was refused or left incomplete (a full backlog, unknown ids);
2 usage errors, or the broker or edge could not be reached; 141 stdout closed early
(`| head`; `status --watch` exits 0 then, as on Ctrl-C).

The broker is --redis, else the library's rule ($SPARK_REDIS_URL, else
redis://localhost:6379/0 if a Redis answers there, else the embedded broker), except for
`spark dev`, which uses its own embedded broker unless --redis is given.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import orjson
from redis.exceptions import RedisError

from spark.broker import UNREACHABLE, admin, connect, describe, registry
from spark.broker.queue import DEFAULT_MAX_BACKLOG
from spark.cli.common import (
    REDIS_HELP,
    Parser,
    UsageError,
    broker_url,
    cli_redis_url,
    install_stop_signals,
    listen_error,
    load_target,
    log_level,
    positive,
    service_name,
    setup_logging,
)
from spark.errors import RpcError, ServiceUnavailableError, TransportError
from spark.logs import add_format_argument
from spark.runtime.overview import service_overview

PROG = "spark"
#: Longest wait `spark status` spends measuring throughput by default.
DEFAULT_SAMPLE_SECONDS = 3.0


# -- output helpers ------------------------------------------------------------------------------


def dump_json(value: Any, *, indent: bool = True) -> str:
    option = orjson.OPT_INDENT_2 if indent else 0
    return orjson.dumps(value, option=option | orjson.OPT_NON_STR_KEYS).decode()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: set[int]) -> str:
    cells = [list(headers), *[["-" if v is None else str(v) for v in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


class Progress:
    """A counter line on stderr: rewritten in place on a terminal, a line a second otherwise."""

    def __init__(self, label: str, stream: TextIO | None = None, *, tty_only: bool = False):
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        #: Show nothing unless on a terminal (for waits whose outcome is printed anyway).
        self.silent = tty_only and not self.tty
        self._shown = 0.0
        self._text = ""

    def update(self, text: str, *, force: bool = False) -> None:
        self._text = text
        if self.silent:
            return
        now = time.monotonic()
        if not force and now - self._shown < (0.1 if self.tty else 1.0):
            return
        self._shown = now
        if self.tty:
            self.stream.write(f"\r\x1b[K{self.label}: {text}")
        else:
            self.stream.write(f"{self.label}: {text}\n")
        self.stream.flush()

    def count(self, done: int, total: int) -> None:
        self.update(f"{done}/{total}", force=done >= total)

    def done(self) -> None:
        if self.tty and self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def error_exit(err: RpcError) -> int:
    print(dump_json(err.to_dict(), indent=False), file=sys.stderr)
    return 1


def fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def when(at: float | None) -> str | None:
    if at is None:
        return None
    stamp = datetime.datetime.fromtimestamp(at).astimezone()
    return stamp.isoformat(timespec="seconds")


# -- parsing ------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = Parser(add_help=False)
    common.add_argument("--redis", type=broker_url, help=REDIS_HELP)

    c = sub.add_parser(
        "call",
        parents=[common],
        help="call SERVICE.METHOD and print the result as JSON",
        description="Call SERVICE.METHOD with PARAMS (a JSON object or array) and print the "
        "result as JSON. Through Redis by default (fails fast when no worker of the service "
        "is live), or through an edge with --edge.",
    )
    c.add_argument("service", type=service_name, metavar="SERVICE")
    c.add_argument("method", metavar="METHOD")
    c.add_argument("params", nargs="?", metavar="PARAMS", help="JSON object or array")
    c.add_argument("--edge", metavar="URL", help="call through an edge: http(s)://host:port")
    c.add_argument(
        "--timeout", type=positive(float), default=30.0, help="seconds (default %(default)s)"
    )
    c.add_argument("--notify", action="store_true", help="send as a notification (no answer)")
    c.add_argument("--idempotency-key", metavar="KEY")
    c.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="HTTP header for --edge (repeatable), e.g. 'Authorization: Bearer x'",
    )
    c.add_argument("--compact", action="store_true", help="print the result on one line")

    s = sub.add_parser(
        "status",
        parents=[common],
        help="per service: live workers, backlog, pending, dead letters, throughput",
        description="Per service (every service that ever had a worker, or those named): "
        "live workers, handlers in flight, backlog (requests not finished), pending "
        "(delivered to a worker, not finished), dead letters, and requests finished per "
        "second, measured from two worker heartbeats (up to --sample seconds).",
    )
    s.add_argument("services", nargs="*", type=service_name, metavar="SERVICE")
    s.add_argument(
        "--sample",
        type=float,
        default=DEFAULT_SAMPLE_SECONDS,
        help="longest wait measuring throughput; 0 skips it (default %(default)s)",
    )
    s.add_argument(
        "--watch",
        type=positive(float),
        nargs="?",
        const=2.0,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until interrupted",
    )
    s.add_argument("--json", action="store_true", help="JSON output")

    f = sub.add_parser(
        "forget",
        parents=[common],
        help="remove a dead service (no live workers) from status, /health and the dashboard",
        description="Remove a service that has no live workers: its name and its worker "
        "registry. A service whose streams still hold requests or dead letters is kept "
        "(exit 1) unless --purge, which deletes them too.",
    )
    f.add_argument("service", type=service_name, metavar="SERVICE")
    f.add_argument("--purge", action="store_true", help="delete its requests and dead letters")
    f.add_argument("--json", action="store_true", help="JSON summary")

    d = sub.add_parser("dlq", help="dead-lettered requests: list, replay, purge")
    dsub = d.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")

    dl = dsub.add_parser("list", parents=[common], help="list dead letters, oldest first")
    dl.add_argument("service", type=service_name, metavar="SERVICE")
    dl.add_argument("--count", type=positive(int), default=50, help="default %(default)s")
    dl.add_argument("--json", action="store_true", help="JSON output (full entries)")

    dr = dsub.add_parser(
        "replay",
        parents=[common],
        help="put dead letters back on the request stream",
        description="Put dead-lettered requests back on the service's request stream and "
        "remove them from the dead-letter stream. The original callers stopped waiting long "
        "ago: replayed requests run as notifications (no reply is sent) with a fresh "
        "deadline; id, params, idempotency key and state namespace are kept. Stops when "
        "the service's backlog is full (exit 1); what was not replayed stays dead-lettered.",
    )
    dr.add_argument("service", type=service_name, metavar="SERVICE")
    which = dr.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", action="append", dest="ids", metavar="ID", help="repeatable")
    which.add_argument("--all", action="store_true", help="every dead letter of the service")
    dr.add_argument(
        "--timeout",
        type=positive(float),
        default=admin.DEFAULT_REPLAY_TIMEOUT,
        help="seconds each replayed request has to run (default %(default)s)",
    )
    dr.add_argument(
        "--max-backlog",
        type=positive(int),
        default=DEFAULT_MAX_BACKLOG,
        help="stop once the request stream holds this many (default %(default)s)",
    )
    dr.add_argument("--json", action="store_true", help="JSON summary")

    dp = dsub.add_parser("purge", parents=[common], help="delete dead letters")
    dp.add_argument("service", type=service_name, metavar="SERVICE")
    dp.add_argument("--id", action="append", dest="ids", metavar="ID", help="only these")
    dp.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    dp.add_argument("--json", action="store_true", help="JSON summary")

    v = sub.add_parser(
        "dev",
        help="broker + workers + edge in one process, for local development",
        description="Serve every TARGET (module:Class or module:factory) with an in-process "
        "worker, behind one edge whose default service is the first target's, on the "
        "embedded broker (memory://, only reachable from this process) unless --redis is "
        "given ($SPARK_REDIS_URL is ignored here). Runs until SIGINT or SIGTERM.",
    )
    v.add_argument("targets", nargs="+", metavar="TARGET")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    v.add_argument("--port", type=int, default=8000, help="default %(default)s")
    v.add_argument(
        "--redis", type=broker_url, help="broker URL (default: the embedded memory:// broker)"
    )
    v.add_argument(
        "--concurrency", type=positive(int), default=16, help="per worker (default %(default)s)"
    )
    v.add_argument("--log-level", type=log_level, help="debug, info (default), warning, error")
    add_format_argument(v)
    return p


def parse_params(text: str | None) -> Any:
    if text is None:
        return None
    try:
        params = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"PARAMS is not valid JSON: {exc}") from None
    if not isinstance(params, dict | list):
        raise UsageError(
            f"PARAMS must be a JSON object or array, got {type(params).__name__}: {text}"
        )
    return params


def parse_headers(values: list[str]) -> dict[str, str]:
    headers = {}
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
            raise UsageError(f"--header must look like 'Name: value', got {value!r}")
        headers[name.strip()] = content.strip()
    return headers


# -- call ---------------------------------------------------------------------------------------


async def cmd_call(args: argparse.Namespace) -> int:
    params = parse_params(args.params)
    headers = parse_headers(args.header)
    if headers and not args.edge:
        raise UsageError("--header only applies with --edge")
    if args.edge:
        if args.redis:
            raise UsageError("give --edge or --redis, not both")
        result = await _call_edge(args, params, headers)
    else:
        result = await _call_redis(args, params)
    if not args.notify:
        print(dump_json(result, indent=not args.compact))
    return 0


async def _call_redis(args: argparse.Namespace, params: Any) -> Any:
    from spark.client.broker_client import BrokerClient

    async with BrokerClient(cli_redis_url(args.redis)) as client:
        if args.notify:
            # Same fail-fast rule as calls: a notification nobody serves is a typo, usually.
            try:
                live = await client.live_workers(args.service)
            except UNREACHABLE as exc:
                raise TransportError(
                    f"cannot reach the broker at {describe(client.url)}: {exc}"
                ) from exc
            if not live:
                raise ServiceUnavailableError(
                    f"service {args.service!r} has no live workers", data={"service": args.service}
                )
            await client.notify(
                args.service,
                args.method,
                params,
                timeout=args.timeout,
                idempotency_key=args.idempotency_key,
            )
            print(f"{PROG}: notification queued for {args.service}", file=sys.stderr)
            return None
        return await client.call(
            args.service,
            args.method,
            params,
            timeout=args.timeout,
            idempotency_key=args.idempotency_key,
            require_workers=True,
        )


async def _call_edge(args: argparse.Namespace, params: Any, headers: dict[str, str]) -> Any:
    from spark.client.http import HttpTransport, http_url

    try:
        http_url(args.edge, args.service)  # checked first: a failed constructor warns on __del__
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    transport = HttpTransport(args.edge, service=args.service, headers=headers)
    deadline = time.time() + args.timeout
    async with transport:
        if args.notify:
            if args.idempotency_key:
                raise UsageError("--idempotency-key with --notify needs the Redis transport")
            await transport.notify(args.method, params, deadline=deadline)
            print(f"{PROG}: notification sent to {transport.url}", file=sys.stderr)
            return None
        return await transport.call(
            args.method, params, deadline=deadline, idempotency_key=args.idempotency_key
        )


# -- status -------------------------------------------------------------------------------------


async def collect_status(
    redis, services: list[str], meter: admin.ThroughputMeter
) -> list[admin.ServiceStatus]:
    rows = []
    for service in services:
        st = await admin.service_status(redis, service)
        meter.observe(service, st.worker_info)
        st.rate = meter.rate(service) if st.workers else None
        rows.append(st)
    return rows


def _ms(value: float | None) -> str | None:
    if value is None:
        return None
    return f"{value:.2f}ms" if value < 10 else f"{value:.0f}ms"


def _age(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def status_docs(rows: list[admin.ServiceStatus]) -> list[dict[str, Any]]:
    """What `--json` prints: per service its figures, workers and methods."""
    return [service_overview(r) for r in rows]


def render_status(rows: list[admin.ServiceStatus], url: str) -> str:
    if not rows:
        return f"no services known at {describe(url)}"
    docs = status_docs(rows)
    body = [
        (
            d["service"],
            d["workers"],
            d["inflight"],
            d["backlog"],
            d["pending"],
            d["dead"],
            None if d["rate"] is None else f"{d['rate']:.1f}",
            None if d["error_rate"] is None else f"{d['error_rate'] * 100:.1f}%",
            _ms(d["p50_ms"]),
            _ms(d["p99_ms"]),
            _age(d["oldest_age"]),
        )
        for d in docs
    ]
    headers = (
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
    )
    parts = [table(headers, body, right=set(range(1, len(headers))))]
    for d in docs:
        if d["worker_list"]:
            workers = [
                (
                    w["id"],
                    w["pid"],
                    w["host"],
                    _age(w["uptime"]),
                    w["processed"],
                    w["failed"],
                    w["inflight"],
                    w["state"],
                )
                for w in d["worker_list"]
            ]
            heads = ("WORKER", "PID", "HOST", "UPTIME", "PROCESSED", "FAILED", "INFLIGHT", "STATE")
            parts.append(f"\n{d['service']}: workers\n" + table(heads, workers, {1, 3, 4, 5, 6}))
        methods = [m for m in d["methods"] if not m["method"].startswith("rpc.")]
        if methods:
            lines = [
                (m["method"], m["calls"], m["errors"], _ms(m["p50_ms"]), _ms(m["p99_ms"]))
                for m in methods
            ]
            heads = ("METHOD", "CALLS", "ERRORS", "P50", "P99")
            parts.append(f"\n{d['service']}: methods\n" + table(heads, lines, {1, 2, 3, 4}))
    return "\n".join(parts)


async def cmd_status(args: argparse.Namespace) -> int:
    url = cli_redis_url(args.redis)
    redis = connect(url, max_connections=4)
    meter = admin.ThroughputMeter()
    try:
        services = args.services or await registry.services(redis, scan=True)
        rows = await collect_status(redis, services, meter)
        if args.watch:
            return await _watch(args, redis, url, services, meter)
        if args.sample > 0 and any(r.workers for r in rows):
            rows = await _sample(redis, services, meter, rows, args.sample)
        if args.json:
            print(dump_json(status_docs(rows)))
        else:
            print(render_status(rows, url))
        return 0
    finally:
        await redis.aclose()


async def _sample(redis, services, meter, rows, seconds: float) -> list[admin.ServiceStatus]:
    """Poll until every live worker has reported twice (its rate is known), or `seconds`."""
    progress = Progress("measuring throughput", tty_only=True)
    started = time.monotonic()
    try:
        while True:
            if all(meter.known(r.service, r.worker_info) for r in rows):
                return rows
            elapsed = time.monotonic() - started
            if elapsed >= seconds:
                return rows
            progress.update(f"{elapsed:.1f}s of at most {seconds:g}s")
            await asyncio.sleep(min(0.2, seconds - elapsed))
            rows = await collect_status(redis, services, meter)
    finally:
        progress.done()


async def _watch(args, redis, url: str, services, meter) -> int:
    tty = sys.stdout.isatty()
    while True:
        rows = await collect_status(
            redis, args.services or await registry.services(redis, scan=True), meter
        )
        if args.json:
            print(dump_json(status_docs(rows), indent=False), flush=True)
        else:
            stamp = datetime.datetime.now().strftime("%H:%M:%S")
            text = f"{describe(url)}  {stamp}\n{render_status(rows, url)}"
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J")
            print(text + ("" if tty else "\n"), flush=True)
        await asyncio.sleep(args.watch)


# -- dlq ------------------------------------------------------------------------------------------


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


async def cmd_dlq(args: argparse.Namespace) -> int:
    url = cli_redis_url(args.redis)
    redis = connect(url, max_connections=4)
    try:
        if args.dlq_command == "list":
            return await _dlq_list(args, redis)
        if args.dlq_command == "replay":
            return await _dlq_replay(args, redis)
        return await _dlq_purge(args, redis)
    finally:
        await redis.aclose()


async def _dlq_list(args: argparse.Namespace, redis) -> int:
    if not await admin.is_known(redis, args.service):
        known = ", ".join(await registry.services(redis)) or "none"
        print(f"{PROG}: unknown service {args.service!r} (known: {known})", file=sys.stderr)
        return 1
    letters = await admin.dead_letters(redis, args.service, count=args.count)
    if args.json:
        print(dump_json([x.to_dict() for x in letters]))
        return 0
    total = await admin.dead_count(redis, args.service)
    if not letters:
        print(f"no dead letters for {args.service}")
        return 0
    width = max(shutil.get_terminal_size((120, 20)).columns - 80, 30)
    rows = [
        (
            x.id,
            x.method or "(malformed)",
            x.deliveries,
            when(x.at),
            _shorten(x.error_message, width),
        )
        for x in letters
    ]
    print(table(("ID", "METHOD", "DELIVERIES", "WHEN", "ERROR"), rows, right={2}))
    # The table shortens errors to fit; the last error of each, in full:
    print()
    for x in letters:
        full = x.error if isinstance(x.error, str) else dump_json(x.error, indent=False)
        print(f"{x.id}  {full}")
    if total > len(letters):
        print(f"({len(letters)} of {total}; --count for more)")
    return 0


async def _dlq_replay(args: argparse.Namespace, redis) -> int:
    replayer = admin.Replayer(
        redis, args.service, timeout=args.timeout, max_backlog=args.max_backlog
    )
    progress = Progress(f"replaying {args.service}")
    try:
        if args.all:
            report = await replayer.replay_all(progress.count)
        else:
            report = await replayer.replay_ids(args.ids, progress.count)
    finally:
        progress.done()
    if args.json:
        print(dump_json(report.to_dict()))
    else:
        print(
            f"replayed {len(report.replayed)} request(s) of {args.service} "
            f"(as notifications, deadline in {args.timeout:g}s)"
        )
    for i in report.missing:
        print(f"{PROG}: no dead letter {i} in {args.service}", file=sys.stderr)
    for i in report.malformed:
        print(f"{PROG}: {i} has a malformed envelope; left dead-lettered", file=sys.stderr)
    if report.backlog_full:
        print(
            f"{PROG}: the backlog of {args.service} is full ({args.max_backlog}); "
            f"stopped with {report.left} left dead-lettered",
            file=sys.stderr,
        )
    return 1 if report.backlog_full or report.missing else 0


async def _dlq_purge(args: argparse.Namespace, redis) -> int:
    count = len(args.ids) if args.ids else await admin.dead_count(redis, args.service)
    if not count:
        print(f"no dead letters for {args.service}")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("stdin is not a terminal: confirm with --yes")
        what = f"{count} dead letter(s)" if args.ids else f"all {count} dead letter(s)"
        print(f"delete {what} of {args.service}? [y/N] ", end="", file=sys.stderr, flush=True)
        answer = await asyncio.to_thread(sys.stdin.readline)
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted", file=sys.stderr)
            return 1
    deleted = await admin.purge(redis, args.service, args.ids)
    if args.json:
        print(dump_json({"deleted": deleted}))
    else:
        print(f"deleted {deleted} dead letter(s) of {args.service}")
    return 0


# -- forget ---------------------------------------------------------------------------------------


async def cmd_forget(args: argparse.Namespace) -> int:
    redis = connect(cli_redis_url(args.redis), max_connections=2)
    try:
        report = await admin.forget(redis, args.service, purge=args.purge)
    finally:
        await redis.aclose()
    if args.json:
        print(dump_json(report.to_dict()))
    if not report.known:
        print(f"{PROG}: unknown service {args.service!r}", file=sys.stderr)
        return 1
    if report.live:
        print(
            f"{PROG}: {args.service} has {report.live} live worker(s); stop them first",
            file=sys.stderr,
        )
        return 1
    if not report.forgotten:
        print(
            f"{PROG}: {args.service} still holds {report.backlog} request(s) and "
            f"{report.dead} dead letter(s); --purge deletes them with it",
            file=sys.stderr,
        )
        return 1
    if not args.json:
        extra = (
            f" (deleted {report.deleted_requests} request(s), {report.deleted_dead} dead letter(s))"
            if args.purge
            else ""
        )
        print(f"forgot {args.service}{extra}")
    return 0


# -- dev ------------------------------------------------------------------------------------------


def run_dev_command(args: argparse.Namespace) -> int:
    from spark.runtime.dev import DevServer, run_dev

    try:
        setup_logging(args.log_level, args.log_format)
        nodes = [load_target(t) for t in args.targets]
    except UsageError as exc:
        return fail(str(exc))

    def announce(server: DevServer) -> None:
        broker = describe(server.url)
        if server.url.startswith("memory:"):
            broker += " (embedded: only this process reaches it; --redis to share one)"
        lines = [f"spark dev: broker {broker}"]
        for url in server.urls().values():
            lines.append(f"  POST {url}    WS {url.replace('http', 'ws', 1)}/ws")
        lines.append(f"  POST {server.endpoint}/    (default service: {server.services[0]})")
        lines.append(f"  dashboard {server.endpoint}/dashboard")
        lines.append("Ctrl-C to stop")
        print("\n".join(lines), flush=True)

    async def serve() -> None:
        stop = asyncio.Event()
        install_stop_signals(asyncio.get_running_loop(), stop.set)
        await run_dev(
            nodes,
            stop=stop,
            on_ready=announce,
            url=args.redis,
            host=args.host,
            port=args.port,
            worker_options={"concurrency": args.concurrency},
        )

    try:
        asyncio.run(serve())
    except OSError as exc:
        return fail(listen_error(exc, args.host, args.port) or str(exc))
    except ValueError as exc:
        return fail(str(exc))
    print("spark dev: stopped", file=sys.stderr)
    return 0


# -- entry points -------------------------------------------------------------------------------


async def execute(args: argparse.Namespace) -> int:
    """Run a parsed command other than `dev`; returns the exit code."""
    try:
        if args.command == "call":
            return await cmd_call(args)
        if args.command == "status":
            return await cmd_status(args)
        if args.command == "forget":
            return await cmd_forget(args)
        return await cmd_dlq(args)
    except BrokenPipeError:
        raise  # our stdout, not the broker: `main` ends quietly
    except UsageError as exc:
        return fail(str(exc))
    except RpcError as exc:
        return error_exit(exc)
    except TransportError as exc:
        return fail(str(exc))
    except UNREACHABLE as exc:
        url = getattr(args, "redis", None)
        return fail(f"cannot reach the broker at {describe(cli_redis_url(url))}: {exc}")
    except RedisError as exc:
        return fail(f"broker error: {exc}")


async def amain(argv: Sequence[str]) -> int:
    """`main` for code already inside an event loop (tests); not for `dev`."""
    args = parser().parse_args(list(argv))
    if args.command == "dev":
        raise UsageError("use main() for spark dev")
    return await execute(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    # Ctrl-C, or the reader of stdout going away (`| head`), is how `status --watch` ends.
    watching = args.command == "status" and bool(args.watch)
    try:
        if args.command == "dev":
            return run_dev_command(args)
        return asyncio.run(execute(args))
    except KeyboardInterrupt:
        return 0 if watching else 130
    except BrokenPipeError:
        # Quietly: point stdout at /dev/null so the flush at exit does not report it again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0 if watching else 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
