"""Every Redis key and channel name, in one place.

All keys of one service share the hash tag `{svc}`, so a service's commands (and its Lua)
stay on one Redis Cluster slot while services spread across shards. Reply keys are tagged
by client id for the same reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "spark"
#: The consumer group every worker of a service joins.
GROUP = "workers"
#: Set of service names that ever had a worker (for `spark status` and the edge's /health).
SERVICES = f"{PREFIX}:services"
#: Pattern matching every notification channel (the edge subscribes once to all of them).
NOTIFY_PATTERN = f"{PREFIX}:notify:*"

_WORDS = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def check_name(kind: str, name: str) -> str:
    """Service names and client ids end up in keys and URLs: keep them to a safe alphabet."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid {kind} {name!r}: use 1-64 characters from A-Z a-z 0-9 _ . - "
            "starting with a letter or digit"
        )
    return name


def default_service_name(class_name: str) -> str:
    """The service name a node class gets when none is given.

    Rule: the class name without a trailing `RpcNode`, `Node` or `Service`, split at case
    changes, lower-cased and joined with `-`: `CustomerRpcNode` -> `customer`,
    `DataProcessingRpcNode` -> `data-processing`, `MLInferenceRpcNode` -> `ml-inference`.
    """
    name = class_name
    for suffix in ("RpcNode", "Node", "Service"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    name = _WORDS.sub("-", name).replace("_", "-").lower()
    name = re.sub(r"[^a-z0-9.\-]+", "-", name)
    return re.sub(r"-{2,}", "-", name).strip("-.")[:64].rstrip("-.") or "service"


@dataclass(frozen=True, slots=True)
class ServiceKeys:
    service: str
    requests: str
    dead: str
    workers: str
    worker_info: str
    notify: str
    cancel: str
    #: WebSocket clients of the service connecting and disconnecting at an edge (pub/sub).
    sockets: str
    #: Bytes of envelopes in the request stream (enqueue adds, finish subtracts).
    backlog_bytes: str

    @classmethod
    def for_service(cls, service: str) -> ServiceKeys:
        check_name("service name", service)
        base = f"{PREFIX}:{{{service}}}"
        return cls(
            service=service,
            requests=f"{base}:requests",
            dead=f"{base}:dead",
            workers=f"{base}:workers",
            worker_info=f"{base}:worker-info",
            notify=f"{PREFIX}:notify:{{{service}}}",
            cancel=f"{base}:cancel",
            sockets=f"{base}:sockets",
            backlog_bytes=f"{base}:backlog-bytes",
        )

    def result(self, idempotency_key: str) -> str:
        return f"{PREFIX}:{{{self.service}}}:result:{idempotency_key}"


#: Matches every service's request stream (SCAN, to find services on every shard).
REQUESTS_PATTERN = f"{PREFIX}:{{*}}:requests"


def service_of(requests_key: str) -> str | None:
    """The service a request stream key belongs to (None for any other key)."""
    head, tail = f"{PREFIX}:{{", "}:requests"
    if not (requests_key.startswith(head) and requests_key.endswith(tail)):
        return None
    name = requests_key[len(head) : -len(tail)]
    try:
        return check_name("service name", name)
    except ValueError:
        return None


def reply_key(client_id: str) -> str:
    return f"{PREFIX}:reply:{{{client_id}}}"


def client_channel(client_id: str) -> str:
    """Notifications for one client (a client process or one WebSocket connection)."""
    return f"{PREFIX}:notify:client:{client_id}"


def state_key(namespace: str) -> str:
    return f"{PREFIX}:state:{{{namespace}}}"


def state_lock_key(namespace: str) -> str:
    """The transaction lock of a GraphState namespace (same hash tag as its hash)."""
    return f"{state_key(namespace)}:lock"
