"""What the runtime knows about the request a handler is serving.

The worker sets `current_call` around each handler, so code running inside it (a proxy
calling another service, a notification, GraphState) can see the caller's deadline,
client id and state namespace without threading them through every signature.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CallInfo:
    request_id: str
    service: str
    method: str
    #: The calling client process or WebSocket connection (for targeted notifications).
    client_id: str | None = None
    #: Absolute deadline, seconds since the epoch (time.time()).
    deadline: float | None = None
    idempotency_key: str | None = None
    #: Namespace of the caller's Redis-backed GraphState, when it has one.
    state_namespace: str | None = None
    #: 1 on first delivery; higher when the entry was reclaimed from a dead worker.
    delivery: int = 1

    def remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return self.deadline - time.time()


current_call: ContextVar[CallInfo | None] = ContextVar("spark_current_call", default=None)


def inherited_deadline() -> float | None:
    """The deadline of the request being served in this task, if any."""
    call = current_call.get()
    return call.deadline if call is not None else None
