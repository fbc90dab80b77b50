"""The servers the benchmarks measure, each run in a process of its own.

    python tests/benchmarks/servers.py bare PORT          a bare aiohttp JSON echo handler
    python tests/benchmarks/servers.py node PORT          RpcNode.start_server(), no broker
    python tests/benchmarks/servers.py node PORT --redis URL   the same with a broker URL

Each prints `ready` on stdout once its port accepts connections and serves until killed.
`--loop uvloop` runs it on uvloop; `--profile FILE` runs it under cProfile and writes the
stats to FILE on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support.*

import orjson
from aiohttp import web

from support.services import LabRpcNode


async def bare_echo(request: web.Request) -> web.Response:
    """The reference: decode a JSON-RPC request, answer its params as the result."""
    doc = orjson.loads(await request.read())
    body = orjson.dumps({"jsonrpc": "2.0", "result": doc.get("params"), "id": doc.get("id")})
    return web.Response(body=body, content_type="application/json")


async def serve_bare(port: int) -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/", bare_echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def serve_node(port: int, redis_url: str | None) -> None:
    node = LabRpcNode(host="127.0.0.1", port=port, redis_url=redis_url, service="bench")
    await node.start_server()
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["bare", "node"])
    p.add_argument("port", type=int)
    p.add_argument("--redis")
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    p.add_argument("--profile", metavar="FILE", help="cProfile it; stats written on SIGTERM")
    args = p.parse_args()
    if args.profile:
        import cProfile
        import signal

        profiler = cProfile.Profile()

        def dump(*_):
            profiler.disable()
            profiler.dump_stats(args.profile)
            sys.exit(0)

        signal.signal(signal.SIGTERM, dump)
        profiler.enable()
    if args.loop == "uvloop":
        import uvloop

        uvloop.install()
    coro = serve_bare(args.port) if args.kind == "bare" else serve_node(args.port, args.redis)
    asyncio.run(coro)


if __name__ == "__main__":
    main()
