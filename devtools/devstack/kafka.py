"""A single-node KRaft Apache Kafka broker run straight from Maven Central jars, without Docker.

Apache Kafka is neither a Debian nor a PyPI package, so the broker jars are fetched once with Maven from
the pom shipped in ``devtools/infra/kafka`` and the JVM runs ``kafka.Kafka`` from them.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
from pathlib import Path

from devtools.devstack.process import (
    DevStackError,
    Log,
    ensure_port_free,
    running_pid,
    start_service,
    stop_service,
)

POM = Path(__file__).resolve().parent.parent / "infra" / "kafka" / "pom.xml"
JVM_OPTS = [
    "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS",
]
READY_TIMEOUT = 60.0
# One JobRequested with 100,000 recipients is ~10-15 MB of JSON; leave room above it.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


def kafka_version() -> str:
    """The Kafka version pinned in the packaged pom (its one ``kafka.version`` property)."""
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if not match:
        raise DevStackError(f"{POM} has no <kafka.version> property")
    return match.group(1).strip()


def props_path(home: Path) -> Path:
    return home / "kafka" / "server.properties"


def pidfile(home: Path) -> Path:
    return home / "run" / "kafka.pid"


def markers(home: Path) -> list[str]:
    """What identifies our broker in /proc/<pid>/cmdline: the main class and our properties file."""
    return ["kafka.Kafka", str(props_path(home))]


def running(home: Path) -> int | None:
    """The pid of our broker if it runs, else None."""
    return running_pid(pidfile(home), markers(home))


def _require_tools() -> None:
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        raise DevStackError(
            f"{' and '.join(missing)} not found on PATH. The Kafka broker needs a Java runtime and Maven: "
            "apt-get install -y openjdk-17-jre-headless maven"
        )


def ensure_jars(home: Path, log: Log) -> tuple[Path, bool]:
    """Return ``home/kafka/libs-<version>``, fetching the jars with Maven if missing (True = fetched).

    Maven copies into a temporary directory that is renamed at the end, so an interrupted fetch never
    leaves a half-filled libs directory behind. ~/.m2 caches the jars for the next home.
    """
    _require_tools()
    version = kafka_version()
    libs = home / "kafka" / f"libs-{version}"
    if libs.is_dir() and any(libs.glob("kafka_2.13-*.jar")):
        return libs, False
    libs.parent.mkdir(parents=True, exist_ok=True)
    log(f"fetching Apache Kafka {version} jars from Maven Central into {libs} ...")
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=libs.parent) as tmp:
        work = Path(tmp)
        shutil.copy(POM, work / "pom.xml")  # Maven writes target/ beside the pom: keep the package clean
        argv = ["mvn", "-q", "-B", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
                f"-DoutputDirectory={work / 'libs'}", "-DincludeScope=runtime"]
        if os.environ.get("OFFLOAD_MAVEN_REPO_LOCAL"):  # lets a benchmark measure a truly cold fetch
            argv.append(f"-Dmaven.repo.local={os.environ['OFFLOAD_MAVEN_REPO_LOCAL']}")
        result = subprocess.run(argv, check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0 or not any((work / "libs").glob("kafka_2.13-*.jar")):
            raise DevStackError(f"Maven could not fetch the Kafka jars:\n{result.stdout}\n{result.stderr}")
        (work / "libs").rename(libs)
    return libs, True


def broker_settings(kafka_port: int, controller_port: int, data: Path, *, node_id: int = 1,
                    voters: str | None = None, replication: int = 1) -> dict[str, str]:
    """The broker's configuration, setting by setting: what the dev stack writes, and what the test containers and
    both compose files are held to (tests/unit/test_broker_settings.py).

    One node by default; ``voters`` and ``replication`` make it one node of a cluster (see kafka_cluster).
    """
    min_isr = str(min(2, replication))  # with 3 replicas a write needs 2: one broker may go, nothing is lost
    return {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": voters or f"{node_id}@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{kafka_port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{kafka_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        # Inside home, not /tmp: topics are the system of record and survive broker restarts.
        "log.dirs": str(data),
        # Public topics are created on purpose (`offload topics create`). This only stops creation by
        # metadata requests; Faust still creates its internal topics through the admin API.
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "default.replication.factor": str(replication),
        "min.insync.replicas": min_isr,
        "unclean.leader.election.enable": "false",  # a lagging replica never leads: no acknowledged loss
        "offsets.topic.replication.factor": str(replication),
        "offsets.topic.num.partitions": "10",  # default 50 only slows a dev broker's first group join
        "transaction.state.log.replication.factor": str(replication),
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": str(replication),
        "share.coordinator.state.topic.min.isr": min_isr,
        "group.initial.rebalance.delay.ms": "0",
        "message.max.bytes": str(MAX_MESSAGE_BYTES),
        "replica.fetch.max.bytes": str(MAX_MESSAGE_BYTES),
        "socket.request.max.bytes": str(4 * MAX_MESSAGE_BYTES),
        # Keep every event forever: the log is the system of record and projections replay from 0.
        "log.retention.ms": "-1",
        "log.retention.bytes": "-1",
    }


def write_properties(home: Path, kafka_port: int, controller_port: int, *, node_id: int = 1,
                     voters: str | None = None, replication: int = 1) -> Path:
    """Write the broker configuration; rewritten on every start so port changes take effect."""
    data = home / "kafka" / "data"
    lines = broker_settings(kafka_port, controller_port, data, node_id=node_id, voters=voters,
                            replication=replication)
    path = props_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "# Written by devtools.devstack on every start; edit the code, not this file.\n"
    path.write_text(body + "".join(f"{key}={value}\n" for key, value in lines.items()))
    data.mkdir(parents=True, exist_ok=True)
    return path


def new_cluster_id() -> str:
    return base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


def format_storage(home: Path, libs: Path, log: Log, cluster_id: str | None = None) -> bool:
    """Format the KRaft storage once (True if it ran); an existing meta.properties means done."""
    if (home / "kafka" / "data" / "meta.properties").exists():
        return False
    # Joined to its flag with "=": a base64url id can start with "-", which the tool would read as an option.
    cluster_id = cluster_id or new_cluster_id()
    log(f"formatting Kafka storage (cluster id {cluster_id})")
    result = subprocess.run(
        ["java", "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
         "-c", str(props_path(home))],
        check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise DevStackError(f"kafka storage format failed:\n{result.stdout}\n{result.stderr}")
    return True


def _exchange(sock: socket.socket, api_key: int, version: int, body: bytes) -> bytes:
    client = b"offload-devstack"
    request = struct.pack(">hhih", api_key, version, 1, len(client)) + client + body
    sock.sendall(struct.pack(">i", len(request)) + request)
    size = struct.unpack(">i", _read(sock, 4))[0]
    return _read(sock, size)


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        data += chunk
    return data


def broker_ready(port: int, host: str = "127.0.0.1", brokers: int = 1) -> bool:
    """True when the broker answers ApiVersions and its Metadata lists at least ``brokers`` brokers.

    Raw protocol (v0/v1 requests, still served by Kafka 4.x) so this works from sync code and from
    inside a running event loop alike.
    """
    try:
        with socket.create_connection((host, port), timeout=2.0) as sock:
            sock.settimeout(2.0)
            versions = _exchange(sock, 18, 0, b"")  # ApiVersions v0
            if struct.unpack(">h", versions[4:6])[0] != 0:
                return False
            metadata = _exchange(sock, 3, 1, struct.pack(">i", -1))  # Metadata v1, all topics
            listed: int = struct.unpack(">i", metadata[4:8])[0]
            return listed >= brokers
    except (OSError, ConnectionError, struct.error):
        return False


def broker_argv(home: Path, libs: Path) -> list[str]:
    """The JVM command line of the broker configured in ``home`` (its markers are in it)."""
    return ["java", *JVM_OPTS, "-cp", f"{libs}/*", "kafka.Kafka", str(props_path(home))]


def start(home: Path, libs: Path, kafka_port: int, controller_port: int, log: Log) -> int:
    """Start the broker detached and wait until it answers; return its pid."""
    for port, what in ((kafka_port, "kafka"), (controller_port, "kafka controller")):
        ensure_port_free(port, what)
    return start_service(broker_argv(home, libs), name="kafka", address=f"127.0.0.1:{kafka_port}",
                         pidfile=pidfile(home), markers=markers(home), log_path=home / "logs" / "kafka.log",
                         ready=lambda: broker_ready(kafka_port), timeout=READY_TIMEOUT, interval=0.2, log=log)


def stop(home: Path, log: Log) -> None:
    """Stop our broker (SIGTERM = controlled shutdown, SIGKILL after 30 s) and drop its pidfile."""
    stop_service(pidfile(home), markers(home), "kafka", log)
