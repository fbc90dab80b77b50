"""`RpcNode`: a node whose `rpc_<method>` coroutines are JSON-RPC methods.

The same class runs three ways with the same answers: as a plain node in a local graph
(`process` takes `{"method": ..., <params>}`), in a `spark-worker` pool behind Redis, and
behind the edge (`start_server()`). Only attributes named `rpc_*` are ever callable.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable
from typing import Any

from spark.broker.keys import default_service_name
from spark.context import CallInfo, current_call
from spark.errors import InternalError, InvalidParamsError, MethodNotFoundError, RpcError
from spark.nodes.base import Node
from spark.nodes.types import ExecutionContext, NodeMessage

log = logging.getLogger("spark.rpc")

PREFIX = "rpc_"
#: Topic prefix for notifications published on a local event bus (and by proxies).
NOTIFICATION_TOPIC_PREFIX = "remote.rpc"
_METHOD = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,127}$")


def attribute_for(method: str) -> str | None:
    """`user.create` and `user-create` -> `rpc_user_create`; None for names never callable."""
    if not isinstance(method, str) or not _METHOD.match(method) or method.startswith("rpc."):
        return None
    return PREFIX + method.replace(".", "_").replace("-", "_")


def split_input(content: Any, metadata: dict | None, default_method: str | None) -> tuple[str, Any]:
    """(method, params) from a node's input, the rule proxies and local RpcNodes share.

    The method comes from `content["method"]`, else `metadata["rpc"]["method"]`, else
    `default_method`, else `"process"`. Params are `content["params"]` when present, else
    the rest of the content.
    """
    method = None
    params: Any = content
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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.host = host
        self.port = port
        self.ssl_certfile = ssl_certfile
        self.ssl_keyfile = ssl_keyfile
        self.ssl_ca_certs = ssl_ca_certs
        self.redis_url = redis_url
        self.service = service or default_service_name(type(self).__name__)
        #: Set by the runtime serving this node: publishes notifications and opens state.
        self.runtime: Any = None
        self._signatures: dict[str, inspect.Signature] = {}

    # -- hooks -----------------------------------------------------------------------

    async def on_start(self) -> None:
        """Runs once in the serving process before the first request (`self.runtime` is set)."""

    async def on_stop(self) -> None:
        """Runs once after the worker stopped reading and finished every request in flight.

        The place to flush buffers and close connections: `spark-worker` calls it on SIGTERM,
        `stop_server()` calls it too.
        """

    async def before_request(self, method: str, params: Any, context: ExecutionContext) -> None:
        """Runs before every handler; raise an RpcError to refuse the request."""

    async def after_request(self, method: str, result: Any, context: ExecutionContext) -> Any:
        """Runs after every successful handler; a non-None return value replaces the result."""
        return None

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
        defined = attr is not None and callable(getattr(type(self), attr, None))
        handler = getattr(self, attr, None) if defined else None
        if handler is None or not callable(handler):
            raise MethodNotFoundError(data={"method": method} if isinstance(method, str) else None)
        return handler

    def _bind(self, attr: str, handler: Callable, params: Any, context: ExecutionContext):
        if params is None:
            params = {}
        if isinstance(params, dict):
            args, kwargs = (params, context), {}
        elif isinstance(params, list):
            args, kwargs = tuple(params), {"context": context}
        else:
            raise InvalidParamsError("params must be an object or an array")
        sig = self._signatures.get(attr)
        if sig is None:
            sig = self._signatures[attr] = inspect.signature(handler)
        try:
            sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidParamsError(data={"reason": str(exc)}) from None
        return args, kwargs

    async def dispatch(self, method: str, params: Any, context: ExecutionContext) -> Any:
        """Run one method the way a remote caller would see it: a result or an RpcError."""
        handler = self._handler(method)
        args, kwargs = self._bind(attribute_for(method), handler, params, context)
        try:
            await _maybe_await(self.before_request(method, params, context))
            result = await _maybe_await(handler(*args, **kwargs))
            replaced = await _maybe_await(self.after_request(method, result, context))
        except RpcError:
            raise
        except Exception as exc:
            # The caller learns that it failed, not how: tracebacks stay in the server's log.
            log.exception("%s.%s raised", self.service, method)
            raise InternalError(data={"method": method}) from exc
        return result if replaced is None else replaced

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
        """Serve this node on `host:port` (an edge plus an in-process worker).

        Returns once the port accepts requests. Uses `redis_url`, else `$SPARK_REDIS_URL`,
        else the embedded broker.
        """
        from spark.runtime.server import NodeServer

        if getattr(self, "_server", None) is not None:
            raise RuntimeError(f"{self.name} is already serving")
        server = NodeServer(self)
        await server.start()
        self._server = server

    async def stop_server(self) -> None:
        """Stop accepting requests, finish those in flight, close the port."""
        server, self._server = getattr(self, "_server", None), None
        if server is not None:
            await server.stop()

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
        """Tell one client; in a handler, `context.metadata["rpc"]["client_id"]` is the caller."""
        if client_id is None:
            call = current_call.get()
            client_id = call.client_id if call else None
        if self.runtime is not None and client_id is not None:
            await self.runtime.notify(self.service, client_id, method, params)
        else:
            await self.publish_event(f"{NOTIFICATION_TOPIC_PREFIX}.{method}", params)
