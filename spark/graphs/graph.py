"""`Graph`: runs nodes along their edges, starting from one node.

Execution semantics (the contract users rely on):

- Each node's return value becomes a `NodeMessage` (`NodeMessage.coerce`): a message is
  kept, None becomes `{}`, anything else becomes the content. Successors get it as
  `context.inputs`.
- After a node finishes, every edge whose condition holds on its output content is taken
  (plain edges always hold); several targets run concurrently. A target reached by several
  edges of one firing runs once.
- No implicit join: a node reached from several branches runs once per arrival.
- A node execution that takes no edge is a *leaf*. `run()` returns the leaf's message when
  one node ended the run (a chain, or a condition that stopped early); when several did
  (fan-out), it returns `NodeMessage(content={leaf_name: content, ...})` in graph order,
  with `name:id` keys for leaves that share a name. A leaf that ran more than once
  contributes its last output.
- Cycles are allowed; `max_steps` bounds the total node executions of one run and
  `MaxStepsExceededError` is raised beyond it.
- A failing node stops the run (its running siblings are cancelled) and its original
  exception propagates, with a note naming the node and the graph.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spark.errors import SparkError
from spark.graphs.event_bus import EventBus
from spark.nodes.base import Node
from spark.nodes.types import ExecutionContext, NodeMessage
from spark.state.graph_state import GraphState

if TYPE_CHECKING:
    from spark.state.backend import StateBackend

__all__ = ["DEFAULT_MAX_STEPS", "Graph", "MaxStepsExceededError"]

DEFAULT_MAX_STEPS = 1000


class MaxStepsExceededError(SparkError, RuntimeError):
    """A run executed more nodes than the graph's `max_steps` (usually an unbounded cycle)."""


@dataclass(slots=True)
class _Run:
    id: str
    state: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    # Keyed by node so a leaf reached twice keeps only its last output.
    leaves: dict[Node, NodeMessage] = field(default_factory=dict)


