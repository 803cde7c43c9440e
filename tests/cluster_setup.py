"""A real Redis Cluster for the tests: 3 masters and 3 replicas of
``redis-server --cluster-enabled yes`` on free ports, joined by
``redis-cli --cluster create ... --cluster-replicas 1``, without persistence.

It costs a few seconds to start, so one serves the whole session
(``redis_cluster``); each test gets it whole again (a node a test killed is
restarted) and empty (``cluster``, ``cluster_url``). The faults a test can
cause are the ones a cluster meets in production:

- :meth:`RedisClusterNodes.kill_master_of`: SIGKILL the master of a slot and
  wait until its replica is promoted (the cluster is down meanwhile: with
  ``cluster-require-full-coverage yes``, the default, no node serves a slot
  while one slot has no master).
- :meth:`RedisClusterNodes.migrate_slot`: move one slot, keys and all, to
  another master while clients use it, step by step the way ``redis-cli
  --cluster reshard`` does (``CLUSTER SETSLOT IMPORTING``/``MIGRATING``,
  ``MIGRATE``, ``CLUSTER SETSLOT NODE``), so clients get ``ASK`` during the
  move and ``MOVED`` after it.
- :meth:`RedisClusterNodes.restart`: start a killed node again; it rejoins
  (its ``nodes.conf`` is kept) as a replica of whoever holds its slots now.

Every wait is bounded and fails with what the nodes said.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gevent
import pytest
import redis

from wsgi_eventsource import RedisBroker

if TYPE_CHECKING:
    from tests.conftest import ServerProcess

__all__ = ["ClusterNode", "RedisClusterNodes", "cluster", "cluster_brokers", "cluster_url", "redis_cluster"]

#: Slots in a Redis Cluster (fixed by the protocol).
SLOTS = 16384
#: How long a node may be unreachable before the others call it failed (ms):
#: short, so that a failover takes about two seconds rather than fifteen.
NODE_TIMEOUT_MS = 1000


@dataclass
class ClusterNode:
    """One ``redis-server`` of the cluster: its port and directory (which
    holds its ``nodes.conf``, so that a restarted node rejoins)."""

    port: int
    directory: str
    process: ServerProcess | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.proc.poll() is None

    def client(self, **options: object) -> redis.Redis:
        """A plain client of this node alone (no redirects followed)."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, socket_connect_timeout=2, **options)  # type: ignore[arg-type]

    def start(self) -> None:
        # Imported here: tests/conftest.py imports this module's fixtures.
        from tests.conftest import ServerProcess

        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = [
            binary,
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.directory,
            "--save", "", "--appendonly", "no",
            "--cluster-enabled", "yes",
            "--cluster-config-file", os.path.join(self.directory, "nodes.conf"),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            # A replica is promoted however long it was cut off from its
            # master (the default refuses one whose data may be stale; here
            # the point is to see what a promotion loses).
            "--cluster-replica-validity-factor", "0",
            # A replica's full sync starts at once (Redis 7 waits 5 s for
            # more replicas to share it): a fresh or restarted replica holds
            # its master's data within a moment, not after 5 s of losing it.
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        self.process = ServerProcess(args, ready_pattern="Ready to accept connections")

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.proc.send_signal(number)

    def kill(self) -> None:
        """SIGKILL: gone at once, with everything it held."""
        assert self.process is not None
        self.process.proc.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.process.stop()


@dataclass(frozen=True)
class NodeView:
    """One line of ``CLUSTER NODES`` as a node sees its peers."""

    node_id: str
    port: int
    master: bool
    master_id: str | None
    failed: bool
    slots: frozenset[int]


class RedisClusterNodes:
    """A running Redis Cluster of *masters* masters with one replica each."""

    def __init__(self, base: str, masters: int = 3) -> None:
        self.base = base
        self.nodes: list[ClusterNode] = []
        for _ in range(2 * masters):
            port = _free_cluster_port({node.port for node in self.nodes})
            directory = os.path.join(base, str(port))
            os.makedirs(directory)
            self.nodes.append(ClusterNode(port, directory))
        for node in self.nodes:
            node.start()
        self._create()
        self.wait_ok()

    # -- what clients are given ----------------------------------------------------------------

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming every node as a seed (any one
        that answers tells the client the rest)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes) + "/"

    def cluster_client(self) -> redis.RedisCluster:
        """redis-py's own cluster client (follows MOVED and ASK)."""
        return redis.RedisCluster(host="127.0.0.1", port=self.live()[0].port, socket_timeout=5)

    # -- topology ----------------------------------------------------------------------------------

    def live(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.alive]

    def node(self, port: int) -> ClusterNode:
        return next(node for node in self.nodes if node.port == port)

    def view(self, port: int | None = None) -> list[NodeView]:
        """``CLUSTER NODES`` as node *port* (or the first live one) sees the cluster."""
        node = self.node(port) if port is not None else self.live()[0]
        with node.client(decode_responses=True) as client:
            raw = client.execute_command("CLUSTER", "NODES")
        # As sent: execute_command applies no parser (cluster_nodes() would).
        assert isinstance(raw, str), raw
        return [_parse_node_line(line) for line in raw.splitlines() if line.strip()]

    def masters(self) -> list[ClusterNode]:
        """The live nodes that are masters holding slots now (roles change with failovers)."""
        views = {v.port: v for v in self.view()}
        return [
            node
            for node in self.live()
            if node.port in views and views[node.port].master and views[node.port].slots and not views[node.port].failed
        ]

    def master_of(self, slot: int, port: int | None = None) -> ClusterNode:
        """The node that holds *slot*, as node *port* (or the first live one) sees it."""
        for view in self.view(port):
            if view.master and slot in view.slots and not view.failed:
                return self.node(view.port)
        raise AssertionError(f"no live master holds slot {slot}: {self.view(port)}")

    def replicas_of(self, master: ClusterNode) -> list[ClusterNode]:
        views = self.view()
        master_id = next(v.node_id for v in views if v.port == master.port)
        return [self.node(v.port) for v in views if v.master_id == master_id and not v.failed]

    def node_id(self, node: ClusterNode) -> str:
        with node.client(decode_responses=True) as client:
            return str(client.execute_command("CLUSTER", "MYID"))

    # -- waiting ------------------------------------------------------------------------------------

    def wait_ok(self, timeout: float = 30.0, check: Callable[[], bool] | None = None) -> None:
        """Wait until every live node says ``cluster_state:ok``, they all
        agree on who holds every slot, every replica is in sync with its
        master, and *check* (if given) is true."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            try:
                if self._all_ok() and (check is None or check()):
                    return
            except (redis.RedisError, StopIteration, AssertionError) as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                states = {node.port: self._state(node) for node in self.live()}
                raise AssertionError(f"the cluster was not ok within {timeout} s: {states} {last}")
            gevent.sleep(0.05)

    def _all_ok(self) -> bool:
        owners: set[tuple[tuple[int, frozenset[int]], ...]] = set()
        for node in self.live():
            if self._state(node) != "ok" or not self._replicating(node):
                return False
            views = self.view(node.port)
            if any(v.failed and self.node(v.port).alive for v in views):
                return False  # a restarted node not yet seen as back
            if any(v.master and not v.slots and not v.failed for v in views):
                # A restarted former master holds no slot before it turns
                # into a replica of the one promoted in its place (every
                # master of this cluster holds slots): in transition.
                return False
            owners.add(tuple(sorted((v.port, v.slots) for v in views if v.master and v.slots and not v.failed)))
        return len(owners) == 1 and sum(len(slots) for _, slots in next(iter(owners))) == SLOTS

    @staticmethod
    def _replicating(node: ClusterNode) -> bool:
        """A master, or a replica linked to its master and done syncing."""
        with node.client(decode_responses=True) as client:
            info = client.info("replication")
        if info.get("role") != "slave":
            return True
        return info.get("master_link_status") == "up" and not info.get("master_sync_in_progress")

    @staticmethod
    def _state(node: ClusterNode) -> str:
        try:
            with node.client(decode_responses=True) as client:
                return str(client.cluster("INFO").get("cluster_state"))
        except redis.RedisError as exc:
            return repr(exc)

    # -- per test ------------------------------------------------------------------------------------

    def repair(self) -> None:
        """Restart any node a test killed; wait until the cluster is whole."""
        dead = [node for node in self.nodes if not node.alive]
        for node in dead:
            node.start()
        if dead:
            self.wait_ok(check=lambda: all(self._state(node) == "ok" for node in dead))
        else:
            self.wait_ok()

    def flush(self) -> None:
        """Empty every master (its replicas follow) and reset its counters."""
        for node in self.masters():
            with node.client() as client:
                client.flushall()
                client.config_resetstat()

    # -- faults ----------------------------------------------------------------------------------------

    def kill_master_of(
        self, slot: int, timeout: float = 20.0, *, unreplicated: Callable[[], None] | None = None
    ) -> tuple[ClusterNode, ClusterNode]:
        """SIGKILL the master of *slot*; wait until one of its replicas holds
        the slot and the cluster is ok again. Returns (killed, promoted).

        *unreplicated*, if given, runs just before the kill while the
        replicas are stopped (SIGSTOP, for well under the node timeout) and
        cut off (``CLIENT KILL TYPE replica``: else the kernel would buffer
        the replication stream for them): what it writes the master
        acknowledges and no replica ever gets, the loss that asynchronous
        replication allows, made certain.
        """
        master = self.master_of(slot)
        replicas = self.replicas_of(master)
        assert replicas, f"the master on port {master.port} has no replica to promote"
        if unreplicated is None:
            master.kill()
        else:
            for replica in replicas:
                replica.signal(signal.SIGSTOP)
            try:
                with master.client() as client:
                    client.execute_command("CLIENT", "KILL", "TYPE", "replica")
                unreplicated()
                master.kill()
            finally:
                for replica in replicas:
                    replica.signal(signal.SIGCONT)
        ports = {replica.port for replica in replicas}
        self.wait_ok(timeout, check=lambda: self.master_of(slot).port in ports)
        return master, self.master_of(slot)

    def restart(self, node: ClusterNode, timeout: float = 20.0) -> None:
        """Start a killed node again and wait until the cluster counts it in."""
        assert not node.alive, f"the node on port {node.port} is running"
        node.start()
        self.wait_ok(timeout, check=lambda: self._state(node) == "ok")

    def migrate_slot(
        self, slot: int, to: ClusterNode | None = None, *, during: Callable[[], None] | None = None
    ) -> ClusterNode:
        """Move *slot* and its keys to master *to* (default: another master)
        while clients go on using it, as ``redis-cli --cluster reshard`` does.

        *during* runs once every key has moved but the slot has not: then the
        old master answers ``ASK`` for the slot's keys (and ``TRYAGAIN`` for
        multi-key commands on keys split between the two), the new one serves
        them after ``ASKING``. After it the slot is the new master's, and the
        old one answers ``MOVED``. Returns the new master.
        """
        source = self.master_of(slot)
        target = to or next(node for node in self.masters() if node.port != source.port)
        assert target.port != source.port, f"slot {slot} is already on port {target.port}"
        source_id, target_id = self.node_id(source), self.node_id(target)
        with source.client() as old, target.client() as new:
            new.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            old.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            try:
                while keys := old.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                    old.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
                if during is not None:
                    during()
            except BaseException:
                # Leave no half-moved slot to the next test (keys already
                # moved stay on the target, unreachable: the test failed anyway).
                for client in (old, new):
                    client.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
                raise
            # The order redis-cli uses: the target first (it owns the slot
            # from now on), then the source (it stops answering ASK), then
            # every other master (they would learn it by gossip anyway).
            new.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            old.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for node in self.masters():
            if node.port not in (source.port, target.port):
                with node.client() as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_ok(check=lambda: all(self.master_of(slot, n.port).port == target.port for n in self.live()))
        return target

    # -- start and stop --------------------------------------------------------------------------------

    def _create(self) -> None:
        binary = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        done = subprocess.run(
            [binary, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0 or "[OK] All 16384 slots covered" not in done.stdout:
            raise AssertionError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                node.process.stop()


def _free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (10000 above it) is free too; a
    node refuses a port above 55535 (its bus port would not exist)."""
    for _ in range(1000):
        port = random.randrange(20000, 45000)
        if taken & {port, port + 10000, port - 10000}:
            continue
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise AssertionError("no free port pair for a cluster node")


