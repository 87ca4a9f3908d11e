"""The brokers we ship are configured alike: the dev stack's (devtools.devstack, which the demo, the tests and the
benchmarks run on), docker-compose.yml's, the three of docker-compose.ha.yml, and the one the tests start in a
container where a Docker engine answers. Only where a broker listens, who its peers are and where it keeps its
data may differ; a setting tuned in one (retention, record size) and forgotten in another would make the
benchmarks measure a broker no site runs."""

from __future__ import annotations

from pathlib import Path

import yaml

from devtools.devstack.kafka import write_properties
from tests.support.stack import KAFKA_IMAGE, kafka_container_env

ROOT = Path(__file__).resolve().parents[2]
# Where and how each broker listens, which node it is and where its files are: set per installation.
PER_INSTALL = {
    "node.id", "controller.quorum.voters", "listeners", "advertised.listeners", "listener.security.protocol.map",
    "log.dirs",
}


def _dev_stack_settings(tmp_path: Path, replication: int) -> dict[str, str]:
    path = write_properties(tmp_path, 19092, 19093, replication=replication)
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {key: value for key, value in (line.split("=", 1) for line in lines) if key not in PER_INSTALL}


def _env_name(key: str) -> str:
    """The apache/kafka image's spelling of a broker setting: KAFKA_ and the name upper-cased, dots to _."""
    return "KAFKA_" + key.upper().replace(".", "_")


def _compose(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def test_the_compose_broker_has_every_setting_of_the_dev_stack(tmp_path):
    env = _compose("docker-compose.yml")["services"]["kafka"]["environment"]
    wanted = _dev_stack_settings(tmp_path, replication=1)
    assert {key: env.get(_env_name(key)) for key in wanted} == wanted


def test_the_three_brokers_have_every_setting_of_a_dev_stack_node_of_three(tmp_path):
    env = _compose("docker-compose.ha.yml")["x-kafka-ha-env"]
    wanted = _dev_stack_settings(tmp_path, replication=3)
    assert {key: env.get(_env_name(key)) for key in wanted} == wanted
    assert wanted["min.insync.replicas"] == "2"


def test_the_test_container_broker_has_every_setting_of_the_dev_stack_and_is_reached_on_loopback(tmp_path):
    assert KAFKA_IMAGE == _compose("docker-compose.yml")["services"]["kafka"]["image"]
    env = kafka_container_env(19092)
    wanted = _dev_stack_settings(tmp_path, replication=1)
    assert {key: env.get(_env_name(key)) for key in wanted} == wanted
    # Inside the container it listens on every interface; clients outside are told the published loopback port.
    assert env["KAFKA_LISTENERS"] == "PLAINTEXT://:19092,CONTROLLER://:9093"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://127.0.0.1:19092"
    assert (env["KAFKA_CONTROLLER_QUORUM_VOTERS"], env["KAFKA_LOG_DIRS"]) == ("1@localhost:9093", "/var/lib/kafka/data")
    assert env["CLUSTER_ID"] and env["CLUSTER_ID"] != kafka_container_env(19092)["CLUSTER_ID"]
