"""What a worker records about each request it answers: stats, a span, a log line.

`WorkerObserver.run(env, call, invoke)` wraps one handler run: under a SERVER span
continuing the caller's trace (when tracing is on), then counts the answer in the worker's
CallStats and logs it on `spark.requests` (when that logger is on). Kept apart from the
worker so the worker's code says what happens to a request, and this module how it is seen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any

from spark import tracing
from spark.broker import Envelope
from spark.context import CallInfo
from spark.logs import REQUESTS
from spark.runtime.callstats import CallStats
from spark.runtime.metrics import code_of

request_log = logging.getLogger(REQUESTS)

#: (reply payload, whether a repeat may be answered with it): what Worker._invoke returns.
Answer = tuple[bytes, bool]


class WorkerObserver:
    def __init__(self, service: str, worker_id: str) -> None:
        self.service = service
        self.worker_id = worker_id
        self.stats = CallStats()

    async def run(self, env: Envelope, call: CallInfo, invoke: Awaitable[Answer]) -> Answer:
        started = time.perf_counter()
        if tracing.ENABLED and tracing.wanted(env.trace):
            with tracing.server_span(env.trace, self.service, env.method, env.id) as span:
                answer = await invoke
                code = code_of(answer[0])
                span.answered(code)
                self.answered(env, call, code, time.perf_counter() - started)
            return answer
        answer = await invoke
        self.answered(env, call, code_of(answer[0]), time.perf_counter() - started)
        return answer

    def answered(self, env: Envelope, call: CallInfo, code: str, seconds: float) -> None:
        self.stats.record(env.method, code, seconds)
        if call.delivery > 1:
            self.stats.retries += 1
        if request_log.isEnabledFor(logging.INFO):
            self._log(env, call, code, seconds)

    def _log(self, env: Envelope, call: CallInfo, code: str, seconds: float) -> None:
        fields: dict[str, Any] = {
            "service": self.service,
            "method": env.method,
            "request_id": env.id,
            "client_id": call.client_id,
            "worker": self.worker_id,
            "duration_ms": round(seconds * 1000, 3),
            "outcome": "ok" if code == "ok" else "error",
            "code": code,
            "delivery": call.delivery,
        }
        ids = tracing.current_ids()
        if ids is not None:
            fields["trace_id"] = ids[0]
        request_log.info(
            "%s.%s id=%s client=%s %s in %.1f ms",
            self.service,
            env.method,
            env.id,
            call.client_id,
            code,
            seconds * 1000,
            extra=fields,
        )
