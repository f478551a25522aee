"""Every metric a provisioned dashboard panel names is one its target exports.

The panels of each scraped service are checked against a /metrics answer captured from the
real server of that kind (tests/golden/metrics, taken by capture.py from llama-server, vLLM
and LiteLLM under known traffic). What no server here can export is listed with the reason:
the GPU exporter's names (nvidia-smi's, on a host with an NVIDIA GPU) and Prometheus' own
``up``. That panels return data on a real Prometheus scraping the real servers is
tests/integration/test_prometheus.py::test_dashboard_queries_return_data.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from labctl.load import load_inventory
from labctl.render.monitoring import GPU_TOTAL, GPU_USED, dashboard

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CAPTURED = ROOT / "tests" / "golden" / "metrics"
#: Metrics no server of this test exports, and why a panel may name them anyway.
NOT_CAPTURED = {
    "up": "Prometheus' own series, one per target",
    GPU_USED: "GPU-only: nvidia_gpu_exporter on a host with an NVIDIA GPU (monitoring.gpu_exporter)",
    GPU_TOTAL: "GPU-only: as above",
    "nvidia_smi_utilization_gpu_ratio": "GPU-only: as above",
    "nvidia_smi_power_draw_watts": "GPU-only: as above",
    "nvidia_smi_temperature_gpu": "GPU-only: as above",
}
#: A metric selected in PromQL: a name, then its label matchers.
SELECTED = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{")


def exported(kind: str) -> set[str]:
    names: set[str] = set()
    for capture in CAPTURED.glob(f"{kind}-*.txt"):
        for line in capture.read_text().splitlines():
            if line and not line.startswith("#"):
                names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def inventory():  # type: ignore[no-untyped-def]
    text = (ROOT / "inventory.yaml").read_text()
    text = text.replace("  node_exporter:\n", "  gpu_exporter:\n    enabled: true\n  node_exporter:\n", 1)
    return load_inventory("inventory.yaml", text=text).inventory


def unexported(doc: dict) -> list[str]:  # type: ignore[type-arg]
    """Each panel naming a metric that neither its row's kind exports (as captured) nor
    NOT_CAPTURED lists: ``row / panel: metric``."""
    out, kind = [], None
    for panel in doc["panels"]:
        if panel["type"] == "row":
            kind = panel["title"].rsplit("(", 1)[1].rstrip(")")
            continue
        have = exported(kind) if kind else set()
        for target in panel["targets"]:
            for metric in SELECTED.findall(target["expr"]):
                if metric not in have and metric not in NOT_CAPTURED:
                    out.append(f"{kind} / {panel['title']}: {metric}")
    return out


def test_every_dashboard_metric_is_exported_by_its_target() -> None:
    doc = json.loads(dashboard(inventory()))
    rows = [p["title"] for p in doc["panels"] if p["type"] == "row"]
    # Every kind labctl scrapes has a capture to check against, and the GPU row is there.
    assert rows == ["llama-server (llama-server)", "vllm (vllm)", "gateway (litellm)",
                    "gpu-exporter (nvidia_gpu_exporter)"]
    for kind in ("llama-server", "vllm", "litellm"):
        assert exported(kind), f"no capture of {kind}'s /metrics"
    assert unexported(doc) == []
    # Every panel selects its metrics by the service it shows: nothing is summed over others.
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            assert SELECTED.search(target["expr"]), f"{panel['title']}: {target['expr']}"


def test_the_check_sees_a_metric_nobody_exports() -> None:
    """The control: a panel naming a metric its server does not have (a renamed family, a
    typo) is reported, naming row, panel and metric."""
    doc = json.loads(dashboard(inventory()))
    panel = next(p for p in doc["panels"] if p["title"] == "Generated tokens/s")
    panel["targets"][0]["expr"] = panel["targets"][0]["expr"].replace("llamacpp:tokens_predicted_total",
                                                                      "llamacpp:tokens_generated_total")
    assert unexported(doc) == ["llama-server / Generated tokens/s: llamacpp:tokens_generated_total"]


def test_the_gpu_row_only_with_the_exporter() -> None:
    text = (ROOT / "inventory.yaml").read_text()
    doc = json.loads(dashboard(load_inventory("inventory.yaml", text=text).inventory))
    assert "gpu-exporter (nvidia_gpu_exporter)" not in [p["title"] for p in doc["panels"] if p["type"] == "row"]
