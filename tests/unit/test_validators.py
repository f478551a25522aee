"""Every rendered artefact passes its own ecosystem's validator.

- systemd units: ``systemd-analyze --user verify`` (exit 0 *and* empty stderr: it only
  warns, with exit 0, about misspelled keys and bad values);
- compose file: a real Compose v2 binary's ``config -q``;
- prometheus.yml and rules: ``promtool check config`` / ``check rules``; every PromQL
  expression in the dashboards is parsed by promtool too;
- LiteLLM config: LiteLLM's own ``ConfigYAML`` model from the installed package, plus
  labctl's cross-checks (labctl.kinds.litellm.config.verify);
- Grafana provisioning (no Grafana here): exactly one default datasource, dashboards JSON.

systemd-analyze checks that each ExecStart binary exists *on the verifying machine*, so
the inventory is relocated under tmp_path with stand-in executables.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from harness.invtext import BASE, VLLM, with_service
from harness.tools import compose_binary, litellm_python, require_command

from labctl.load import load_inventory
from labctl.render import render_all
from labctl.kinds.litellm.config import verify
from labctl.render.monitoring import backend_panels

# Text, or a path relative to the repository: every inventory the project ships, and two
# test ones.
INVENTORIES = {"root": "inventory.yaml", "cpu-demo": "examples/cpu-demo/inventory.yaml",
               "cpu-demo-vllm": "examples/cpu-demo/inventory-vllm.yaml", "base": BASE, "base-vllm": with_service(VLLM)}


def relocated(repo_root: Path, tmp_path: Path, which: str) -> Path:
    """The named inventory with host.home and every binary moved under tmp_path."""
    source = INVENTORIES[which]
    text = (repo_root / source).read_text() if source.endswith(".yaml") else source
    data = yaml.safe_load(text)
    data["host"]["home"] = str(tmp_path / "home")
    # Monitoring on everywhere, so its files are validated for every service set too.
    data.setdefault("monitoring", {})["enabled"] = True
    if data["host"].get("gpu", True):  # and the GPU exporter where there is a GPU
        data["monitoring"]["gpu_exporter"] = {"enabled": True}
    for name, svc in data["services"].items():
        if "binary" in svc:
            svc["binary"] = f"~/bin/{name}"
        runtime = svc.get("runtime")
        if runtime and "python" in runtime:
            runtime["python"] = f"~/runtimes/{name}/bin/python"
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(params=list(INVENTORIES))
def rendered(request, repo_root: Path, tmp_path: Path) -> tuple[dict[str, str], Path]:
    inv = load_inventory(relocated(repo_root, tmp_path, request.param)).inventory
    files = render_all(inv)
    out = tmp_path / "out"
    for rel, content in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(content)
    return files, out


def exec_start_binary(unit_text: str) -> str:
    line = next(l for l in unit_text.splitlines() if l.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))[0]


def test_units_pass_systemd_analyze_verify(rendered, tmp_path: Path) -> None:
    systemd_analyze = require_command("systemd-analyze", "apt-get install systemd")
    files, out = rendered
    units = sorted((out / "systemd/user").glob("*.service"))
    assert units, "no units rendered"
    for unit in units:
        binary = Path(exec_start_binary(unit.read_text()))
        binary.parent.mkdir(parents=True, exist_ok=True)
        binary.write_text("#!/bin/sh\nexit 0\n")  # a stand-in: verify only checks it is executable
        binary.chmod(0o755)
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_COLOR": "0"}
    proc = subprocess.run([systemd_analyze, "--user", "verify", *map(str, units)], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_verify_catches_a_bad_unit(tmp_path: Path) -> None:
    """The validator itself must be able to fail: a misspelled value is only a warning."""
    systemd_analyze = require_command("systemd-analyze", "apt-get install systemd")
    unit = tmp_path / "bad.service"
    unit.write_text("[Service]\nExecStart=/bin/true\nRestart=on-failur\n")
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700)
    proc = subprocess.run([systemd_analyze, "--user", "verify", str(unit)], capture_output=True, text=True,
                          env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)}, timeout=60)
    assert proc.stderr != ""


def test_compose_config(rendered) -> None:
    files, out = rendered
    compose = out / "labctl/monitoring/compose.yaml"
    proc = subprocess.run([str(compose_binary()), "-f", str(compose), "config", "-q"], capture_output=True,
                          text=True, timeout=60, cwd=compose.parent)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_compose_binary_rejects_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  x:\n    image: a:1\n    network_mode: host\n    ports: [bogus]\n")
    proc = subprocess.run([str(compose_binary()), "-f", str(bad), "config", "-q"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0


def test_promtool_config_and_rules(rendered) -> None:
    promtool = require_command("promtool", "apt-get install prometheus")
    files, out = rendered
    base = out / "labctl/monitoring/prometheus"
    for args in (["check", "config", str(base / "prometheus.yml")],
                 ["check", "rules", str(base / "rules/labctl.yml")]):
        proc = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboard_queries_parse_as_promql(rendered, tmp_path: Path) -> None:
    """promtool has no bare expression checker; recording rules make it parse each one."""
    promtool = require_command("promtool", "apt-get install prometheus")
    files, _ = rendered
    dashboard = json.loads(files["labctl/monitoring/grafana/dashboards/labctl-overview.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"labctl:dashboard_expr_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_litellm_config_model_and_labctl_checks(rendered, repo_root: Path, tmp_path: Path) -> None:
    files, out = rendered
    config = out / "labctl/litellm/config.yaml"
    # ConfigYAML passes unknown providers, so each model's provider is resolved as well.
    check = ("import sys, yaml, litellm\n"
             "from litellm.proxy._types import ConfigYAML\n"
             "cfg = yaml.safe_load(open(sys.argv[1]))\n"
             "ConfigYAML(**cfg)\n"
             "for m in cfg['model_list']:\n"
             "    litellm.get_llm_provider(model=m['litellm_params']['model'])\n"
             "print('ok')\n")
    proc = subprocess.run([str(litellm_python()), "-c", check, str(config)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


def test_grafana_exactly_one_default_datasource(rendered) -> None:
    files, _ = rendered
    prefix = "labctl/monitoring/grafana/provisioning/datasources/"
    defaults = [ds for rel, text in files.items() if rel.startswith(prefix)
                for ds in yaml.safe_load(text)["datasources"] if ds.get("isDefault")]
    assert len(defaults) == 1
    dashboard = json.loads(files["labctl/monitoring/grafana/dashboards/labctl-overview.json"])
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {defaults[0]["uid"]}


def test_labctl_gateway_verify_catches_what_litellm_does_not(repo_root: Path) -> None:
    inv = load_inventory(repo_root / "inventory.yaml").inventory
    cfg = yaml.safe_load(render_all(inv)["labctl/litellm/config.yaml"])
    assert verify(inv, cfg) == []
    cfg["router_settings"]["fallbacks"].append({"llama-cpp-native": ["gpt-5"]})
    cfg["model_list"][2]["litellm_params"]["api_base"] = "http://127.0.0.1:9999/v1"
    cfg["model_list"][3]["litellm_params"]["model"] = "bedrock/llama-cpp-native"
    cfg["general_settings"]["master_key"] = "sk-inline"
    assert verify(inv, cfg) == [
        "fallbacks: chain 'llama-cpp-native' names 'gpt-5', which is not in model_list",
        "model_list: 'llama-cpp-default' api_base http://127.0.0.1:9999/v1 is not a service of this inventory "
        "on its port",
        "model_list: 'llama-cpp-native' uses provider 'bedrock'; labctl routes only to openai-compatible and "
        "ollama_chat backends",
        "general_settings.master_key must be an os.environ/ reference, never a value",
    ]


def test_dashboard_has_panels_per_backend(repo_root: Path) -> None:
    inv = load_inventory(repo_root / "inventory.yaml").inventory
    titles = {name: [t for t, _, _ in rows] for name, _, rows in backend_panels(inv)}
    assert set(titles) == {"llama-server", "vllm", "gateway"}
    for rows in titles.values():
        assert rows[0] == "Up" and rows[-1].startswith("Restarts")
