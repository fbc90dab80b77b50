"""Helpers for the failure lab (tests/lab) and the soak script (tests/lab/soak.py).

Everything here polls with deadlines; nothing sleeps a fixed time to synchronise. The two
scenario functions (`crash_scenario`, `redis_restart_scenario`) are shared by the lab tests
(small sizes) and the soak script (longer runs): they return their figures and the list of
broken invariants, and the caller asserts / reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import random
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from spark.broker.envelope import decode_reply
from spark.broker.keys import GROUP, ServiceKeys
from spark.client.broker_client import BrokerClient
from spark.errors import RpcConnectionError, RpcError, RpcTimeoutError
from support.processes import WorkerProcess, env
from support.redis_server import RedisServer, free_port, wait_until

TARGET = "support.services:LabRpcNode"


# -- reporting -------------------------------------------------------------------------------


def report(name: str, **figures: Any) -> str:
    """Print one figures line (collect them with `pytest -s tests/lab`) and return it."""

    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    line = f"LAB {name}: " + " ".join(f"{k}={fmt(v)}" for k, v in figures.items())
    print(line, flush=True)
    return line


# -- polling ---------------------------------------------------------------------------------


async def apoll(predicate, timeout: float = 10.0, what: str = "condition", interval=0.05):
    """Await `predicate()` (sync or async) until truthy or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


# -- processes -------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def raise_nofile(want: int) -> int:
    """Raise this process's open-file limit towards `want` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def http_status(port: int, path: str = "/health", timeout: float = 2.0) -> int | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        finally:
            conn.close()
    except OSError:
        return None


class EdgeProcess:
    """`python -m spark.cli.edge` on a fixed port, restartable on the same port."""

    def __init__(self, url: str, *args: str, port: int | None = None, service: str = "lab"):
        self.url = url
        self.port = port or free_port()
        self.args = ["--default-service", service, *args]
        self.proc: subprocess.Popen | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> EdgeProcess:
        cmd = [
            sys.executable,
            "-m",
            "spark.cli.edge",
            "--redis",
            self.url,
            "--port",
            str(self.port),
            *self.args,
        ]
        self.proc = subprocess.Popen(cmd, env=env(), stderr=subprocess.DEVNULL)
        wait_until(
            lambda: http_status(self.port) is not None or self.proc.poll() is not None,
            timeout=timeout,
            what=f"spark-edge on port {self.port}",
        )
        if self.proc.poll() is not None:
            raise RuntimeError(f"spark-edge exited with {self.proc.returncode}")
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        code, self.proc = self.proc.returncode, None
        return code


# -- an instrumented broker client -------------------------------------------------------------


class CountingClient(BrokerClient):
    """A BrokerClient that records which enqueues Redis acknowledged and every reply read.

    `accepted`: request ids whose envelope got a stream entry id back from Redis.
    `wire_replies[rid]`: replies read from the reply list for that id (duplicates included,
    before the client drops the late or repeated ones).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.accepted: set[str] = set()
        self.wire_replies: Counter[str] = Counter()

    async def _send(self, batch):
        results = await super()._send(batch)
        for (_service, payload), result in zip(batch, results, strict=True):
            if isinstance(result, bytes) and result:
                self.accepted.add(orjson.loads(payload)["id"])
        return results

    def _resolve(self, item: bytes) -> None:
        rid, _result, _error = decode_reply(item)
        if isinstance(rid, str):
            self.wire_replies[rid] += 1
        super()._resolve(item)


async def stream_stats(url: str, service: str = "lab") -> dict[str, int]:
    r = aioredis.Redis.from_url(url)
    try:
        keys = ServiceKeys.for_service(service)
        backlog = await r.xlen(keys.requests)
        dead = await r.xlen(keys.dead)
        try:
            pending = (await r.xpending(keys.requests, GROUP))["pending"]
        except Exception:
            pending = 0
        return {"backlog": backlog, "pending": pending, "dead": dead}
    finally:
        await r.aclose()


async def drained(url: str, service: str = "lab") -> bool:
    s = await stream_stats(url, service)
    return s["backlog"] == 0 and s["pending"] == 0


# -- scenario 1: worker crashes under load ---------------------------------------------------


