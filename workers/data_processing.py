"""Data processing service: `spark-worker workers.data_processing:DataProcessingRpcNode`
(service `data-processing`).

Stateless: everything a request needs is in its params, so the pool scales by adding
replicas. Large inputs are processed in a thread (`asyncio.to_thread`) so one big request
does not hold up the worker's other handlers, its heartbeat or its lease renewals.

`transform_data(data, transform_type, field?)`: `data` is a list of numbers, strings or
records (objects; numeric transforms then need `field`).
  numbers: normalize (min-max to [0, 1]), standardize (z-score), log1p, round, cumulative_sum
  strings: uppercase, lowercase, strip
  any:     sort, reverse, dedupe, drop_nulls
`aggregate_data(data, aggregation)`: `aggregation` is an op name (count, sum, mean, median,
min, max, stddev, distinct), a list of them, or `{"op": ..., "field": ..., "group_by": ...}`
for records.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import Callable
from typing import Any

from spark.errors import InvalidParamsError
from spark.nodes.rpc import RpcNode

#: Items above which the work moves to a thread.
THREAD_THRESHOLD = 5_000
MAX_ITEMS = 1_000_000


def _numbers(values: list[Any], what: str) -> list[float]:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise InvalidParamsError(f"{what} needs numbers", data={"value": repr(v)[:50]})
    return values


def _strings(values: list[Any], what: str) -> list[str]:
    for v in values:
        if not isinstance(v, str):
            raise InvalidParamsError(f"{what} needs strings", data={"value": repr(v)[:50]})
    return values


def _normalize(xs: list[float]) -> list[float]:
    lo, hi = min(xs, default=0), max(xs, default=0)
    span = hi - lo
    return [0.0 if span == 0 else (x - lo) / span for x in xs]


def _standardize(xs: list[float]) -> list[float]:
    if len(xs) < 2:
        return [0.0 for _ in xs]
    mean, sd = statistics.fmean(xs), statistics.pstdev(xs)
    return [0.0 if sd == 0 else (x - mean) / sd for x in xs]


def _log1p(xs: list[float]) -> list[float]:
    if any(x <= -1 for x in xs):
        raise InvalidParamsError("log1p needs values > -1")
    return [math.log1p(x) for x in xs]


def _cumulative(xs: list[float]) -> list[float]:
    out, total = [], 0
    for x in xs:
        total += x
        out.append(total)
    return out


def _dedupe(xs: list[Any]) -> list[Any]:
    seen: set[str] = set()
    out = []
    for x in xs:
        marker = repr(x)
        if marker not in seen:
            seen.add(marker)
            out.append(x)
    return out


def _sort(xs: list[Any]) -> list[Any]:
    try:
        return sorted(xs)
    except TypeError:
        raise InvalidParamsError("sort needs values of one comparable type") from None


NUMERIC: dict[str, Callable[[list[float]], list[Any]]] = {
    "normalize": _normalize,
    "standardize": _standardize,
    "log1p": _log1p,
    "round": lambda xs: [round(x, 2) for x in xs],
    "cumulative_sum": _cumulative,
}
TEXT: dict[str, Callable[[list[str]], list[str]]] = {
    "uppercase": lambda xs: [x.upper() for x in xs],
    "lowercase": lambda xs: [x.lower() for x in xs],
    "strip": lambda xs: [x.strip() for x in xs],
}
ANY: dict[str, Callable[[list[Any]], list[Any]]] = {
    "sort": _sort,
    "reverse": lambda xs: xs[::-1],
    "dedupe": _dedupe,
    "drop_nulls": lambda xs: [x for x in xs if x is not None],
}
TRANSFORMS = sorted([*NUMERIC, *TEXT, *ANY])


def _stddev(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


AGGREGATES: dict[str, Callable[[list[Any]], Any]] = {
    "count": len,
    "sum": lambda xs: math.fsum(_numbers(xs, "sum")),
    "mean": lambda xs: statistics.fmean(_numbers(xs, "mean")) if xs else None,
    "median": lambda xs: statistics.median(_numbers(xs, "median")) if xs else None,
    "min": lambda xs: min(_numbers(xs, "min"), default=None),
    "max": lambda xs: max(_numbers(xs, "max"), default=None),
    "stddev": lambda xs: _stddev(_numbers(xs, "stddev")),
    "distinct": lambda xs: len(_dedupe(xs)),
}


def _column(data: list[Any], field: str | None) -> list[Any]:
    if field is None:
        return data
    for row in data:
        if not isinstance(row, dict):
            raise InvalidParamsError("field needs data to be a list of objects")
    return [row.get(field) for row in data]


class DataProcessor:
    """The seed's `self.processor`: pure functions, run in a thread when the data is large."""

    async def _run(self, fn: Callable[[], Any], size: int) -> Any:
        if size > THREAD_THRESHOLD:
            return await asyncio.to_thread(fn)
        return fn()

    async def transform(self, data: list[Any], transform_type: str, field: str | None = None):
        def work() -> list[Any]:
            column = _column(data, field)
            if transform_type in NUMERIC:
                out = NUMERIC[transform_type](_numbers(column, transform_type))
            elif transform_type in TEXT:
                out = TEXT[transform_type](_strings(column, transform_type))
            else:
                out = ANY[transform_type](column)
            if field is None or transform_type in ANY:
                return out
            return [{**row, field: value} for row, value in zip(data, out, strict=True)]

        return await self._run(work, len(data))

    async def aggregate(self, data: list[Any], aggregation: Any) -> Any:
        if isinstance(aggregation, str):
            ops, field, group_by, single = [aggregation], None, None, True
        elif isinstance(aggregation, list) and aggregation:
            ops, field, group_by, single = aggregation, None, None, False
        elif isinstance(aggregation, dict):
            op = aggregation.get("op", "count")
            ops = op if isinstance(op, list) else [op]
            field, group_by = aggregation.get("field"), aggregation.get("group_by")
            single = not isinstance(op, list)
        else:
            raise InvalidParamsError("aggregation must be an op name, a list or an object")
        bad = [op for op in ops if op not in AGGREGATES]
        if bad:
            raise InvalidParamsError(
                "unknown aggregation", data={"unknown": bad, "known": sorted(AGGREGATES)}
            )

        def summarize(rows: list[Any]) -> Any:
            column = _column(rows, field)
            if field is not None and not all(op in ("count", "distinct") for op in ops):
                column = [v for v in column if v is not None]
            results = {op: AGGREGATES[op](column) for op in ops}
            return results[ops[0]] if single else results

        def work() -> Any:
            if group_by is None:
                return summarize(data)
            groups: dict[str, list[Any]] = {}
            for row in data:
                if not isinstance(row, dict):
                    raise InvalidParamsError("group_by needs data to be a list of objects")
                groups.setdefault(str(row.get(group_by)), []).append(row)
            return {key: summarize(rows) for key, rows in groups.items()}

        return await self._run(work, len(data))


def _data(params: Any) -> list[Any]:
    data = params.get("data") if isinstance(params, dict) else None
    if not isinstance(data, list) or len(data) > MAX_ITEMS:
        raise InvalidParamsError(
            f"data must be a list of at most {MAX_ITEMS} items", data={"field": "data"}
        )
    return data


class DataProcessingRpcNode(RpcNode):
    """Heavy data processing service."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.processor = DataProcessor()

    async def rpc_transform_data(self, params, context):
        """Transform large datasets."""
        data = _data(params)
        transform_type = params.get("transform_type")
        if transform_type not in TRANSFORMS:
            raise InvalidParamsError(
                "unknown transform_type",
                data={"transform_type": transform_type, "known": TRANSFORMS},
            )
        field = params.get("field")
        if field is not None and not isinstance(field, str):
            raise InvalidParamsError("field must be a string", data={"field": "field"})
        result = await self.processor.transform(data, transform_type, field)
        return {"transform_type": transform_type, "count": len(result), "data": result}

    async def rpc_aggregate_data(self, params, context):
        """Aggregate data."""
        data = _data(params)
        aggregation = params.get("aggregation")
        result = await self.processor.aggregate(data, aggregation)
        return {"aggregation": aggregation, "count": len(data), "result": result}
