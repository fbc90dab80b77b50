"""Pieces every console script shares: argument checks, logging, loading `module:Name`
targets, signals.

Exit codes shared by `spark`, `spark-worker` and `spark-edge`: 0 done; 1 the operation
failed or was refused; 2 a usage error (bad arguments or environment, a target that cannot
be loaded, an address that cannot be listened on) or an unreachable broker or edge. A usage
error is one line on stderr, `PROG: message`, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib
import inspect
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, TypeVar

from spark import logs
from spark.broker.connection import ENV_URL, connect, is_memory, resolve_url
from spark.broker.keys import check_name

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_LEVEL_ENV = "SPARK_LOG_LEVEL"
REDIS_HELP = (
    "broker URL (default: $SPARK_REDIS_URL, then redis://localhost:6379/0 if a Redis "
    "answers there, else the embedded broker)"
)
USAGE_EXIT = 2


class UsageError(Exception):
    """A mistake in the command line or its environment: `PROG: message`, exit 2."""


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_EXIT, f"{self.prog}: {message}; see {self.prog} --help\n")


def usage_exit(prog: str, exc: BaseException | str) -> int:
    print(f"{prog}: {exc}", file=sys.stderr)
    return USAGE_EXIT


def positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: a number of `kind` greater than zero."""

    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        if not number > 0:
            raise argparse.ArgumentTypeError(f"must be positive: {value!r}")
        return number

    return parse


def service_name(value: str) -> str:
    """An argparse type: a valid service name."""
    try:
        return check_name("service name", value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _level(value: str) -> str:
    if value.upper() not in LOG_LEVELS:
        choices = ", ".join(level.lower() for level in LOG_LEVELS)
        raise UsageError(f"{value!r} is not a log level (one of {choices})")
    return value.upper()


def log_level(value: str) -> str:
    """An argparse type for --log-level: a logging level name, any case."""
    try:
        return _level(value)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def setup_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Logging at `level`, else $SPARK_LOG_LEVEL, else INFO, as text or JSON lines (`fmt`,
    else $SPARK_LOG_FORMAT; see spark.logs). UsageError for a bad name."""
    try:
        chosen = level or _level(os.environ.get(LOG_LEVEL_ENV) or "INFO")
    except UsageError as exc:
        raise UsageError(f"${LOG_LEVEL_ENV}: {exc}") from None
    try:
        fmt = logs.resolve_format(fmt)
    except ValueError as exc:
        raise UsageError(f"${logs.ENV_FORMAT}: {exc}") from None
    logs.setup_logging(chosen, fmt)


def check_broker_url(url: str, source: str = "--redis") -> str:
    """`url` when the broker layer accepts it (nothing connects yet), else UsageError."""
    if "://" not in url and not is_memory(url):
        raise UsageError(f"{source} {url!r} has no scheme: did you mean redis://{url}?")
    try:
        connect(url, max_connections=1)  # parses the URL; connections open on first use
    except ValueError as exc:
        raise UsageError(f"{source} {url!r}: {exc}") from None
    return url


def broker_url(value: str) -> str:
    """An argparse type for --redis."""
    try:
        return check_broker_url(value)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--redis ")) from None


def cli_redis_url(explicit: str | None) -> str:
    """--redis, else the library's rule (`spark.broker.connection.resolve_url`), with
    $SPARK_REDIS_URL checked like --redis (UsageError)."""
    from_env = None if explicit else os.environ.get(ENV_URL)
    if from_env:
        check_broker_url(from_env, f"${ENV_URL}")
    return resolve_url(explicit)


def listen_error(exc: OSError, host: str, port: int) -> str | None:
    """One line for an address that cannot be listened on; None for any other OSError."""
    if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
        return f"cannot listen on {host}:{port}: {os.strerror(exc.errno)}"
    return None


def load_target(spec: str) -> Any:
    """`module:Name` -> an instance to serve.

    Name may be a Node/RpcNode class (instantiated with no arguments), a factory function
    (called; may be async), or an instance.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"target must look like module:Name, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise UsageError(f"{module_name!r} has no attribute {attr!r}") from None
    if inspect.isclass(obj) or (callable(obj) and not hasattr(obj, "handle_rpc")):
        _check_callable_without_arguments(spec, obj)
        obj = obj()
        if inspect.isawaitable(obj):
            obj = asyncio.run(obj)
    if not hasattr(obj, "handle_rpc"):
        raise UsageError(f"{spec} is not a Node, an RpcNode or a factory of one")
    return obj


def _check_callable_without_arguments(spec: str, obj: Callable[..., Any]) -> None:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # no signature to read (some builtins): just call it
        return
    try:
        signature.bind()
    except TypeError:
        raise UsageError(
            f"{spec} needs arguments {signature}: serve a factory instead, "
            "module:factory (a function without arguments that returns the node)"
        ) from None


def install_stop_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT ask for a graceful stop; a second SIGINT is not needed to exit."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


T = TypeVar("T")

#: Event loops a console script can run on (`--loop`); uvloop needs the `speed` extra.
LOOPS = ("asyncio", "uvloop")


def add_loop_argument(p: Any) -> None:
    p.add_argument(
        "--loop",
        choices=LOOPS,
        default=None,
        help="event loop (default: uvloop when installed, the `speed` extra; else asyncio)",
    )


def run(main: Coroutine[Any, Any, T], loop: str | None = None) -> T:
    """`asyncio.run(main)` on the chosen event loop; None picks uvloop when it is installed."""
    if loop is None:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(main)
        loop = "uvloop"
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            main.close()
            raise SystemExit("--loop uvloop needs uvloop: pip install 'spark-rpc[speed]'") from None
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    if loop != "asyncio":
        main.close()
        raise SystemExit(f"unknown event loop {loop!r}: choose from {', '.join(LOOPS)}")
    return asyncio.run(main)
