"""Starting real `spark-worker` processes for integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from support.redis_cluster import sync_client
from support.redis_server import wait_until

TESTS_DIR = Path(__file__).resolve().parent.parent
#: The repository root, for `workers` (example services, not part of the installed package).
REPO_ROOT = TESTS_DIR.parent


def env() -> dict[str, str]:
    e = dict(os.environ)
    path = [str(TESTS_DIR), str(REPO_ROOT), e.get("PYTHONPATH", "")]
    e["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    e.setdefault("SPARK_LOG_LEVEL", "WARNING")
    return e


def live_workers(url: str, service: str) -> int:
    import time

    client = sync_client(url)
    try:
        return client.zcount(f"spark:{{{service}}}:workers", time.time(), "+inf")
    finally:
        client.close()


class WorkerProcess:
    def __init__(
        self,
        target: str,
        url: str,
        *args: str,
        service: str | None = None,
        cwd: str | None = None,
    ):
        self.service = service
        cmd = [sys.executable, "-m", "spark.cli.worker", target, "--redis", url, *args]
        if service:
            cmd += ["--service", service]
        self.url = url
        # Its own process group: stop() takes a supervisor's children with it (a SIGKILLed
        # supervisor cannot forward anything, and its orphans would serve later tests).
        self.proc = subprocess.Popen(cmd, env=env(), cwd=cwd, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, count: int = 1, timeout: float = 15.0) -> WorkerProcess:
        wait_until(
            lambda: live_workers(self.url, self.service) >= count or self.proc.poll() is not None,
            timeout=timeout,
            what=f"{count} live worker(s) of {self.service}",
        )
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}")
        return self

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        self.stop()

    def terminate(self, timeout: float = 30.0) -> int:
        self.signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """SIGKILL the process and everything it started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
