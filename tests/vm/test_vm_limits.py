"""What only a VM shows: resource limits are enforced by the kernel (the nspawn tier runs on
the host's kernel with read-only cgroup v1 controllers, where MemoryMax= is not enforced).

`ballast` is a real Redis (kind: redis) under `limits: {memory_max: 64M}`; one SETRANGE at a
200 MB offset makes it allocate (and zero) 200 MB. The kernel's memory cgroup OOM-kills it,
the user manager records the result oom-kill, and Restart=on-failure starts it again.
"""

from __future__ import annotations

import time

import pytest
from harness.qemu_vm import note, record, status_json
from harness.stack import HOME, Stack

pytestmark = pytest.mark.vm

UNIT = "labctl-ballast.service"


def test_status_shows_real_memory_figures(demo_stack: Stack) -> None:
    status = status_json(demo_stack)
    for svc in status["services"]:
        assert svc["active_state"] == "active", svc
        assert isinstance(svc["memory_bytes"], int) and svc["memory_bytes"] > 0, svc
    figures = {s["service"]: s["memory_bytes"] for s in status["services"]}
    assert figures["ballast"] < 64 * 2**20
    note("status memory: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in figures.items()))


def test_memory_max_is_enforced_oom_kill_then_restart(demo_stack: Stack) -> None:
    props = demo_stack.show(UNIT, "MemoryMax", "NRestarts", "MainPID", "ControlGroup")
    assert props["MemoryMax"] == str(64 * 2**20), props
    restarts, pid = int(props["NRestarts"]), props["MainPID"]
    cgroup = f"/sys/fs/cgroup{props['ControlGroup']}"
    # The limit is in the kernel's cgroup v2 tree, not only in the unit.
    assert demo_stack.run("cat", f"{cgroup}/memory.max").stdout.strip() == str(64 * 2**20)
    since = demo_stack.run("date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
    password = demo_stack.run("sh", "-c", f"sed -n 's/^REDIS_PASSWORD=//p' {HOME}/.config/labctl/secrets/redis.env"
                              ).stdout.strip()
    port = str(demo_stack.ports["ballast"])
    ping = demo_stack.run("env", f"REDISCLI_AUTH={password}", "redis-cli", "--no-auth-warning", "-p", port, "PING")
    assert ping.stdout.strip() == "PONG"

    t0 = time.monotonic()
    hit = demo_stack.run("env", f"REDISCLI_AUTH={password}", "redis-cli", "--no-auth-warning", "-p", port,
                         "SETRANGE", "ballast", "200000000", "x", check=False, timeout=300)
    results, deadline = set(), time.monotonic() + 300
    while time.monotonic() < deadline:
        now = demo_stack.show(UNIT, "Result", "NRestarts", "MainPID", "ActiveState")
        results.add(now["Result"])
        if int(now["NRestarts"]) > restarts and now["ActiveState"] == "active" and now["MainPID"] not in ("0", pid):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"{UNIT} was not restarted: {now}; redis-cli said {hit.stdout!r} {hit.stderr!r}")
    record("OOM kill to restarted", time.monotonic() - t0)
    # SETRANGE answers the new length when it succeeds; killed mid-command, redis-cli gets none.
    assert not hit.stdout.strip().isdigit(), f"the allocation succeeded: {hit.stdout!r}"

    # As labuser: `journalctl --user-unit` matches the caller's uid (as root it finds nothing).
    user_journal = demo_stack.run("journalctl", "--user", "-u", UNIT, "--since", since, "--no-pager", "-o", "cat"
                                  ).stdout
    kernel = demo_stack.run("journalctl", "-k", "--since", since, "--no-pager", "-o", "cat", user=None).stdout
    oom_lines = [ln for ln in user_journal.splitlines() if "oom" in ln.lower() or "OOM" in ln]
    kernel_lines = [ln for ln in kernel.splitlines() if "Killed process" in ln or "out of memory" in ln.lower()]
    assert any("oom-kill" in ln for ln in oom_lines), user_journal
    assert any("redis-server" in ln for ln in kernel_lines), kernel
    for line in oom_lines + kernel_lines:
        note(f"OOM evidence: {line.strip()}")
    note(f"OOM: Result values seen while polling: {sorted(results)}; NRestarts {restarts} -> {now['NRestarts']}")
    # And it serves again after the restart.
    again = demo_stack.run("env", f"REDISCLI_AUTH={password}", "redis-cli", "--no-auth-warning", "-p", port, "PING")
    assert again.stdout.strip() == "PONG"
