"""docs/monitoring/alerts.yml and grafana-dashboard.json against a real
scrape: every metric and label they use is in the exposition of a running
container, and the PromQL is valid (promtool, and a Prometheus server
scraping the container, where they are installed)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from enrichlog import LoggingContainer

from .scrape import Exposition, scrape
from .workload import log_events

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "docs" / "monitoring"
RULES = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
RULE_TESTS = Path(__file__).parent / "alerts_test.yml"

# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
METRIC = re.compile(r"\benrichlog_[A-Za-z0-9_]+")
SELECTOR = re.compile(r"\b(enrichlog_[A-Za-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*\"([^\"]*)\"")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
RECORDED = re.compile(r"\benrichlog:[A-Za-z0-9_:]+")


def load_rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: targets and variables."""
    found = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", ())
        if "expr" in target
    ]
    found.extend(
        variable["definition"]
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "query"
    )
    return found


def rule_texts() -> list[str]:
    """Every expression, and the annotations (they name metrics too)."""
    texts = []
    for rule in load_rules():
        texts.append(rule["expr"])
        texts.extend(rule.get("annotations", {}).values())
    return texts


def as_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced."""
    expr = re.sub(r"^label_values\((.+),\s*\w+\)$", r"\1", expr)  # a variable's query
    expr = expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\w+", ".*", expr)


@pytest.fixture
def exposition(live: LoggingContainer) -> Exposition:
    """A real scrape of the running container's /metrics."""
    assert live.metrics_port is not None
    return scrape(live.metrics_port)


# -- the files -----------------------------------------------------------------------


def test_every_alert_is_documented_and_has_a_severity() -> None:
    alerts = [rule for rule in load_rules() if "alert" in rule]

    assert {
        "EnrichlogCircuitOpen",
        "EnrichlogEventsDropped",
        "EnrichlogWriteFailures",
        "EnrichlogQueueNearlyFull",
        "EnrichlogEnricherSlow",
        "EnrichlogEnricherFailing",
    } == {rule["alert"] for rule in alerts}
    index = (MONITORING / "index.md").read_text()
    for rule in alerts:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} == set(rule["annotations"])
        assert f"`{rule['alert']}`" in index


def test_the_slow_alert_compares_the_p95_with_the_exposed_timeout() -> None:
    rules = {rule.get("alert") or rule["record"]: rule["expr"] for rule in load_rules()}
    recorded = rules["enrichlog:enricher_duration_seconds:p95_5m"]

    assert "histogram_quantile(0.95" in recorded
    assert "enrichlog_enricher_duration_seconds_bucket" in recorded
    assert "enrichlog_enricher_timeout_seconds" in rules["EnrichlogEnricherSlow"]


