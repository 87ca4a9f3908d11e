"""docs/prometheus-rules.yml names only metrics and labels that the API, the worker and the projector expose."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api.metrics import OffloadCollector, Reading
from resilience.dependencies import Dependencies
from resilience.probe import Probe

RULES = Path(__file__).resolve().parents[2] / "docs" / "prometheus-rules.yml"
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series


def _exposed() -> dict[str, set[str]]:
    """Every sample name the three processes expose, with its label names."""
    api = OffloadCollector(state=None, kafka=None)  # type: ignore[arg-type] - collect() reads no state
    api.reading = Reading(postgres_up=True, kafka_up=True, jobs=[{"status": "completed", "type": "email", "n": 1}],
                          outcomes=[{"route": "local", "provider": "smtp", "sent": 1, "failed": 0}],
                          callbacks={"succeeded": 1}, lag=[("worker", "app", "offload.batches", 0)])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(api)
    texts = [generate_latest(registry).decode()]
    deps = Dependencies()
    deps.track("kafka")
    probe = Probe("worker", "127.0.0.1", 0, serving=lambda: True, metrics_token=None, token_required=False,
                  dependencies=deps)
    texts.append(generate_latest(probe._registry).decode())
    exposed: dict[str, set[str]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                exposed.setdefault(sample.name, set()).update(sample.labels)
    return exposed


def test_every_rule_names_exposed_metrics_and_labels():
    exposed = _exposed()
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    assert len(rules) >= 5
    for rule in rules:
        names = set(re.findall(r"\boffload_[a-z_]+", rule["expr"]))
        assert names <= set(exposed), (rule["alert"], names - set(exposed))
        labels = set().union(*(exposed[name] for name in names)) | TARGET_LABELS if names else TARGET_LABELS
        used = set(re.findall(r"\$labels\.(\w+)", str(rule.get("annotations", {}))))
        used |= {m for selector in re.findall(r"\{([^}]*)\}", rule["expr"]) for m in re.findall(r"(\w+)\s*=", selector)}
        assert used <= labels, (rule["alert"], used - labels)
        assert rule["for"] and rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
