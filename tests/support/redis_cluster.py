"""Real Redis topologies on loopback: a 6-node Redis Cluster and a Sentinel group.

`RedisClusterGroup`: 3 primaries and 3 replicas (`--cluster-enabled yes`, created with
`redis-cli --cluster create ... --cluster-replicas 1`), a short `cluster-node-timeout` so a
killed primary's replica takes over within seconds.

`SentinelGroup`: one primary, one replica and three sentinels (`redis-server --sentinel`)
watching it under the name `mymaster`, with short down-after and failover timeouts.

Both start and stop their processes by pid, and can kill the primary that owns a key (or
the only primary), then bring the killed server back as a replica.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import redis

from support.redis_server import RedisServer, free_port, wait_until

#: How long a cluster node may be unreachable before it is failed over (milliseconds).
NODE_TIMEOUT_MS = 1000
#: Replicas sync at once (the default waits 5 s for more replicas to share one transfer).
FAST_SYNC = ["--repl-diskless-sync-delay", "0"]
SENTINEL_NAME = "mymaster"


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)


def _info(port: int, section: str) -> dict:
    client = _client(port)
    try:
        return client.info(section)
    except redis.RedisError:
        return {}
    finally:
        client.close()


class RedisClusterGroup:
    """Six redis-server processes joined into one cluster with one replica per primary."""

    def __init__(self, primaries: int = 3, replicas: int = 1):
        self.size = primaries * (1 + replicas)
        self.replicas = replicas
        self.servers: list[RedisServer] = []

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{s.port}" for s in self.servers[:3])
        return f"redis+cluster://{seeds}"

    def start(self) -> RedisClusterGroup:
        try:
            self._start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def _start(self) -> None:
        for _ in range(self.size):
            server = RedisServer(
                extra=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    # The bus port defaults to port + 10000, past 65535 for high free ports.
                    "--cluster-port",
                    str(free_port()),
                    "--cluster-node-timeout",
                    str(NODE_TIMEOUT_MS),
                    # A replica takes over however long it was cut off from its primary.
                    "--cluster-replica-validity-factor",
                    "0",
                    *FAST_SYNC,
                ]
            )
            self.servers.append(server.start())
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (it comes with redis-server)")
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{s.port}" for s in self.servers),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        self.wait_healthy()

    def _cluster_ok(self, port: int) -> bool:
        client = _client(port)
        try:
            info = client.cluster("info")
        except redis.RedisError:
            return False
        finally:
            client.close()
        return info.get("cluster_state") == "ok" and int(info.get("cluster_slots_ok", 0)) == 16384

    def primaries(self) -> list[RedisServer]:
        return [s for s in self.running() if _info(s.port, "replication").get("role") == "master"]

    def running(self) -> list[RedisServer]:
        return [s for s in self.servers if s.proc is not None]

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every running node sees all slots served, and every primary has its replica."""

        def healthy() -> bool:
            if not all(self._cluster_ok(s.port) for s in self.running()):
                return False
            primaries = self.primaries()
            if len(primaries) != self.size // (1 + self.replicas):
                return False
            return all(
                _info(p.port, "replication").get("connected_slaves", 0) >= self.replicas
                and all(
                    v.get("state") == "online"
                    for k, v in _info(p.port, "replication").items()
                    if k.startswith("slave") and isinstance(v, dict)
                )
                for p in primaries
            )

        wait_until(healthy, timeout=timeout, interval=0.1, what="a healthy redis cluster")

    def owner_of(self, key: str) -> RedisServer:
        """The primary that serves `key`'s slot now."""
        client = _client(self.running()[0].port)
        try:
            slot = client.cluster("keyslot", key)
            for start, end, primary, *_replicas in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    port = primary[1]
                    break
        finally:
            client.close()
        return next(s for s in self.servers if s.port == port)

    def node_id(self, server: RedisServer) -> str:
        client = _client(server.port)
        try:
            return client.execute_command("CLUSTER MYID").decode()
        finally:
            client.close()

    def migrate_slot(self, key: str, to: RedisServer, batch: int = 10, pause=None) -> None:
        """Move `key`'s slot to the primary `to`, keys a batch at a time (as `redis-cli
        --cluster reshard` does), calling `pause()` between batches: meanwhile clients meet
        ASK (keys already moved) and TRYAGAIN (multi-key commands over both nodes)."""
        source = self.owner_of(key)
        assert source is not to
        src, dst = _client(source.port), _client(to.port)
        try:
            slot = src.cluster("keyslot", key)
            src_id, dst_id = self.node_id(source), self.node_id(to)
            dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
            while True:
                keys = src.execute_command("CLUSTER GETKEYSINSLOT", slot, batch)
                if not keys:
                    break
                src.execute_command("MIGRATE", "127.0.0.1", to.port, "", 0, 5000, "KEYS", *keys)
                if pause is not None:
                    pause()
            for server in (to, source, *[p for p in self.primaries() if p not in (to, source)]):
                client = _client(server.port)
                try:
                    client.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
                finally:
                    client.close()
        finally:
            src.close()
            dst.close()

    def kill_owner_of(self, key: str) -> RedisServer:
        server = self.owner_of(key)
        server.kill()
        return server

    def wait_failover(self, killed: RedisServer, key: str, timeout: float = 30.0) -> None:
        """A replica has taken over `key`'s slot from the killed primary."""

        def promoted() -> bool:
            try:
                owner = self.owner_of(key)
            except (redis.RedisError, StopIteration):
                return False
            return owner is not killed and self._cluster_ok(owner.port)

        wait_until(promoted, timeout=timeout, interval=0.1, what="a replica promoted")

    def revive(self, server: RedisServer) -> None:
        """Start a killed node again; its nodes.conf brings it back as a replica."""
        server.start()
        self.wait_healthy()

    def flush(self) -> None:
        for server in self.primaries():
            client = _client(server.port)
            try:
                client.flushall()
            finally:
                client.close()

    def cleanup(self) -> None:
        for server in self.servers:
            server.cleanup()


