"""The values that flow between nodes: a message and the context a node runs in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class NodeMessage:
    """What one node hands to the next: `content` (usually a dict) plus free-form metadata."""

    content: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Callers write `NodeMessage(content=x, metadata=None)`; give them a dict to add to.
        if self.metadata is None:
            self.metadata = {}

    @classmethod
    def coerce(cls, value: Any) -> NodeMessage:
        """Wrap a node's return value (or a graph's inputs) as a message.

        A `NodeMessage` is kept as is, `None` becomes empty content (`{}`) so the next node
        can always call `context.inputs.content.get(...)`, anything else becomes the content.
        """
        if isinstance(value, NodeMessage):
            return value
        if value is None:
            return cls(content={})
        return cls(content=value)


def _empty_inputs() -> NodeMessage:
    return NodeMessage(content={})


@dataclass(slots=True)
class ExecutionContext:
    """Everything a node's `process(context)` gets.

    `state` is a scratch dict shared by every node of one graph run (a fresh dict per run);
    `graph_state` is the graph's shared state object (`Graph(state=...)`), None without one.
    """

    inputs: NodeMessage = field(default_factory=_empty_inputs)
    state: dict[str, Any] = field(default_factory=dict)
    graph_state: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)
    node_name: str | None = None
    run_id: str | None = None
