"""Open monitoring: the operator's scrape jobs (interval, timeout, relabelling), external
labels, rule files (promtool checks them, and runs their unit tests) and dashboards, beside
labctl's own. promtool validates the rendered Prometheus config; exactly one datasource is
still provisioned, and it is the default."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from harness.invtext import edit
from harness.tools import require_command

from labctl.cli import main
from labctl.load import load_inventory
from labctl.ops.doctor import rule_checks
from labctl.render import render_all

pytestmark = pytest.mark.unit

RULES = """\
groups:
  - name: operator
    rules:
      - alert: GpuHot
        expr: nvidia_gpu_temperature_celsius > 85
        for: 5m
        labels: {severity: warning}
"""
RULE_TEST = """\
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'nvidia_gpu_temperature_celsius{gpu="0"}'
        values: '90x10'
    alert_rule_test:
      - eval_time: 10m
        alertname: GpuHot
        exp_alerts:
          - exp_labels: {severity: warning, gpu: "0"}
"""


def monitoring(tmp_path: Path, rules: str = RULES) -> str:
    (tmp_path / "rules.yml").write_text(rules)
    (tmp_path / "rules_test.yml").write_text(RULE_TEST)
    (tmp_path / "gpu.json").write_text('{"title": "GPU", "uid": "op-gpu", "panels": []}')
    return edit(("monitoring:\n  enabled: true\n", f"""monitoring:
  enabled: true
  external_labels: {{site: home, host: gpu1}}
  scrape_jobs:
    - name: redis
      targets: ["127.0.0.1:9121", "[::1]:9121"]
      scrape_interval: 30s
      scrape_timeout: 10s
      labels: {{service: cache}}
      relabel_configs:
        - {{source_labels: [__address__], regex: "(.*):.*", target_label: instance, replacement: "$1"}}
      metric_relabel_configs:
        - {{action: drop, source_labels: [__name__], regex: "go_.*"}}
  rule_files: [{tmp_path}/rules.yml]
  rule_tests: [{tmp_path}/rules_test.yml]
  dashboards: [{tmp_path}/gpu.json]