class SentinelServer:
    """One `redis-server <conf> --sentinel` process watching a primary."""

    def __init__(self, primary_port: int, quorum: int = 2):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="spark-sentinel-"))
        self.conf = self.dir / "sentinel.conf"
        self.conf.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    f"dir {self.dir}",
                    f"logfile {self.dir / 'sentinel.log'}",
                    f"sentinel monitor {SENTINEL_NAME} 127.0.0.1 {primary_port} {quorum}",
                    f"sentinel down-after-milliseconds {SENTINEL_NAME} 1000",
                    f"sentinel failover-timeout {SENTINEL_NAME} 10000",
                    f"sentinel parallel-syncs {SENTINEL_NAME} 1",
                    "",
                ]
            )
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> SentinelServer:
        binary = shutil.which("redis-server")
        self.proc = subprocess.Popen(
            [binary, str(self.conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def pong() -> bool:
            client = _client(self.port)
            try:
                return client.ping()
            except redis.RedisError:
                return False
            finally:
                client.close()

        wait_until(pong, timeout=10, what=f"sentinel on port {self.port}")
        return self

    def primary_port(self) -> int | None:
        client = _client(self.port)
        try:
            addr = client.execute_command("SENTINEL", "get-master-addr-by-name", SENTINEL_NAME)
        except redis.RedisError:
            return None
        finally:
            client.close()
        return int(addr[1]) if addr else None

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelGroup:
    """A primary, a replica and three sentinels."""

    def __init__(self, sentinels: int = 3):
        self.primary = RedisServer(extra=FAST_SYNC)
        self.replica = RedisServer(extra=FAST_SYNC)
        self.sentinel_count = sentinels
        self.sentinels: list[SentinelServer] = []

    @property
    def servers(self) -> list[RedisServer]:
        return [self.primary, self.replica]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SENTINEL_NAME}/0"

    def start(self) -> SentinelGroup:
        try:
            self._start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def _start(self) -> None:
        self.primary.start()
        self.replica.extra = [*FAST_SYNC, "--replicaof", "127.0.0.1", str(self.primary.port)]
        self.replica.start()
        for _ in range(self.sentinel_count):
            sentinel = SentinelServer(self.primary.port)
            self.sentinels.append(sentinel)
            sentinel.start()
        self.wait_healthy()

    def current_primary(self) -> RedisServer | None:
        ports = {s.primary_port() for s in self.sentinels}
        if len(ports) != 1:
            return None
        port = ports.pop()
        return next((s for s in self.servers if s.port == port and s.proc is not None), None)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """The sentinels agree on a running primary, which has an online replica, and each
        sentinel knows the other sentinels (so a failover can reach its quorum)."""

        def healthy() -> bool:
            primary = self.current_primary()
            if primary is None:
                return False
            info = _info(primary.port, "replication")
            if info.get("role") != "master" or info.get("connected_slaves", 0) < 1:
                return False
            if info.get("slave0", {}).get("state") != "online":
                return False
            for sentinel in self.sentinels:
                client = _client(sentinel.port)
                try:
                    master = client.execute_command("SENTINEL", "master", SENTINEL_NAME)
                except redis.RedisError:
                    return False
                finally:
                    client.close()
                others = master.get(b"num-other-sentinels", master.get("num-other-sentinels", 0))
                if int(others) < self.sentinel_count - 1:
                    return False
            return True

        wait_until(healthy, timeout=timeout, interval=0.1, what="a healthy sentinel group")

    def kill_primary(self) -> RedisServer:
        primary = self.current_primary()
        assert primary is not None
        primary.kill()
        return primary

    def wait_failover(self, killed: RedisServer, timeout: float = 30.0) -> None:
        def promoted() -> bool:
            primary = self.current_primary()
            return (
                primary is not None
                and primary is not killed
                and _info(primary.port, "replication").get("role") == "master"
            )

        wait_until(promoted, timeout=timeout, interval=0.1, what="sentinel failover")

    def revive(self, server: RedisServer) -> None:
        """Start the old primary again; the sentinels turn it into a replica."""
        server.start()
        self.wait_healthy()

    def flush(self) -> None:
        primary = self.current_primary()
        assert primary is not None
        client = _client(primary.port)
        try:
            client.flushall()
            # The replica must have it too before the next test reads after a failover.
            client.wait(1, 2000)
        finally:
            client.close()

    def cleanup(self) -> None:
        for sentinel in self.sentinels:
            sentinel.cleanup()
        for server in self.servers:
            server.cleanup()


def sync_client(url: str):
    """A synchronous redis-py client for any broker URL (for test helpers that poll)."""
    from redis.cluster import ClusterNode, RedisCluster
    from redis.sentinel import Sentinel

    from spark.broker.connection import is_cluster_url, is_sentinel_url, parse_multi_host

    if is_cluster_url(url):
        target = parse_multi_host(url)
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.hosts],
            password=target.password,
            socket_timeout=5,
        )
    if is_sentinel_url(url):
        target = parse_multi_host(url)
        sentinel = Sentinel(target.hosts, socket_timeout=5)
        return sentinel.master_for(target.path[0], password=target.password, socket_timeout=5)
    return redis.Redis.from_url(url)