@dataclass
class Outcome:
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    hangs: int = 0

    def total(self) -> int:
        return self.ok + sum(self.errors.values()) + self.hangs


async def crash_scenario(
    url: str,
    *,
    requests: int = 2000,
    service: str = "lab",
    concurrency: int = 32,
    kills: int = 2,
    seed: int | None = None,
    tag: str = "crash",
) -> tuple[dict[str, Any], list[str]]:
    """3 workers (--reclaim-after 1) serve `requests` calls enqueued at once through one
    client; `kills` of them are SIGKILLed at random moments and one new worker started.

    Returns (figures, violations): every request must get exactly one successful answer.
    """
    rng = random.Random(seed)
    flags = ("--reclaim-after", "1", "--concurrency", str(concurrency))
    workers = [WorkerProcess(TARGET, url, *flags, service=service) for _ in range(3)]
    fresh: list[WorkerProcess] = []
    client = CountingClient(url)
    answers: Counter[int] = Counter()
    failures: dict[int, str] = {}
    done = 0
    last_answer = 0.0
    try:
        await asyncio.to_thread(workers[0].wait_ready, 3, 30.0)

        async def one(i: int) -> None:
            nonlocal done, last_answer
            try:
                result = await client.call(
                    service,
                    "sleep",
                    {"seconds": rng.uniform(0.005, 0.05), "count": f"{tag}:{i}"},
                    timeout=90,
                )
                if result.get("slept") is not None:
                    answers[i] += 1
            except Exception as exc:
                failures[i] = f"{type(exc).__name__}: {exc}"
            done += 1
            last_answer = time.monotonic()

        started = time.monotonic()
        tasks = [asyncio.create_task(one(i)) for i in range(requests)]
        # Kill points: random fractions of the answers, spread over the run.
        points = sorted(rng.uniform(0.1, 0.7) * requests for _ in range(kills))
        victims = rng.sample(workers, kills)
        kill_times = []
        for point, victim in zip(points, victims, strict=True):
            await apoll(lambda p=point: done >= p, timeout=60, what=f"{int(point)} answers")
            victim.kill()
            kill_times.append(time.monotonic())
            if not fresh:
                fresh.append(WorkerProcess(TARGET, url, *flags, service=service))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
        finished = time.monotonic()
        await apoll(lambda: drained(url, service), timeout=30, what="stream drained")

        r = aioredis.Redis.from_url(url)
        try:
            runs = await r.mget([f"lab:runs:{tag}:{i}" for i in range(requests)])
        finally:
            await r.aclose()
        runs = [int(x or 0) for x in runs]
        lost = [i for i in range(requests) if answers[i] == 0]
        duplicated = [i for i in range(requests) if answers[i] > 1]
        wire_dupes = sum(max(0, n - 1) for n in client.wire_replies.values())
        figures = {
            "requests": requests,
            "lost": len(lost),
            "duplicated": len(duplicated),
            "failed_calls": len(failures),
            "reruns": sum(max(0, n - 1) for n in runs),
            "never_ran": sum(1 for n in runs if n == 0),
            "wire_duplicate_replies": wire_dupes,
            "kills": kills,
            "recovery_s_from_first_kill": last_answer - kill_times[0],
            "recovery_s_from_last_kill": last_answer - kill_times[-1],
            "total_s": finished - started,
            "throughput_rps": requests / (finished - started),
        }
        violations = []
        if lost:
            violations.append(
                f"lost {len(lost)} requests, e.g. {lost[:5]}: {failures.get(lost[0])}"
            )
        if duplicated:
            violations.append(f"{len(duplicated)} callers answered twice")
        if figures["never_ran"]:
            violations.append(f"{figures['never_ran']} answered requests never ran")
        return figures, violations
    finally:
        await client.aclose()
        for w in workers + fresh:
            w.stop()


# -- scenario 2: Redis restarts under load ---------------------------------------------------


#: What a caller may see while Redis restarts (besides a result). InternalError is a
#: handler whose own Redis command (the run counter) failed: an answer, not a hang.
CLEAN_ERRORS = ("RpcConnectionError", "RpcTimeoutError", "InternalError")


