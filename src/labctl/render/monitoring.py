"""The monitoring stack: compose file, Prometheus config and rules, Grafana provisioning.
What each service exposes (its scrape job, its panels) is its kind's (labctl.kinds)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from labctl import encode, secretscan
from labctl.inventory.layout import Layout
from labctl.inventory.schema import Inventory
from labctl.kinds import kind_of
from labctl.kinds.base import Scrape, host_port, reach
from labctl.kinds.base import Per
from labctl.kinds.litellm import LATENCY_METRIC, ROUTE_SIGNALS
from labctl.render import operator_files as opfiles
from labctl.render import templates


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
    if mon.gpu_exporter.enabled:
        add("gpu-exporter", "/metrics", f"127.0.0.1:{mon.gpu_exporter.port}", service="gpu-exporter")
    for name, svc in inv.enabled().items():
        kind = kind_of(svc)
        scrape = kind.scrape(inv, name, svc)
        if isinstance(scrape, Scrape):
            add(scrape.job, scrape.path, host_port(reach(inv.bind_of(svc)), svc.port), service=name, kind=kind.name,
                **scrape.labels)
        elif scrape:
            notes.append(scrape)
    return list(jobs.values()), notes


def prometheus_yml(inv: Inventory) -> str:
    jobs, notes = scrape_jobs(inv)
    return templates.render("compose/prometheus.yml.j2", external_labels=inv.monitoring.external_labels,
                            extra_jobs=inv.monitoring.scrape_jobs, scrape_interval=inv.monitoring.scrape_interval,
                            evaluation_interval=inv.monitoring.evaluation_interval, jobs=jobs, notes=notes)


def backend_kinds() -> str:
    """The backend kinds whose metrics endpoint says they are up (``llama-server|vllm``...),
    for the backend-down alert."""
    from labctl.kinds import KINDS

    return "|".join(sorted(k.name for k in KINDS.values() if k.backend and k.managed and k.metrics_endpoint))


# The GPU exporters a GPU host may run, by their metric names: utkuozdemir/nvidia_gpu_exporter
# (bytes) and NVIDIA's DCGM exporter (MiB, used and free).
GPU_USED, GPU_TOTAL = "nvidia_smi_memory_used_bytes", "nvidia_smi_memory_total_bytes"
DCGM_USED, DCGM_FREE = "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"


def _by_route(per: Per, window: str) -> str:
    """A gateway family's rate summed per service and route, the route under one label name,
    ``route`` (LiteLLM names it ``model_group`` on one family, ``requested_model`` on another)."""
    return (f"sum by (service, route) (label_replace(rate({encode.promql_name(per.family)}[{window}]), "
            f"\"route\", \"$1\", {encode.promql_str(per.label)}, \"(.+)\"))")


def ttft_exprs(inv: Inventory) -> list[encode.Encoded]:
    """The 95th percentile of time to first token per service, one expression per kind of
    the inventory's scraped services whose metrics keep that histogram (labctl.kinds: signals)."""
    out: dict[str, str] = {}
    for name, svc in inv.enabled().items():
        kind = kind_of(svc)
        signals = kind.signals(svc)
        if signals is None or not signals.ttft or not isinstance(kind.scrape(inv, name, svc), Scrape):
            continue
        family = encode.promql_name(f"{signals.ttft}_bucket")
        out.setdefault(kind.name, f"histogram_quantile(0.95, sum by (le, service) "
                                  f"(rate({family}{{kind={encode.promql_str(kind.name)}}}[5m])))")
    # Composed of encoded names and literals only.
    return [encode.Encoded(expr) for expr in out.values()]


def rules_yml(inv: Inventory) -> str:
    assert ROUTE_SIGNALS.fallbacks is not None
    return templates.render(
        "compose/rules.yml.j2",
        backend_kinds=backend_kinds(),
        down_for="1m",
        gateway=bool(inv.gateways()),
        # Composed of encoded names and literals only.
        own_answers_expr=encode.Encoded(_by_route(ROUTE_SIGNALS.answered, "10m")),
        fallback_answers_expr=encode.Encoded(_by_route(ROUTE_SIGNALS.fallbacks, "10m")),
        fallback_share=0.25,
        fallback_min_per_second=round(1 / 60, 4),  # a route answered once a minute or more
        latency_metric=LATENCY_METRIC,
        latency_p95_seconds=30,
        ttft_exprs=ttft_exprs(inv),
        ttft_p95_seconds=10,
        gpu=inv.host.gpu,
        gpu_used=GPU_USED, gpu_total=GPU_TOTAL, dcgm_used=DCGM_USED, dcgm_free=DCGM_FREE,
        gpu_memory_fraction=0.95,
    )


def compose_yaml(inv: Inventory) -> str:
    mon = inv.monitoring
    return templates.render(
        "compose/compose.yaml.j2", project=mon.project, prometheus=mon.prometheus, grafana=mon.grafana,
        node_exporter=mon.node_exporter, gpu_exporter=mon.gpu_exporter,
        grafana_password_file=inv.host.expand(mon.grafana.admin_password_file),
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
    """Per scraped service: (service, kind, [(title, PromQL, unit)]): Up, what its kind
    shows, and its restarts. Public for the tests, which check every metric named here
    against what the real servers expose."""
    out = []
    for name, svc in inv.enabled().items():
        kind = kind_of(svc)
        if not isinstance(kind.scrape(inv, name, svc), Scrape):
            continue
        sel = f'{{service="{name}"}}'
        panels = [("Up", f"up{sel}", "none")]
        panels += [(p.title, p.expr.replace("{sel}", sel), p.unit) for p in kind.panels(svc)]
        panels.append(("Restarts seen (down to up, 1h)", f"floor(changes(up{sel}[1h]) / 2)", "none"))
        out.append((name, kind.name, panels))
    return out


def gpu_panels(inv: Inventory) -> list[tuple[str, str, list[tuple[str, str, str]]]]:
    """The GPU row, where the inventory runs the GPU exporter (monitoring.gpu_exporter):
    nvidia-smi's figures per GPU. Only a host with an NVIDIA GPU has them."""
    if not inv.monitoring.gpu_exporter.enabled:
        return []
    sel = '{service="gpu-exporter"}'
    return [("gpu-exporter", "nvidia_gpu_exporter", [
        ("Up", f"up{sel}", "none"),
        ("GPU memory used", f"sum by (uuid) ({GPU_USED}{sel}) / sum by (uuid) ({GPU_TOTAL}{sel})", "percentunit"),
        ("GPU utilisation", f"avg by (uuid) (nvidia_smi_utilization_gpu_ratio{sel})", "percentunit"),
        ("GPU power", f"sum by (uuid) (nvidia_smi_power_draw_watts{sel})", "watt"),
        ("GPU temperature", f"max by (uuid) (nvidia_smi_temperature_gpu{sel})", "celsius")])]


def dashboard(inv: Inventory) -> str:
    panels: list[dict[str, Any]] = []
    y = 0
    for name, kind, rows in backend_panels(inv) + gpu_panels(inv):
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
    data (labctl.render.operator_files; labctl.load.checks has refused a bad one, so a
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
