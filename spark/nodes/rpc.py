"""`RpcNode`: a node whose `rpc_<method>` coroutines are JSON-RPC methods.

The same class runs three ways with the same answers: as a plain node in a local graph
(`process` takes `{"method": ..., <params>}`), in a `spark-worker` pool behind Redis, and
behind the edge (`start_server()`). Only attributes named `rpc_*` are ever callable.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import re
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, cast

from spark.broker.keys import default_service_name
from spark.context import CallInfo, current_call
from spark.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    TIMEOUT,
    InternalError,
    InvalidParamsError,
    InvalidRequestError,
    MethodNotFoundError,
    ParseError,
    RpcError,
)
from spark.nodes.base import Node
from spark.nodes.types import ExecutionContext, NodeMessage
from spark.runtime.presence import default_hook

if TYPE_CHECKING:
    from spark.runtime.server import NodeServer

log = logging.getLogger("spark.rpc")


class JsonRpcError(RpcError):
    """Upstream's JSON-RPC error: raise `JsonRpcError(code, message, data)` in a handler
    (or a hook) to answer exactly that error."""

    def __init__(self, code: int, message: str | None = None, data: Any = None) -> None:
        if isinstance(code, bool) or not isinstance(code, int):
            raise TypeError(f"code must be an int, got {code!r}")
        super().__init__(message, data, code=code)


#: Upstream's constants (also in spark.errors under their JSON-RPC names).
SERVER_ERROR = -32000
TIMEOUT_ERROR = TIMEOUT

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "SERVER_ERROR",
    "TIMEOUT_ERROR",
    "InternalError",
    "InvalidParamsError",
    "InvalidRequestError",
    "JsonRpcError",
    "MethodNotFoundError",
    "ParseError",
    "RpcError",
    "RpcNode",
    "current_context",
]

_current_context: ContextVar[ExecutionContext | None] = ContextVar(
    "spark_rpc_context", default=None
)


def current_context() -> ExecutionContext | None:
    """The ExecutionContext of the request being handled (in hooks and handlers), else None."""
    return _current_context.get()


PREFIX = "rpc_"
#: Topic prefix for notifications published on a local event bus (and by proxies).
NOTIFICATION_TOPIC_PREFIX = "remote.rpc"
#: Argument shapes remembered per node (array params of any length could grow it).
_MAX_SHAPES = 1024


class _Unchecked(enum.Enum):
    """A `dict.get` default that no stored value (a str or None) can be."""

    TOKEN = 0


_UNCHECKED = _Unchecked.TOKEN
_METHOD = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,127}$")


def attribute_for(method: str) -> str | None:
    """`user.create` and `user-create` -> `rpc_user_create`; None for names never callable."""
    if type(method) is str:
        known = _ATTRIBUTES.get(method, _UNCHECKED)
        if known is not _UNCHECKED:
            return known
    if not isinstance(method, str) or not _METHOD.match(method) or method.startswith("rpc."):
        return None
    attr = PREFIX + method.replace(".", "_").replace("-", "_")
    if len(_ATTRIBUTES) < _MAX_SHAPES:
        _ATTRIBUTES[method] = attr
    return attr


#: Method names already looked at (on every call, twice): bounded, junk names stop adding.
_ATTRIBUTES: dict[str, str | None] = {}


def split_input(
    content: Any, metadata: dict[str, Any] | None, default_method: str | None
) -> tuple[str, Any]:
    """(method, params) from a node's input, the rule proxies and local RpcNodes share.

    A str content is the method name (no params) when neither the metadata nor
    `default_method` names one. Otherwise the method comes from
    `content["method"]`, else `metadata["rpc"]["method"]`, else
    `default_method`, else `"process"`. Params are `content["params"]` when present, else
    the rest of the content.
    """
    method = None
    params: Any = content
    rpc_meta = (metadata or {}).get("rpc")
    named = isinstance(rpc_meta, dict) and isinstance(rpc_meta.get("method"), str)
    if isinstance(content, str) and not named and not default_method:
        # Upstream's shortest form: the content is the method name, called with no params.
        return content, {}
    if isinstance(content, dict):
        method = content.get("method")
        if "params" in content:
            params = content["params"]
        else:
            params = {k: v for k, v in content.items() if k != "method"}
    if not isinstance(method, str):
        rpc_meta = (metadata or {}).get("rpc")
        method = rpc_meta.get("method") if isinstance(rpc_meta, dict) else None
    if not isinstance(method, str):
        method = default_method or "process"
    return method, params


def _is_async(fn: Callable[..., Any]) -> bool:
    """`inspect.iscoroutinefunction`, remembered per function (asked on every call)."""
    target = getattr(fn, "__func__", fn)
    known = _ASYNC_FUNCTIONS.get(target)
    if known is None:
        known = inspect.iscoroutinefunction(fn)
        if len(_ASYNC_FUNCTIONS) < _MAX_SHAPES:
            _ASYNC_FUNCTIONS[target] = known
    return known


_ASYNC_FUNCTIONS: dict[Any, bool] = {}


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class RpcNode(Node):
    """Subclass it and write `async def rpc_<method>(self, params, context)` handlers.

    Dict params call `handler(params, context)`; array params call
    `handler(*params, context=context)`; no params call `handler({}, context)`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        ssl_ca_certs: str | None = None,
        redis_url: str | None = None,
        service: str | None = None,
        request_timeout: float | None = None,
        expose_errors: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        #: Default budget of a request that carries none (upstream's `request_timeout`).
        self.request_timeout = request_timeout
        #: Put the exception type and message in `data` of an `Internal error` answer
        #: (off by default: messages may hold secrets; tracebacks stay in the log anyway).
        self.expose_errors = expose_errors
        self.host = host
        self.port = port
        self.ssl_certfile = ssl_certfile
        self.ssl_keyfile = ssl_keyfile
        self.ssl_ca_certs = ssl_ca_certs
        self.redis_url = redis_url
        self.service = service or default_service_name(type(self).__name__)
        self._signatures: dict[str, inspect.Signature] = {}
        #: (attribute, positional count, context by keyword) -> None (binds) or why not.
        self._binds: dict[tuple[str, int, bool], str | None] = {}

    # -- hooks -----------------------------------------------------------------------

    async def on_start(self) -> None:
        """Runs once in the serving process before the first request (`self.runtime` is set)."""

    async def on_stop(self) -> None:
        """Runs once after the worker stopped reading and finished every request in flight.

        The place to flush buffers and close connections: `spark-worker` calls it on SIGTERM,
        `stop_server()` calls it too.
        """

    async def before_request(self, method: str, params: Any, request_id: Any) -> None:
        """Runs before every handler (upstream's signature); raise to refuse the request.

        An RpcError (or `JsonRpcError`) answers as raised; anything else is `Internal error`.
        The full context is `self.current_context()`. An override whose third parameter is
        named `context` gets the ExecutionContext instead of the request id.
        """

    async def after_request(
        self, method: str, params: Any, request_id: Any, result: Any, error: str | None
    ) -> Any:
        """Runs after every handler, failed or not (upstream's signature).

        `error` is the error message (None on success). On success a non-None return value
        replaces the result. An override taking `(method, result, context)` is called the
        older way: on success only, with the context.
        """
        return None

    @staticmethod
    def current_context() -> ExecutionContext | None:
        """The ExecutionContext of the request being handled (from hooks and handlers)."""
        return _current_context.get()

    @default_hook
    async def on_websocket_connect(self, client_id: str, websocket: Any) -> None:
        """Runs when a WebSocket client of this service connects to an edge.

        Served in-process (`start_server()` without a broker): the edge calls it with the
        aiohttp socket before reading the client's first request. Served by workers (behind
        `spark-edge`, or `start_server()` with a `redis_url`): every worker of the service
        runs it when the edge announces the client, with `websocket=None` (the socket is in
        the edge's process; use `send_notification_to_client(client_id, ...)`).
        """

    @default_hook
    async def on_websocket_disconnect(self, client_id: str, websocket: Any = None) -> None:
        """Runs when that client disconnects (the same way as `on_websocket_connect`)."""

    # -- dispatch ----------------------------------------------------------------------

    def list_methods(self) -> list[str]:
        """The methods this node answers (its `rpc_*` handlers, without the prefix)."""
        return sorted(
            name[len(PREFIX) :]
            for name in dir(type(self))
            if name.startswith(PREFIX) and callable(getattr(type(self), name, None))
        )

    def _handler(self, method: str) -> Callable[..., Any]:
        attr = attribute_for(method)
        # Only methods the class defines (what list_methods shows): a callable stored on
        # the instance under an `rpc_*` name is data, not an endpoint.
        handler = None
        if attr is not None and callable(getattr(type(self), attr, None)):
            handler = getattr(self, attr, None)
        if handler is None or not callable(handler):
            data: dict[str, Any] = {"available": self.list_methods()}
            if isinstance(method, str):
                data["method"] = method
            raise MethodNotFoundError(data=data)
        return cast("Callable[..., Any]", handler)

    def _bind(
        self, attr: str, handler: Callable[..., Any], params: Any, context: ExecutionContext
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if params is None:
            params = {}
        args: tuple[Any, ...]
        kwargs: dict[str, Any]
        if isinstance(params, dict):
            args, kwargs = (params, context), {}
        elif isinstance(params, list):
            args, kwargs = tuple(params), {"context": context}
        else:
            raise InvalidParamsError("params must be an object or an array")
        # Whether arguments bind depends only on how many there are (the values are not
        # looked at), so each shape is checked once: Signature.bind costs more than a call.
        shape = (attr, len(args), bool(kwargs))
        reason = self._binds.get(shape, _UNCHECKED)
        if reason is _UNCHECKED:
            sig = self._signatures.get(attr)
            if sig is None:
                sig = self._signatures[attr] = inspect.signature(handler)
            try:
                sig.bind(*args, **kwargs)
                reason = None
            except TypeError as exc:
                reason = str(exc)
            if len(self._binds) < _MAX_SHAPES:
                self._binds[shape] = reason
        if reason is not None:
            raise InvalidParamsError(data={"reason": reason})
        return args, kwargs

    async def dispatch(self, method: str, params: Any, context: ExecutionContext) -> Any:
        """Run one method the way a remote caller would see it: a result or an RpcError."""
        handler = self._handler(method)
        # `_handler` found it, so the method maps to an attribute.
        args, kwargs = self._bind(attribute_for(method) or method, handler, params, context)
        token = _current_context.set(context)
        try:
            return await self._dispatch(method, params, context, handler, args, kwargs)
        finally:
            _current_context.reset(token)

    async def _dispatch(
        self,
        method: str,
        params: Any,
        context: ExecutionContext,
        handler: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        hooks = _hook_styles(type(self))
        # Hooks nobody overrode do nothing: not calling them saves four coroutines a call.
        plain = hooks.inherited and not (_HOOKS & self.__dict__.keys())
        request_id = (context.metadata.get("rpc") or {}).get("request_id")
        try:
            if not plain:
                third = context if hooks.before_takes_context else request_id
                await _maybe_await(self.before_request(method, params, third))
            result = await self._run_handler(handler, args, kwargs)
        except Exception as exc:
            if not hooks.after_legacy and not plain:
                await self._after_failure(method, params, request_id, exc)
            raise self._answer_for(method, exc) from exc
        if plain:
            return result
        try:
            if hooks.after_legacy:
                # An override with the older signature (method, result, context).
                legacy_after: Callable[..., Any] = self.after_request
                replaced = await _maybe_await(legacy_after(method, result, context))
            else:
                replaced = await _maybe_await(
                    self.after_request(method, params, request_id, result, None)
                )
        except Exception as exc:
            raise self._answer_for(method, exc) from exc
        return result if replaced is None else replaced

    async def _run_handler(
        self, handler: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if _is_async(handler):
            return await handler(*args, **kwargs)
        runner = getattr(self.runtime, "run_sync", None)
        if runner is not None:
            # A plain `def` handler in a worker: a thread of the bounded pool, so the
            # worker's loop (heartbeats, other requests) goes on meanwhile.
            return await _maybe_await(await runner(handler, *args, **kwargs))
        return await _maybe_await(handler(*args, **kwargs))

    async def _after_failure(
        self, method: str, params: Any, request_id: Any, exc: Exception
    ) -> None:
        message = exc.message if isinstance(exc, RpcError) else str(exc) or type(exc).__name__
        try:
            await _maybe_await(self.after_request(method, params, request_id, None, message))
        except Exception:
            log.exception("%s.after_request raised after %s failed", self.service, method)

    def _answer_for(self, method: str, exc: Exception) -> RpcError:
        if isinstance(exc, RpcError):
            return exc
        # The caller learns that it failed, not how (unless expose_errors): tracebacks stay
        # in the server's log.
        log.error("%s.%s raised", self.service, method, exc_info=exc)
        data: dict[str, Any] = {"method": method}
        if self.expose_errors:
            data.update(type=type(exc).__name__, message=str(exc))
        return InternalError(data=data)

    async def handle_rpc(self, method: str, params: Any, call: CallInfo) -> Any:
        """The runtime's entry point (a worker `Handler`)."""
        context = ExecutionContext(
            inputs=NodeMessage(
                content=params, metadata={"rpc": {"method": method, "id": call.request_id}}
            ),
            state={},
            graph_state=self.runtime.state_for(call) if self.runtime is not None else None,
            metadata={
                "rpc": {
                    "method": method,
                    "request_id": call.request_id,
                    "client_id": call.client_id,
                    "service": call.service,
                    "deadline": call.deadline,
                    "delivery": call.delivery,
                }
            },
            node_name=self.name,
        )
        return await self.dispatch(method, params, context)

    async def invoke(self, context: ExecutionContext) -> Any:
        """Local use in a graph: `{"method": ..., <params>}` in, the method's result out.

        Overridden here rather than `process`, which stays free for subclasses (a handler
        helper named `process` is common in services).
        """
        method, params = split_input(context.inputs.content, context.inputs.metadata, None)
        rpc_meta = {
            "method": method,
            "request_id": None,
            "client_id": None,
            "service": self.service,
        }
        ctx = ExecutionContext(
            inputs=NodeMessage(content=params, metadata={"rpc": {"method": method}}),
            state=context.state,
            graph_state=context.graph_state,
            metadata={**context.metadata, "rpc": rpc_meta},
            node_name=self.name,
            run_id=context.run_id,
        )
        return await self.dispatch(method, params, ctx)

    async def process(self, context: ExecutionContext) -> Any:
        return await RpcNode.invoke(self, context)

    # -- serving -----------------------------------------------------------------------

    async def start_server(self) -> None:
        """Serve this node on `host:port` behind its own edge; returns once the port accepts
        requests.

        With no broker URL (no `redis_url`, no `$SPARK_REDIS_URL`) the edge hands requests
        straight to this node, in this process. With one, the node is an in-process worker
        of its service on that broker, behind the edge.
        """
        from spark.runtime.server import NodeServer

        if getattr(self, "_server", None) is not None:
            raise RuntimeError(f"{self.name} is already serving")
        server = NodeServer(self)
        await server.start()
        self._server: NodeServer | None = server

    async def stop_server(self) -> None:
        """Stop accepting requests, finish those in flight, close the port."""
        server, self._server = getattr(self, "_server", None), None
        if server is not None:
            await server.stop()

    async def shutdown(self) -> None:
        """Upstream's name for `stop_server()`; also ends a running `serve_forever()`."""
        stopped = getattr(self, "_stopped", None)
        if stopped is not None:
            stopped.set()
        await self.stop_server()

    async def serve_forever(self) -> None:
        """Start serving (unless already) and block until cancelled (Ctrl-C) or shut down.

        For server scripts: `asyncio.run(MyRpcNode(port=8000).serve_forever())`. Stops the
        server on the way out, draining requests in flight.
        """
        if getattr(self, "_server", None) is None:
            await self.start_server()
        self._stopped = stopped = asyncio.Event()
        try:
            await stopped.wait()
        finally:
            await self.stop_server()

    @property
    def websocket_clients(self) -> dict[str, Any]:
        """The WebSocket clients of the edge serving this node in-process, by client id."""
        server = getattr(self, "_server", None)
        clients = getattr(server, "websocket_clients", None)
        return dict(clients) if clients is not None else {}

    # -- notifications ---------------------------------------------------------------

    async def broadcast_notification(self, method: str, params: Any = None) -> None:
        """Tell every client connected to this service (WebSocket clients, proxies)."""
        if self.runtime is not None:
            await self.runtime.notify(self.service, None, method, params)
        else:
            await self.publish_event(f"{NOTIFICATION_TOPIC_PREFIX}.{method}", params)

    async def send_notification_to_client(
        self, client_id: str | None, method: str, params: Any = None
    ) -> None:
        """Tell one client; in a handler, `context.metadata["rpc"]["client_id"]` is the caller.

        Raises ValueError (as upstream) when the client is known not to be connected: no
        edge or proxy listens for that id, or (serving in-process) the id is neither one of
        this node's WebSocket clients nor the caller being served. Outside a server (a node
        in a local graph) the notification goes to the graph's event bus.
        """
        call = current_call.get()
        if client_id is None:
            client_id = call.client_id if call else None
        if self.runtime is None:
            await self.publish_event(f"{NOTIFICATION_TOPIC_PREFIX}.{method}", params)
            return
        if client_id is None:
            raise ValueError("send_notification_to_client needs a client id outside a request")
        server = getattr(self, "_server", None)
        caller = call.client_id if call else None
        if server is not None and client_id != caller and client_id not in self.websocket_clients:
            raise ValueError(f"client {client_id!r} is not connected")
        if await self.runtime.notify(self.service, client_id, method, params) == 0:
            raise ValueError(f"client {client_id!r} is not connected (nobody listens for it)")


class _HookStyles:
    __slots__ = ("after_legacy", "before_takes_context", "inherited")

    def __init__(self, before_takes_context: bool, after_legacy: bool, inherited: bool) -> None:
        self.before_takes_context = before_takes_context
        self.after_legacy = after_legacy
        #: Neither hook is overridden by the class: both are RpcNode's no-ops.
        self.inherited = inherited


_HOOKS = frozenset({"before_request", "after_request"})


_STYLES: dict[type, _HookStyles] = {}


def _positional_names(fn: Callable[..., Any]) -> list[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds and p.name != "self"]


def _hook_styles(cls: type[RpcNode]) -> _HookStyles:
    """Which signature a class's hooks were written for: upstream's, or this project's older
    `(method, params, context)` / `(method, result, context)` one."""
    styles = _STYLES.get(cls)
    if styles is None:
        before = _positional_names(cls.before_request)
        after = _positional_names(cls.after_request)
        styles = _STYLES[cls] = _HookStyles(
            before_takes_context=len(before) >= 3 and before[2] in ("context", "ctx"),
            after_legacy=len(after) == 3,
            inherited=cls.before_request is RpcNode.before_request
            and cls.after_request is RpcNode.after_request,
        )
    return styles
