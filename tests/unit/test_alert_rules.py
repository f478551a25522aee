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
GATEWAY_ALERTS = {"LabctlGatewayDown", "LabctlFallbackShareHigh", "LabctlHighLatency", "LabctlSlowFirstToken"}
BACKEND_ALERTS = {"LabctlBackendDown", "LabctlRestartLoop"}
GPU_ALERTS = {"LabctlGpuMemoryNearFull"}
# BASE on a GPU host (its llama servers offload every layer): every alert labctl renders.
GPU_TEXT = (BASE.replace("gpu: false", "gpu: true").replace("    n_gpu_layers: 0\n    ctx_size", "    n_gpu_layers: all\n"
                                                             "    ctx_size")
            .replace("n_gpu_layers: 0", "n_gpu_layers: -1"))

# Label sets of the scrape targets labctl renders (see labctl.render.monitoring.scrape_jobs).
NATIVE = {"job": "llama-server", "instance": "127.0.0.1:8080", "service": "native", "kind": "llama-server"}
CODER = {"job": "vllm", "instance": "127.0.0.1:8001", "service": "coder", "kind": "vllm"}
GATEWAY = {"job": "litellm", "instance": "127.0.0.1:4000", "service": "gateway", "kind": "litellm"}
PROMETHEUS = {"job": "prometheus", "instance": "127.0.0.1:9090", "service": "prometheus"}
FALLBACKS = "litellm_deployment_successful_fallbacks_total"
ANSWERED = "litellm_deployment_success_responses_total"
LATENCY = "litellm_request_total_latency_metric_bucket"
TTFT = "litellm_llm_api_time_to_first_token_metric_bucket"
NATIVE_ROUTE = {"service": "gateway", "route": "native"}
# An operator's GPU exporter jobs (monitoring.scrape_jobs): nvidia_gpu_exporter, DCGM's.
SMI = {"job": "gpu", "instance": "127.0.0.1:9835", "uuid": "GPU-8f1e", "name": "NVIDIA H100"}
DCGM = {"job": "dcgm", "instance": "127.0.0.1:9400", "gpu": "0", "UUID": "GPU-8f1e"}


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{inner}}}", "values": values}


def buckets(labels: dict[str, str], per_minute: dict[str, int], minutes: int, name: str = LATENCY,
            bounds: tuple[str, ...] = ("1.0", "30.0", "60.0", "+Inf")) -> list[dict[str, str]]:
    """A histogram whose cumulative buckets grow by the given counts per minute."""
    out, total = [], 0
    for le in bounds:
        total += per_minute.get(le, 0)
        out.append(series(name, {**labels, "le": le}, f"0+{total}x{minutes}"))
    return out


def answers(route: str, own_per_minute: float, fallbacks_per_minute: float | None, minutes: int = 40) -> list:
    """A route's answers at the gateway: by its own backend (LiteLLM: model_group), and by a
    fallback for it (requested_model), as counters growing by so many a minute."""
    out = [series(ANSWERED, {**GATEWAY, "model_group": route, "requested_model": route, "model_id": f"id-{route}",
                             "litellm_model_name": route, "api_base": "http://127.0.0.1:8080/v1"},
                  f"0+{own_per_minute}x{minutes}")] if own_per_minute else []
    if fallbacks_per_minute is not None:
        out.append(series(FALLBACKS, {**GATEWAY, "requested_model": route, "fallback_model": "bindings",
                                      "model_id": "None"}, f"0+{fallbacks_per_minute}x{minutes}"))
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
    "LabctlFallbackShareHigh": [
        Scenario("half of a route's answers from a fallback, for ten minutes; a healthy route beside it", (
            *answers("native", 3, 3), *answers("bindings", 6, None),
        ), (
            Expect("5m"),  # not for ten minutes yet
            Expect("25m", (NATIVE_ROUTE,), "50%"),
        )),
        Scenario("a route in cooldown from the start: every answer a fallback's", (*answers("native", 0, 3),), (
            Expect("25m", (NATIVE_ROUTE,), "100%"),
        )),
        Scenario("one fallback in ten answers is a blip", (*answers("native", 9, 1),), (Expect("25m"),)),
        Scenario("a route answered once every two minutes (gateway check's chains) is left alone",
                 (*answers("native", 0, 0.5),), (Expect("25m"),)),
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
    "LabctlSlowFirstToken": [
        Scenario("every first token between 10 and 30 s: p95 is 29 s", tuple(
            buckets(GATEWAY, {"30.0": 10}, 40, TTFT, ("1.0", "10.0", "30.0", "+Inf"))
        ), (
            Expect("5m"),  # not for ten minutes yet
            Expect("15m", ({"service": "gateway"},), "29s"),
        )),
        Scenario("first tokens under a second", tuple(buckets(GATEWAY, {"1.0": 10}, 40, TTFT,
                                                              ("1.0", "10.0", "30.0", "+Inf"))), (
            Expect("15m"),
        )),
    ],
    "LabctlGpuMemoryNearFull": [
        Scenario("nvidia_gpu_exporter: 97.66% used for five minutes", (
            series("nvidia_smi_memory_used_bytes", SMI, "24000000000x10"),
            series("nvidia_smi_memory_total_bytes", SMI, "24576000000x10"),
        ), (
            Expect("3m"),
            Expect("6m", ({"instance": SMI["instance"], "uuid": SMI["uuid"]},), "97.66%"),
        )),
        Scenario("DCGM: 79000 MiB used, 1000 free", (
            series("DCGM_FI_DEV_FB_USED", DCGM, "79000x10"), series("DCGM_FI_DEV_FB_FREE", DCGM, "1000x10"),
        ), (
            Expect("6m", ({"instance": DCGM["instance"], "gpu": "0"},), "98.75%"),
        )),
        Scenario("vLLM's 90% (gpu_memory_utilization 0.9) is not near full", (
            series("nvidia_smi_memory_used_bytes", SMI, "22118400000x10"),
            series("nvidia_smi_memory_total_bytes", SMI, "24576000000x10"),
        ), (
            Expect("6m"),
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
        if expr in ("$value", "$value | humanize", "$value | humanizeDuration", "$value | humanizePercentage"):
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
    alerts = set(rules_by_alert(rendered_rules(GPU_TEXT)))
    assert alerts == set(CASES), "each rendered alert needs promtool cases here"
    assert set(rules_by_alert(rendered_rules())) == alerts - GPU_ALERTS, "GPU alerts on a GPU host only"
    for alert, scenarios in CASES.items():
        expects = [e for s in scenarios for e in s.expect]
        assert any(e.firing for e in expects), f"{alert}: no case where it fires"
        assert any(not e.firing for e in expects), f"{alert}: no case where it must stay quiet"


@pytest.mark.parametrize("alert", sorted(CASES))
def test_alert_rule(alert: str, tmp_path: Path) -> None:
    run_promtool(tmp_path, rendered_rules(GPU_TEXT), [alert])


def test_without_gateway_only_backend_alerts(tmp_path: Path) -> None:
    """An inventory without a gateway gets no gateway alerts, and the others still work."""
    lines = BASE.splitlines(keepends=True)
    start = lines.index("  gateway:\n")
    end = lines.index("monitoring:\n")
    text = "".join(lines[:start] + lines[end:])
    rules_text = rendered_rules(text)
    assert set(rules_by_alert(rules_text)) == BACKEND_ALERTS
    run_promtool(tmp_path, rules_text, sorted(BACKEND_ALERTS))
