"""Fixtures for the VM tier: one qemu VM (TCG) per session, with labctl installed as the
lingering labuser and a small real stack brought up by `labctl up` (tests/harness/qemu_vm.py).

Needs root, qemu-system-x86 and qemu-utils, debootstrap, ssh, and the tool venvs under
/opt/labctl-tools (a read-only disk image of them in the guest). Without them the tests
skip, except under CI=true, where they fail. The images are cached in ~/.cache/labctl/vm.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

try:
    import labctl  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from harness.qemu_vm import NOTES as _notes
from harness.qemu_vm import TIMINGS as _timings
from harness.qemu_vm import note, record
from harness.stack import HOME, INVENTORY, LABCTL, REPO, VENV, Stack, demo_inventory
from harness.tools import TOOLS_DIR, missing

#: Everything runs emulated (TCG): readiness takes minutes where it takes seconds natively.
READY_TIMEOUT = 900
WHEELS = "/home/labuser/wheels"


def vm_inventory(ports: dict[str, int], llama_server: str) -> str:
    """The CPU demo (as the nspawn tier runs it, with the llama-server that serves on the
    guest's CPU) plus Redis as the gateway's cache, and `ballast`: a Redis under a small
    MemoryMax= that the limits test makes allocate past it."""
    text = demo_inventory(ports)
    host_binary = f"    binary: {TOOLS_DIR}/llama-server/bin/llama-server\n"
    assert host_binary in text
    text = text.replace(host_binary, f"    binary: {llama_server}\n", 1)
    for old in ("    ready_timeout_sec: 120\n", "    ready_timeout_sec: 180\n"):
        text = text.replace(old, f"    ready_timeout_sec: {READY_TIMEOUT}\n")
    extra = (
        f"  cache:\n    kind: redis\n    port: {ports['cache']}\n    persistence: none\n    maxmemory: 256M\n"
        f"    ready_timeout_sec: {READY_TIMEOUT}\n\n"
        f"  ballast:\n    kind: redis\n    port: {ports['ballast']}\n    persistence: none\n"
        "    maxmemory: 2G\n    maxmemory_policy: noeviction\n"
        f"    limits: {{memory_max: 64M}}\n    ready_timeout_sec: {READY_TIMEOUT}\n\n"
        "  gateway:\n"
    )
    text = text.replace("  gateway:\n", extra, 1)
    # Without LiteLLM's Prometheus callback: `up`'s pre-flight would import LiteLLM once more
    # to check that the callback loads (40 s emulated); the metrics are the other tiers' to
    # prove (tests/integration, tests/system), nothing about them depends on the kernel.
    text = text.replace("    kind: litellm\n", "    kind: litellm\n    prometheus_metrics: false\n", 1)
    return text.replace("    num_retries: 0\n", "    num_retries: 0\n    cache: {service: cache, ttl_sec: 600}\n", 1)


def require_vm_tools() -> None:
    from harness.qemu_vm import HOST_TOOLS, QEMU_HINT

    if os.geteuid() != 0:
        missing("the VM tier", "it needs root (debootstrap, the image build)")
    for tool in HOST_TOOLS:
        if shutil.which(tool) is None:
            missing(tool, QEMU_HINT if tool.startswith("qemu") else "run scripts/bootstrap.sh")
    for rel in ("llama-server/bin/llama-server", *GUEST_LLAMA_SERVERS, "llama-cpp-python/bin/python",
                "litellm/bin/python"):
        if not (TOOLS_DIR / rel).exists():
            missing(str(TOOLS_DIR / rel), "run scripts/bootstrap.sh")


#: Candidates for the guest's llama-server after the host's own (tools dir relative): the
#: host's is chosen because it serves on the *host's* CPU, and may use AVX-512 or AMX, which
#: qemu's emulated CPU has not (it then dies of SIGILL at its first model load).
GUEST_LLAMA_SERVERS = ("llama-server-avx2/bin/llama-server",)


def guest_llama_server(vm) -> str:  # type: ignore[no-untyped-def]
    """The first llama-server that serves on the guest's CPU, tried there with labctl's own
    self-test (a tiny model, one token: labctl.host.selftest), as `up` tries a program it
    installed: a binary is tried on the CPU it will run on."""
    tried = []
    for rel in ("llama-server/bin/llama-server", *GUEST_LLAMA_SERVERS):
        program = str(TOOLS_DIR / rel)
        t0 = time.monotonic()
        res = vm.run([f"{VENV}/bin/python", "-c", SELFTEST, program], user="labuser", check=False, timeout=600,
                     cwd=HOME)
        verdict = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else f"no verdict (rc {res.rc})"
        record(f"guest llama-server self-test: {rel}", time.monotonic() - t0)
        if res.rc == 0 and verdict == "ok":
            note(f"guest llama-server: {rel}" + (f" (not: {'; '.join(tried)})" if tried else ""))
            return program
        tried.append(f"{rel}: {verdict} {res.stderr.strip()[-300:]}".strip())
    raise AssertionError("no llama-server candidate serves on the guest's CPU:\n" + "\n".join(tried))


SELFTEST = """import sys
from labctl.host.selftest import llama_server_runs
v = llama_server_runs(sys.argv[1], timeout=300)
print("ok" if v.ok else v.why + " | " + " / ".join(v.log_tail[-2:]))
"""


def wheelhouse(cache: Path) -> Path:
    """labctl and its dependencies as wheels, built on the host with the tool venvs' Python
    (bookworm's 3.11, the guest's): emulated pip then installs offline."""
    t0 = time.monotonic()
    out = cache / "wheels"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("labctl-*.whl"):
        old.unlink()
    python = TOOLS_DIR / "litellm/bin/python"
    done = subprocess.run(
        [str(python), "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--find-links", str(out),
         "-w", str(out), str(REPO)], capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
        check=False)
    if done.returncode != 0:
        pytest.fail(f"pip wheel of the checkout failed:\n{done.stderr[-3000:]}")
    record("wheelhouse (host, while the VM boots)", time.monotonic() - t0)
    return out


@pytest.fixture(scope="session")
def vm_machine():
    """The booted VM, labctl installed in it as labuser (from wheels, as a new user would)."""
    from harness import qemu_vm

    require_vm_tools()
    t_session = time.monotonic()
    # SIGTERM (a CI job cancelled) ends the session like Ctrl-C: finalizers stop qemu.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        image, timings = qemu_vm.build_image(TOOLS_DIR)
        _timings.update(timings)
        t0 = time.monotonic()
        with ThreadPoolExecutor(1) as pool:  # the wheels are built while the VM boots
            wheels_future = pool.submit(wheelhouse, qemu_vm.cache_dir())
            vm = qemu_vm.VM.boot(f"labctl-vm-{os.getpid()}", image)
            record("boot to labuser's manager", time.monotonic() - t0)
            try:
                wheels = wheels_future.result()
            except BaseException:
                vm.shutdown()
                raise
        try:
            t0 = time.monotonic()
            vm.copy_in(wheels, WHEELS, owner="labuser")
            vm.mkdir(os.path.dirname(VENV), owner="labuser")  # every new directory labuser's
            # A venv without pip, and bookworm's pip installs into it: ensurepip alone (pip
            # installing itself into the venv) takes 30 s under emulation, as long as the
            # install of labctl and its dependencies. --no-compile: Python compiles what it
            # imports, on first use, instead of every module now.
            vm.run(["python3", "-m", "venv", "--without-pip", VENV], user="labuser", timeout=600)
            vm.run(["python3", "-m", "pip", "--python", f"{VENV}/bin/python", "install", "-q", "--no-index",
                    "--find-links", WHEELS, "--disable-pip-version-check", "--no-compile", "labctl"],
                   user="labuser", timeout=900, cwd=HOME)
            record("install labctl (guest, as labuser)", time.monotonic() - t0)
            yield vm
        finally:
            vm.shutdown()
            record("shutdown", vm.timings.get("shutdown", 0.0))
            record("tier total (fixture lifetime)", time.monotonic() - t_session)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):  # type: ignore[no-untyped-def]
    raise KeyboardInterrupt(f"signal {signum}")


def assert_home_owned_by_labuser(vm) -> None:  # type: ignore[no-untyped-def]
    """Everything placed in labuser's home (files and the directories made for them) must be
    labuser's: a root-owned ~/.local makes `labctl up` fail on ~/.local/state."""
    res = vm.run(["find", HOME, "-xdev", "!", "-user", "labuser", "-printf", "%u %p\\n"])
    assert not res.stdout.strip(), f"not owned by labuser in its home:\n{res.stdout}"


@pytest.fixture(scope="session")
def demo_stack(vm_machine) -> Stack:
    """The stack `labctl up` brought up in the VM (overrides tests/conftest.py's nspawn one
    for tests/vm, so tests/infra/test_stack.py's checks run here unchanged)."""
    from labctl.host.gguf_writer import write_tiny_gguf
    from labctl.sandbox import free_port

    vm = vm_machine
    model = vm.state_dir / "tiny.gguf"
    write_tiny_gguf(model)
    vm.copy_in(model, f"{HOME}/models/tiny.gguf", owner="labuser")
    vm.run(["ln", "-sfn", "tiny.gguf", f"{HOME}/models/current.gguf"], user="labuser")
    ports = {n: free_port() for n in ("native", "bindings", "gateway", "cache", "ballast")}
    text = vm_inventory(ports, guest_llama_server(vm))
    vm.write_text(INVENTORY, text, owner="labuser")
    assert_home_owned_by_labuser(vm)
    t0 = time.monotonic()
    res = vm.run([LABCTL, "up", "-i", INVENTORY], user="labuser", check=False, timeout=1800, cwd=HOME)
    record("labctl up (guest)", time.monotonic() - t0)
    if res.rc != 0:
        journal = vm.run(["journalctl", "--user", "-M", "labuser@", "--no-pager", "-n", "80"], check=False)
        raise AssertionError(f"labctl up failed (rc {res.rc}):\n{res.stdout}\n{res.stderr}\n{journal.stdout}")
    for line in (res.stdout + res.stderr).splitlines():
        note(f"up| {line.rstrip()}")
    vm.forward([ports["gateway"]])
    stack = Stack(vm, ports, text, res.stdout + res.stderr, {})
    # LiteLLM imports each provider's code at its first request: slow under emulation, so one
    # request per route first (a prompt no test sends: the gateway caches answers in Redis).
    t0 = time.monotonic()
    for route in ("native", "bindings"):
        resp = httpx.post(f"http://127.0.0.1:{ports['gateway']}/v1/chat/completions",
                          headers={"Authorization": f"Bearer {stack.key()}"}, timeout=600, trust_env=False,
                          json={"model": route, "max_tokens": 2, "messages": [{"role": "user", "content": "warm up"}]})
        assert resp.status_code == 200, resp.text[:500]
    record("first request per route (warm-up)", time.monotonic() - t0)
    return stack


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if _timings or _notes:
        terminalreporter.section("labctl VM timings (s)")
        for key, value in _timings.items():
            terminalreporter.write_line(f"{key:40s} {value:7.2f}")
        for line in _notes:
            terminalreporter.write_line(line)
