"""Runs N copies of a command (worker processes) and keeps them running.

A child that dies is restarted with a growing delay; SIGTERM/SIGINT are forwarded to every
child, which drains and exits; the supervisor exits 0 once all of them exited cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time

from spark.broker.retrying import Backoff

log = logging.getLogger("spark.supervisor")

MAX_RESTART_DELAY = 30.0
#: Environment variable giving each child its slot number (0..processes-1).
INDEX_ENV = "SPARK_WORKER_INDEX"


class Supervisor:
    def __init__(self, argv: list[str], processes: int, *, grace: float = 30.0):
        self.argv = argv
        self.processes = processes
        self.grace = grace
        self._stopping = asyncio.Event()
        self._children: dict[int, asyncio.subprocess.Process] = {}

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> int:
        slots = [asyncio.create_task(self._keep(i)) for i in range(self.processes)]
        await self._stopping.wait()
        for proc in list(self._children.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        _done, pending = await asyncio.wait(slots, timeout=self.grace + 5)
        for proc in list(self._children.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        if pending:
            await asyncio.wait(pending)
        codes = [t.result() for t in slots if not t.cancelled()]
        return 0 if all(c == 0 for c in codes) else 1

    async def _keep(self, slot: int) -> int:
        # The project's one backoff policy: jittered exponential waits up to
        # MAX_RESTART_DELAY, cut short by stop(), logged at a steady rate.
        restarts = Backoff(
            f"worker process {slot}",
            logger=log,
            retry_on=(),
            base=0.5,
            max_wait=MAX_RESTART_DELAY,
            stopping=self._stopping,
        )
        while True:
            # Tells child `slot` which it is (spark-worker serves metrics on port + slot).
            env = {**os.environ, INDEX_ENV: str(slot)}
            proc = await asyncio.create_subprocess_exec(*self.argv, env=env)
            self._children[slot] = proc
            log.info("worker process %d started (pid %d)", slot, proc.pid)
            began = time.monotonic()
            code = await proc.wait()
            if time.monotonic() - began > 2 * MAX_RESTART_DELAY:
                restarts.succeeded()  # it ran a good while: a new crash starts the waits over
            self._children.pop(slot, None)
            if self._stopping.is_set():
                return code if code >= 0 else 0 if code == -signal.SIGTERM else code
            await restarts.pause(ChildProcessError(f"pid {proc.pid} exited with {code}"))
            if self._stopping.is_set():
                return 0
