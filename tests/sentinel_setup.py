"""A real Redis Sentinel deployment for tests: one master, one replica and
three sentinels (quorum 2) on free ports, each in a directory of its own,
without persistence. The data nodes need a password (``requirepass``,
``masterauth``); the sentinels need none.

Import the fixtures into a test module::

    from tests.sentinel_setup import fresh_sentinel, sentinel, sentinel_setup  # noqa: F401

``sentinel_setup`` is module-scoped (five processes; each sentinel is told
the others and the replica in its config, so they start knowing each other
in ~0.1 s instead of seconds); ``sentinel`` gives each test the same
deployment healed (a node a test killed is back, as a replica of the current
master) and emptied; ``fresh_sentinel`` one of its own, for a test that
fails the master over.

A failover takes ``down-after-milliseconds`` (1 s here) until the sentinels
agree the master is down, then an election and the promotion: about 2-5 s.
"""

from __future__ import annotations

import pathlib
import shutil
from collections.abc import Iterator

import pytest
import redis

from tests.conftest import ServerProcess, free_port
from tests.helpers import wait_until

__all__ = ["PASSWORD", "SERVICE", "SentinelSetup", "fresh_sentinel", "sentinel", "sentinel_setup"]

#: The Sentinel service name of the master.
SERVICE = "wsgi-es-test"
#: The data nodes' password (never the sentinels').
PASSWORD = "sentinel-test-pw-4711"
#: Seconds until a sentinel thinks an unanswering master is down.
DOWN_AFTER_MS = 1000

_BINARY = shutil.which("redis-server") or "/usr/bin/redis-server"
_READY = "Ready to accept connections"


