"""A real Prometheus with the rendered prometheus.yml and rules, scraping the real servers.

The inventory is the running stack's, with ``monitoring.prometheus.port`` set to the port
this Prometheus listens on (its own scrape job points there) and a 1 s scrape and rule
evaluation interval. The rendered tree is used as written: ``rule_files`` is relative to
the config file, as in the compose deployment.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import helpers

from labctl.load import load_inventory
from labctl.ops.gateway_check import all_ok, check_gateway
from labctl.render import render_all
from labctl.render.monitoring import backend_panels, scrape_jobs

pytestmark = pytest.mark.integration

PROMETHEUS_DIR = "labctl/monitoring/prometheus"
WAIT = 45.0  # scrapes and evaluations run every second; leave room for a loaded machine


@dataclass
class Prometheus:
    url: str
    proc: Any
    log: Path
    files: dict[str, str]

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        result = helpers.http_request(url, timeout=30)
        body = result.json()
        assert result.status == 200 and body["status"] == "success", f"{expr}: {result.text}"
        return body["data"]["result"]

    def api(self, path: str) -> Any:
        result = helpers.http_request(self.url + "/api/v1" + path, timeout=30)
        assert result.status == 200, f"{path}: HTTP {result.status}: {result.text}"
        return result.json()["data"]

    def up(self) -> dict[str, str]:
        return {r["metric"].get("service", "?"): r["value"][1] for r in self.query("up")}

    def context(self) -> str:
        return f"\n--- prometheus log ---\n{helpers.tail(self.log)}"


def wait_for(what: str, probe, timeout: float = WAIT, context=lambda: ""):  # noqa: ANN001
    """Poll ``probe`` until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last}){context()}")


