"""compose.yaml is true: every service's own command, run as a local process, serves.

No Docker engine here, so the test parses compose.yaml, starts each service's `command`
(unchanged but for addresses: the Redis URL, the edge's port and bind address, and the
Python/console-script paths of this virtualenv) as many times as its replicas, runs every
healthcheck's own command until it passes, drives one request through the edge to every
service, then SIGTERMs everything and expects clean exits.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from support import processes
from support.redis_server import free_port, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_URL = "redis://redis:6379/0"
EDGE_PORT = "8000"
WORKERS = {
    "customer",
    "order",
    "inventory",
    "data-processing",
    "ml-inference",
    "cache",
    "logging",
    "analytics",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    with open(ROOT / "compose.yaml") as f:
        return yaml.safe_load(f)


# -- structure ------------------------------------------------------------------------------


def test_structure(compose):
    services = compose["services"]
    assert set(services) == {"redis", "edge", "prometheus", *WORKERS}
    # Prometheus is optional (a profile) and scrapes every worker it is told of.
    assert services["prometheus"]["profiles"] == ["observability"]
    with open(ROOT / "deploy" / "prometheus.yml") as f:
        scrape = {job["job_name"]: job for job in yaml.safe_load(f)["scrape_configs"]}
    (sd,) = scrape["spark-worker"]["dns_sd_configs"]
    assert set(sd["names"]) == WORKERS and sd["port"] == 9100
    assert scrape["spark-edge"]["static_configs"][0]["targets"] == [f"edge:{EDGE_PORT}"]
    redis_svc = services["redis"]
    assert redis_svc["image"].startswith("redis:7")
    cmd = redis_svc["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert redis_svc["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert any(v.endswith(":/data") for v in redis_svc["volumes"])

    edge = services["edge"]
    assert "8000:8000" in edge["ports"]
    assert edge["command"][0] == "spark-edge" and "/health" in " ".join(edge["healthcheck"]["test"])
    assert edge["depends_on"]["redis"]["condition"] == "service_healthy"

    for name in WORKERS:
        svc = services[name]
        cmd = svc["command"]
        assert cmd[0] == "spark-worker" and cmd[1].startswith("workers."), name
        assert cmd[cmd.index("--redis") + 1] == COMPOSE_URL
        assert svc["environment"]["SPARK_REDIS_URL"] == COMPOSE_URL
        assert svc["deploy"]["replicas"] >= 2, name
        check = svc["healthcheck"]["test"]
        assert check[:3] == ["CMD", "spark-worker", cmd[1]] and "--check" in check, name
        assert svc["build"] == "." and svc["depends_on"]["redis"]["condition"] == "service_healthy"
        # The service name in compose is the one spark-worker derives from the class.
        assert name == _service_name(cmd[1])
        assert svc["environment"]["SPARK_METRICS_PORT"] == "9100", name


def _service_name(target: str) -> str:
    from spark.broker.keys import default_service_name

    return default_service_name(target.split(":")[1])


def test_dockerfile_builds_what_compose_runs():
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "pip install" in text and "USER spark" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


# -- running it -------------------------------------------------------------------------------


class Stack:
    def __init__(self, compose: dict[str, Any]):
        self.compose = compose
        self.dir = Path(tempfile.mkdtemp(prefix="spark-compose-"))
        self.redis_port = free_port()
        self.edge_port = free_port()
        self.url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.procs: list[tuple[str, subprocess.Popen]] = []
        bindir = str(Path(sys.executable).parent)
        self.env = processes.env()
        self.env["PATH"] = os.pathsep.join([bindir, self.env.get("PATH", "")])

    def local(self, argv: list[str]) -> list[str]:
        """The command with local addresses: Redis URL, edge port/bind, interpreter."""
        out = []
        for arg in argv:
            arg = arg.replace(COMPOSE_URL, self.url)
            arg = arg.replace(f"127.0.0.1:{EDGE_PORT}/", f"127.0.0.1:{self.edge_port}/")
            out.append(arg)
        if out[0] == "python":
            out[0] = sys.executable
        if "spark-edge" in out[0]:
            out[out.index("--port") + 1] = str(self.edge_port)
            out[out.index("--host") + 1] = "127.0.0.1"
        if out[0] == "redis-server":
            out += ["--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        if out[0] == "redis-cli":
            out[1:1] = ["-p", str(self.redis_port)]
        return out

    def start(self, name: str, argv: list[str], extra_env: dict[str, str]) -> None:
        env = {**self.env, **{k: str(v) for k, v in extra_env.items()}}
        if "SPARK_METRICS_PORT" in env:
            # Replicas share this host here (not one container each): free ports instead.
            env["SPARK_METRICS_PORT"] = "0"
        env.pop("SPARK_REDIS_URL", None)  # --redis (rewritten) is what must work
        with open(self.dir / f"{name}-{len(self.procs)}.log", "w") as log:
            proc = subprocess.Popen(
                self.local(argv), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.procs.append((name, proc))

    def healthy(self, name: str) -> bool:
        test = self.compose["services"][name]["healthcheck"]["test"]
        assert test[0] == "CMD"
        done = subprocess.run(
            self.local(test[1:]), cwd=ROOT, env=self.env, capture_output=True, timeout=20
        )
        return done.returncode == 0

    def alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}: {self.log(name)}")

    def log(self, name: str) -> str:
        return "\n".join(p.read_text()[-2000:] for p in self.dir.glob(f"{name}-*.log"))

    def stop(self) -> dict[str, list[int]]:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, list[int]] = {}
        for name, proc in self.procs:
            try:
                codes.setdefault(name, []).append(proc.wait(timeout=40))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.setdefault(name, []).append(proc.wait())
        return codes

    def cleanup(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def rpc(port: int, service: str, method: str, params: Any, timeout: float = 30) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/{service}",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.loads(response.read())
    assert "error" not in reply, (service, method, reply)
    return reply["result"]


def test_every_service_runs_from_its_compose_command(compose):
    services = compose["services"]
    stack = Stack(compose)
    try:
        stack.start("redis", services["redis"]["command"], {})
        wait_until(lambda: stack.healthy("redis"), timeout=15, what="redis healthcheck")
        client = redis.Redis.from_url(stack.url)
        assert client.config_get("appendonly")["appendonly"] == "yes"

        for name in ["edge", *sorted(WORKERS)]:
            svc = services[name]
            replicas = svc.get("deploy", {}).get("replicas", 1)
            for _ in range(replicas):
                stack.start(name, svc["command"], svc.get("environment", {}))
        for name in ["edge", *sorted(WORKERS)]:

            def check(name=name):
                stack.alive()
                return stack.healthy(name)

            wait_until(check, timeout=60, interval=0.2, what=f"{name} healthcheck")

        port = stack.edge_port
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health").read())
        for name in WORKERS:
            replicas = services[name]["deploy"]["replicas"]
            assert health["services"][name] == replicas, (name, health)

        customer = rpc(port, "customer", "get_customer", {"customer_id": "cust-0001"})
        assert customer["customer_id"] == "cust-0001"
        available = rpc(port, "inventory", "check_availability", {"sku": "SKU-KB-01"})
        assert available["in_stock"] is True
        items = [{"sku": "SKU-KB-01", "quantity": 1, "unit_price": 89.0}]
        order = rpc(port, "order", "create_order", {"customer_id": "cust-0001", "items": items})
        assert rpc(port, "order", "get_order", {"order_id": order["order_id"]}) == order
        reserved = rpc(
            port, "inventory", "reserve_inventory", {"order_id": order["order_id"], "items": items}
        )
        assert reserved["status"] == "reserved"
        total = rpc(
            port, "data-processing", "aggregate_data", {"data": [1, 2, 3], "aggregation": "sum"}
        )
        assert total["result"] == 6
        features = {"tenure_months": 3, "monthly_spend": 20, "support_tickets": 5, "is_premium": 0}
        prediction = rpc(
            port, "ml-inference", "predict", {"model_name": "churn", "features": features}
        )
        assert 0 < prediction["probability"] < 1
        rpc(port, "cache", "set", {"key": "compose", "value": {"ok": True}, "ttl": 60})
        assert rpc(port, "cache", "get", {"key": "compose"})["value"] == {"ok": True}
        assert rpc(port, "logging", "log", {"message": "from the compose test"}) == {
            "status": "queued"
        }
        report = rpc(
            port,
            "analytics",
            "compute_analytics",
            {"date_range": ["2024-05-01", "2024-05-03"], "metrics": ["orders"]},
        )
        assert report["days"] == 3 and report["metrics"]["orders"] > 0

        redis_proc = [p for n, p in stack.procs if n == "redis"]
        stack.procs = [(n, p) for n, p in stack.procs if n != "redis"]
        codes = stack.stop()
        assert all(c == [0] * len(c) for c in codes.values()), codes
        # The logging pool wrote the queued entry on its way out.
        assert client.xlen("shop:{logging}:entries") == 1
        client.close()
        stack.procs = [("redis", p) for p in redis_proc]
        assert stack.stop() == {"redis": [0]}
    finally:
        stack.cleanup()
