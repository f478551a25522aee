"""What only a VM shows: the box reboots and the stack comes back by itself (linger, units
WantedBy=default.target), with no labctl command run. Runs last in the tier (file order)."""

from __future__ import annotations

import time

import httpx
import pytest
from harness.qemu_vm import note, record, status_json
from harness.stack import HOME, Stack

pytestmark = pytest.mark.vm


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=10, trust_env=False).status_code < 500
    except httpx.HTTPError:
        return False


def test_reboot_brings_the_stack_back_unattended(demo_stack: Stack) -> None:
    vm = demo_stack.machine
    units = sorted(u for u in demo_stack.run("systemctl", "--user", "list-units", "--plain", "--no-legend",
                                             "labctl-*.service").stdout.split() if u.endswith(".service"))
    assert units == sorted(f"labctl-{name}.service" for name in demo_stack.ports), units
    link_before = demo_stack.run("readlink", f"{HOME}/models/current.gguf").stdout.strip()
    boot_before = vm.run(["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip()

    t0 = time.monotonic()
    to_manager = vm.reboot()
    record("reboot to labuser's manager", to_manager)
    assert vm.run(["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip() != boot_before

    # No labctl command: only look, until every unit is active (systemctl), the gateway's
    # port answers (from the host, through the tunnel: no work for the guest's CPUs while
    # LiteLLM imports), and `labctl status --json` says healthy.
    deadline = t0 + 900
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        out = demo_stack.run("systemctl", "--user", "is-active", *units, check=False).stdout.split()
        states = dict(zip(units, out, strict=True))
        if all(s == "active" for s in states.values()):
            break
        time.sleep(2)
    else:
        pytest.fail(f"units not active {time.monotonic() - t0:.0f}s after reboot: {states}")
    record("reboot to every unit active", time.monotonic() - t0)
    gateway = f"http://127.0.0.1:{demo_stack.ports['gateway']}/health/liveliness"
    while time.monotonic() < deadline and not _answers(gateway):
        time.sleep(2)
    status: dict = {}
    while time.monotonic() < deadline:
        status = status_json(demo_stack)
        if status.get("healthy"):
            break
        time.sleep(5)
    else:
        pytest.fail(f"not healthy {time.monotonic() - t0:.0f}s after reboot: "
                    f"{[(s['service'], s['active_state'], s['probe']) for s in status.get('services', [])]}")
    healthy_at = time.monotonic() - t0
    record("reboot to healthy (status --json)", healthy_at)

    assert demo_stack.run("readlink", f"{HOME}/models/current.gguf").stdout.strip() == link_before
    for unit in units:
        assert demo_stack.run("systemctl", "--user", "is-enabled", unit).stdout.strip() == "enabled"
    resp = demo_stack.chat("native", timeout=300)
    assert resp.status_code == 200, resp.text[:300]
    answered_at = time.monotonic() - t0
    record("reboot to gateway answering", answered_at)
    note(f"reboot: guest reset {vm.timings.get('guest reset', -1):.1f}s, manager {to_manager:.1f}s, "
         f"healthy {healthy_at:.1f}s, gateway answered {answered_at:.1f}s")
    for boot, pattern in (("-1", "Stopped labctl-"), ("0", "Started labctl-")):
        lines = demo_stack.run("journalctl", "--user", "-b", boot, "-o", "short-monotonic", "--no-pager",
                               "-g", pattern, check=False).stdout.splitlines()
        for line in lines:
            note(f"boot {boot}| {line}")