class Graph:
    def __init__(
        self,
        start: Node,
        state: GraphState | None = None,
        *,
        initial_state: Mapping[str, Any] | None = None,
        state_backend: StateBackend | None = None,
        name: str | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        event_bus: EventBus | None = None,
    ) -> None:
        if not isinstance(start, Node):
            raise TypeError(f"start must be a Node, got {start!r}")
        if max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        if state is not None and (initial_state is not None or state_backend is not None):
            raise TypeError("give either state=GraphState(...) or initial_state/state_backend")
        self.start = start
        #: Handed to every node as context.graph_state; a private in-memory GraphState (or
        #: one on `state_backend`, seeded with `initial_state`) unless one is given.
        self.state: GraphState = (
            state
            if state is not None
            else GraphState(initial_state=initial_state, backend=state_backend)
        )
        #: A backend handed over as `state_backend` is the graph's to close.
        self._owns_backend = state is None and state_backend is not None
        self.name = name or type(self).__name__
        self.max_steps = max_steps
        self.event_bus = event_bus if event_bus is not None else EventBus()
        self._attach()

    @property
    def nodes(self) -> list[Node]:
        """Every node reachable from `start`, breadth-first in wiring order."""
        seen: dict[Node, None] = {self.start: None}
        queue = [self.start]
        for node in queue:
            for succ in node.successors:
                if succ not in seen:
                    seen[succ] = None
                    queue.append(succ)
        return list(seen)

    def _attach(self) -> list[Node]:
        # Nodes may be shared by several graphs used one after another: the last graph to
        # attach (at construction and again at each run) owns `node.graph`/`node.event_bus`.
        nodes = self.nodes
        for node in nodes:
            node.graph = self
        return nodes

    async def run(self, inputs: Any = None) -> NodeMessage:
        """Run from `start` with `inputs` (a dict, a `NodeMessage`, or nothing)."""
        nodes = self._attach()
        run = _Run(id=uuid.uuid4().hex[:12])
        bus = self.event_bus
        await bus.publish("graph.started", {"graph": self.name, "run_id": run.id})
        try:
            await self._execute(run, NodeMessage.coerce(inputs))
        except Exception as exc:
            await bus.publish(
                "graph.failed", {"graph": self.name, "run_id": run.id, "error": repr(exc)}
            )
            raise
        result = _collect(run.leaves, nodes)
        await bus.publish(
            "graph.finished",
            {"graph": self.name, "run_id": run.id, "steps": run.steps, "output": result.content},
        )
        return result

    async def _execute(self, run: _Run, message: NodeMessage) -> None:
        pending: set[asyncio.Task[tuple[Node, NodeMessage, list[Node]]]] = set()

        def spawn(node: Node, inputs: NodeMessage) -> None:
            if run.steps >= self.max_steps:
                raise MaxStepsExceededError(
                    f"graph {self.name!r} run {run.id} exceeded max_steps={self.max_steps} "
                    f"before running node {node.name!r}; is there a cycle with no exit condition?"
                )
            run.steps += 1
            pending.add(asyncio.create_task(self._step(run, node, inputs, run.steps)))

        try:
            spawn(self.start, message)
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                pending.difference_update(done)
                # Look at every finished task's exception (so none goes "never retrieved")
                # before acting on any result.
                failed = [task.exception() for task in done if task.exception() is not None]
                if failed:
                    raise failed[0]
                for task in done:
                    node, output, targets = task.result()
                    if not targets:
                        run.leaves[node] = output
                    for target in targets:
                        spawn(target, output)
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _step(
        self, run: _Run, node: Node, inputs: NodeMessage, step: int
    ) -> tuple[Node, NodeMessage, list[Node]]:
        bus = self.event_bus
        info = {"graph": self.name, "run_id": run.id, "node": node.name, "node_id": node.id}
        await bus.publish("node.started", {**info, "step": step})
        context = ExecutionContext(
            inputs=inputs,
            state=run.state,
            graph_state=self.state,
            node_name=node.name,
            run_id=run.id,
        )
        try:
            output = NodeMessage.coerce(await node.invoke(context))
            targets = _taken(node, output)
        except Exception as exc:
            exc.add_note(f"raised in node {node.name!r} of graph {self.name!r} (run {run.id})")
            await bus.publish("node.failed", {**info, "error": repr(exc)})
            raise
        await bus.publish("node.finished", {**info, "output": output.content})
        return node, output, targets

    async def aclose(self) -> None:
        """Close what the graph's nodes opened (proxies' connections, readers, sessions).

        Nodes without an `aclose()` are skipped; a node shared with another graph is closed
        too, and reopens by itself on its next use. A `state_backend` given to the
        constructor is closed as well (a `state=` given whole stays the caller's).
        """
        for node in self.nodes:
            close = getattr(node, "aclose", None)
            if close is not None:
                await close()
        if self._owns_backend:
            close = getattr(self.state.backend, "aclose", None)
            if close is not None:
                await close()

    async def __aenter__(self) -> Graph:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"Graph(name={self.name!r}, start={self.start!r})"


def _taken(node: Node, output: NodeMessage) -> list[Node]:
    """The targets of the edges of `node` whose condition holds on `output`, without repeats."""
    targets: dict[Node, None] = {}
    for edge in node.edges:
        if edge.target in targets:
            continue
        try:
            taken = edge.holds(output.content)
        except Exception as exc:
            exc.add_note(
                f"raised in {edge.condition!r} of edge {node.name!r} -> {edge.target.name!r}"
            )
            raise
        if taken:
            targets[edge.target] = None
    return list(targets)


def _collect(leaves: Mapping[Node, NodeMessage], order: list[Node]) -> NodeMessage:
    if len(leaves) == 1:
        return next(iter(leaves.values()))
    if not leaves:
        return NodeMessage(content={})
    names = [node.name for node in leaves]
    ordered = [n for n in order if n in leaves] + [n for n in leaves if n not in order]
    content: dict[str, Any] = {}
    for node in ordered:
        key = node.name if names.count(node.name) == 1 else f"{node.name}:{node.id}"
        content[key] = leaves[node].content
    return NodeMessage(content=content)