class SentinelSetup:
    """Two data nodes and three sentinels; see the module docstring."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self.data_ports = (free_port(), free_port())
        self.sentinel_ports = (free_port(), free_port(), free_port())
        self.data: dict[int, ServerProcess] = {}
        self.sentinels: list[ServerProcess] = []
        master, replica = self.data_ports
        self._start_data_node(master, None)
        self._start_data_node(replica, master)
        self._wait_replicas_online(master, 1)
        for port in self.sentinel_ports:
            self._start_sentinel(port, master, replica)
        self.wait_until_known(timeout=30)

    # -- addresses --------------------------------------------------------------------

    def url(self, password: str | None = PASSWORD, db: int = 0, service: str = SERVICE) -> str:
        """A ``redis+sentinel://`` URL naming all three sentinels."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        auth = "" if password is None else f":{password}@"
        return f"redis+sentinel://{auth}{hosts}/{service}/{db}"

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", port) for port in self.sentinel_ports]

    def master_port(self) -> int:
        """The master's port as the first sentinel that answers reports it."""
        for port in self.sentinel_ports:
            try:
                with _client(port, password=None) as client:
                    address = client.sentinel_get_master_addr_by_name(SERVICE)
            except redis.ConnectionError:
                continue
            if address:
                return int(address[1])
        raise AssertionError("no sentinel reports a master")

    def admin(self, port: int | None = None) -> redis.Redis:
        """A plain client of the current master (or of the data node on *port*)."""
        return _client(self.master_port() if port is None else port)

    # -- faults -------------------------------------------------------------------------

    def kill_master(self) -> int:
        """SIGKILL the master (gone at once, with whatever it had not yet
        sent to its replica); returns its port."""
        port = self.master_port()
        process = self.data.pop(port)
        process.proc.kill()
        process.wait(10)
        process.stop()
        return port

    def wait_for_new_master(self, old_port: int, timeout: float = 30.0, *, demote: bool = True) -> int:
        """Wait (bounded) until every sentinel reports a master other than
        *old_port* and it answers as a master; returns its port. With
        *demote*, *old_port* (if it still runs) is made its replica at once."""

        def promoted() -> bool:
            ports = set()
            for port in self.sentinel_ports:
                with _client(port, password=None) as client:
                    address = client.sentinel_get_master_addr_by_name(SERVICE)
                ports.add(int(address[1]) if address else None)
            if len(ports) != 1 or old_port in ports or None in ports:
                return False
            (new,) = ports
            assert new is not None
            with self.admin(new) as client:
                return bool(client.info("replication")["role"] == "master")

        wait_until(promoted, timeout=timeout, interval=0.1, message=f"a new master instead of port {old_port}")
        new = self.master_port()
        if demote and old_port in self.data:
            # Alive (a SENTINEL FAILOVER): a master, taking writes from the
            # clients still connected, until a sentinel's next INFO of it
            # (every 10 s) sees it and sends it REPLICAOF. Sent here at once.
            with self.admin(old_port) as client:
                if client.info("replication")["role"] == "master":
                    client.replicaof("127.0.0.1", new)
        return new

    def heal(self, timeout: float = 30.0) -> None:
        """Restart every data node a test killed, as a replica of the current
        master, and wait until it is in sync and every sentinel sees it."""
        master = self.master_port()
        for port in self.data:
            if port != master:
                # A former master a test left running as one (see
                # wait_for_new_master): what a sentinel would do, now.
                with self.admin(port) as client:
                    if client.info("replication")["role"] == "master":
                        client.replicaof("127.0.0.1", master)
        restarted = [port for port in self.data_ports if port not in self.data]
        for port in restarted:
            self._start_data_node(port, master)
        self._wait_replicas_online(master, len(self.data_ports) - 1, timeout)
        self.wait_until_known(timeout)

    def wait_until_known(self, timeout: float = 30.0) -> None:
        """Wait until every sentinel sees the master up, its replica up and
        in sync, and the two other sentinels (until then a failover cannot
        be agreed, or finds no replica to promote)."""

        def known() -> bool:
            for port in self.sentinel_ports:
                with _client(port, password=None) as client:
                    try:
                        state = client.sentinel_master(SERVICE)
                        replicas = client.sentinel_slaves(SERVICE)
                    except redis.ResponseError:
                        return False  # not monitoring it yet
                # As a sentinel picks a replica to promote: up, and in sync
                # by its last INFO of it (taken every 10 s: one taken while
                # a restarted replica synced says "NOGOODSLAVE" until the next).
                up = [
                    r
                    for r in replicas
                    if not (r["is_sdown"] or r["is_odown"] or r["is_disconnected"])
                    and r.get("master-link-status") == "ok"
                    and not r.get("master-link-down-time")
                ]
                if state["is_sdown"] or state["num-other-sentinels"] < 2 or len(up) < len(self.data_ports) - 1:
                    return False
            return True

        wait_until(known, timeout=timeout, interval=0.1, message="every sentinel knows the master, replica, sentinels")

    def flush(self) -> None:
        """Empty the master (and so its replica)."""
        with self.admin() as client:
            client.flushall()
            client.wait(1, 2000)

    def stop(self) -> None:
        for process in [*self.sentinels, *self.data.values()]:
            process.stop()

    # -- processes ------------------------------------------------------------------------

    def _start_data_node(self, port: int, replica_of: int | None) -> None:
        directory = self.directory / f"data-{port}"
        directory.mkdir(exist_ok=True)
        # A replica's first sync waits repl-diskless-sync-delay (5 s) for
        # more replicas to share it: there are none to wait for.
        args = [
            _BINARY, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
            "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0",
            "--requirepass", PASSWORD, "--masterauth", PASSWORD,
        ]  # fmt: skip
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.data[port] = ServerProcess(args, ready_pattern=_READY)

    def _start_sentinel(self, port: int, master: int, replica: int) -> None:
        directory = self.directory / f"sentinel-{port}"
        directory.mkdir(exist_ok=True)
        config = directory / "sentinel.conf"  # a sentinel rewrites its file: one each
        # Each sentinel is told its own id, the other sentinels and the
        # replica: found by themselves (hello messages every 2 s, INFO
        # every 10 s) they take seconds more.
        others = "".join(
            f"sentinel known-sentinel {SERVICE} 127.0.0.1 {other} {_sentinel_id(other)}\n"
            for other in self.sentinel_ports
            if other != port
        )
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel myid {_sentinel_id(port)}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master} 2\n"
            f"sentinel auth-pass {SERVICE} {PASSWORD}\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} 2000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
            f"sentinel known-replica {SERVICE} 127.0.0.1 {replica}\n" + others
        )
        self.sentinels.append(ServerProcess([_BINARY, str(config), "--sentinel"], ready_pattern=r"\+monitor master"))

    def _wait_replicas_online(self, master: int, count: int, timeout: float = 30.0) -> None:
        def online() -> bool:
            with self.admin(master) as client:
                info = client.info("replication")
            replicas = [info[f"slave{i}"] for i in range(int(info["connected_slaves"]))]
            return sum(1 for r in replicas if r["state"] == "online") >= count

        wait_until(online, timeout=timeout, interval=0.05, message=f"{count} replica(s) of port {master} online")


def _sentinel_id(port: int) -> str:
    """A sentinel's run id (40 hex digits), made from its port."""
    return f"{port:040x}"


def _client(port: int, password: str | None = PASSWORD) -> redis.Redis:
    return redis.Redis("127.0.0.1", port, password=password, socket_timeout=2, socket_connect_timeout=2)


@pytest.fixture(scope="module")
def sentinel_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    """One Sentinel deployment for a test module; stopped at its end."""
    setup = SentinelSetup(tmp_path_factory.mktemp("sentinel"))
    yield setup
    setup.stop()


@pytest.fixture
def sentinel(sentinel_setup: SentinelSetup) -> SentinelSetup:
    """The module's deployment, healed (every node up) and emptied."""
    sentinel_setup.heal()
    sentinel_setup.flush()
    return sentinel_setup


@pytest.fixture
def fresh_sentinel(tmp_path: pathlib.Path) -> Iterator[SentinelSetup]:
    """A deployment of the test's own, for a test that fails the master
    over: after a failover the sentinels refresh what they know of the
    former master only every 10 s (their INFO period), and until then may
    find no replica to promote ("NOGOODSLAVE"). Starting one takes ~0.1 s."""
    setup = SentinelSetup(tmp_path)
    yield setup
    setup.stop()
