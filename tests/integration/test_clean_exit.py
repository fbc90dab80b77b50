"""A script that never closes its proxy exits at once and quietly, on every transport.

The user's pattern from the seed: a proxy made, one call (directly or inside a `Graph`),
no `aclose()`, under `asyncio.run(main())`. Each case is a fresh interpreter run with
`-X dev -W error` (asyncio debug mode, every warning an error), against a real Redis,
a real `spark-worker` and a real `spark-edge`. It must exit 0 with nothing on stderr.

The time from the script's last call to its exit is measured and bounded generously (the
test machine is shared and loaded); what the bound catches is a shutdown that waits on
something (a blocking read, a reconnect loop), which takes whole seconds or forever.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.lab import EdgeProcess
from support.processes import WorkerProcess, env

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "analysis"
#: Seconds from the last call to the process's exit; generous for a loaded machine (a
#: hang is forever, a blocking read left behind costs its whole block time per reader).
EXIT_BUDGET = 5.0

SCRIPT = """
import asyncio, sys, time
from spark import Graph, GraphState, RedisBackend, RemoteRpcProxyConfig, RemoteRpcProxyNode
from spark.nodes.types import ExecutionContext, NodeMessage

TRANSPORT, MODE, EDGE = sys.argv[1], sys.argv[2], sys.argv[3]


def config():
    if TRANSPORT == "redis":
        return RemoteRpcProxyConfig(transport="redis", service="analysis")
    return RemoteRpcProxyConfig(endpoint=EDGE + "/analysis", transport=TRANSPORT)


async def main():
    proxy = RemoteRpcProxyNode(config=config())
    request = {"method": "analyze", "text": "to be or not"}
    if MODE == "direct":
        out = await proxy.process(ExecutionContext(inputs=NodeMessage(content=request)))
    elif MODE == "graph":
        out = (await Graph(start=proxy).run(request)).content
    elif MODE == "state":  # a Redis-backed GraphState nobody closes either
        state = GraphState(backend=RedisBackend(namespace="exit-test"))
        await state.set("seen", True)
        out = (await Graph(start=proxy, state=state).run(request)).content
    elif MODE == "leak":  # a client used directly and dropped, never closed
        params = {"text": request["text"]}
        if TRANSPORT == "redis":
            from spark.client.broker_client import BrokerClient

            out = await BrokerClient().call("analysis", "analyze", params, timeout=30)
        else:
            from spark.client.http import HttpTransport
            from spark.client.websocket import WebSocketTransport

            cls = HttpTransport if TRANSPORT == "http" else WebSocketTransport
            out = await cls(EDGE + "/analysis").call("analyze", params, deadline=time.time() + 30)
    else:  # "with": the README's form
        async with Graph(start=proxy) as graph:
            out = (await graph.run(request)).content
    assert out == {"words": 4, "success": True}, out
    print(f"LAST-CALL {time.time()}", flush=True)


asyncio.run(main())
"""

# asyncio's debug mode (-X dev) reports callbacks that held the loop over 100 ms (imports
# on first use, a busy machine); that is timing noise, not a leak, so only those lines are
# set aside.
SLOW_CALLBACK = re.compile(r"^Executing <.*> took \d+\.\d+ seconds$")


@pytest.fixture(scope="module")
def services(redis_server, tmp_path_factory):
    url = redis_server.url
    worker = WorkerProcess(
        "examples.ten_lines:AnalysisRpcNode", url, service=SERVICE, cwd=str(ROOT)
    ).wait_ready()
    edge = EdgeProcess(url, service=SERVICE).start()
    script = tmp_path_factory.mktemp("exit") / "user_script.py"
    script.write_text(SCRIPT)
    try:
        yield url, edge.http, script
    finally:
        edge.stop()
        worker.stop()


@pytest.mark.parametrize("mode", ["direct", "graph", "with", "state", "leak"])
@pytest.mark.parametrize("transport", ["redis", "http", "websocket"])
def test_script_exits_at_once_with_nothing_on_stderr(services, transport, mode):
    url, edge, script = services
    environ = {**env(), "SPARK_REDIS_URL": url, "PYTHONWARNINGS": "error"}
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(script), transport, mode, edge],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    exited = time.time()
    stderr = [line for line in proc.stderr.splitlines() if not SLOW_CALLBACK.match(line)]
    assert proc.returncode == 0, proc.stderr
    assert stderr == [], proc.stderr
    last_call = float(re.search(r"LAST-CALL (\S+)", proc.stdout).group(1))
    assert exited - last_call < EXIT_BUDGET, f"exited {exited - last_call:.2f}s after its last call"
