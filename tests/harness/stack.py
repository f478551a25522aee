"""A booted systemd machine running the CPU demo stack through ``labctl up``.

Shared by tests/infra (testinfra, read-only checks) and tests/system (lifecycle scenarios
that change the stack). The machine shares the host's network namespace, so the stack's
ports are free ports chosen on the host, and the host reaches them on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from harness.tools import TOOLS_DIR, missing

REPO = Path(__file__).resolve().parents[2]
HOME = "/home/labuser"
VENV = f"{HOME}/.local/share/labctl/venv"
LABCTL = f"{VENV}/bin/labctl"
INVENTORY = f"{HOME}/inventory.yaml"
UNIT_DIR = f"{HOME}/.config/systemd/user"
SECRET = f"{HOME}/.config/labctl/secrets/litellm.env"


@dataclass
class Stack:
    machine: object            # labctl.sandbox.Machine
    ports: dict[str, int]
    inventory_text: str
    up_output: str
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, *argv: str, user: str | None = "labuser", check: bool = True, timeout: float = 600):
        return self.machine.run(list(argv), user=user, check=check, timeout=timeout, cwd=HOME)  # type: ignore[attr-defined]

    def labctl(self, *args: str, check: bool = False, timeout: float = 600):
        return self.run(LABCTL, *args, check=check, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "--user", "show", "-p", ",".join(props), unit).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def write_inventory(self, text: str, path: str = INVENTORY) -> None:
        self.machine.write_text(path, text, owner="labuser")  # type: ignore[attr-defined]

    def key(self) -> str:
        text = self.run("cat", SECRET).stdout
        return re.search(r"^LITELLM_MASTER_KEY=(.+)$", text, re.M).group(1).strip()  # type: ignore[union-attr]

    def chat(self, route: str, *, timeout: float = 60) -> httpx.Response:
        return httpx.post(f"http://127.0.0.1:{self.ports['gateway']}/v1/chat/completions",
                          headers={"Authorization": f"Bearer {self.key()}"}, timeout=timeout, trust_env=False,
                          json={"model": route, "max_tokens": 4,
                                "messages": [{"role": "user", "content": "Say hello"}]})


@contextmanager
def gateway_load(stack: Stack, route: str, *, interval: float = 0.1) -> Iterator[list[tuple[int, str | None]]]:
    """Steady chat requests to ``route`` through the gateway while the block runs; yields the
    growing list of (HTTP status or 0 for a transport error, x-litellm-model-group)."""
    stop, results = threading.Event(), []

    def run() -> None:
        key = stack.key()
        url = f"http://127.0.0.1:{stack.ports['gateway']}/v1/chat/completions"
        with httpx.Client(timeout=120, trust_env=False) as client:
            while not stop.is_set():
                try:
                    r = client.post(url, headers={"Authorization": f"Bearer {key}"},
                                    json={"model": route, "max_tokens": 2,
                                          "messages": [{"role": "user", "content": "hi"}]})
                    results.append((r.status_code, r.headers.get("x-litellm-model-group")))
                except httpx.HTTPError as exc:
                    results.append((0, type(exc).__name__))
                time.sleep(interval)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        yield results
    finally:
        stop.set()
        worker.join(timeout=180)


def load_summary(results: list[tuple[int, str | None]], groups: tuple[str, ...]) -> tuple[list, dict[str, int]]:
    """(the failed requests, how many each model group answered)."""
    failed = [r for r in results if r[0] != 200]
    return failed, {g: sum(1 for r in results if r[1] == g) for g in groups}


def demo_inventory(ports: dict[str, int]) -> str:
    text = (REPO / "examples/cpu-demo/inventory-tools.yaml").read_text()
    for name, default in (("native", 8080), ("bindings", 8000), ("gateway", 4000)):
        text = text.replace(f"    port: {default}\n", f"    port: {ports[name]}\n", 1)
    return text


def require_stack_tools() -> Path:
    import shutil

    if os.geteuid() != 0:
        missing("root", "the systemd sandbox needs root")
    for tool in ("debootstrap", "systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            missing(tool, "apt-get install debootstrap systemd-container (scripts/bootstrap.sh does)")
    for rel in ("llama-server/bin/llama-server", "llama-cpp-python/bin/python", "litellm/bin/python"):
        if not (TOOLS_DIR / rel).exists():
            missing(str(TOOLS_DIR / rel), "run scripts/bootstrap.sh")
    return TOOLS_DIR


def boot_stack(name: str) -> Stack:
    from labctl import sandbox
    from labctl.host.gguf_writer import write_tiny_gguf

    tools = require_stack_tools()
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    rootfs = sandbox.build_rootfs(Path(os.environ["LABCTL_SANDBOX_CACHE"]) if os.environ.get("LABCTL_SANDBOX_CACHE")
                                  else None)
    timings["rootfs"] = time.monotonic() - t0
    machine = sandbox.Machine.boot(name, rootfs, sandbox.free_port(), bind_ro=[(tools, tools)])
    try:
        t0 = time.monotonic()
        machine.install_python_project(REPO)
        timings["install labctl"] = time.monotonic() - t0
        model = Path(f"/tmp/{name}-tiny.gguf")
        write_tiny_gguf(model)
        machine.copy_in(model, f"{HOME}/models/tiny.gguf", owner="labuser")
        model.unlink()
        machine.run(["ln", "-sfn", "tiny.gguf", f"{HOME}/models/current.gguf"], user="labuser")
        ports = {n: sandbox.free_port() for n in ("native", "bindings", "gateway")}
        text = demo_inventory(ports)
        machine.write_text(INVENTORY, text, owner="labuser")
        t0 = time.monotonic()
        res = machine.run([LABCTL, "up", "-i", INVENTORY], user="labuser", check=False, timeout=900, cwd=HOME)
        timings["labctl up"] = time.monotonic() - t0
        if res.rc != 0:
            raise AssertionError(f"labctl up failed (rc {res.rc}):\n{res.stdout}\n{res.stderr}")
        return Stack(machine, ports, text, res.stdout + res.stderr, timings)
    except BaseException:
        machine.shutdown()
        raise


def json_out(result) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(result.stdout)