@pytest.fixture(scope="module")
def prometheus(running_stack, prometheus_binary: str,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    mon = running_stack.inventory.monitoring
    claimed = {svc.port for svc in running_stack.inventory.services.values()} | {mon.grafana.port}
    for attempt in range(1, 4):
        port = next(p for p in iter(helpers.free_port, None) if p not in claimed)
        root = tmp_path_factory.mktemp("prometheus")
        data = yaml.safe_load(running_stack.inventory_text)
        data["monitoring"]["prometheus"]["port"] = port
        inventory = root / "inventory.yaml"
        inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        files = render_all(load_inventory(inventory).inventory)
        for rel, text in files.items():
            if rel.startswith(PROMETHEUS_DIR):
                (root / "config" / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / "config" / rel).write_text(text)
        config = root / "config" / PROMETHEUS_DIR / "prometheus.yml"
        log = root / "prometheus.log"
        proc = helpers.start_process([
            prometheus_binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address={helpers.LOOPBACK}:{port}",
        ], log_path=log, cwd=root)
        server = Prometheus(f"http://{helpers.LOOPBACK}:{port}", proc, log, files)
        try:
            started = time.monotonic()
            helpers.wait_http(server.url + "/-/ready", timeout=60, proc=proc)
            print(f"\nTIMING prometheus ready in {time.monotonic() - started:.2f}s")
        except RuntimeError as err:  # exited: most likely the port was taken meanwhile
            if attempt < 3 and "address already in use" in log.read_text(errors="replace"):
                continue
            raise AssertionError(f"{err}{server.context()}") from None
        except TimeoutError as err:
            helpers.stop_process(proc)
            raise AssertionError(f"{err}{server.context()}") from None
        try:
            yield server
        finally:
            helpers.stop_process(proc)
        return


def test_rendered_jobs_are_the_active_targets(prometheus: Prometheus, running_stack) -> None:
    inv = load_inventory(prometheus.log.parent / "inventory.yaml").inventory
    jobs, _ = scrape_jobs(inv)
    expected = {(job.name, target.labels["service"]) for job in jobs for target in job.targets}
    assert expected == {("prometheus", "prometheus"), ("llama-server", "native"), ("litellm", "gateway")}
    # Service discovery hands the targets over shortly after start-up.
    def targets() -> list[dict[str, Any]] | None:
        active = prometheus.api("/targets")["activeTargets"]
        return active if {(t["labels"]["job"], t["labels"]["service"]) for t in active} == expected else None

    active = wait_for("the rendered targets are active", targets, context=prometheus.context)
    ports = {t["labels"]["service"]: t["labels"]["instance"] for t in active}
    assert ports["native"] == running_stack.url("native").removeprefix("http://")
    assert ports["gateway"] == running_stack.url("gateway").removeprefix("http://")


def test_rules_are_loaded(prometheus: Prometheus) -> None:
    def evaluated() -> dict[str, Any] | None:
        groups = prometheus.api("/rules")["groups"]
        rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
        # "unknown" until the first evaluation, "err" if an expression fails on real data.
        return rules if rules and all(rule["health"] != "unknown" for rule in rules.values()) else None

    rules = wait_for("every rule evaluated", evaluated, context=prometheus.context)
    assert set(rules) == {"LabctlBackendDown", "LabctlRestartLoop", "LabctlGatewayDown",
                          "labctl:route_own_answers:rate10m", "labctl:route_fallback_answers:rate10m",
                          "LabctlFallbackShareHigh", "LabctlHighLatency", "LabctlSlowFirstToken"}
    assert {name: rule["health"] for name, rule in rules.items()} == dict.fromkeys(rules, "ok"), rules


def test_backend_and_gateway_are_up(prometheus: Prometheus) -> None:
    def both_up() -> dict[str, str] | None:
        up = prometheus.up()
        return up if up.get("native") == "1" and up.get("gateway") == "1" and up.get("prometheus") == "1" else None

    wait_for("up == 1 for llama-server, the gateway and Prometheus", both_up, context=prometheus.context)


def test_dashboard_queries_return_data(prometheus: Prometheus, running_stack) -> None:
    """Every panel of the running backends evaluates, on real scraped data, to something."""
    assert all_ok(check_gateway(running_stack.inventory, running_stack.key, timeout=120))
    # Streamed answers a few scrapes apart: LiteLLM times the first token of those only, and
    # a rate needs the histogram at two scrapes.
    for _ in range(3):
        assert running_stack.chat("native", stream=True).status == 200
        time.sleep(2)
    panels = [(f"{service}/{title}", expr) for service, _, rows in backend_panels(running_stack.inventory)
              for title, expr, _ in rows]
    assert {p.split("/")[0] for p, _ in panels} == {"native", "gateway"}
    for where, expr in panels:
        wait_for(f"{where}: {expr} has data", lambda expr=expr: prometheus.query(expr),
                 context=prometheus.context)


def test_stopped_backend_goes_down(prometheus: Prometheus, running_stack) -> None:
    running_stack.stop("native")
    try:
        up = wait_for("up == 0 for the stopped llama-server",
                      lambda: (u := prometheus.up()).get("native") == "0" and u, context=prometheus.context)
        assert up["gateway"] == "1"
        # BackendDown waits a minute before firing; with 1 s evaluations it is pending at once.
        alerts = wait_for("LabctlBackendDown pending for native", lambda: [
            a for a in prometheus.api("/alerts")["alerts"]
            if a["labels"]["alertname"] == "LabctlBackendDown" and a["labels"].get("service") == "native"
        ], context=prometheus.context)
        assert alerts[0]["state"] == "pending", json.dumps(alerts)
    finally:
        running_stack.start("native")


RULES = """\
groups:
  - name: operator
    interval: 1m
    rules:
      - record: job:up:sum
        expr: sum by (job) (up)
      - alert: GpuHot
        expr: nvidia_gpu_temperature_celsius > 85
        for: 5m
        labels: {severity: warning}
        annotations:
          summary: "GPU {{ $labels.gpu }} is at {{ $value }} C"
          description: |
            A GPU has been above 85 C for five minutes.
            VALUE = {{ $value }}\t(tab-separated)
"""


def test_an_operators_rule_file_written_again_loads_whole(prometheus_binary: str, tmp_path: Path) -> None:
    """The operator's rule file is installed written again from its data (not copied):
    a real Prometheus loads it from the rendered tree with every rule, label and
    annotation as the operator wrote them, line breaks and tabs in a description kept."""
    from harness.invtext import edit

    source = tmp_path / "gpu-rules.yml"
    source.write_text(RULES)
    source.chmod(0o644)
    port = helpers.free_port()
    inventory = edit(("monitoring:\n  enabled: true\n",
                      f"monitoring:\n  enabled: true\n  evaluation_interval: 1s\n  prometheus: {{port: {port}}}\n"
                      f"  rule_files: [{source}]\n"))
    files = render_all(load_inventory("inventory.yaml", text=inventory).inventory)
    installed = files[f"{PROMETHEUS_DIR}/rules/operator-0-gpu-rules.yml"]
    assert installed != RULES and yaml.safe_load(installed) == yaml.safe_load(RULES)
    for rel, text in files.items():
        if rel.startswith(PROMETHEUS_DIR):
            (tmp_path / "config" / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "config" / rel).write_text(text)
    log = tmp_path / "prometheus.log"
    proc = helpers.start_process([
        prometheus_binary, f"--config.file={tmp_path / 'config' / PROMETHEUS_DIR / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address={helpers.LOOPBACK}:{port}",
    ], log_path=log, cwd=tmp_path)
    server = Prometheus(f"http://{helpers.LOOPBACK}:{port}", proc, log, files)
    try:
        helpers.wait_http(server.url + "/-/ready", timeout=60, proc=proc)
        groups = wait_for("the operator's group is loaded", lambda: [
            g for g in server.api("/rules")["groups"] if g["name"] == "operator"], context=server.context)
        wanted = yaml.safe_load(RULES)["groups"][0]
        assert groups[0]["interval"] == 60
        rules = {r["name"]: r for r in groups[0]["rules"]}
        assert set(rules) == {"job:up:sum", "GpuHot"}
        hot = next(r for r in wanted["rules"] if r.get("alert") == "GpuHot")
        assert rules["GpuHot"]["annotations"] == hot["annotations"]
        assert "\t(tab-separated)\n" in rules["GpuHot"]["annotations"]["description"]
        assert rules["GpuHot"]["labels"] == hot["labels"] and rules["GpuHot"]["duration"] == 300
    finally:
        helpers.stop_process(proc)
