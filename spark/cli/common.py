"""Pieces every console script shares: logging, loading `module:Name` targets, signals."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from spark import logs
from spark.broker.connection import resolve_url


def setup_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Text or JSON lines (`--log-format`, `$SPARK_LOG_FORMAT`); see spark.logs."""
    try:
        logs.setup_logging(level, fmt)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


REDIS_HELP = (
    "broker URL (default: $SPARK_REDIS_URL, then redis://localhost:6379/0 if a Redis "
    "answers there, else the embedded broker)"
)


def cli_redis_url(explicit: str | None) -> str:
    """--redis, else the library's rule (`spark.broker.connection.resolve_url`)."""
    return resolve_url(explicit)


def load_target(spec: str) -> Any:
    """`module:Name` -> an instance to serve.

    Name may be a Node/RpcNode class (instantiated with no arguments), a factory function
    (called; may be async), or an instance.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"target must look like module:Name, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"cannot import {module_name!r}: {exc}") from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise SystemExit(f"{module_name!r} has no attribute {attr!r}") from None
    if inspect.isclass(obj):
        obj = obj()
    elif callable(obj) and not hasattr(obj, "handle_rpc"):
        obj = obj()
        if inspect.isawaitable(obj):
            obj = asyncio.run(obj)
    if not hasattr(obj, "handle_rpc"):
        raise SystemExit(f"{spec} is not a Node, an RpcNode or a factory of one")
    return obj


def install_stop_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT ask for a graceful stop; a second SIGINT is not needed to exit."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