def test_recorded_series_used_are_recorded() -> None:
    rules = load_rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    used = {
        name
        for text in [*rule_texts(), *dashboard_queries(load_dashboard())]
        for name in RECORDED.findall(text)
    }

    assert used <= recorded


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = load_dashboard()
    panels = dashboard["panels"]

    assert "enrichlog" == dashboard["uid"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance", "enricher"} == variables
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"]
        assert grid["x"] + grid["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["title"]
        assert panel["description"]
        assert "${datasource}" == panel["datasource"]["uid"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert 'job=~"$job"' in target["expr"]


# -- against a real scrape -----------------------------------------------------------


def test_every_metric_the_rules_and_dashboard_use_is_exposed(exposition: Exposition) -> None:
    texts = [*rule_texts(), *dashboard_queries(load_dashboard())]
    used = {name for text in texts for name in METRIC.findall(text)}

    assert len(used) >= 20
    assert set() == used - exposition.sample_names


def test_every_label_the_rules_and_dashboard_match_is_exposed(exposition: Exposition) -> None:
    problems = []
    for text in [*rule_texts(), *dashboard_queries(load_dashboard())]:
        for name, matchers in SELECTOR.findall(text):
            for label, operator, value in MATCHER.findall(matchers):
                if label in TARGET_LABELS:
                    continue
                values = {labels.get(label) for labels in exposition.series(name)}
                if label not in exposition.labels_of(name):
                    problems.append(f"{name} has no label {label!r}")
                elif operator == "=" and "$" not in value and value not in values:
                    problems.append(f"{name}{{{label}={value!r}}} is not exposed")

    assert [] == problems


def test_every_grouping_label_is_exposed(exposition: Exposition) -> None:
    known = TARGET_LABELS | {"le"}
    for name in exposition.sample_names:
        known |= exposition.labels_of(name)
    grouped = {
        label.strip()
        for text in [*rule_texts(), *dashboard_queries(load_dashboard())]
        for labels in GROUPING.findall(text)
        for label in labels.split(",")
        if label.strip()
    }

    assert grouped
    assert set() == grouped - known


def test_the_monitoring_guide_lists_every_exposed_family(exposition: Exposition) -> None:
    index = (MONITORING / "index.md").read_text()
    families = {
        name + ("_total" if kind == "counter" else "")
        for name, kind in exposition.types.items()
        if name.startswith("enrichlog_")
    }

    assert set() == {name for name in families if f"`{name}`" not in index}


# -- promtool and Prometheus -----------------------------------------------------------

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian package 'prometheus'); the rules are checked "
    "against a real scrape above",
)


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))

    assert 0 == result.returncode, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)

    assert 0 == result.returncode, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    queries = dashboard_queries(load_dashboard())
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{index}", "expr": as_promql(expr)}
                    for index, expr in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))

    result = promtool("check", "rules", str(path))

    assert 0 == result.returncode, result.stdout + result.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def prometheus_server(live: LoggingContainer, tmp_path: Path) -> Iterator[str]:
    """A Prometheus server scraping ``live`` every second, with the rules."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the Prometheus server is not installed (Debian package 'prometheus')")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "app",
                "static_configs": [{"targets": [f"127.0.0.1:{live.metrics_port}"]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # Ready, then four scrapes, with events in between for rate().
        deadline = time.monotonic() + 60
        while not ready(url):
            assert time.monotonic() < deadline, "Prometheus did not start scraping"
            time.sleep(0.25)
        for _ in range(4):
            log_events(10)
            assert live.flush(10)
            time.sleep(1.0)
        yield url
    finally:
        server.terminate()
        server.wait(30)


def query(url: str, expr: str) -> list[float]:
    """The values of an instant query; a query Prometheus refuses fails."""
    address = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        with urllib.request.urlopen(address, timeout=10) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as exc:
        pytest.fail(f"Prometheus refused {expr!r}: {exc.read().decode()}")
    assert "success" == answer["status"], (expr, answer)
    return [float(item["value"][1]) for item in answer["data"]["result"]]


def ready(url: str) -> bool:
    """Prometheus answers queries and has scraped the container."""
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=10):
            pass
    except urllib.error.URLError:  # not listening yet, or 503 while starting
        return False
    return [1.0] == query(url, "up")


@pytest.mark.slow
def test_a_prometheus_server_answers_every_query(prometheus_server: str) -> None:
    # Every query evaluates (a refused one fails in query()); the dashboard's
    # have data, but for those that filter (> 0) on what this workload
    # never does (batching).
    unanswered = []
    for expr in dashboard_queries(load_dashboard()):
        promql = as_promql(expr).replace("[1m]", "[5s]").replace("[1h]", "[1m]")
        if not query(prometheus_server, promql):
            unanswered.append(promql)
    for rule in load_rules():
        query(prometheus_server, rule["expr"])

    assert [] == [promql for promql in unanswered if "batch" not in promql]
    assert [1.0] == query(prometheus_server, 'max(enrichlog_circuit_state{enricher="geo"}) / 2')
    assert query(prometheus_server, 'enrichlog_events_total{job="app", result="written"}')[0] >= 40
    # The rules ran: the recorded p95 of risk, which always times out at 20 ms.
    (p95,) = query(prometheus_server, 'enrichlog:enricher_duration_seconds:p95_5m{enricher="risk"}')
    assert 0.02 <= p95 <= 0.25