def _parse_node_line(line: str) -> NodeView:
    # <id> <ip:port@cport> <flags> <master> <ping-sent> <pong-recv> <epoch> <link> <slot> ...
    fields = line.split()
    flags = fields[2].split(",")
    slots: set[int] = set()
    for item in fields[8:]:
        if item.startswith("["):
            continue  # a slot being imported or migrated, listed by the nodes that move it
        low, _, high = item.partition("-")
        slots.update(range(int(low), int(high or low) + 1))
    return NodeView(
        node_id=fields[0],
        port=int(fields[1].split("@")[0].rsplit(":", 1)[1]),
        master="master" in flags,
        master_id=None if fields[3] == "-" else fields[3],
        failed="fail" in flags or "fail?" in flags or "noaddr" in flags,
        slots=frozenset(slots),
    )


# -- fixtures (imported by tests/conftest.py) ------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterNodes]:
    """A real 3-master, 3-replica Redis Cluster for the whole session."""
    base = tempfile.mkdtemp(prefix="wsgi-eventsource-cluster-")
    nodes = RedisClusterNodes(base)
    yield nodes
    nodes.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def cluster(redis_cluster: RedisClusterNodes) -> RedisClusterNodes:
    """The session's cluster, whole (killed nodes restarted) and empty."""
    redis_cluster.repair()
    redis_cluster.flush()
    return redis_cluster


@pytest.fixture
def cluster_url(cluster: RedisClusterNodes) -> str:
    """A ``redis+cluster://`` URL of the session's cluster, emptied for the test."""
    return cluster.url


@pytest.fixture
def cluster_brokers(cluster_url: str, redis_brokers: Callable[..., RedisBroker]) -> Callable[..., RedisBroker]:
    """RedisBrokers on the test's cluster (conftest's ``redis_brokers``), closed afterwards."""

    def make(url: str = cluster_url, **options: Any) -> RedisBroker:
        return redis_brokers(url, **options)

    return make
