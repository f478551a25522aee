"""The rendered alert rules, run by ``promtool test rules`` on synthetic series.

Every alert has at least one case where it fires and one where it must not (a healthy
series, a series it must ignore, or a condition that has not lasted its ``for:`` yet).
Expected annotations are derived from the rendered rule's own templates with the expected
labels and value, so a wording change needs no test change but a template that no longer
renders does.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.invtext import BASE
from harness.tools import require_command

from labctl.load import load_inventory
from labctl.render import render_all

RULES = "labctl/monitoring/prometheus/rules/labctl.yml"
GATEWAY_ALERTS = {"LabctlGatewayDown", "LabctlFallbacksFrequent", "LabctlHighLatency"}
BACKEND_ALERTS = {"LabctlBackendDown", "LabctlRestartLoop"}

# Label sets of the scrape targets labctl renders (see labctl.render.monitoring.scrape_jobs).
NATIVE = {"job": "llama-server", "instance": "127.0.0.1:8080", "service": "native", "kind": "llama-server"}
CODER = {"job": "vllm", "instance": "127.0.0.1:8001", "service": "coder", "kind": "vllm"}
GATEWAY = {"job": "litellm", "instance": "127.0.0.1:4000", "service": "gateway", "kind": "litellm"}
PROMETHEUS = {"job": "prometheus", "instance": "127.0.0.1:9090", "service": "prometheus"}
FALLBACKS = "litellm_deployment_successful_fallbacks_total"
LATENCY = "litellm_request_total_latency_metric_bucket"


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{inner}}}", "values": values}


def buckets(labels: dict[str, str], per_minute: dict[str, int], minutes: int) -> list[dict[str, str]]:
    """A latency histogram whose cumulative buckets grow by the given counts per minute."""
    out, total = [], 0
    for le in ("1.0", "30.0", "60.0", "+Inf"):
        total += per_minute.get(le, 0)
        out.append(series(LATENCY, {**labels, "le": le}, f"0+{total}x{minutes}"))
    return out


@dataclass(frozen=True)
class Expect:
    """At ``at``, the alert fires exactly for these label sets (empty: it must not fire).
    ``value`` is what ``$value`` renders to in the annotations."""

    at: str
    firing: tuple[dict[str, str], ...] = ()
    value: str = ""


@dataclass(frozen=True)
class Scenario:
    why: str
    input_series: tuple[dict[str, str], ...]
    expect: tuple[Expect, ...]


CASES: dict[str, list[Scenario]] = {
    "LabctlBackendDown": [
        Scenario("a backend down for a minute fires; up, too recent, or not a backend does not", (
            series("up", NATIVE, "0x10"),
            series("up", CODER, "1 1 1 1 0 0 0 0 0 0 0"),
            series("up", GATEWAY, "0x10"),
            series("up", PROMETHEUS, "0x10"),
        ), (
            Expect("0m"),  # down, but not for a minute yet
            Expect("2m", (NATIVE,), "0"),
            Expect("4m", (NATIVE,), "0"),  # coder went down just now: pending
            Expect("6m", (NATIVE, CODER), "0"),
        )),
        Scenario("healthy backends", (series("up", NATIVE, "1x10"), series("up", CODER, "1x10")), (
            Expect("5m"),
        )),
    ],
    "LabctlRestartLoop": [
        Scenario("three restarts (six up/down changes) in 15 minutes fire until they age out", (
            series("up", NATIVE, "1 0 1 0 1 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1"),
            series("up", GATEWAY, "1 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1"),
            # Prometheus' own job has no kind label: never a restart loop of labctl's.
            series("up", PROMETHEUS, "1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0"),
        ), (
            Expect("3m"),
            Expect("6m", (NATIVE,), "3"),
            Expect("25m"),
        )),
    ],
    "LabctlGatewayDown": [
        Scenario("the gateway down for a minute fires; a backend down is not the gateway", (
            series("up", GATEWAY, "1 1 0 0 0 0 0"),
            series("up", NATIVE, "0 0 0 0 0 0 0"),
        ), (
            Expect("1m"),
            Expect("2m"),  # pending
            Expect("4m", (GATEWAY,), "0"),
        )),
        Scenario("gateway up", (series("up", GATEWAY, "1x10"),), (Expect("5m"),)),
    ],
    "LabctlFallbacksFrequent": [
        Scenario("ten fallbacks a minute, for long enough", (
            series(FALLBACKS, {**GATEWAY, "requested_model": "native", "fallback_model": "bindings"}, "0+10x30"),
            series(FALLBACKS, {**GATEWAY, "requested_model": "bindings", "fallback_model": "native"}, "0+0x30"),
        ), (
            Expect("3m"),  # not for five minutes yet
            Expect("20m", ({"service": "gateway"},), "10"),
        )),
        Scenario("one fallback every two minutes is normal", (
            series(FALLBACKS, {**GATEWAY, "requested_model": "native", "fallback_model": "bindings"}, "0+0.5x30"),
        ), (
            Expect("20m"),
        )),
        Scenario("a burst two minutes ago has not lasted five", (
            series(FALLBACKS, {**GATEWAY, "requested_model": "native", "fallback_model": "bindings"}, "0x10 100x20"),
        ), (
            Expect("13m"),
        )),
    ],
    "LabctlHighLatency": [
        Scenario("every request between 30 and 60 s: p95 is 58.5 s", tuple(
            buckets(GATEWAY, {"60.0": 10}, 40)
        ), (
            Expect("5m"),  # not for ten minutes yet
            Expect("15m", ({"service": "gateway"},), "58.5s"),
        )),
        Scenario("every request under a second", tuple(buckets(GATEWAY, {"1.0": 10}, 40)), (
            Expect("15m"),
        )),
    ],
}

TEMPLATE_RE = re.compile(r"\{\{\s*(.*?)\s*\}\}")


def render_annotation(template: str, labels: dict[str, str], value: str) -> str:
    """The subset of Prometheus' alert templating the rules use."""

    def one(match: re.Match[str]) -> str:
        expr = match.group(1)
        if expr.startswith("$labels."):
            return labels.get(expr.removeprefix("$labels."), "")
        if expr in ("$value", "$value | humanize", "$value | humanizeDuration"):
            return value
        raise AssertionError(f"a template this test cannot render: {{{{ {expr} }}}}; extend render_annotation")

    return TEMPLATE_RE.sub(one, template)


