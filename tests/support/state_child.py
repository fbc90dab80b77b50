"""A separate process using GraphState, driven by a test over stdin/stdout.

    python state_child.py '<backend spec as JSON>'

The spec is {"kind": "sqlite", "path": ..., "namespace": ...} or
{"kind": "redis", "url": ..., "namespace": ...}. Like the seed's services, the process builds
its backend at start and its GraphState in a synchronous constructor, prints
{"ready": <pid>}, then answers one JSON command per line with {"ok": result} or
{"error": "..."}:

    {"op": "get", "key": k}              {"op": "set", "key": k, "value": v}
    {"op": "increment", "key": k}        {"op": "tx_increments", "key": k, "n": n}
    {"op": "exit"}

`Child` is the test side: it starts one and talks to it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from spark.state import GraphState, RedisBackend, SQLiteBackend, StateBackend


def make_backend(spec: dict[str, Any]) -> StateBackend:
    if spec["kind"] == "sqlite":
        return SQLiteBackend(spec["path"], spec.get("namespace", "default"))
    return RedisBackend(spec["url"], namespace=spec.get("namespace", "default"))


class Service:
    """Shaped like the seed's Service1RpcNode / Service2RpcNode (without the RPC part)."""

    def __init__(self, backend: StateBackend):
        self.graph_state = GraphState(backend=backend)

    async def handle(self, cmd: dict[str, Any]) -> Any:
        state, op = self.graph_state, cmd["op"]
        if op == "get":
            return await state.get(cmd["key"])
        if op == "set":
            await state.set(cmd["key"], cmd["value"])
            return None
        if op == "increment":
            return await state.increment(cmd["key"])
        if op == "tx_increments":
            started = time.perf_counter()
            for _ in range(cmd["n"]):
                async with state.transaction() as tx:
                    tx[cmd["key"]] = tx.get(cmd["key"], 0) + 1
            return time.perf_counter() - started
        raise ValueError(f"unknown op {op!r}")


async def serve(spec: dict[str, Any]) -> None:
    backend = make_backend(spec)
    service = Service(backend)
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": os.getpid()}), flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd = json.loads(line)
        if cmd["op"] == "exit":
            break
        try:
            answer = {"ok": await service.handle(cmd)}
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)
    await backend.aclose()


class Child:
    """One child process running `serve`."""

    def __init__(self, spec: dict[str, Any]):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = self.recv()["ready"]

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def recv(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"state child {self.proc.pid} exited ({self.proc.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"state child {self.proc.pid}: {answer['error']}")
        return answer

    def call(self, **cmd: Any) -> Any:
        self.send(**cmd)
        return self.recv()["ok"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(op="exit")
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


if __name__ == "__main__":
    asyncio.run(serve(json.loads(sys.argv[1])))
