"""What an edge is configured with (the `spark-edge` flags, or `RpcNode.start_server`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from spark.broker.queue import DEFAULT_MAX_BACKLOG, DEFAULT_MAX_BACKLOG_BYTES

MIB = 1024 * 1024


@dataclass(slots=True)
class EdgeConfig:
    #: Broker URL; None means `$SPARK_REDIS_URL`, then the embedded broker.
    redis_url: str | None = None
    host: str = "127.0.0.1"
    #: 0 picks a free port (read it back from `EdgeServer.port`).
    port: int = 8000
    #: Service answered on `POST /` and `GET /ws`; None makes those routes 404.
    default_service: str | None = None
    #: Bearer tokens accepted; empty means no authentication.
    auth_tokens: list[str] = field(default_factory=list)
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    #: CA bundle for client certificates: when set, clients must present a valid one (mTLS).
    ssl_ca_certs: str | None = None
    #: Largest HTTP body and WebSocket message, in bytes.
    max_body_bytes: int = MIB
    #: Largest JSON-RPC batch (items).
    max_batch: int = 100
    #: Requests a service's stream may hold before new ones are answered -32002 overloaded.
    max_backlog: int = DEFAULT_MAX_BACKLOG
    #: Bytes of requests a service's stream may hold before new ones are answered -32002.
    max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES
    #: Default (and largest) seconds a request may take; `X-Spark-Timeout` may shorten it.
    request_timeout: float = 30.0
    #: Seconds between WebSocket pings; a client that misses a pong is disconnected.
    ws_heartbeat: float = 20.0
    #: Requests in flight per WebSocket connection; more are answered with -32002.
    ws_max_inflight: int = 1000
    #: Bytes of requests (notifications included) in flight per WebSocket connection.
    ws_max_inflight_bytes: int = 16 * MIB
    #: Seconds a connection may go without a complete request: headers sent slowly (or
    #: never), an idle keep-alive connection. Then it is closed.
    idle_timeout: float = 15.0
    #: Notifications queued for one slow WebSocket client before new ones are dropped.
    ws_max_queued: int = 1000
    #: Messages (answers and notifications) queued unread for one WebSocket client; a client
    #: that lets more pile up is disconnected with 1013 (try again later), its queued
    #: messages discarded and its requests in flight cancelled.
    ws_max_outbox: int = 1000
    #: Seconds `stop()` waits for requests in flight before closing their connections.
    shutdown_timeout: float = 10.0
    #: Whether `/metrics` needs a token too when tokens are configured (`/health` never does).
    protect_metrics: bool = True

    @property
    def tls(self) -> bool:
        return bool(self.ssl_certfile)

    def check(self) -> EdgeConfig:
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("--ssl-certfile and --ssl-keyfile go together")
        if self.ssl_ca_certs and not self.ssl_certfile:
            raise ValueError("--ssl-ca-certs (mutual TLS) needs --ssl-certfile and --ssl-keyfile")
        limits = (
            self.max_body_bytes,
            self.max_batch,
            self.request_timeout,
            self.max_backlog,
            self.max_backlog_bytes,
            self.ws_max_inflight,
            self.ws_max_inflight_bytes,
            self.idle_timeout,
            self.ws_max_queued,
            self.ws_max_outbox,
        )
        if any(not limit > 0 for limit in limits):
            raise ValueError("limits and timeouts must be positive")
        if any(not t for t in self.auth_tokens):
            raise ValueError("an auth token cannot be empty")
        return self
