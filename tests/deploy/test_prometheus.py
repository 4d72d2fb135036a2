"""deploy/prometheus/ and deploy/grafana/: promtool, the metric names, and a real Prometheus."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from apps.core.metrics import exported_names
from apps.core.tasks.celery_settings import QUEUES
from tests.environment import free_port
from tests.services import ROOT, Service, Stack, executable, wait_for

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "message-bus.json"
# Series Prometheus itself adds to every scrape; no application declares them.
PROMETHEUS_SERIES = {"up"}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [executable("promtool"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = json.loads(DASHBOARD.read_text())["panels"]
    return panels


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (not its functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)  # matchers and ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*+(?!\s*\()", expr)
    return {name for name in names if name.lower() not in PROMQL_KEYWORDS}


def render_config(directory: Path, api_key: str, target: str | None = None) -> Path:
    """deploy/prometheus/prometheus.yml with its key file in `directory`; given a target, it
    scrapes and evaluates that every second."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    if target is not None:
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        job.update(scrape_timeout="1s", static_configs=[{"targets": [target]}])
    key_file = directory / "api_key"
    key_file.write_text(api_key)
    job["authorization"]["credentials_file"] = str(key_file)
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_alert_rules_pass_promtool_check():
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alert_rules_pass_their_promtool_unit_tests():
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_scrape_config_passes_promtool_check(tmp_path: Path):
    config = render_config(tmp_path, "key")
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_include_the_runbooks_four_alerts_and_the_silent_failures():
    names = {rule["alert"] for rule in alert_rules()}
    runbook = {"CeleryWorkersDown", "MQTTSubscriberDown", "CeleryQueueBacklog"}
    silent = {"MQTTSubscriberLag", "CircuitBreakerOpen", "DeadLettersGrowing"}
    assert runbook | {"WebSocketBroadcastFailures"} | silent <= names
    assert "CeleryOldestMessageTooOld" in names


def test_the_dashboard_has_the_runbooks_six_panels():
    titles = [panel["title"] for panel in dashboard_panels()]
    assert titles == [
        "Celery task rate by queue",
        "Celery queue depth",
        "MQTT messages received by topic prefix",
        "WebSocket connections",
        "Circuit breaker states",
        "Task execution latency (p50, p95, p99)",
    ]


def test_every_series_the_dashboard_and_the_alerts_query_is_exported():
    expressions = [rule["expr"] for rule in alert_rules()]
    expressions += [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]
    used = set().union(*(metric_names(expr) for expr in expressions))
    assert {"celery_queue_depth", "celery_worker_up", "circuit_breaker_state"} <= used
    assert used - exported_names() - PROMETHEUS_SERIES == set()


def test_the_name_extractor_reads_series_not_functions_labels_or_keywords():
    expr = (
        'histogram_quantile(0.95, sum by (le, kind) (rate(a_bucket{kind="x"}[5m]))) > 5 '
        "or group by (queue) (b) unless on (queue) (c == 1)"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}


# --- A real Prometheus scraping a real stack ---------------------------------------------------


def query(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


@pytest.fixture
def prometheus(running_stack: Stack, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    config = render_config(
        tmp_path, running_stack.env["MONITORING_API_KEY"], f"127.0.0.1:{running_stack.http_port}"
    )
    argv = [
        executable("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    service = Service("prometheus", argv, tmp_path / "prometheus.log")
    try:
        wait_for(lambda: query(port, "/api/v1/query", query="1"), timeout=30, what="prometheus")
        yield port
    finally:
        service.stop()


@pytest.mark.stack
def test_a_real_prometheus_scrapes_the_stack_and_evaluates_every_rule(prometheus: int):
    wait_for(
        lambda: query(prometheus, "/api/v1/query", query='up{job="message-bus"} == 1')["result"],
        timeout=30,
        what="Prometheus to scrape /metrics/export/ with the API key",
    )
    depths = query(prometheus, "/api/v1/query", query="celery_queue_depth")["result"]
    assert {series["metric"]["queue"] for series in depths} == {queue.name for queue in QUEUES}
    workers_up = query(prometheus, "/api/v1/query", query="celery_worker_up == 1")["result"]
    assert {series["metric"]["queue"] for series in workers_up} == {queue.name for queue in QUEUES}

    def every_rule_evaluated() -> list[dict[str, Any]]:
        groups = query(prometheus, "/api/v1/rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if all(not rule["lastEvaluation"].startswith("0001") for rule in rules) else []

    rules = wait_for(every_rule_evaluated, timeout=30, what="every rule to be evaluated")
    assert len(rules) == len(alert_rules())
    assert [(rule["name"], rule["health"], rule.get("lastError", "")) for rule in rules] == [
        (rule["name"], "ok", "") for rule in rules
    ]
    # On a healthy stack the conditions about its parts hold no series.
    quiet = {
        "CeleryWorkersDown",
        "MQTTSubscriberDown",
        "MQTTTopicPrefixUnread",
        "MessageBusMetricsDown",
    }
    for rule in alert_rules():
        if rule["alert"] in quiet:
            assert query(prometheus, "/api/v1/query", query=rule["expr"])["result"] == [], rule
