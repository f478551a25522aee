"""An external backend on a booted machine: a real llama-server run by the *system*
manager (as an operator's distribution would run ollama.service), routed to by labctl's
gateway, survives `labctl up`, `restart` and `down` with its PID unchanged, and shows in
`labctl status` as external with the state of the unit that runs it."""

from __future__ import annotations

import pytest

from harness.stack import HOME, INVENTORY, Stack, json_out

pytestmark = pytest.mark.system

UNIT = "theirs-llama.service"
EXT_INVENTORY = f"{HOME}/external.yaml"


def external_pid(stack: Stack) -> tuple[str, int]:
    out = stack.run("systemctl", "show", "-p", "ActiveState,MainPID", UNIT, user=None).stdout
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return props["ActiveState"], int(props["MainPID"])


def with_external(stack: Stack, port: int) -> str:
    text = stack.inventory_text
    external = (f"  theirs:\n    kind: external\n    api: openai\n    port: {port}\n    models: [theirs]\n"
                f"    unit: {UNIT}\n    ready_timeout_sec: 60\n\n  gateway:\n")
    text = text.replace("  gateway:\n", external, 1)
    text = text.replace("      - {name: bindings, service: bindings}\n",
                        "      - {name: bindings, service: bindings}\n      - {name: theirs, service: theirs}\n", 1)
    return text.replace("      native: [bindings]\n", "      native: [bindings]\n      theirs: [native]\n", 1)


@pytest.fixture
def external(demo_stack: Stack):  # type: ignore[no-untyped-def]
    from labctl.sandbox import free_port
    from harness.tools import TOOLS_DIR

    port = free_port()
    # Started by root through the system manager: nothing of labctl's, not even its user.
    demo_stack.run("systemd-run", f"--unit={UNIT}", "--property=Restart=no", "--",
                   str(TOOLS_DIR / "llama-server/bin/llama-server"), "--model", f"{HOME}/models/tiny.gguf",
                   "--alias", "theirs", "--host", "127.0.0.1", "--port", str(port), "--n-gpu-layers", "0",
                   "--ctx-size", "512", "--threads", "1", user=None)
    demo_stack.write_inventory(with_external(demo_stack, port), EXT_INVENTORY)
    try:
        yield port
    finally:
        demo_stack.run("systemctl", "stop", UNIT, user=None, check=False)
        res = demo_stack.labctl("up", "-i", INVENTORY)
        assert res.rc == 0, res.stderr


def test_an_external_backend_is_routed_to_and_never_touched(demo_stack: Stack, external: int) -> None:
    res = demo_stack.labctl("up", "-i", EXT_INVENTORY)
    assert res.rc == 0, res.stdout + res.stderr
    assert "theirs: external, answering" in res.stdout + res.stderr
    # The changed gateway config was shown to the gateway's own LiteLLM first.
    assert "gateway: LiteLLM accepts the new config (config OK (3 models))" in res.stdout
    state, pid = external_pid(demo_stack)
    assert state == "active" and pid > 0
    assert demo_stack.run("test", "!", "-e", f"{HOME}/.config/systemd/user/labctl-theirs.service",
                          check=False).rc == 0

    doctor = demo_stack.labctl("doctor", "-i", EXT_INVENTORY)
    said = " ".join(doctor.stdout.split())  # doctor wraps its lines to the width
    assert f"port {external}" in said and "theirs (external), as expected" in said

    reply = demo_stack.chat("theirs")
    assert reply.status_code == 200, reply.text
    assert reply.headers.get("x-litellm-model-api-base", "").startswith(f"http://127.0.0.1:{external}")

    status = demo_stack.labctl("status", "-i", EXT_INVENTORY, "--json")
    assert status.rc == 0, status.stdout
    row = next(s for s in json_out(status)["services"] if s["service"] == "theirs")
    assert row["kind"] == "external" and row["external"] is True and row["healthy"] is True
    assert row["unit"] == f"{UNIT} (system)" and row["active_state"] == "active" and row["main_pid"] == pid

    refused = demo_stack.labctl("restart", "theirs", "-i", EXT_INVENTORY)
    assert refused.rc == 2 and "never restarts" in refused.stderr
    for verb in (("restart",), ("down",), ("up",)):
        res = demo_stack.labctl(*verb, "-i", EXT_INVENTORY)
        assert res.rc == 0, (verb, res.stdout + res.stderr)
        assert external_pid(demo_stack) == ("active", pid), verb
        if verb == ("down",):
            gateway = demo_stack.show("labctl-gateway.service", "ActiveState")["ActiveState"]
            assert gateway == "inactive"

    # Its owner stops it: its route falls back to the local chain, and `up` warns, not fails.
    demo_stack.run("systemctl", "stop", UNIT, user=None)
    reply = demo_stack.chat("theirs")
    assert reply.status_code == 200, reply.text
    assert reply.headers.get("x-litellm-model-group") in ("native", "bindings")
    res = demo_stack.labctl("up", "-i", EXT_INVENTORY)
    assert res.rc == 0, res.stderr
    assert "warning: theirs (external, not run by labctl) does not answer" in res.stdout + res.stderr
    assert f"systemctl start {UNIT}" in res.stdout + res.stderr
    status = demo_stack.labctl("status", "-i", EXT_INVENTORY, "--json")
    assert status.rc == 1
    row = next(s for s in json_out(status)["services"] if s["service"] == "theirs")
    assert row["healthy"] is False and row["active_state"] == "inactive"


def test_up_refuses_a_config_the_gateways_litellm_refuses(demo_stack: Stack) -> None:
    """A value only LiteLLM can judge: every key check passes, --validate_config refuses,
    and nothing is installed or restarted."""
    path = f"{HOME}/bad-strategy.yaml"
    text = demo_stack.inventory_text.replace(
        "    num_retries: 0\n", "    num_retries: 0\n    router_settings:\n      routing_strategy: simple-shufle\n", 1)
    demo_stack.write_inventory(text, path)
    config = f"{HOME}/.config/labctl/litellm/config.yaml"
    before = demo_stack.run("sha256sum", config).stdout
    invocation = demo_stack.show("labctl-gateway.service", "InvocationID")
    res = demo_stack.labctl("up", "-i", path)
    assert res.rc == 2, res.stdout + res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith(f"labctl: {path}:") or line.startswith(f"{path}:"), line
    assert "services.gateway.router_settings.routing_strategy" in line and "Invalid routing_strategy" in line
    assert "nothing was changed" in line
    assert demo_stack.run("sha256sum", config).stdout == before
    assert demo_stack.show("labctl-gateway.service", "InvocationID") == invocation
