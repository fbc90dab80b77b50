"""Graphs: run wired nodes, publish their lifecycle on an event bus, share state.

`GraphState` is re-exported lazily so that importing the graph runner does not pull in
the state backends (and their imports) until someone asks for them.
"""

from __future__ import annotations

import importlib
from typing import Any

from spark.graphs.event_bus import Event, EventBus
from spark.graphs.graph import DEFAULT_MAX_STEPS, Graph, MaxStepsExceededError

__all__ = [
    "DEFAULT_MAX_STEPS",
    "Event",
    "EventBus",
    "Graph",
    "GraphState",
    "MaxStepsExceededError",
]


def __getattr__(name: str) -> Any:
    if name == "GraphState":
        return importlib.import_module("spark.graphs.graph_state").GraphState
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
