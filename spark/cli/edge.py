"""`spark-edge`: JSON-RPC 2.0 over HTTP and WebSocket for the services behind Redis.

Routes: POST /{service} (JSON-RPC over HTTP), GET /{service}/ws (JSON-RPC over WebSocket),
POST / and GET /ws for --default-service, GET /health (503 when Redis is unreachable),
GET /metrics (Prometheus text format).

Tokens: --auth-token (repeatable), --auth-token-file (one per line) or $SPARK_EDGE_TOKENS
(comma-separated); prefer the last two, command lines are visible to every local user.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from spark import logs
from spark.broker.connection import describe
from spark.cli.common import (
    REDIS_HELP,
    Parser,
    UsageError,
    add_loop_argument,
    broker_url,
    cli_redis_url,
    install_stop_signals,
    listen_error,
    log_level,
    positive,
    run,
    setup_logging,
    usage_exit,
)
from spark.logs import add_format_argument
from spark.runtime.edge import EdgeConfig, run_edge

_DEFAULTS = EdgeConfig()
TOKENS_ENV = "SPARK_EDGE_TOKENS"
PROG = "spark-edge"


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="spark-edge",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--redis", type=broker_url, help=REDIS_HELP)
    p.add_argument("--host", default=_DEFAULTS.host, help="address to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=_DEFAULTS.port, help="default %(default)s")
    p.add_argument("--default-service", help="service answered on POST / and GET /ws")
    p.add_argument(
        "--auth-token",
        action="append",
        default=[],
        metavar="TOKEN",
        help="accepted bearer token (repeatable); none means no authentication",
    )
    p.add_argument("--auth-token-file", help="file with one accepted token per line")
    p.add_argument("--ssl-certfile", help="server certificate (PEM); enables TLS")
    p.add_argument("--ssl-keyfile", help="server private key (PEM)")
    p.add_argument("--ssl-ca-certs", help="CA bundle for client certificates: enables mutual TLS")
    p.add_argument(
        "--max-body-bytes",
        type=positive(int),
        default=_DEFAULTS.max_body_bytes,
        help="largest HTTP body / WebSocket message (default %(default)s)",
    )
    p.add_argument(
        "--max-batch",
        type=positive(int),
        default=_DEFAULTS.max_batch,
        help="largest JSON-RPC batch (default %(default)s)",
    )
    p.add_argument(
        "--max-backlog",
        type=positive(int),
        default=_DEFAULTS.max_backlog,
        help="requests a service's stream may hold before -32002 overloaded (default %(default)s)",
    )
    p.add_argument(
        "--max-backlog-bytes",
        type=positive(int),
        default=_DEFAULTS.max_backlog_bytes,
        help="bytes of requests a service's stream may hold before -32002 overloaded; "
        "shared by every edge and client of the broker (default %(default)s)",
    )
    p.add_argument(
        "--request-timeout",
        type=positive(float),
        default=_DEFAULTS.request_timeout,
        help="default and largest seconds per request; X-Spark-Timeout may shorten it "
        "(default %(default)s)",
    )
    p.add_argument(
        "--ws-heartbeat",
        type=float,
        default=_DEFAULTS.ws_heartbeat,
        help="seconds between WebSocket pings (default %(default)s)",
    )
    p.add_argument(
        "--ws-max-inflight",
        type=positive(int),
        default=_DEFAULTS.ws_max_inflight,
        help="requests in flight per WebSocket connection (default %(default)s)",
    )
    p.add_argument(
        "--ws-max-inflight-bytes",
        type=positive(int),
        default=_DEFAULTS.ws_max_inflight_bytes,
        help="bytes of requests (notifications included) in flight per WebSocket connection; "
        "one request always fits (default %(default)s)",
    )
    p.add_argument(
        "--ws-max-queued",
        type=positive(int),
        default=_DEFAULTS.ws_max_queued,
        help="notifications queued for one slow WebSocket client before new ones are dropped "
        "(default %(default)s)",
    )
    p.add_argument(
        "--ws-max-outbox",
        type=positive(int),
        default=_DEFAULTS.ws_max_outbox,
        help="messages queued unread for one WebSocket client before it is disconnected "
        "with 1013 and its requests in flight cancelled (default %(default)s)",
    )
    p.add_argument(
        "--idle-timeout",
        type=positive(float),
        default=_DEFAULTS.idle_timeout,
        help="seconds a connection may go without a complete request (headers sent slowly or "
        "never, an idle keep-alive connection) before it is closed (default %(default)s)",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=_DEFAULTS.shutdown_timeout,
        help="seconds SIGTERM waits for requests in flight (default %(default)s)",
    )
    p.add_argument(
        "--public-metrics",
        action="store_true",
        help="serve /metrics without a token even when tokens are configured",
    )
    add_loop_argument(p)
    p.add_argument("--log-level", type=log_level, help="debug, info (default), warning, error")
    add_format_argument(p)
    return p


def tokens_from(args: argparse.Namespace) -> list[str]:
    tokens = list(args.auth_token)
    if args.auth_token_file:
        text = Path(args.auth_token_file).read_text()
        tokens += [line.strip() for line in text.splitlines() if line.strip()]
    env = os.environ.get(TOKENS_ENV, "")
    tokens += [t.strip() for t in env.split(",") if t.strip()]
    return tokens


def config_from(args: argparse.Namespace) -> EdgeConfig:
    return EdgeConfig(
        redis_url=cli_redis_url(args.redis),
        host=args.host,
        port=args.port,
        default_service=args.default_service,
        auth_tokens=tokens_from(args),
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        ssl_ca_certs=args.ssl_ca_certs,
        max_body_bytes=args.max_body_bytes,
        max_batch=args.max_batch,
        max_backlog=args.max_backlog,
        max_backlog_bytes=args.max_backlog_bytes,
        request_timeout=args.request_timeout,
        ws_heartbeat=args.ws_heartbeat,
        ws_max_inflight=args.ws_max_inflight,
        ws_max_inflight_bytes=args.ws_max_inflight_bytes,
        idle_timeout=args.idle_timeout,
        ws_max_queued=args.ws_max_queued,
        ws_max_outbox=args.ws_max_outbox,
        shutdown_timeout=args.shutdown_timeout,
        protect_metrics=not args.public_metrics,
    ).check()


async def _serve(config: EdgeConfig) -> None:
    stop = asyncio.Event()
    install_stop_signals(asyncio.get_running_loop(), stop.set)
    await run_edge(config, stop=stop)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        setup_logging(args.log_level, args.log_format)
        config = config_from(args)
    except (UsageError, ValueError, OSError) as exc:
        return usage_exit(PROG, exc)
    banner = (
        f"{PROG}: broker {describe(config.redis_url)}, "
        f"{'https' if config.tls else 'http'}://{config.host}:{config.port}"
    )
    if logs.resolve_format(args.log_format) == "json":
        # Every line on stderr is one JSON object then.
        logging.getLogger("spark.edge").info(banner)
    else:
        print(banner, file=sys.stderr)
    try:
        run(_serve(config), args.loop)
    except OSError as exc:
        message = listen_error(exc, config.host, config.port)
        if message is None:
            raise
        return usage_exit(PROG, message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
