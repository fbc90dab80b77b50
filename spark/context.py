"""What the runtime knows about the request a handler is serving.

The worker sets `current_call` around each handler, so code running inside it (a proxy
calling another service, a notification, GraphState) can see the caller's deadline,
client id and state namespace without threading them through every signature.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


# Not frozen: one is built for every call a worker runs, and a frozen dataclass's __init__
# costs four times as much. Treat it as read-only all the same.
@dataclass(slots=True)
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
#: A deadline set by a local scope (`deadline_scope`, e.g. a TimeoutNode), outside any request.
_scope_deadline: ContextVar[float | None] = ContextVar("spark_scope_deadline", default=None)


def inherited_deadline() -> float | None:
    """The earliest deadline of the request being served and of any `deadline_scope`."""
    call = current_call.get()
    served = call.deadline if call is not None else None
    scoped = _scope_deadline.get()
    if served is None:
        return scoped
    return served if scoped is None else min(served, scoped)


@contextmanager
def deadline_scope(deadline: float | None) -> Iterator[float | None]:
    """Calls made inside (proxies, BrokerClient) finish by `deadline` (epoch seconds) too.

    Nested scopes only ever shorten the budget. Yields the deadline in force.
    """
    outer = inherited_deadline()
    if deadline is None or (outer is not None and outer <= deadline):
        yield outer
        return
    token = _scope_deadline.set(deadline)
    try:
        yield deadline
    finally:
        _scope_deadline.reset(token)
