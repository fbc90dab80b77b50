"""compose.yaml is true: every service's own command, run as a local process, serves.

No Docker engine here, so the test parses compose.yaml (with the secrets a `.env` would
give it), starts each service's `command` with its `environment` (unchanged but for
addresses: the Redis host and port, the edge's port and bind address, each service's own
health directory as a container's own /tmp would be, and the Python/console-script paths of
this virtualenv) as many times as its replicas, runs every healthcheck's own command until
it passes, drives one request through the edge (with a bearer token) to every service, then
SIGTERMs everything and expects clean exits.
"""

from __future__ import annotations

import json
import os
import re
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
#: What `.env` gives compose (see .env.example).
DOTENV = {"REDIS_PASSWORD": "compose-test-secret", "SPARK_EDGE_TOKENS": "compose-test-token"}
COMPOSE_URL = f"redis://:{DOTENV['REDIS_PASSWORD']}@redis:6379/0"
HEALTH_DIR = "/tmp/spark-health"
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


def interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's `${NAME}` and `${NAME:?message}` (a missing value is an error there too)."""

    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            raise AssertionError(f"compose.yaml needs {name}, which .env.example lacks")
        return values[name]

    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(?::\?[^}]*)?\}", value, text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(interpolate((ROOT / "compose.yaml").read_text(), DOTENV))


def test_env_example_names_every_secret_compose_needs():
    example = (ROOT / ".env.example").read_text()
    names = {line.split("=", 1)[0] for line in example.splitlines() if re.match(r"^[A-Z_]+=", line)}
    needed = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", (ROOT / "compose.yaml").read_text()))
    assert needed <= names and "SPARK_EDGE_TOKENS" in names
    for ignore in (".gitignore", ".dockerignore"):
        assert ".env" in (ROOT / ignore).read_text().split(), ignore


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
    for name, svc in services.items():
        assert svc["restart"] in ("unless-stopped", "always"), name
    redis_svc = services["redis"]
    assert redis_svc["image"].startswith("redis:7")
    cmd = redis_svc["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--requirepass") + 1] == DOTENV["REDIS_PASSWORD"]
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis_svc["environment"]["REDISCLI_AUTH"] == DOTENV["REDIS_PASSWORD"]
    assert redis_svc["healthcheck"]["test"][0] == "CMD-SHELL"
    assert any(v.endswith(":/data") for v in redis_svc["volumes"])

    edge = services["edge"]
    assert "8000:8000" in edge["ports"]
    assert edge["command"][0] == "spark-edge" and "/health" in " ".join(edge["healthcheck"]["test"])
    assert edge["depends_on"]["redis"]["condition"] == "service_healthy"
    # The token comes from the env file, never from this file or the command line.
    assert edge["env_file"] == [".env"] and "SPARK_EDGE_TOKENS" not in edge["environment"]
    assert not any("token" in arg for arg in edge["command"])
    assert edge["environment"]["SPARK_REDIS_URL"] == COMPOSE_URL

    for name in WORKERS:
        svc = services[name]
        cmd = svc["command"]
        assert cmd[0] == "spark-worker" and cmd[1].startswith("workers."), name
        assert "--redis" not in cmd, name  # the password stays in the environment
        assert svc["environment"]["SPARK_REDIS_URL"] == COMPOSE_URL
        assert svc["environment"]["SPARK_HEALTH_DIR"] == HEALTH_DIR
        assert svc["environment"]["SPARK_METRICS_PORT"] == "9100", name
        assert svc["deploy"]["replicas"] >= 2, name
        # Its own workers' heartbeats; nothing imported or built by the check.
        assert svc["healthcheck"]["test"] == ["CMD", "spark-worker", "--check"], name
        assert svc["build"] == "." and svc["depends_on"]["redis"]["condition"] == "service_healthy"
        # The service name in compose is the one spark-worker derives from the class.
        assert name == _service_name(cmd[1])


def _service_name(target: str) -> str:
    from spark.broker.keys import default_service_name

    return default_service_name(target.split(":")[1])


def test_dockerfile_builds_what_compose_runs():
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "pip install" in text and "USER spark" in text
    # No embedded broker (fakeredis) in a deployed image: it is an extra, never installed.
    steps = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert "[embedded]" not in steps and "fakeredis" not in steps
    project = (ROOT / "pyproject.toml").read_text()
    deps = project.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert "fakeredis" not in deps
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


# -- running it -------------------------------------------------------------------------------


class Stack:
    def __init__(self, compose: dict[str, Any]):
        self.compose = compose
        self.dir = Path(tempfile.mkdtemp(prefix="spark-compose-"))
        self.redis_port = free_port()
        self.edge_port = free_port()
        self.url = f"redis://:{DOTENV['REDIS_PASSWORD']}@127.0.0.1:{self.redis_port}/0"
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

    def service_env(self, name: str) -> dict[str, str]:
        """The service's environment (and env file), with local addresses."""
        svc = self.compose["services"][name]
        env = dict(self.env)
        env.pop("SPARK_REDIS_URL", None)  # only what compose gives the service
        if svc.get("env_file"):
            env.update(DOTENV)
        for key, value in (svc.get("environment") or {}).items():
            value = str(value).replace(COMPOSE_URL, self.url)
            if value == HEALTH_DIR:  # a container's own /tmp
                value = str(self.dir / f"{name}-health")
            env[key] = value
        return env

    def start(self, name: str, argv: list[str]) -> None:
        env = self.service_env(name)
        if "SPARK_METRICS_PORT" in env:
            # Replicas share this host here (not one container each): free ports instead.
            env["SPARK_METRICS_PORT"] = "0"
        with open(self.dir / f"{name}-{len(self.procs)}.log", "w") as log:
            proc = subprocess.Popen(
                self.local(argv), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.procs.append((name, proc))

    def healthy(self, name: str) -> bool:
        test = self.compose["services"][name]["healthcheck"]["test"]
        if test[0] == "CMD-SHELL":
            shell = test[1].replace("redis-cli ", f"redis-cli -p {self.redis_port} ")
            argv = ["sh", "-c", shell]
        else:
            assert test[0] == "CMD"
            argv = self.local(test[1:])
        done = subprocess.run(
            argv, cwd=ROOT, env=self.service_env(name), capture_output=True, timeout=20
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
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {DOTENV['SPARK_EDGE_TOKENS']}",
        },
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.loads(response.read())
    assert "error" not in reply, (service, method, reply)
    return reply["result"]


def test_every_service_runs_from_its_compose_command(compose):
    services = compose["services"]
    stack = Stack(compose)
    try:
        stack.start("redis", services["redis"]["command"])
        wait_until(lambda: stack.healthy("redis"), timeout=15, what="redis healthcheck")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=stack.redis_port).ping()
        client = redis.Redis.from_url(stack.url)
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"

        for name in ["edge", *sorted(WORKERS)]:
            svc = services[name]
            replicas = svc.get("deploy", {}).get("replicas", 1)
            for _ in range(replicas):
                stack.start(name, svc["command"])
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
