"""`rpc.discover`: an OpenRPC document of a served node, built from its handlers.

Every served target answers `rpc.discover` (OpenRPC's service discovery method) over every
transport, since the worker answers it before the target sees the call. The document lists
the target's methods (`rpc_*` handlers of an RpcNode; `process` of a plain Node) with their
docstrings and, from their signatures and type hints, their params and result as JSON
Schema. A handler taking `(params, context)` takes params by name (one object, described by
its annotation when it is a TypedDict or dataclass); a handler taking `(a, b, context)` takes
them by position.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from spark.context import CallInfo

METHOD = "rpc.discover"
OPENRPC_VERSION = "1.2.6"
PREFIX = "rpc_"
#: Parameter names that receive the runtime's context rather than the caller's params.
_CONTEXT = {"context", "ctx"}

_SIMPLE: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    dict: {"type": "object"},
    list: {"type": "array"},
    Any: {},
}


def schema_of(hint: Any, depth: int = 0) -> dict[str, Any]:
    """JSON Schema of a type hint, as far as it can be told ({} means anything)."""
    if depth > 6 or hint is inspect.Parameter.empty:
        return {}
    if hint in _SIMPLE:
        return dict(_SIMPLE[hint])
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [schema_of(a, depth + 1) for a in args]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (list, tuple, set, frozenset, Sequence):
        item = schema_of(args[0], depth + 1) if args else {}
        return {"type": "array", "items": item}
    if origin in (dict, Mapping):
        value = schema_of(args[1], depth + 1) if len(args) == 2 else {}
        return {"type": "object", "additionalProperties": value}
    if typing.is_typeddict(hint) or dataclasses.is_dataclass(hint):
        return _object_schema(hint, depth)
    return {}


def _object_schema(cls: Any, depth: int) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:
        hints = {}
    if dataclasses.is_dataclass(cls):
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
    else:
        # Read Required/NotRequired from the hints: with postponed annotations (PEP 563)
        # `__required_keys__` cannot see them.
        total = getattr(cls, "__total__", True)
        required = []
        for key, hint in list(hints.items()):
            origin = typing.get_origin(hint)
            if origin in (typing.Required, typing.NotRequired):
                hints[key] = typing.get_args(hint)[0]
            if origin is typing.Required or (total and origin is not typing.NotRequired):
                required.append(key)
    schema: dict[str, Any] = {
        "type": "object",
        "title": cls.__name__,
        "properties": {k: schema_of(v, depth + 1) for k, v in hints.items()},
    }
    if required:
        schema["required"] = required
    return schema


def _doc(obj: Any) -> tuple[str | None, str | None]:
    doc = inspect.getdoc(obj)
    if not doc:
        return None, None
    summary, _, rest = doc.partition("\n\n")
    return " ".join(summary.split()), rest.strip() or None


def describe_method(name: str, func: Any) -> dict[str, Any]:
    """The OpenRPC Method Object of one handler."""
    try:
        sig = inspect.signature(func)
        hints = typing.get_type_hints(func)
    except Exception:
        sig, hints = None, {}
    method: dict[str, Any] = {"name": name}
    summary, description = _doc(func)
    if summary:
        method["summary"] = summary
    if description:
        method["description"] = description
    params: list[dict[str, Any]] = []
    structure = "either"
    if sig is not None:
        own = [
            p
            for p in sig.parameters.values()
            if p.name not in _CONTEXT and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]
        if len(own) == 1 and own[0].name == "params":
            # `rpc_x(self, params, context)`: the caller's params object, by name.
            structure = "by-name"
            hint = hints.get("params", inspect.Parameter.empty)
            shape = schema_of(hint)
            if shape.get("type") == "object" and "properties" in shape:
                required = set(shape.get("required", ()))
                for key, sub in shape["properties"].items():
                    params.append({"name": key, "schema": sub, "required": key in required})
            else:
                params.append({"name": "params", "schema": shape or {"type": "object"}})
        else:
            structure = "by-position"
            for p in own:
                entry: dict[str, Any] = {
                    "name": p.name,
                    "schema": schema_of(hints.get(p.name, inspect.Parameter.empty)),
                    "required": p.default is inspect.Parameter.empty,
                }
                params.append(entry)
    method["params"] = params
    method["paramStructure"] = structure
    result = schema_of(hints.get("return", inspect.Parameter.empty))
    method["result"] = {"name": "result", "schema": result}
    return method


def handlers(target: Any) -> dict[str, Any]:
    """Method name -> handler of a served target."""
    found: dict[str, Any] = {}
    for attr in dir(type(target)):
        if attr.startswith(PREFIX) and callable(getattr(type(target), attr, None)):
            found[attr[len(PREFIX) :]] = getattr(target, attr)
    if not found and callable(getattr(target, "process", None)):
        found["process"] = target.process
    return found


def document(target: Any, service: str) -> dict[str, Any]:
    """The OpenRPC document of `target` served as `service`."""
    title, description = _doc(type(target))
    info: dict[str, Any] = {"title": service, "version": str(getattr(target, "version", "0"))}
    if title:
        info["description"] = title if not description else f"{title}\n\n{description}"
    methods = [describe_method(name, func) for name, func in sorted(handlers(target).items())]
    return {"openrpc": OPENRPC_VERSION, "info": info, "methods": methods}


def answering_discover(handler: Any, target: Any, service: str) -> Any:
    """`handler` that also answers `rpc.discover` (built once, on first ask)."""
    built: list[dict[str, Any]] = []

    async def handle(method: str, params: Any, call: CallInfo) -> Any:
        if method == METHOD:
            if not built:
                built.append(document(target, service))
            return built[0]
        return await handler(method, params, call)

    return handle
