"""Mistakes on the command line of `spark`, `spark-worker` and `spark-edge`, run as the real
processes: one line on stderr naming the problem, never a traceback, exit 2 (usage)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from support.processes import env

pytestmark = pytest.mark.integration

WORKER = [sys.executable, "-m", "spark.cli.worker"]
EDGE = [sys.executable, "-m", "spark.cli.edge"]
SPARK = [sys.executable, "-m", "spark.cli.operator"]
TARGET = "support.services:LabRpcNode"
NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens: a test that got this far would hang


def run(argv: list[str], *, cwd: Path | None = None, **environ: str) -> tuple[int, str]:
    e = env()
    e.pop("SPARK_REDIS_URL", None)
    e.update(environ)
    done = subprocess.run(argv, env=e, cwd=cwd, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stderr


def one_line(stderr: str, prog: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    mistakes = [line for line in lines if line.startswith(f"{prog}: ")]
    assert len(mistakes) == 1, stderr
    return mistakes[0]


@pytest.mark.parametrize(
    "argv, prog",
    [
        ([*WORKER, TARGET, "--redis", "localhost:6420"], "spark-worker"),
        ([*EDGE, "--redis", "localhost:6420"], "spark-edge"),
        ([*SPARK, "status", "--redis", "localhost:6420"], "spark status"),
        ([*SPARK, "call", "svc", "m", "--redis", "localhost:6420"], "spark call"),
        ([*SPARK, "dev", TARGET, "--redis", "localhost:6420"], "spark dev"),
    ],
)
def test_a_broker_url_without_scheme(argv, prog):
    code, err = run(argv)
    assert code == 2
    line = one_line(err, prog)
    assert "'localhost:6420' has no scheme" in line
    assert "redis://localhost:6420" in line


@pytest.mark.parametrize(
    "argv, prog",
    [([*WORKER, TARGET], "spark-worker"), ([*EDGE], "spark-edge"), ([*SPARK, "status"], "spark")],
)
def test_a_broker_url_without_scheme_from_the_environment(argv, prog):
    code, err = run(argv, SPARK_REDIS_URL="localhost:6420")
    assert code == 2
    assert "$SPARK_REDIS_URL 'localhost:6420' has no scheme" in one_line(err, prog)


def test_a_url_of_another_kind():
    code, err = run([*WORKER, TARGET, "--redis", "http://127.0.0.1:6379"])
    assert code == 2
    assert "schemes" in one_line(err, "spark-worker")


@pytest.mark.parametrize(
    "argv, prog",
    [
        ([*WORKER, TARGET, "--redis", NOWHERE, "--log-level", "verbose"], "spark-worker"),
        ([*EDGE, "--redis", NOWHERE, "--log-level", "verbose"], "spark-edge"),
        ([*SPARK, "dev", TARGET, "--log-level", "verbose"], "spark dev"),
    ],
)
def test_an_unknown_log_level(argv, prog):
    code, err = run(argv)
    assert code == 2
    line = one_line(err, prog)
    assert "'verbose' is not a log level" in line and "debug, info, warning" in line


@pytest.mark.parametrize(
    "argv, prog",
    [
        ([*WORKER, TARGET, "--redis", NOWHERE], "spark-worker"),
        ([*EDGE, "--redis", NOWHERE], "spark-edge"),
    ],
)
def test_an_unknown_log_level_from_the_environment(argv, prog):
    code, err = run(argv, SPARK_LOG_LEVEL="verbose")
    assert code == 2
    assert "$SPARK_LOG_LEVEL: 'verbose' is not a log level" in one_line(err, prog)


@pytest.fixture
def needs_arguments(tmp_path: Path) -> Path:
    (tmp_path / "needy.py").write_text(
        "from spark.nodes.rpc import RpcNode\n\n\n"
        "class NeedyRpcNode(RpcNode):\n"
        "    def __init__(self, prefix, *, size=1):\n"
        "        super().__init__()\n"
        "        self.prefix = prefix\n"
    )
    return tmp_path


@pytest.mark.parametrize(
    "argv, prog",
    [
        ([*WORKER, "needy:NeedyRpcNode", "--redis", NOWHERE], "spark-worker"),
        ([*SPARK, "dev", "needy:NeedyRpcNode"], "spark"),
    ],
)
def test_a_class_whose_init_needs_arguments(needs_arguments, argv, prog):
    code, err = run(argv, cwd=needs_arguments)
    assert code == 2
    line = one_line(err, prog)
    assert "needy:NeedyRpcNode needs arguments (prefix, *, size=1)" in line
    assert "module:factory" in line


@pytest.mark.parametrize(
    "argv, prog",
    [
        ([*WORKER, "nosuch_module:Thing", "--redis", NOWHERE], "spark-worker"),
        ([*WORKER, "support.services:NoSuchNode", "--redis", NOWHERE], "spark-worker"),
        ([*WORKER, "no-colon", "--redis", NOWHERE], "spark-worker"),
    ],
)
def test_a_target_that_cannot_be_loaded(argv, prog):
    code, err = run(argv)
    assert code == 2
    one_line(err, prog)


@pytest.mark.parametrize(
    "argv, prog",
    [
        ([*WORKER, TARGET, "--redis", NOWHERE, "--concurrency", "0"], "spark-worker"),
        ([*WORKER, TARGET, "--redis", NOWHERE, "--processes", "0"], "spark-worker"),
        ([*WORKER, TARGET, "--redis", NOWHERE, "--heartbeat", "-1"], "spark-worker"),
        ([*SPARK, "dev", TARGET, "--concurrency", "0"], "spark dev"),
    ],
)
def test_numbers_that_must_be_positive(argv, prog):
    code, err = run(argv)
    assert code == 2
    assert "must be positive" in one_line(err, prog)


@pytest.fixture
def taken_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_port_already_in_use(taken_port):
    port = str(taken_port)
    expected = f"cannot listen on 127.0.0.1:{port}: Address already in use"
    # Both have started (a banner, log lines) when binding fails: the last line says why.
    code, err = run([*EDGE, "--redis", NOWHERE, "--port", port])
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"spark-edge: {expected}"
    code, err = run([*SPARK, "dev", TARGET, "--port", port], SPARK_LOG_LEVEL="ERROR")
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"spark: {expected}"


def test_status_watch_ends_quietly_when_its_reader_goes_away(memory_url):
    proc = subprocess.Popen(
        [*SPARK, "status", "--watch", "0.05", "--redis", memory_url],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().startswith(memory_url)  # `| head -1`
        proc.stdout.close()
        assert proc.wait(timeout=30) == 0
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
