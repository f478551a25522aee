"""The gateway's drain gate (labctl.kinds.litellm.gate): rendered beside the LiteLLM config, loaded
by LiteLLM's own interpreter, and it drops exactly the deployments whose gate is closed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from harness.tools import litellm_python

from labctl.load import load_inventory
from labctl.ops.switch import Gate, gateable
from labctl.render import render_all
from labctl.kinds.litellm import gate
from labctl.kinds import kind_of

DEMO = Path(__file__).resolve().parents[2] / "examples" / "cpu-demo" / "inventory-tools.yaml"


def test_rendered_beside_the_config_and_named_in_callbacks() -> None:
    files = render_all(load_inventory(DEMO).inventory)
    assert files["labctl/litellm/labctl_gate.py"] == gate.MODULE
    assert f"- {gate.CALLBACK}\n" in files["labctl/litellm/config.yaml"]


def test_only_a_backend_the_gateway_can_route_around_is_gated() -> None:
    inv = load_inventory(DEMO).inventory
    assert gateable(inv, "native")       # route native falls back to bindings
    assert not gateable(inv, "bindings")  # route bindings has no fallback: a gate would only fail it
    assert not gateable(inv, "gateway")


@pytest.mark.parametrize("url,name", [
    ("http://127.0.0.1:8080", "127.0.0.1_8080"),
    ("http://[::1]:8000/v1", "__1_8000"),
    ("http://localhost:4000/", "localhost_4000"),
])
def test_both_sides_name_a_gate_alike(url: str, name: str, tmp_path: Path, monkeypatch) -> None:
    """labctl's gate_name and the rendered module's (loaded here with a stand-in for
    LiteLLM's CustomLogger base class) agree."""
    for mod in ("litellm", "litellm.integrations", "litellm.integrations.custom_logger"):
        monkeypatch.setitem(sys.modules, mod, types.ModuleType(mod))
    sys.modules["litellm.integrations.custom_logger"].CustomLogger = object  # type: ignore[attr-defined]
    (tmp_path / gate.MODULE_FILE).write_text(gate.MODULE)
    spec = importlib.util.spec_from_file_location("labctl_gate", tmp_path / gate.MODULE_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert gate.gate_name(url) == name
    assert module.gate_name(url) == name


def test_litellm_loads_the_module_and_filters_by_gate(tmp_path: Path) -> None:
    """In LiteLLM's own venv: a closed gate drops its deployment, an expired or unreadable
    one does not, and other deployments are never touched."""
    python = litellm_python()
    inv = load_inventory(DEMO).inventory
    native = kind_of(inv.services["native"]).base_url(inv, inv.services["native"])
    runtime = tmp_path / "run"
    closed = Gate.of(inv, inv.services["native"], {"XDG_RUNTIME_DIR": str(runtime)})  # type: ignore[arg-type]
    closed.close(60)
    assert closed.path == runtime / "labctl" / "gate" / "127.0.0.1_8080"
    assert oct(closed.path.stat().st_mode & 0o777) == "0o600"
    (runtime / "labctl" / "gate" / "127.0.0.1_9000").write_text(f"{time.time() - 1}\n")  # expired
    (runtime / "labctl" / "gate" / "127.0.0.1_9001").write_text("not a number\n")
    (tmp_path / gate.MODULE_FILE).write_text(gate.MODULE)
    deployments = [{"litellm_params": {"api_base": f"{native}/v1"}},
                   {"litellm_params": {"api_base": "http://127.0.0.1:8000/v1"}},
                   {"litellm_params": {"api_base": "http://127.0.0.1:9000/v1"}},
                   {"litellm_params": {"api_base": "http://127.0.0.1:9001/v1"}},
                   {"litellm_params": {}}]
    script = (
        "import asyncio, json, sys\n"
        "from litellm.proxy.types_utils.utils import get_instance_fn\n"
        f"inst = get_instance_fn({gate.CALLBACK!r}, config_file_path=sys.argv[1])\n"
        "deps = json.loads(sys.argv[2])\n"
        "kept = asyncio.run(inst.async_filter_deployments('native', deps, None))\n"
        "print(json.dumps([deps.index(d) for d in kept]))\n"
    )
    env = {"XDG_RUNTIME_DIR": str(runtime), "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([str(python), "-c", script, str(tmp_path / "config.yaml"), json.dumps(deployments)],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == [1, 2, 3, 4]
    closed.open()
    res = subprocess.run([str(python), "-c", script, str(tmp_path / "config.yaml"), json.dumps(deployments)],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    assert json.loads(res.stdout.strip().splitlines()[-1]) == [0, 1, 2, 3, 4]
