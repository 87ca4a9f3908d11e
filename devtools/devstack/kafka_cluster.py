"""A three-node KRaft cluster on loopback, from the same jars as the single dev broker.

What ``docker-compose.ha.yml`` runs, without Docker: each node is a combined controller+broker in its own
home (``<home>/node-N``), all formatted with one cluster id, voting in one static quorum; topics get
replication factor 3 and a write needs two in-sync replicas. Used by the fault suite to show that losing a
broker mid-job loses nothing; anyone can start one with :func:`start_cluster` to try the same.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

from devtools.devstack import kafka
from devtools.devstack.process import (
    DevStackError,
    Log,
    ensure_port_free,
    log_tail,
    running_pid,
    spawn,
    stop_pid,
    wait_until,
    write_pid,
)

REPLICATION = 3


@dataclass(frozen=True)
class Node:
    node_id: int
    home: Path
    kafka_port: int
    controller_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def pid(self) -> int | None:
        return running_pid(kafka.pidfile(self.home), kafka.markers(self.home))


@dataclass(frozen=True)
class Cluster:
    nodes: tuple[Node, ...]
    libs: Path

    @property
    def bootstrap(self) -> str:
        return ",".join(node.address for node in self.nodes)

    def node(self, node_id: int) -> Node:
        return next(node for node in self.nodes if node.node_id == node_id)

    def kill(self, node_id: int, log: Log = print) -> None:
        """``kill -9`` one node: no controlled shutdown, as when its machine dies."""
        node = self.node(node_id)
        pid = node.pid()
        if pid is None:
            raise DevStackError(f"kafka node {node_id} is not running")
        stop_pid(pid, kafka.markers(node.home), f"kafka node {node_id}", log, sig=signal.SIGKILL)
        kafka.pidfile(node.home).unlink(missing_ok=True)

    def stop(self, log: Log = print, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop every node still running (SIGTERM: controlled shutdown, which waits for a quorum)."""
        for node in self.nodes:
            pid = node.pid()
            if pid is not None:
                stop_pid(pid, kafka.markers(node.home), f"kafka node {node.node_id}", log, sig=sig)
            kafka.pidfile(node.home).unlink(missing_ok=True)


def start_cluster(home: Path, ports: list[tuple[int, int]], libs: Path, *, log: Log = print,
                  timeout: float = 120.0) -> Cluster:
    """Format and start one node per ``(kafka_port, controller_port)``; return once every node lists them all.

    The nodes are started together and then waited for: a node answers only once the quorum has a leader, so
    waiting for each in turn would wait for the ones not yet started.
    """
    voters = ",".join(f"{i}@127.0.0.1:{controller}" for i, (_, controller) in enumerate(ports, start=1))
    nodes = tuple(Node(i, home / f"node-{i}", kafka_port, controller)
                  for i, (kafka_port, controller) in enumerate(ports, start=1))
    cluster_id = kafka.new_cluster_id()
    for node in nodes:
        for port, what in ((node.kafka_port, "kafka"), (node.controller_port, "kafka controller")):
            ensure_port_free(port, f"{what} node {node.node_id}")
        kafka.write_properties(node.home, node.kafka_port, node.controller_port, node_id=node.node_id,
                               voters=voters, replication=min(REPLICATION, len(nodes)))
        kafka.format_storage(node.home, libs, log, cluster_id=cluster_id)
    cluster = Cluster(nodes, libs)
    for node in nodes:
        start_node(node, libs, log)
    every = len(nodes)
    if not wait_until(lambda: all(kafka.broker_ready(n.kafka_port, brokers=every) for n in nodes), timeout, 0.5):
        tails = "\n".join(f"node {n.node_id}:\n{log_tail(log_path(n), 15)}" for n in nodes)
        cluster.stop(log)
        raise DevStackError(f"the {every}-node Kafka cluster did not form within {timeout:.0f} s\n{tails}")
    return cluster


def start_node(node: Node, libs: Path, log: Log = print) -> int:
    """Start one node detached (not waiting: it answers once a quorum of its peers is up)."""
    argv = ["java", *kafka.JVM_OPTS, "-cp", f"{libs}/*", "kafka.Kafka", str(kafka.props_path(node.home))]
    pid = spawn(argv, log_path(node))
    write_pid(kafka.pidfile(node.home), pid)
    log(f"kafka node {node.node_id} starting (pid {pid}) on {node.address}")
    return pid


def log_path(node: Node) -> Path:
    return node.home / "logs" / "kafka.log"
