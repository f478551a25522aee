"""Ollama under labctl, through a STAND-IN (tests/standins/ollama-standin): no Ollama server
can be had here. The stand-in speaks Ollama's HTTP API and is started by labctl's unit
exactly as `ollama serve` would be (OLLAMA_HOST from the unit); the gateway routes to it
with LiteLLM's ollama_chat provider, and falls back to llama-server when it is stopped."""

from __future__ import annotations

import pytest

from harness.stack import HOME, INVENTORY, REPO, Stack, json_out

pytestmark = pytest.mark.system

OLLAMA_INVENTORY = f"{HOME}/inventory-ollama.yaml"
MODEL = "llama3.1:latest"


@pytest.fixture(scope="module")
def ollama_stack(demo_stack: Stack) -> Stack:
    from labctl.sandbox import free_port

    demo_stack.machine.copy_in(REPO / "tests/standins/ollama-standin", f"{HOME}/bin/ollama",  # type: ignore[attr-defined]
                               owner="labuser")
    port = free_port()
    service = (f"  ollama:\n    kind: ollama\n    binary: ~/bin/ollama\n    port: {port}\n"
               f"    models: [\"{MODEL}\"]\n    environment:\n      OLLAMA_KEEP_ALIVE: 5m\n"
               f"      OLLAMA_STANDIN_MODELS: \"{MODEL}\"\n\n")
    text = demo_stack.inventory_text.replace("\n  gateway:\n", "\n" + service + "  gateway:\n", 1)
    text = text.replace("      - {name: bindings, service: bindings}\n",
                        "      - {name: bindings, service: bindings}\n"
                        f"      - {{name: \"{MODEL}\", service: ollama, model: \"{MODEL}\"}}\n", 1)
    text = text.replace("      native: [bindings]\n", f"      native: [bindings]\n      \"{MODEL}\": [native]\n", 1)
    demo_stack.write_inventory(text, OLLAMA_INVENTORY)
    res = demo_stack.labctl("up", "-i", OLLAMA_INVENTORY)
    assert res.rc == 0, res.stdout + res.stderr
    demo_stack.ports["ollama"] = port
    yield demo_stack
    assert demo_stack.labctl("up", "-i", INVENTORY).rc == 0


def test_unit_runs_serve_with_ollama_host(ollama_stack: Stack) -> None:
    unit = ollama_stack.run("cat", f"{HOME}/.config/systemd/user/labctl-ollama.service").stdout
    assert f"ExecStart={HOME}/bin/ollama serve" in unit
    assert f'Environment="OLLAMA_HOST=127.0.0.1:{ollama_stack.ports["ollama"]}"' in unit
    listening = ollama_stack.run("ss", "-ltnH", f"sport = :{ollama_stack.ports['ollama']}").stdout
    assert f"127.0.0.1:{ollama_stack.ports['ollama']}" in listening


def test_status_probes_version_and_tags(ollama_stack: Stack) -> None:
    doc = json_out(ollama_stack.labctl("status", "-i", OLLAMA_INVENTORY, "--json"))
    ollama = next(s for s in doc["services"] if s["service"] == "ollama")
    assert ollama["healthy"] is True
    assert ollama["probe"]["check"] == "GET /api/tags" and ollama["probe"]["detail"] == "ready"


def test_gateway_routes_to_ollama_then_falls_back(ollama_stack: Stack) -> None:
    resp = ollama_stack.chat(MODEL)
    assert resp.status_code == 200, resp.text[:300]
    assert resp.headers["x-litellm-model-group"] == MODEL
    assert "ollama stand-in" in resp.json()["choices"][0]["message"]["content"]
    ollama_stack.run("systemctl", "--user", "stop", "labctl-ollama.service")
    try:
        resp = ollama_stack.chat(MODEL)
        assert resp.status_code == 200, resp.text[:300]
        assert resp.headers["x-litellm-model-group"] == "native"
        assert int(resp.headers["x-litellm-attempted-fallbacks"]) >= 1
    finally:
        ollama_stack.run("systemctl", "--user", "start", "labctl-ollama.service")