async def redis_restart_scenario(
    server: RedisServer,
    *,
    calls: int = 1500,
    lanes: int = 40,
    deadline: float = 10.0,
    restarts: int = 1,
    hard_kill: bool = False,
    tag: str = "rr",
    edge_url: str | None = None,
    recover_within: float = 20.0,
    down_for: float = 1.0,
    known_reply_loss: bool = False,
) -> tuple[dict[str, Any], list[str]]:
    """Workers and a client under steady load while `server` restarts `restarts` times.

    Load: `lanes` callers in a loop until `calls` results came back; each outage lasts
    `down_for` seconds (the outage being modelled, not a synchronisation).

    `known_reply_loss`: accepted requests unanswered by their deadline are reported but not
    counted as a violation (the known bug shown by tests/lab/test_lab_reply_loss.py).

    Invariants checked: no call outlives its deadline (hangs); every call ends with a result
    or a clean error; every enqueue Redis acknowledged is answered before its deadline and
    its run is still recorded after the restart (AOF, appendfsync always); the stream drains;
    workers, the client (and the edge at `edge_url`, if given) recover by themselves.
    """
    url = server.url
    flags = ("--reclaim-after", "1", "--concurrency", "32")
    workers = [WorkerProcess(TARGET, url, *flags, service="lab") for _ in range(2)]
    client = CountingClient(url)
    outcome = Outcome()
    per_call: dict[str, tuple[str, str]] = {}  # request key -> (rid-ish, outcome)
    oks: list[str] = []
    ok_times: list[float] = []
    pids_after: set[int] = set()
    counter = 0
    stop = asyncio.Event()
    restart_done: list[float] = []
    r = None
    try:
        await asyncio.to_thread(workers[0].wait_ready, 2, 30.0)
        r = aioredis.Redis.from_url(url)

        async def lane() -> None:
            nonlocal counter
            while not stop.is_set():
                counter += 1
                key = f"{tag}:{counter}"
                rid = f"{tag}-{counter}"
                try:
                    result = await asyncio.wait_for(
                        client.call("lab", "count", {"key": key}, timeout=deadline, request_id=rid),
                        timeout=deadline + 3,
                    )
                except TimeoutError as exc:
                    if isinstance(exc, RpcTimeoutError):
                        outcome.errors["RpcTimeoutError"] += 1
                        per_call[key] = (rid, "RpcTimeoutError")
                    else:
                        outcome.hangs += 1
                        per_call[key] = (rid, "hang")
                    continue
                except (RpcError, RpcConnectionError) as exc:
                    name = type(exc).__name__
                    outcome.errors[name] += 1
                    per_call[key] = (rid, name)
                    if isinstance(exc, RpcConnectionError):
                        await asyncio.sleep(0.05)  # Redis is down: do not spin
                    continue
                except Exception as exc:
                    outcome.errors[f"other:{type(exc).__name__}"] += 1
                    per_call[key] = (rid, "other")
                    continue
                outcome.ok += 1
                per_call[key] = (rid, "ok")
                oks.append(key)
                now = time.monotonic()
                ok_times.append(now)
                if restart_done and now > restart_done[-1]:
                    pids_after.add(result["pid"])

        async def edge_recovered(since: float) -> float:
            from spark.client.http import HttpTransport

            async with HttpTransport(edge_url) as t:

                async def edge_ok() -> bool:
                    try:
                        await t.call("echo", {"via": "edge"}, deadline=time.time() + 2)
                        return True
                    except (RpcError, RpcConnectionError):
                        return False

                await apoll(edge_ok, timeout=recover_within, what="a call through the edge")
                return time.monotonic() - since

        edge_task = None
        tasks = [asyncio.create_task(lane()) for _ in range(lanes)]
        started = time.monotonic()
        downtime = []
        for k in range(restarts):
            # Restart when a fair share of the load has been answered.
            mark = calls * (k + 1) / (restarts + 2)
            await apoll(lambda m=mark: outcome.ok >= m, timeout=60, what="load before restart")
            t0 = time.monotonic()
            if hard_kill:
                await asyncio.to_thread(server.kill)
            else:
                await asyncio.to_thread(server.stop)
            await asyncio.sleep(down_for)
            await asyncio.to_thread(server.start)
            restart_done.append(time.monotonic())
            downtime.append(restart_done[-1] - t0)
            if edge_url is not None and edge_task is None:
                edge_task = asyncio.create_task(edge_recovered(restart_done[-1]))
        await apoll(lambda: outcome.ok >= calls, timeout=120, what=f"{calls} results")
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=deadline + 10)
        total_s = time.monotonic() - started

        # Recovery: a fresh call succeeds within `recover_within` (polled).
        async def call_ok() -> bool:
            try:
                await client.call("lab", "echo", {"after": "restart"}, timeout=2)
                return True
            except (RpcError, RpcConnectionError):
                return False

        t_poll = time.monotonic()
        await apoll(call_ok, timeout=recover_within, what="a call through Redis after restart")
        first_ok_after = min((t for t in ok_times if t > restart_done[-1]), default=None)

        async def both_workers_answer() -> bool:
            try:
                res = await client.call("lab", "sleep", {"seconds": 0.05}, timeout=2)
                pids_after.add(res["pid"])
            except (RpcError, RpcConnectionError):
                pass
            return {w.pid for w in workers} <= pids_after

        await apoll(both_workers_answer, timeout=recover_within, what="both workers answering")
        edge_recovery = await edge_task if edge_task is not None else None
        await apoll(lambda: drained(url), timeout=30, what="stream drained after restart")

        # Accepted = Redis answered the enqueue with an entry id (appendfsync always: on disk).
        accepted_keys = [k for k, (rid, _o) in per_call.items() if rid in client.accepted]
        accepted_unanswered = [
            k for k in accepted_keys if per_call[k][1] in ("RpcTimeoutError", "hang")
        ]
        runs = await r.mget([f"lab:runs:{k}" for k in oks]) if oks else []
        ok_without_run = [k for k, n in zip(oks, runs, strict=True) if not n]
        figures = {
            "calls": outcome.total(),
            "ok": outcome.ok,
            **{f"err_{k}": v for k, v in sorted(outcome.errors.items())},
            "hangs": outcome.hangs,
            "accepted": len(accepted_keys),
            "accepted_unanswered": len(accepted_unanswered),
            "ok_without_recorded_run": len(ok_without_run),
            "restarts": restarts,
            "redis_down_s": sum(downtime),
            "first_ok_after_restart_s": (
                first_ok_after - restart_done[-1] if first_ok_after else float("nan")
            ),
            "recovery_poll_s": time.monotonic() - t_poll,
            "total_s": total_s,
        }
        if edge_recovery is not None:
            figures["edge_ok_after_restart_s"] = edge_recovery
        violations = []
        if outcome.hangs:
            violations.append(f"{outcome.hangs} calls hung past their deadline")
        unclean = {k: v for k, v in outcome.errors.items() if k not in CLEAN_ERRORS}
        if unclean:
            violations.append(f"unclean errors: {unclean}")
        if accepted_unanswered and not known_reply_loss:
            violations.append(
                f"{len(accepted_unanswered)} accepted requests unanswered by their deadline, "
                f"e.g. {accepted_unanswered[:5]}"
            )
        if ok_without_run:
            violations.append(f"{len(ok_without_run)} answered runs lost by the restart")
        return figures, violations
    finally:
        stop.set()
        await client.aclose()
        if r is not None:
            await r.aclose()
        for w in workers:
            w.stop()


@contextlib.contextmanager
def own_redis(**kwargs: Any):
    server = RedisServer(**kwargs).start()
    try:
        yield server
    finally:
        server.cleanup()


# -- a TCP proxy that can lose one answer -----------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a Redis; `lose_answer_with(marker)` makes the proxy drop
    the next server->client chunk holding `marker` and cut that connection, as a network
    failure (or a Redis dying) between a command's execution and its answer would."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port: int | None = None
        self._server: asyncio.Server | None = None
        self._marker: bytes | None = None
        self.lost: list[bytes] = []
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def lose_answer_with(self, marker: bytes) -> None:
        self._marker = marker

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            cw.close()
            return
        self._writers |= {cw, sw}

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, answers: bool):
            try:
                while data := await r.read(65536):
                    if answers and self._marker is not None and self._marker in data:
                        self.lost.append(data)
                        self._marker = None
                        break
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                for x in (cw, sw):
                    x.close()

        await asyncio.gather(pump(cr, sw, False), pump(sr, cw, True))
        self._writers -= {cw, sw}

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            await self._server.wait_closed()