def rendered_rules(text: str = BASE) -> str:
    inv = load_inventory("inventory.yaml", text=text).inventory
    return render_all(inv)[RULES]


def rules_by_alert(rules_text: str) -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(rules_text)
    return {rule["alert"]: rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule}


def promtool_tests(alert: str, rule: dict[str, Any]) -> dict[str, Any]:
    tests = []
    for scenario in CASES[alert]:
        checks = []
        for expect in scenario.expect:
            exp_alerts = []
            for labels in expect.firing:
                exp_alerts.append({
                    "exp_labels": {**labels, **rule.get("labels", {})},
                    "exp_annotations": {k: render_annotation(v, labels, expect.value)
                                        for k, v in rule.get("annotations", {}).items()},
                })
            checks.append({"eval_time": expect.at, "alertname": alert, "exp_alerts": exp_alerts})
        tests.append({"interval": "1m", "input_series": list(scenario.input_series),
                      "alert_rule_test": checks})
    return {"rule_files": ["labctl.yml"], "evaluation_interval": "1m", "tests": tests}


def run_promtool(tmp_path: Path, rules_text: str, alerts: list[str]) -> None:
    promtool = require_command("promtool", "apt-get install prometheus")
    rules = rules_by_alert(rules_text)
    (tmp_path / "labctl.yml").write_text(rules_text)
    files = []
    for alert in alerts:
        path = tmp_path / f"test-{alert}.yml"
        path.write_text(yaml.safe_dump(promtool_tests(alert, rules[alert]), sort_keys=False))
        files.append(path.name)
    proc = subprocess.run([promtool, "test", "rules", *files], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"promtool test rules failed:\n{proc.stdout}\n{proc.stderr}"


def test_every_alert_has_firing_and_quiet_cases() -> None:
    alerts = set(rules_by_alert(rendered_rules()))
    assert alerts == set(CASES), "each rendered alert needs promtool cases here"
    for alert, scenarios in CASES.items():
        expects = [e for s in scenarios for e in s.expect]
        assert any(e.firing for e in expects), f"{alert}: no case where it fires"
        assert any(not e.firing for e in expects), f"{alert}: no case where it must stay quiet"


@pytest.mark.parametrize("alert", sorted(CASES))
def test_alert_rule(alert: str, tmp_path: Path) -> None:
    run_promtool(tmp_path, rendered_rules(), [alert])


def test_without_gateway_only_backend_alerts(tmp_path: Path) -> None:
    """An inventory without a gateway gets no gateway alerts, and the others still work."""
    lines = BASE.splitlines(keepends=True)
    start = lines.index("  gateway:\n")
    end = lines.index("monitoring:\n")
    text = "".join(lines[:start] + lines[end:])
    rules_text = rendered_rules(text)
    assert set(rules_by_alert(rules_text)) == BACKEND_ALERTS
    run_promtool(tmp_path, rules_text, sorted(BACKEND_ALERTS))
