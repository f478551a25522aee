"""``kind: program`` on a booted machine: the real llama-server (the tool venv's, from its
wheel) run as a program the operator describes with an executable and arguments, under
systemd as labuser, routed to through the gateway, probed and shown by status; its
arguments reach the process exactly as written, placeholders filled and nothing else
expanded (a systemd specifier, a variable).
"""

from __future__ import annotations

import pytest

from harness.stack import HOME, INVENTORY, Stack, json_out

pytestmark = pytest.mark.system

PROGRAM_INVENTORY = f"{HOME}/program.yaml"
# Words systemd would expand in an ExecStart= line written as they are (%h, $HOME, ${HOME}):
# as a program's arguments they must reach it literally.
LITERAL = ["--log-file", "/tmp/%h-$HOME-${HOME}.log"]


def with_program(stack: Stack, port: int) -> str:
    from harness.tools import TOOLS_DIR

    args = ", ".join(f'"{a}"' for a in [
        "--host", "{host}", "--port", "{port}", "--alias", "{model}", "--model", f"{HOME}/models/tiny.gguf",
        "--ctx-size", "512", "--threads", "1", "--n-gpu-layers", "0", *LITERAL])
    program = (f"  mine:\n    kind: program\n    executable: {TOOLS_DIR}/llama-server/bin/llama-server\n"
               f"    args: [{args}]\n    port: {port}\n    model: mine\n    health: /health\n"
               "    ready_timeout_sec: 120\n\n  gateway:\n")
    text = stack.inventory_text.replace("  gateway:\n", program, 1)
    text = text.replace("      - {name: bindings, service: bindings}\n",
                        "      - {name: bindings, service: bindings}\n      - {name: mine, service: mine}\n", 1)
    return text.replace("      native: [bindings]\n", "      native: [bindings]\n      mine: [native]\n", 1)


@pytest.fixture
def program(demo_stack: Stack):  # type: ignore[no-untyped-def]
    from labctl.sandbox import free_port

    port = free_port()
    demo_stack.write_inventory(with_program(demo_stack, port), PROGRAM_INVENTORY)
    try:
        yield port
    finally:
        res = demo_stack.labctl("up", "-i", INVENTORY)
        assert res.rc == 0, res.stderr


def test_a_program_runs_under_systemd_and_serves_through_the_gateway(demo_stack: Stack, program: int) -> None:
    from harness.tools import TOOLS_DIR

    res = demo_stack.labctl("up", "-i", PROGRAM_INVENTORY)
    assert res.rc == 0, res.stdout + res.stderr
    assert "mine: ready in" in res.stdout, res.stdout
    facts = demo_stack.show("labctl-mine.service", "ActiveState", "MainPID")
    assert facts["ActiveState"] == "active"
    # The process got exactly the argv the inventory wrote, placeholders filled: nothing of
    # systemd's (%h) or the shell's ($HOME) was expanded, the port is the one labctl probes.
    argv = demo_stack.run("cat", f"/proc/{facts['MainPID']}/cmdline").stdout.split("\0")[:-1]
    assert argv == [str(TOOLS_DIR / "llama-server/bin/llama-server"), "--host", "127.0.0.1", "--port", str(program),
                    "--alias", "mine", "--model", f"{HOME}/models/tiny.gguf", "--ctx-size", "512", "--threads", "1",
                    "--n-gpu-layers", "0", *LITERAL], argv
    # Status probes it by its declared health path, and shows it as a program.
    doc = json_out(demo_stack.labctl("status", "-i", PROGRAM_INVENTORY, "--json"))
    mine = next(s for s in doc["services"] if s["service"] == "mine")
    assert mine["kind"] == "program" and mine["healthy"] and mine["probe"]["check"] == "GET /health", mine
    # Through the gateway: the route answers, from the program.
    resp = demo_stack.chat("mine", timeout=120)
    assert resp.status_code == 200, resp.text[:500]
    assert resp.headers.get("x-litellm-model-group") == "mine"
    # A second up changes nothing and restarts nothing.
    again = demo_stack.labctl("up", "-i", PROGRAM_INVENTORY)
    assert again.rc == 0 and "no changes" in again.stdout, again.stdout
    assert demo_stack.show("labctl-mine.service", "MainPID")["MainPID"] == facts["MainPID"]
