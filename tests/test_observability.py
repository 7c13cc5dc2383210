"""Operators look rather than read: the Grafana dashboard and the Prometheus alerts (deploy/k8s/base/monitoring)
render with kustomize, are well formed, and every metric they use exists on a running stack."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "k8s" / "base" / "monitoring"
#: Our metrics and Triton's: every metric the dashboard and the alerts name starts so.
METRIC = re.compile(r"\b((?:rerank|nv)_[a-z0-9_]+)\b")
#: Used by the dashboard or the alerts and not served: none since the score cache (issue 26's part A)
#: was merged. The test fails if one goes missing, so the dashboard can only name served metrics.
NOT_YET_SERVED: frozenset[str] = frozenset()


def dashboard() -> dict:
    return json.loads((MONITORING / "rerank-dashboard.json").read_text())


def alerts() -> dict:
    return yaml.safe_load((MONITORING / "alerts.yaml").read_text())


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def alert_exprs() -> list[str]:
    return [r["expr"] for g in alerts()["groups"] for r in g["rules"]]


def used_metrics() -> set[str]:
    return {m for e in dashboard_exprs() + alert_exprs() for m in METRIC.findall(e)}


def test_dashboard_covers_what_operators_ask_for():
    d = dashboard()
    titles = " / ".join(p["title"].lower() for p in d["panels"])
    for topic in ("requests", "latency", "queue time", "padding", "cache hit rate", "admission", "engine tokens"):
        assert topic in titles, f"no panel on {topic}: {titles}"
    assert len({p["id"] for p in d["panels"]}) == len(d["panels"]), "panel ids are unique"
    for p in d["panels"]:
        assert p["targets"] and p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["description"], p["title"]
    used = {m for e in dashboard_exprs() for m in METRIC.findall(e)}
    assert {"rerank_gateway_requests_total", "rerank_gateway_request_duration_seconds_bucket",
            "nv_inference_queue_duration_us", "rerank_engine_tokens_total", "rerank_gateway_cache_hits_total",
            "rerank_gateway_admission_rejected_total"} <= used


def test_alert_rules_are_well_formed():
    rules = [r for g in alerts()["groups"] for r in g["rules"]]
    assert len({r["alert"] for r in rules}) == len(rules)
    for r in rules:
        assert re.fullmatch(r"Rerank[A-Za-z]+", r["alert"]), r["alert"]
        assert r["labels"]["severity"] in ("critical", "warning", "info"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        assert re.fullmatch(r"\d+m", r["for"]), r["alert"]
        assert r["expr"].count("(") == r["expr"].count(")"), r["alert"]
        assert METRIC.search(r["expr"]), r["alert"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (with built-in kustomize)")
def test_kustomize_ships_them_as_configmaps():
    done = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / "cpu")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    maps = {o["metadata"]["name"]: o for o in yaml.safe_load_all(done.stdout) if o and o["kind"] == "ConfigMap"}
    assert yaml.safe_load(maps["rerank-prometheus-alerts"]["data"]["alerts.yaml"]) == alerts()
    board = maps["rerank-grafana-dashboard"]
    assert json.loads(board["data"]["rerank-dashboard.json"]) == dashboard()
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1", "Grafana's sidecar finds it by this label"
    assert board["metadata"]["namespace"] == "rerank"


def served_metrics(text: str) -> set[str]:
    """Metric names in a Prometheus exposition (a histogram's _bucket/_sum/_count included)."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
        elif line.startswith("# TYPE "):
            names.add(line.split()[2])
    return names


@pytest.mark.server
def test_every_metric_they_use_exists_on_a_running_stack(server, gateway):
    # Labelled counters appear once counted: one answer, one error, one admission 503 would need
    # overload, so the 503 counter is checked by its TYPE line (prometheus-client declares it).
    body = {"query": {"text": "what is served"}, "passages": [{"text": "metrics"}, {"text": "and more"}]}
    assert requests.post(gateway.url + "/v1/ranking", json=body, timeout=60).status_code == 200
    assert requests.post(gateway.url + "/v1/ranking", json={"query": {"text": "q"}}, timeout=60).status_code == 400
    served = served_metrics(requests.get(gateway.url + "/metrics", timeout=10).text)
    served |= served_metrics(urllib.request.urlopen(f"http://127.0.0.1:{server.ports.metrics}/metrics",
                                                    timeout=10).read().decode())
    missing = used_metrics() - served
    assert missing == NOT_YET_SERVED, (f"used by the dashboard or the alerts but not served: "
                                       f"{sorted(missing - NOT_YET_SERVED)}; listed as not served yet but served: "
                                       f"{sorted(NOT_YET_SERVED - missing)}")
