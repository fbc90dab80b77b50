"""High-volume logging service: `spark-worker workers.logging_service:LoggingRpcNode`
(service `logging`).

`log(...)` appends the entry to an in-process buffer and answers `{"status": "queued"}`
at once; the buffer goes to Redis in one MULTI/EXEC of XADDs (the stream
`shop:{logging}:entries`) when it holds `buffer_size` entries, every `flush_interval`
seconds, on `flush`, and at shutdown. Settings: constructor arguments, else
`$WORKERS_LOG_BUFFER_SIZE` (default 1000) and `$WORKERS_LOG_FLUSH_INTERVAL` (seconds,
default 1.0).

Shutdown: `on_stop` (which the worker calls once it has drained, on SIGTERM or
`stop_server()`) flushes whatever is queued, so a stopped worker writes every entry it
answered "queued" for before it exits; the flusher task also flushes when it is cancelled.
A SIGKILL (or a machine loss) loses
at most one interval's worth of entries: the price of answering before the write.
A failed write keeps the entries buffered (in order) and retries; past `max_buffered`
entries `log` answers "overloaded" (retryable) instead of growing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from spark.errors import InvalidParamsError, OverloadedError
from workers.base import RedisRpcNode, dumps, env_float, env_int, loads

log = logging.getLogger("workers.logging")

MAX_ENTRY_BYTES = 64 * 1024
STREAM_MAXLEN = 1_000_000


class LogStore:
    """The seed's `self.db`: a Redis stream of log entries."""

    def __init__(self, node: LoggingRpcNode):
        self.node = node

    @property
    def stream(self) -> str:
        return self.node.key("entries")

    async def bulk_insert(self, entries: list[dict[str, Any]]) -> None:
        async with self.node.redis_client.pipeline(transaction=True) as pipe:
            for entry in entries:
                pipe.xadd(self.stream, {"entry": dumps(entry)}, maxlen=STREAM_MAXLEN)
            await pipe.execute()

    async def tail(self, count: int) -> list[dict[str, Any]]:
        rows = await self.node.redis_client.xrevrange(self.stream, count=count)
        return [{"id": rid.decode(), **loads(fields[b"entry"])} for rid, fields in reversed(rows)]

    async def count(self) -> int:
        return await self.node.redis_client.xlen(self.stream)


class LoggingRpcNode(RedisRpcNode):
    """High-throughput logging service."""

    def __init__(
        self,
        buffer_size: int | None = None,
        flush_interval: float | None = None,
        max_buffered: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.log_buffer: list[dict[str, Any]] = []
        self.buffer_size = buffer_size or env_int("WORKERS_LOG_BUFFER_SIZE", 1000)
        self.flush_interval = flush_interval or env_float("WORKERS_LOG_FLUSH_INTERVAL", 1.0)
        self.max_buffered = max_buffered or self.buffer_size * 100
        self.db = LogStore(self)
        self._flush_lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self._flusher: asyncio.Task | None = None

    async def rpc_log(self, params, context):
        """Log message (async, non-blocking): any object; `ts` is added when absent."""
        if not isinstance(params, dict):
            raise InvalidParamsError("a log entry must be an object")
        entry = params if "ts" in params else {**params, "ts": time.time()}
        if len(dumps(entry)) > MAX_ENTRY_BYTES:
            raise InvalidParamsError("log entry too large", data={"max_bytes": MAX_ENTRY_BYTES})
        if len(self.log_buffer) >= self.max_buffered:
            raise OverloadedError("log buffer full (Redis unreachable?)", data={"retry": True})
        self.log_buffer.append(entry)
        self._ensure_flusher()

        if len(self.log_buffer) >= self.buffer_size:
            await self._flush_logs()

        return {"status": "queued"}

    async def rpc_flush(self, params, context):
        """Write this replica's buffer now; how many entries were written."""
        return {"flushed": await self._flush_logs()}

    async def rpc_tail(self, params, context):
        """The last `count` (default 20, at most 1000) stored entries, oldest first."""
        count = params.get("count", 20) if isinstance(params, dict) else 20
        if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= 1000:
            raise InvalidParamsError("count must be an integer in [1, 1000]")
        return await self.db.tail(count)

    async def rpc_stats(self, params, context):
        """Entries stored in Redis, and entries buffered in this replica."""
        return {"stored": await self.db.count(), "buffered": len(self.log_buffer)}

    # -- buffer --------------------------------------------------------------------------

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._flush_lock is None or self._lock_loop is not loop:
            self._flush_lock, self._lock_loop = asyncio.Lock(), loop
        return self._flush_lock

    async def _flush_logs(self) -> int:
        """Batch write logs; on failure the entries go back to the front of the buffer."""
        async with self._lock():
            batch, self.log_buffer = self.log_buffer, []
            if not batch:
                return 0
            try:
                await self.db.bulk_insert(batch)
            except BaseException:
                self.log_buffer[:0] = batch
                raise
            return len(batch)

    def _ensure_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop(), name="workers-log-flusher")

    async def _flush_loop(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.flush_interval)
                try:
                    await self._flush_logs()
                except Exception as exc:
                    log.warning("writing %d log entries failed: %s", len(self.log_buffer), exc)
        finally:
            # Cancelled: by on_stop()/aclose(), or by asyncio.run at exit.
            await self._final_flush()

    async def _final_flush(self) -> None:
        deadline = time.monotonic() + env_float("WORKERS_LOG_FINAL_FLUSH_SECONDS", 10.0)
        while self.log_buffer:
            try:
                written = await self._flush_logs()
                log.info("flushed %d log entries at shutdown (pid %d)", written, os.getpid())
            except Exception as exc:
                if time.monotonic() >= deadline:
                    log.error("lost %d log entries at shutdown: %s", len(self.log_buffer), exc)
                    return
                await asyncio.sleep(0.2)

    async def aclose(self) -> None:
        """Flush what is queued and stop the flusher (on_stop calls this)."""
        flusher, self._flusher = self._flusher, None
        if flusher is not None and not flusher.done():
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        await self._final_flush()
        await super().aclose()
