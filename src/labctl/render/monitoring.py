"""The monitoring stack: compose file, Prometheus config and rules, Grafana provisioning."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from labctl import secretscan
from labctl.inventory.schema import (
    External,
    Inventory,
    LiteLLM,
    LlamaCppPython,
    LlamaServer,
    Ollama,
    Redis,
    RedisExporter,
    Vllm,
)
from labctl.render import templates
from labctl import encode
from labctl.render import operator_files as opfiles
from labctl.render.gateway import host_port, reach
from labctl.inventory.layout import Layout

# LiteLLM's Prometheus callback metric families (measured on litellm 1.106; see
# docs/monitoring.md). Alert rules and dashboards refer to them by these names only, and
# the integration tests check each against a real gateway's /metrics/.
LITELLM_FALLBACKS = "litellm_deployment_successful_fallbacks_total"
LITELLM_LATENCY = "litellm_request_total_latency_metric"
LITELLM_REQUESTS = "litellm_proxy_total_requests_metric_total"


@dataclass
class Target:
    address: str
    labels: dict[str, str]


@dataclass
class Job:
    name: str
    path: str
    targets: list[Target] = field(default_factory=list)


def scrape_jobs(inv: Inventory) -> tuple[list[Job], list[str]]:
    """Prometheus jobs for everything that exposes metrics, and notes for what does not."""
    mon = inv.monitoring
    jobs: dict[str, Job] = {}
    notes: list[str] = []

    def add(job: str, path: str, address: str, **labels: str) -> None:
        jobs.setdefault(job, Job(job, path)).targets.append(Target(address, labels))

    add("prometheus", "/metrics", f"127.0.0.1:{mon.prometheus.port}", service="prometheus")
    if mon.node_exporter.enabled:
        add("node", "/metrics", f"127.0.0.1:{mon.node_exporter.port}", service="node")
    for name, svc in inv.enabled().items():
        address = host_port(reach(inv.bind_of(svc)), svc.port)
        if isinstance(svc, LlamaServer):
            if svc.metrics:
                add("llama-server", "/metrics", address, service=name, kind=svc.kind)
            else:
                notes.append(f"{name}: llama-server runs without --metrics (metrics: false), not scraped")
        elif isinstance(svc, Vllm):
            add("vllm", "/metrics", address, service=name, kind=svc.kind)
        elif isinstance(svc, LiteLLM):
            if svc.prometheus_metrics:
                add("litellm", "/metrics/", address, service=name, kind=svc.kind)
            else:
                notes.append(f"{name}: LiteLLM's prometheus callback is off (prometheus_metrics: false), not scraped")
        elif isinstance(svc, LlamaCppPython):
            notes.append(f"{name}: llama-cpp-python has no /metrics; `labctl status` probes it")
        elif isinstance(svc, Ollama):
            notes.append(f"{name}: Ollama has no native /metrics; `labctl status` probes /api/version")
        elif isinstance(svc, Redis):
            if not any(isinstance(e, RedisExporter) and e.redis == name for e in inv.enabled().values()):
                notes.append(f"{name}: redis-server has no /metrics of its own; add a kind: redis-exporter "
                             "service to scrape it")
        elif isinstance(svc, RedisExporter):
            add("redis", "/metrics", address, service=name, kind=svc.kind, redis=svc.redis)
        elif isinstance(svc, External):
            if svc.metrics_path:
                # One job each: a job has one metrics path.
                add(f"external-{name}", svc.metrics_path, address, service=name, kind=svc.kind)
            else:
                notes.append(f"{name}: external, without metrics_path, not scraped; `labctl status` probes it")
    return list(jobs.values()), notes


def prometheus_yml(inv: Inventory) -> str:
    jobs, notes = scrape_jobs(inv)
    return templates.render("compose/prometheus.yml.j2", external_labels=inv.monitoring.external_labels,
                            extra_jobs=inv.monitoring.scrape_jobs, scrape_interval=inv.monitoring.scrape_interval,
                            evaluation_interval=inv.monitoring.evaluation_interval, jobs=jobs, notes=notes)


def rules_yml(inv: Inventory) -> str:
    return templates.render(
        "compose/rules.yml.j2",
        backend_kinds="llama-server|vllm",
        down_for="1m",
        gateway=bool(inv.gateways()),
        fallback_metric=LITELLM_FALLBACKS,
        fallbacks_per_minute=1,
        latency_metric=LITELLM_LATENCY,
        latency_p95_seconds=30,
    )


def compose_yaml(inv: Inventory) -> str:
    mon = inv.monitoring
    return templates.render(
        "compose/compose.yaml.j2", project=mon.project, prometheus=mon.prometheus, grafana=mon.grafana,
        node_exporter=mon.node_exporter, grafana_password_file=inv.host.expand(mon.grafana.admin_password_file),
    )


def _panel(pid: int, title: str, expr: str, unit: str, x: int, y: int, kind: str = "timeseries") -> dict[str, Any]:
    return {
        "id": pid, "type": kind, "title": title,
        "datasource": {"type": "prometheus", "uid": "labctl-prometheus"},
        "gridPos": {"h": 6, "w": 6 if kind == "stat" else 9, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": "A", "expr": expr,
                     "datasource": {"type": "prometheus", "uid": "labctl-prometheus"}}],
    }


def backend_panels(inv: Inventory) -> list[tuple[str, str, list[tuple[str, str, str]]]]:
    """Per backend: (service, kind, [(title, PromQL, unit)]). Public for the tests, which
    check every metric named here against what the real servers expose."""
    out = []
    for name, svc in inv.enabled().items():
        sel = f'service="{name}"'
        restarts = ("Restarts seen (down to up, 1h)", f"floor(changes(up{{{sel}}}[1h]) / 2)", "none")
        up = ("Up", f"up{{{sel}}}", "none")
        if isinstance(svc, LlamaServer) and svc.metrics:
            panels = [up,
                      ("Requests in flight", f"llamacpp:requests_processing{{{sel}}}", "none"),
                      ("Tokens/s generated", f"rate(llamacpp:tokens_predicted_total{{{sel}}}[5m])", "none"),
                      ("Prompt tokens/s", f"rate(llamacpp:prompt_tokens_total{{{sel}}}[5m])", "none"),
                      restarts]
        elif isinstance(svc, Vllm):
            panels = [up,
                      ("Request rate", f"sum(rate(vllm:request_success_total{{{sel}}}[5m]))", "reqps"),
                      ("Latency p95", "histogram_quantile(0.95, sum by (le) "
                                      f"(rate(vllm:e2e_request_latency_seconds_bucket{{{sel}}}[5m])))", "s"),
                      ("Tokens/s generated", f"rate(vllm:generation_tokens_total{{{sel}}}[5m])", "none"),
                      restarts]
        elif isinstance(svc, External) and svc.metrics_path:
            panels = [up, restarts]
        elif isinstance(svc, LiteLLM) and svc.prometheus_metrics:
            panels = [up,
                      ("Request rate by route", f"sum by (requested_model) (rate({LITELLM_REQUESTS}{{{sel}}}[5m]))",
                       "reqps"),
                      ("Latency p95", "histogram_quantile(0.95, sum by (le) "
                                               f"(rate({LITELLM_LATENCY}_bucket{{{sel}}}[5m])))", "s"),
                      ("Fallbacks/s", f"sum(rate({LITELLM_FALLBACKS}{{{sel}}}[5m]))", "none"),
                      restarts]
        else:
            continue
        out.append((name, svc.kind, panels))  # type: ignore[attr-defined]
    return out


def dashboard(inv: Inventory) -> str:
    panels: list[dict[str, Any]] = []
    y = 0
    for name, kind, rows in backend_panels(inv):
        panels.append({"id": len(panels) + 1, "type": "row", "title": f"{name} ({kind})", "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        y += 1
        x = 0
        for title, expr, unit in rows:
            kind_ = "stat" if title in ("Up",) or title.startswith("Restarts") else "timeseries"
            panel = _panel(len(panels) + 1, title, expr, unit, x, y, kind_)
            panels.append(panel)
            x += panel["gridPos"]["w"]
            if x >= 24:
                x, y = 0, y + 6
        y += 6
    doc = {
        "uid": opfiles.DASHBOARD_UID, "title": "labctl: LLM serving stack", "tags": ["labctl"],
        "schemaVersion": 39, "version": 1, "editable": False, "timezone": "browser",
        "refresh": "30s", "time": {"from": "now-6h", "to": "now"}, "panels": panels,
        "templating": {"list": []}, "annotations": {"list": []},
    }
    return encode.json_document(doc)


def operator_files(inv: Inventory, base: str) -> dict[str, str]:
    """The operator's rule files and dashboards, installed beside labctl's under names that
    cannot collide with them (``operator-N-STEM``), each written again from its checked
    data (labctl.render.operator_files; labctl.inventory.checks has refused a bad one, so a
    refusal here means the file changed since)."""
    from pathlib import PurePosixPath

    from labctl.errors import HostIOError

    mon = inv.monitoring
    out: dict[str, str] = {}
    for emit, paths, suffix, folder in ((opfiles.rule_file, mon.rule_files, ".yml", "prometheus/rules"),
                                        (opfiles.dashboard, mon.dashboards, ".json", "grafana/dashboards")):
        for i, path in enumerate(paths):
            real = inv.host.expand(path)
            try:
                text = emit(real)
            except opfiles.Refused as exc:
                raise HostIOError(str(exc)) from None
            stem = re.sub(r"[^A-Za-z0-9_-]", "_", PurePosixPath(real).stem)[:64]
            if secretscan.value_problem(stem):  # a file name is shown by plan too
                stem = "file"
            out[f"{base}/{folder}/operator-{i}-{stem}{suffix}"] = text
    return out


def render_monitoring(inv: Inventory, layout: Layout) -> dict[str, str]:
    if not inv.monitoring.enabled:
        return {}
    base = layout.monitoring_dir
    prometheus_url = f"http://127.0.0.1:{inv.monitoring.prometheus.port}"
    return {**operator_files(inv, base),
        f"{base}/compose.yaml": compose_yaml(inv),
        f"{base}/prometheus/prometheus.yml": prometheus_yml(inv),
        f"{base}/prometheus/rules/labctl.yml": rules_yml(inv),
        f"{base}/grafana/provisioning/datasources/labctl.yaml":
            templates.render("compose/grafana-datasources.yaml.j2", prometheus_url=prometheus_url),
        f"{base}/grafana/provisioning/dashboards/labctl.yaml": templates.render("compose/grafana-dashboards.yaml.j2"),
        f"{base}/grafana/dashboards/labctl-overview.json": dashboard(inv),
    }
