"""`python -m workers.demo` (`make demo`): an order workflow across services, many orders at once.

The client graph (local steps run here, remote steps are JSON-RPC calls through the edge
to the worker pools behind Redis):

    validate (local)
      >> customer.get_customer            (remote)
      >> to_inventory (local: refuses blocked customers)
      >> inventory.check_availability     (remote)
      >> to_order (local: refuses what is out of stock, prices the items)
      >> order.create_order               (remote)
      >> reserve (local step calling inventory.reserve_inventory; cancels the order
                  with order.cancel_order when the reservation fails)
      >> report (local)

By default everything runs in this process on the embedded broker (no Redis needed): two
in-process workers per service and an edge on a free port. With `--redis URL` the same
workflow runs against that Redis, with real `spark-worker` processes and a `spark-edge`
process. Some orders fail on purpose (invalid input, unknown or blocked customers, a
limited-edition product that sells out); the summary counts them by reason.

Exit status: 0 when the run completed (failures by design included), 1 when an order
failed for an infrastructure reason (timeouts, transport errors, internal errors), 2 when
the services could not be started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from spark.broker.connection import describe
from spark.errors import RpcError, RpcTimeoutError, TransportError
from spark.graphs import Graph
from spark.nodes import Node
from spark.nodes.rpc_client import RemoteRpcProxyConfig, RemoteRpcProxyNode
from workers import catalog
from workers.base import NOT_FOUND, OUT_OF_STOCK

#: The services the workflow calls: (service, spark-worker target).
SERVICES = {
    "customer": "workers.customer:CustomerRpcNode",
    "inventory": "workers.inventory:InventoryRpcNode",
    "order": "workers.order:OrderRpcNode",
}
#: Failure reasons that are the workflow working as designed; anything else is a fault.
BY_DESIGN = {"invalid", "unknown_customer", "customer_blocked", "out_of_stock", "unknown_sku"}
MAX_UNITS_PER_LINE = 10


class OrderRejected(Exception):
    """A local step refused the order (the workflow's own decision, not a fault)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# -- the client graph ------------------------------------------------------------------------


class Local(Node):
    """A local step: `fn(previous output, run state)` gives the next node's input."""

    def __init__(self, name: str, fn: Callable[[Any, dict], Any]):
        super().__init__(name=name)
        self.fn = fn

    async def process(self, context):
        return self.fn(context.inputs.content, context.state)


def validate(order: Any, state: dict) -> dict:
    """Checks that need no service; then asks the customer service about the customer."""
    if not isinstance(order, dict) or not isinstance(order.get("customer_id"), str):
        raise OrderRejected("invalid", "customer_id is missing")
    items = order.get("items")
    if not isinstance(items, list) or not items:
        raise OrderRejected("invalid", "no items")
    for i, item in enumerate(items):
        quantity = item.get("quantity") if isinstance(item, dict) else None
        if not isinstance(quantity, int) or not 1 <= quantity <= MAX_UNITS_PER_LINE:
            raise OrderRejected("invalid", f"items[{i}].quantity must be 1..{MAX_UNITS_PER_LINE}")
        if not isinstance(item.get("sku"), str):
            raise OrderRejected("invalid", f"items[{i}].sku is missing")
    state["order"] = order
    return {"method": "get_customer", "params": {"customer_id": order["customer_id"]}}


def to_inventory(customer: dict, state: dict) -> dict:
    if customer.get("status") != "active":
        raise OrderRejected("customer_blocked", customer["customer_id"])
    state["customer"] = customer
    return {"method": "check_availability", "params": {"items": state["order"]["items"]}}


def to_order(availability: dict, state: dict) -> dict:
    if not availability["in_stock"]:
        short = next(line for line in availability["items"] if not line["in_stock"])
        raise OrderRejected(
            "out_of_stock", f"{short['sku']}: {short['available']} left, {short['quantity']} wanted"
        )
    prices = {line["sku"]: line["unit_price"] for line in availability["items"]}
    items = [{**item, "unit_price": prices[item["sku"]]} for item in state["order"]["items"]]
    return {
        "method": "create_order",
        "params": {"customer_id": state["customer"]["customer_id"], "items": items},
    }


class Reserve(Node):
    """Reserve the order's stock; when that fails, cancel the order (the compensation)."""

    def __init__(self, inventory: RemoteRpcProxyNode, orders: RemoteRpcProxyNode):
        super().__init__(name="reserve")
        self.inventory = inventory
        self.orders = orders

    async def process(self, context):
        order = context.inputs.content
        context.state["created"] = order
        try:
            return await self.inventory.call(
                "reserve_inventory", {"order_id": order["order_id"], "items": order["items"]}
            )
        except RpcError as exc:
            await self.orders.call(
                "cancel_order", {"order_id": order["order_id"], "reason": exc.message}
            )
            raise


def report(reservation: dict, state: dict) -> dict:
    order = state["created"]
    return {
        "status": "reserved",
        "order_id": order["order_id"],
        "customer": state["customer"]["name"],
        "units": sum(line["quantity"] for line in reservation["items"]),
        "total": order["total"],
    }


def proxy(endpoint: str, service: str) -> RemoteRpcProxyNode:
    config = RemoteRpcProxyConfig(
        endpoint=endpoint, transport="http", service=service, request_timeout=15.0
    )
    return RemoteRpcProxyNode(config=config, name=service)


def build_graph(endpoint: str) -> tuple[Graph, list[RemoteRpcProxyNode]]:
    customer, inventory, orders = (proxy(endpoint, s) for s in ("customer", "inventory", "order"))
    reserve_inventory = proxy(endpoint, "inventory")
    cancel_orders = proxy(endpoint, "order")
    start = Local("validate", validate)
    (
        start
        >> customer
        >> Local("to_inventory", to_inventory)
        >> inventory
        >> Local("to_order", to_order)
        >> orders
        >> Reserve(reserve_inventory, cancel_orders)
        >> Local("report", report)
    )
    graph = Graph(start=start, name="order-workflow")
    return graph, [customer, inventory, orders, reserve_inventory, cancel_orders]


# -- orders ------------------------------------------------------------------------------------


def make_orders(n: int, seed: int = 7) -> list[dict]:
    """Deterministic orders; every 10th is invalid, every 23rd names an unknown customer,
    every 8th wants two of the limited-edition lamp (8 in stock: it sells out)."""
    rng = random.Random(seed)
    invalid = [
        lambda o: {**o, "items": []},
        lambda o: {**o, "items": [{"sku": "SKU-KB-01", "quantity": 0}]},
        lambda o: {k: v for k, v in o.items() if k != "customer_id"},
        lambda o: {**o, "items": [{"sku": "SKU-CB-10", "quantity": 50}]},
    ]
    orders = []
    for i in range(n):
        customer = catalog.customer_id(rng.randint(1, catalog.CUSTOMER_COUNT))
        skus = rng.sample(catalog.REGULAR_SKUS, rng.randint(1, 3))
        items = [{"sku": sku, "quantity": rng.randint(1, 3)} for sku in skus]
        if i % 8 == 0:
            items.append({"sku": catalog.LIMITED_SKU, "quantity": 2})
        order = {"customer_id": customer, "items": items}
        if i % 10 == 7:
            order = invalid[(i // 10) % len(invalid)](order)
        elif i % 23 == 11:
            order["customer_id"] = f"cust-9{i:03d}"
        orders.append(order)
    return orders


@dataclass
class Outcome:
    index: int
    ok: bool
    ms: float
    reason: str | None = None
    detail: str = ""
    result: dict = field(default_factory=dict)


def reason_of(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, OrderRejected):
        return exc.reason, exc.detail
    if isinstance(exc, RpcError):
        data = exc.data if isinstance(exc.data, dict) else {}
        if isinstance(exc, RpcTimeoutError):
            return "timeout", exc.message
        if exc.code == OUT_OF_STOCK:
            return "out_of_stock", f"{exc.message} (reservation)"
        if exc.code == NOT_FOUND and "customer_id" in data:
            return "unknown_customer", data["customer_id"]
        if exc.code == NOT_FOUND and "sku" in data:
            return "unknown_sku", data["sku"]
        return f"rpc_error_{exc.code}", exc.message
    if isinstance(exc, TransportError):
        return "transport", str(exc)
    return f"bug_{type(exc).__name__}", str(exc)


async def run_orders(
    graph: Graph,
    orders: list[dict],
    concurrency: int,
    show: Callable[[Outcome, dict], None],
) -> tuple[list[Outcome], float]:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, order: dict) -> Outcome:
        async with gate:
            started = time.perf_counter()
            try:
                out = await graph.run(order)
            except Exception as exc:
                reason, detail = reason_of(exc)
                outcome = Outcome(i, False, (time.perf_counter() - started) * 1000, reason, detail)
            else:
                outcome = Outcome(
                    i, True, (time.perf_counter() - started) * 1000, result=out.content
                )
            show(outcome, order)
            return outcome

    started = time.perf_counter()
    outcomes = await asyncio.gather(*(one(i, o) for i, o in enumerate(orders)))
    return outcomes, time.perf_counter() - started


# -- printing ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def say(*args: Any, **kwargs: Any) -> None:
    """print(), going quiet when the reader went away (`python -m workers.demo | head`): the
    run still finishes and stops its worker processes."""
    try:
        print(*args, **kwargs, flush=True)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")  # lives as long as the process


def printer(every: int) -> Callable[[Outcome, dict], None]:
    def show(o: Outcome, order: dict) -> None:
        if o.ok and o.index % every:
            return
        if o.ok:
            r = o.result
            text = (
                f"ok      {r['order_id']}  {order['customer_id']} {r['customer']:<20.20} "
                f"{r['units']:>2} units  ${r['total']:>9,.2f}"
            )
        else:
            text = f"FAILED  {o.reason}: {o.detail}"[:72]
        say(f"  #{o.index:04d} {text:<72} {o.ms:7.1f} ms")

    return show


def summary(outcomes: list[Outcome], seconds: float, concurrency: int, stock: dict) -> str:
    failed = Counter(o.reason for o in outcomes if not o.ok)
    latencies = [o.ms for o in outcomes]
    ok_latencies = [o.ms for o in outcomes if o.ok]
    n = len(outcomes)
    lamp = catalog.LIMITED_SKU
    lines = [
        "",
        "Summary",
        f"  orders       {n} in {seconds:.2f} s, {concurrency} at a time",
        f"  throughput   {n / seconds if seconds else 0:.1f} orders/s",
        f"  succeeded    {n - sum(failed.values())}",
        f"  failed       {sum(failed.values())}"
        + (
            "  (" + ", ".join(f"{reason} {count}" for reason, count in failed.most_common()) + ")"
            if failed
            else ""
        ),
        f"  latency      p50 {percentile(latencies, 50):.1f} ms   "
        f"p99 {percentile(latencies, 99):.1f} ms   (all orders)",
        f"               p50 {percentile(ok_latencies, 50):.1f} ms   "
        f"p99 {percentile(ok_latencies, 99):.1f} ms   (succeeded: 4 remote calls each)",
    ]
    if stock:
        left = stock["stock"].get(lamp, 0)
        lines.append(
            f"  inventory    {lamp}: {left} left, {stock['reserved'].get(lamp, 0)} reserved"
            + ("" if left >= 0 else "  OVERSOLD")
        )
    return "\n".join(lines)


# -- infrastructure ---------------------------------------------------------------------------


class StartupError(Exception):
    pass


@contextlib.asynccontextmanager
async def embedded(replicas: int, port: int) -> AsyncIterator[tuple[str, str]]:
    """Workers and an edge in this process, on a private embedded broker."""
    from spark.runtime.edge import EdgeConfig, EdgeServer
    from spark.runtime.worker import run_worker
    from workers.customer import CustomerRpcNode
    from workers.inventory import InventoryRpcNode
    from workers.order import OrderRpcNode

    url = f"memory://demo-{uuid.uuid4().hex[:8]}"
    stop = asyncio.Event()
    tasks: list[asyncio.Task] = []
    nodes = []
    edge = None
    try:
        for cls in (CustomerRpcNode, InventoryRpcNode, OrderRpcNode):
            for _ in range(replicas):
                node = cls()
                nodes.append(node)
                ready = asyncio.Event()
                tasks.append(
                    asyncio.create_task(
                        run_worker(node, url=url, stop=stop, ready=ready, concurrency=32)
                    )
                )
                await asyncio.wait_for(ready.wait(), 10)
        edge = await EdgeServer(EdgeConfig(redis_url=url, host="127.0.0.1", port=port)).start()
        yield url, edge.url
    finally:
        if edge is not None:
            await edge.stop()
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for node in nodes:
            await node.aclose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(endpoint: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{endpoint}/health", timeout=2) as response:
            return orjson.loads(response.read())
    except OSError:
        return None


def _spawn(url: str, replicas: int, port: int) -> tuple[list[subprocess.Popen], list[Any]]:
    # The repository root: `workers` is not part of the installed package.
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "SPARK_LOG_LEVEL": os.environ.get("SPARK_LOG_LEVEL", "WARNING")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    commands = [
        [sys.executable, "-m", "spark.cli.worker", target, "--redis", url, "--concurrency", "32"]
        for target in SERVICES.values()
        for _ in range(replicas)
    ]
    commands.append([sys.executable, "-m", "spark.cli.edge", "--redis", url, "--port", str(port)])
    # Their logs go to files, not pipes: a full pipe would stall a chatty process.
    logs = [tempfile.TemporaryFile("w+") for _ in commands]
    procs = [
        subprocess.Popen(cmd, cwd=root, env=env, stderr=log)
        for cmd, log in zip(commands, logs, strict=True)
    ]
    return procs, logs


async def _check_reachable(url: str) -> None:
    from spark.broker import connect

    client = connect(url, max_connections=1)
    try:
        async with asyncio.timeout(5):
            await client.ping()
    except Exception as exc:
        raise StartupError(f"Redis at {describe(url)} is not reachable: {exc}") from None
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def processes(url: str, replicas: int, port: int) -> AsyncIterator[tuple[str, str]]:
    """`spark-worker` processes per service and a `spark-edge` process, against `url`."""
    await _check_reachable(url)
    port = port or _free_port()
    procs, logs = _spawn(url, replicas, port)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            dead = [i for i, p in enumerate(procs) if p.poll() is not None]
            if dead:
                logs[dead[0]].seek(0)
                err = logs[dead[0]].read().strip()[-500:]
                raise StartupError(f"{' '.join(procs[dead[0]].args[2:4])} exited: {err}")
            health = await asyncio.to_thread(_health, endpoint)
            services = (health or {}).get("services", {})
            if all(services.get(s, 0) >= replicas for s in SERVICES):
                break
            if time.monotonic() > deadline:
                raise StartupError(f"services not healthy after 30 s: {health}")
            await asyncio.sleep(0.1)
        yield url, endpoint
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                await asyncio.to_thread(p.wait, 20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in logs:
            log.close()


# -- main ---------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> int:
    orders = make_orders(args.orders, args.seed)
    every = args.every or (1 if args.orders <= 50 else 10)
    if args.redis:
        infra = processes(args.redis, args.replicas or 1, args.port)
        where = f"{describe(args.redis)} with spark-worker and spark-edge processes"
    else:
        infra = embedded(args.replicas or 2, args.port)
        where = "the embedded broker (in-process workers and edge)"
    say(f"Spark RPC demo: {args.orders} orders, {args.concurrency} at a time, on {where}")
    try:
        async with infra as (url, endpoint):
            graph, proxies = build_graph(endpoint)
            try:
                await proxies[0].call("seed", {"reset": True})
                await proxies[1].call("seed", {"reset": True})
                say(f"  broker {describe(url)}, edge {endpoint}")
                say(
                    "  graph: "
                    + " >> ".join(
                        n.name + ("" if isinstance(n, RemoteRpcProxyNode) else " (local)")
                        for n in graph.nodes
                    )
                )
                shown = "every order" if every == 1 else f"every {every}th order and all failures"
                say(f"  showing {shown}\n")
                outcomes, seconds = await run_orders(
                    graph, orders, args.concurrency, printer(every)
                )
                stock = await proxies[1].call("get_stock", {})
            finally:
                for p in proxies:
                    await p.aclose()
    except (StartupError, OSError, TimeoutError, TransportError) as exc:
        print(f"demo: could not run the services: {exc}", file=sys.stderr)
        return 2
    say(summary(outcomes, seconds, args.concurrency, stock))
    faults = [o for o in outcomes if not o.ok and o.reason not in BY_DESIGN]
    if faults:
        print(f"\n{len(faults)} orders failed for infrastructure reasons", file=sys.stderr)
        return 1
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m workers.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--redis", help="run against this Redis with worker and edge processes")
    p.add_argument("--orders", type=int, default=200, help="default %(default)s")
    p.add_argument("--concurrency", type=int, default=20, help="default %(default)s")
    p.add_argument(
        "--replicas", type=int, help="workers per service (default 2, or 1 with --redis)"
    )
    p.add_argument("--port", type=int, default=0, help="edge port (default: a free one)")
    p.add_argument("--every", type=int, help="print every k-th success (failures always)")
    p.add_argument("--seed", type=int, default=7, help="seed of the generated orders")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.orders < 1 or args.concurrency < 1:
        raise SystemExit("--orders and --concurrency must be at least 1")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
