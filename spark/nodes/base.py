"""`Node`, the unit of work of a graph, and the edges that wire nodes together.

Wiring is done on the nodes themselves (`a >> b`, `a >> [b, c]`, `a.on(status="ok") >> b`)
so that a `Graph` only needs a start node: it finds the rest by walking edges.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from spark.context import CallInfo
from spark.errors import InternalError, MethodNotFoundError, RpcError
from spark.nodes.types import ExecutionContext, NodeMessage

log = logging.getLogger("spark.nodes")

__all__ = ["Condition", "Edge", "EdgeBuilder", "EventPublisher", "Node"]


class EventPublisher(Protocol):
    """What a node needs from an event bus (spark.graphs.EventBus satisfies it).

    Declared here because nodes sit below graphs and must not import them.
    """

    async def publish(
        self, topic: str, payload: Any, metadata: Mapping[str, Any] | None = None
    ) -> int: ...


class Condition:
    """When a conditional edge is taken: every `key=value` matches and the predicate holds.

    Both are checked against the source node's output content; a `key=value` match
    requires that content to be a mapping.
    """

    __slots__ = ("match", "predicate")

    def __init__(
        self, predicate: Callable[[Any], Any] | None = None, match: Mapping[str, Any] | None = None
    ) -> None:
        if predicate is not None and not callable(predicate):
            raise TypeError(f"condition predicate must be callable, got {predicate!r}")
        if predicate is None and not match:
            raise ValueError("a condition needs a predicate or at least one key=value pair")
        self.predicate = predicate
        self.match = dict(match or {})

    def __call__(self, content: Any) -> bool:
        if self.match:
            if not isinstance(content, Mapping):
                return False
            for key, expected in self.match.items():
                if key not in content or content[key] != expected:
                    return False
        return self.predicate is None or bool(self.predicate(content))

    def __repr__(self) -> str:
        parts = [repr(self.predicate)] if self.predicate is not None else []
        parts += [f"{k}={v!r}" for k, v in self.match.items()]
        return f"Condition({', '.join(parts)})"


@dataclass(frozen=True, slots=True)
class Edge:
    source: Node
    target: Node
    condition: Condition | None = None

    def holds(self, content: Any) -> bool:
        return self.condition is None or self.condition(content)


def _targets(other: Any) -> list[Node] | None:
    """The nodes on the right of `>>`, or None when `other` is not something we wire to."""
    if isinstance(other, Node):
        return [other]
    if isinstance(other, list | tuple) and other and all(isinstance(n, Node) for n in other):
        return list(other)
    return None


class EdgeBuilder:
    """The left side of `node.on(...) >> target`."""

    __slots__ = ("condition", "source")

    def __init__(self, source: Node, condition: Condition) -> None:
        self.source = source
        self.condition = condition

    def __rshift__(self, other: Any) -> Any:
        targets = _targets(other)
        if targets is None:
            return NotImplemented
        for target in targets:
            self.source._add_edge(target, self.condition)
        return other


def _keyword_names(cls: type) -> list[str]:
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        names += [p.name for p in params if p.kind in kinds and p.name != "self"]
    return list(dict.fromkeys(names))


def _unexpected(cls: type, kwargs: Mapping[str, Any]) -> TypeError:
    name = next(iter(kwargs))
    close = difflib.get_close_matches(name, _keyword_names(cls), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return TypeError(f"{cls.__name__}() got an unexpected keyword argument {name!r}{hint}")


class Node:
    """A step of a graph. Subclasses override `process(context)` (async or plain `def`).

    `process` gets an `ExecutionContext` whose `inputs.content` is the previous node's output
    and returns the output for the next node(s): a dict, a `NodeMessage`, or None (the next
    node then gets `{}`).

    `__init__` is cooperative: subclasses take their own arguments and pass `**kwargs` on.
    A keyword no class of the hierarchy names raises `TypeError` naming the closest valid
    one (`RemoteRpcProxyNode(confg=...)` must not quietly become a default proxy).
    """

    def __init__(
        self,
        name: str | None = None,
        id: str | None = None,
        *,
        description: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.name: str = name or type(self).__name__
        self.id: str = id or uuid.uuid4().hex[:12]
        self.description: str | None = description
        if kwargs:
            raise _unexpected(type(self), kwargs)
        #: The graph that ran (or holds) this node last; set by the graph, None until then.
        self.graph: Any = None
        #: Set by the worker serving this node (notifications, state, the handler threads).
        self.runtime: Any = None
        self._event_bus: EventPublisher | None = None
        self._edges: list[Edge] = []

    # -- behaviour -------------------------------------------------------------

    async def process(self, context: ExecutionContext) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must override process(context)")

    async def invoke(self, context: ExecutionContext) -> Any:
        """Run `process` whether it is async or plain; this is what a graph calls.

        Users override `process`. Framework subclasses that dispatch elsewhere (e.g. to
        `rpc_<method>` handlers) may override this instead and leave `process` to the user.
        """
        result = self.process(context)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def handle_rpc(self, method: str, params: Any, call: CallInfo) -> Any:
        """Serve this node: its `process()` is the method `"process"` (RpcNode adds `rpc_*`)."""
        if method != "process":
            raise MethodNotFoundError(data={"method": method})
        context = ExecutionContext(
            inputs=NodeMessage(content=params if params is not None else {}),
            metadata={
                "rpc": {
                    "method": method,
                    "request_id": call.request_id,
                    "client_id": call.client_id,
                    "service": call.service,
                }
            },
            node_name=self.name,
        )
        run_sync = getattr(self.runtime, "run_sync", None)
        try:
            if run_sync is not None and not inspect.iscoroutinefunction(self.process):
                # A plain `def process` served by a worker: in its handler threads, so the
                # worker's loop (heartbeat, other requests) goes on meanwhile.
                out = await run_sync(self.process, context)
                if inspect.isawaitable(out):
                    out = await out
            else:
                out = await self.invoke(context)
        except RpcError:
            raise
        except Exception as exc:
            # The caller learns that it failed, not how: tracebacks stay in the server's log.
            log.exception("%s.process raised", self.name)
            data = {"method": method}
            if getattr(self, "expose_errors", False):  # set by `spark-worker --expose-errors`
                data.update(type=type(exc).__name__, message=str(exc))
            raise InternalError(data=data) from exc
        return out.content if isinstance(out, NodeMessage) else out

    # -- events ----------------------------------------------------------------

    @property
    def event_bus(self) -> EventPublisher | None:
        """The bus events go to: one set explicitly, else the attached graph's, else None."""
        if self._event_bus is not None:
            return self._event_bus
        return getattr(self.graph, "event_bus", None)

    @event_bus.setter
    def event_bus(self, bus: EventPublisher | None) -> None:
        self._event_bus = bus

    async def publish_event(
        self, topic: str, payload: Any, metadata: Mapping[str, Any] | None = None
    ) -> None:
        """Publish on the bus of the graph this node runs in; a no-op when there is none.

        The node's name and id are added to the metadata so subscribers know the source.
        """
        bus = self.event_bus
        if bus is None:
            return
        meta = {"node": self.name, "node_id": self.id, **(metadata or {})}
        await bus.publish(topic, payload, meta)

    # -- wiring ----------------------------------------------------------------

    @property
    def edges(self) -> tuple[Edge, ...]:
        return tuple(self._edges)

    @property
    def successors(self) -> list[Node]:
        """Every node an edge leads to, conditional or not, first-wired first, no repeats."""
        return list(dict.fromkeys(edge.target for edge in self._edges))

    def on(self, predicate: Callable[[Any], Any] | None = None, /, **match: Any) -> EdgeBuilder:
        """Start a conditional edge: `a.on(status="ok") >> b` or `a.on(lambda out: ...) >> b`."""
        return EdgeBuilder(self, Condition(predicate, match))

    def __rshift__(self, other: Any) -> Any:
        """`a >> b` wires an edge and returns `b`, so `a >> b >> c` is a chain."""
        targets = _targets(other)
        if targets is None:
            return NotImplemented
        for target in targets:
            self._add_edge(target, None)
        return other

    def __rrshift__(self, other: Any) -> Any:
        """`[a, b] >> c` wires each of `a` and `b` to `c`."""
        sources = _targets(other)
        if sources is None:
            return NotImplemented
        for source in sources:
            source._add_edge(self, None)
        return self

    def _add_edge(self, target: Node, condition: Condition | None) -> None:
        # Wiring the same plain edge twice is almost always a re-run setup script, not a wish
        # to run the target twice.
        if condition is None and any(
            e.target is target and e.condition is None for e in self._edges
        ):
            return
        self._edges.append(Edge(self, target, condition))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, id={self.id!r})"