"""))


def test_extra_jobs_labels_rules_and_dashboards_render_and_parse_back(tmp_path: Path) -> None:
    files = render_all(load_inventory("inventory.yaml", text=monitoring(tmp_path)).inventory)
    base = "labctl/monitoring"
    prom = yaml.safe_load(files[f"{base}/prometheus/prometheus.yml"])
    assert prom["global"]["external_labels"] == {"site": "home", "host": "gpu1"}
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "redis")
    assert job == {"job_name": "redis", "metrics_path": "/metrics", "scheme": "http", "scrape_interval": "30s",
                   "scrape_timeout": "10s",
                   "static_configs": [{"targets": ["127.0.0.1:9121", "[::1]:9121"], "labels": {"service": "cache"}}],
                   "relabel_configs": [{"action": "replace", "source_labels": ["__address__"], "regex": "(.*):.*",
                                        "target_label": "instance", "replacement": "$1"}],
                   "metric_relabel_configs": [{"action": "drop", "source_labels": ["__name__"], "regex": "go_.*"}]}
    # Written again from its data: the same rules, not the same bytes.
    assert yaml.safe_load(files[f"{base}/prometheus/rules/operator-0-rules.yml"]) == yaml.safe_load(RULES)
    assert yaml.safe_load(files[f"{base}/grafana/dashboards/operator-0-gpu.json"])["uid"] == "op-gpu"
    # Still exactly one provisioned datasource, the default.
    (ds,) = yaml.safe_load(files[f"{base}/grafana/provisioning/datasources/labctl.yaml"])["datasources"]
    assert ds["isDefault"] is True
    promtool = require_command("promtool", "apt-get install prometheus")
    config = tmp_path / "out/prometheus.yml"
    (tmp_path / "out/rules").mkdir(parents=True)
    config.write_text(files[f"{base}/prometheus/prometheus.yml"])
    for rel, text in files.items():
        if rel.startswith(f"{base}/prometheus/rules/"):
            (tmp_path / "out/rules" / rel.rsplit("/", 1)[-1]).write_text(text)
    res = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "operator-0-rules.yml" in res.stdout and "SUCCESS: 1 rules found" in res.stdout, res.stdout


def test_promtool_checks_and_tests_the_operators_rules(tmp_path: Path) -> None:
    require_command("promtool", "apt-get install prometheus")
    inv = load_inventory("inventory.yaml", text=monitoring(tmp_path)).inventory
    checks = {c.name: c for c in rule_checks(inv)}
    assert checks["monitoring rules"].status == "ok"
    assert checks["monitoring test rules_test.yml"].status == "ok"
    broken = load_inventory("inventory.yaml", text=monitoring(tmp_path, RULES.replace("> 85", ">> 85"))).inventory
    checks = {c.name: c for c in rule_checks(broken)}
    assert checks["monitoring rules"].status == "fail"
    assert "could not parse expression" in checks["monitoring rules"].message


@pytest.mark.parametrize("old, new, message", [
    ("    - name: redis\n", "    - name: prometheus\n", "one of labctl's own"),
    ("target_label: instance, ", "", "needs target_label"),
    ('["127.0.0.1:9121", "[::1]:9121"]', '["127.0.0.1"]', "scrape_jobs[0].targets[0]"),
    ("scrape_interval: 30s", "scrape_interval: 30", "scrape_interval"),
    ("gpu.json]", "nope.json]", "does not exist"),
])
def test_bad_monitoring_extras(tmp_path: Path, capsys, old: str, new: str, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "inventory.yaml"
    path.write_text(monitoring(tmp_path).replace(old, new))
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "-i", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.startswith(f"{path}:"), err


def test_a_dashboard_may_not_take_labctls_uid(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    text = monitoring(tmp_path)
    (tmp_path / "gpu.json").write_text('{"uid": "labctl-overview", "panels": []}')
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "-i", str(path)])
    assert exit_info.value.code == 2 and "labctl's own dashboard uid" in capsys.readouterr().err


def test_retention_takes_days_weeks_years() -> None:
    for retention in ("15d", "30d", "2w", "1y"):
        text = edit(("monitoring:\n  enabled: true\n", f"monitoring:\n  enabled: true\n  prometheus: {{retention: {retention}}}\n"))
        assert load_inventory("inventory.yaml", text=text).inventory.monitoring.prometheus.retention == retention


REGEXES = ["(.*):.*", "go_.*", "a{", "a{,3}", "[[:alpha:]]+", "(?i)x", "(?s:.)", "a\\++", "a*+", "a++", "x\\Z",
           "(?#c)", "(?=a)", "(a)\\1", "a{2}+", "[", "(?P<n>a)", "\\pL", "^a$", "a|b|"]


def test_every_regex_labctl_accepts_promtool_accepts(tmp_path: Path) -> None:
    """Python's re and Prometheus's RE2 differ; labctl refuses what RE2 would (measured
    against promtool itself, one config per expression)."""
    from labctl.inventory.schema import Relabel

    promtool = require_command("promtool", "apt-get install prometheus")
    accepted = 0
    for i, regex in enumerate(REGEXES):
        try:
            Relabel(regex=regex, source_labels=["a"], target_label="b")
        except ValueError:
            continue
        accepted += 1
        config = tmp_path / f"re{i}.yml"
        config.write_text(yaml.safe_dump({"scrape_configs": [{
            "job_name": "j", "static_configs": [{"targets": ["127.0.0.1:1"]}],
            "relabel_configs": [{"action": "replace", "source_labels": ["a"], "regex": regex, "target_label": "b"}]}]}))
        res = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, (regex, res.stdout + res.stderr)
    assert accepted >= 10


def test_promtool_through_docker_runs_in_the_test_files_directory(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Without a host promtool, the pinned image's runs with every file's directory mounted
    read-only and, for a rule test, that test's directory as its working directory."""
    import shutil

    from labctl.ops.doctor import _promtool_argv

    inv = load_inventory("inventory.yaml", text=monitoring(tmp_path)).inventory
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "promtool" else real_which(name) or f"/usr/bin/{name}")
    argv = _promtool_argv(inv, [tmp_path, tmp_path], tmp_path)
    assert argv is not None and argv[1:3] == ["run", "--rm"]
    assert argv[argv.index("-v") + 1] == f"{tmp_path}:{tmp_path}:ro" and argv.count("-v") == 1
    assert argv[argv.index("-w") + 1] == str(tmp_path) and argv[-1] == inv.monitoring.prometheus.image
    assert "-w" not in (_promtool_argv(inv, [tmp_path], None) or [])
