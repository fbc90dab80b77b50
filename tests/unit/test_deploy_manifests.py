"""deploy/k8s/ holds together: every manifest loads, every Deployment has probes, a
PodDisruptionBudget and secrets that exist, its command is one our CLIs accept, and the
worker pools are the same as compose.yaml's. No cluster needed: YAML and our parsers only."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

from spark.broker.keys import default_service_name
from spark.cli import edge as edge_cli
from spark.cli import worker as worker_cli

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
API_VERSIONS = {
    "Deployment": "apps/v1",
    "Service": "v1",
    "PodDisruptionBudget": "policy/v1",
    "Secret": "v1",
}
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def load_all() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


DOCS = load_all()


def of_kind(kind: str) -> list[dict]:
    return [d for d in DOCS if d["kind"] == kind]


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def test_every_manifest_is_well_formed():
    assert {d["kind"] for d in DOCS} == set(API_VERSIONS)
    seen = set()
    for doc in DOCS:
        assert doc["apiVersion"] == API_VERSIONS[doc["kind"]], doc["metadata"]
        name = doc["metadata"]["name"]
        assert DNS_1123.match(name) and len(name) <= 63, name
        assert (doc["kind"], name) not in seen, name
        seen.add((doc["kind"], name))


@pytest.mark.parametrize("deployment", of_kind("Deployment"), ids=lambda d: d["metadata"]["name"])
def test_deployment(deployment):
    spec = deployment["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"] and matches(spec["selector"]["matchLabels"], labels)
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    c = container(deployment)
    assert c["image"] and c["command"]
    assert c["readinessProbe"] and c["livenessProbe"], "liveness and readiness probes"
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # A PodDisruptionBudget keeps some of it up through node drains.
    budgets = [
        p
        for p in of_kind("PodDisruptionBudget")
        if matches(p["spec"]["selector"]["matchLabels"], labels)
    ]
    assert len(budgets) == 1 and budgets[0]["spec"]["minAvailable"] >= 1
    # Secrets come from a Secret that the example defines, key by key.
    secrets = {s["metadata"]["name"]: s for s in of_kind("Secret")}
    for var in env_of(c).values():
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["key"] in secrets[ref["name"]]["stringData"], ref
    # Every volume mounted is declared.
    volumes = {v["name"] for v in pod.get("volumes", [])}
    assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes


def workers() -> list[dict]:
    return [d for d in of_kind("Deployment") if container(d)["command"][0] == "spark-worker"]


@pytest.mark.parametrize("deployment", workers(), ids=lambda d: d["metadata"]["name"])
def test_worker_pool(deployment):
    c = container(deployment)
    args = worker_cli.parser().parse_args(c["command"][1:])
    module, _, name = args.target.partition(":")
    cls = getattr(importlib.import_module(module), name)
    service = args.service or default_service_name(cls.__name__)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == service
    env = env_of(c)
    assert "secretKeyRef" in env["SPARK_REDIS_URL"]["valueFrom"]
    # The probes test this pod's own workers, recorded in a directory the pod mounts.
    health_dir = env["SPARK_HEALTH_DIR"]["value"]
    assert health_dir in {m["mountPath"] for m in c["volumeMounts"]}
    for probe in ("readinessProbe", "livenessProbe"):
        command = c[probe]["exec"]["command"]
        assert command[0] == "spark-worker" and worker_cli.parser().parse_args(command[1:]).check
    # Drains get the whole --grace before a SIGKILL.
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > args.grace


def test_worker_pools_are_compose_pools():
    text = re.sub(r"\$\{[A-Z_]+(?::\?[^}]*)?\}", "x", (ROOT / "compose.yaml").read_text())
    compose = yaml.safe_load(text)["services"]
    in_compose = {
        name: svc["command"]
        for name, svc in compose.items()
        if svc.get("command", [""])[0] == "spark-worker"
    }
    in_k8s = {
        d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: container(d)[
            "command"
        ]
        for d in workers()
    }
    assert in_k8s == in_compose


def test_edge():
    (deployment,) = [d for d in of_kind("Deployment") if container(d)["command"][0] == "spark-edge"]
    c = container(deployment)
    args = edge_cli.parser().parse_args(c["command"][1:])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == args.port and args.host == "0.0.0.0"
    env = env_of(c)
    assert "secretKeyRef" in env["SPARK_EDGE_TOKENS"]["valueFrom"]
    assert "secretKeyRef" in env["SPARK_REDIS_URL"]["valueFrom"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (service,) = of_kind("Service")
    assert matches(service["spec"]["selector"], labels)
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
