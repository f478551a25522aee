"""The default hardening on a booted machine: every demo server runs (and serves: the
stack is healthy) with no new privileges, a seccomp filter and its own user namespace; an
operator's drop-in survives `labctl up` twice and takes effect."""

from __future__ import annotations

import pytest

from harness.stack import HOME, INVENTORY, Stack, json_out

pytestmark = pytest.mark.system

UNITS = ("labctl-native.service", "labctl-bindings.service", "labctl-gateway.service")
DROP_IN = f"{HOME}/.config/systemd/user/labctl-native.service.d/50-operator.conf"


def proc_status(stack: Stack, pid: int) -> dict[str, str]:
    out = stack.run("cat", f"/proc/{pid}/status").stdout
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)}


def test_every_server_serves_hardened(demo_stack: Stack) -> None:
    status = demo_stack.labctl("status", "-i", INVENTORY, "--json")
    assert status.rc == 0 and json_out(status)["healthy"] is True, status.stdout
    manager_userns = demo_stack.run("readlink", "/proc/self/ns/user").stdout.strip()
    for unit in UNITS:
        pid = int(demo_stack.show(unit, "MainPID")["MainPID"])
        fields = proc_status(demo_stack, pid)
        assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2", (unit, fields)
        userns = demo_stack.run("readlink", f"/proc/{pid}/ns/user").stdout.strip()
        assert userns != manager_userns, f"{unit} is not in its own user namespace (PrivateUsers=)"
        # ProtectSystem=strict: the service cannot write outside its allowed paths.
        props = demo_stack.show(unit, "ProtectSystem", "ProtectHome", "ReadWritePaths")
        assert props["ProtectSystem"] == "strict" and props["ProtectHome"] == "read-only", props
        assert props["ReadWritePaths"].startswith(f"{HOME}/.local/state/labctl/"), props


def test_an_operator_drop_in_survives_two_ups(demo_stack: Stack) -> None:
    demo_stack.run("mkdir", "-p", DROP_IN.rsplit("/", 1)[0])
    demo_stack.machine.write_text(DROP_IN, "[Service]\nEnvironment=OPERATOR_MARK=kept\n", owner="labuser")  # type: ignore[attr-defined]
    try:
        for _ in range(2):
            res = demo_stack.labctl("up", "-i", INVENTORY)
            assert res.rc == 0, res.stderr
            assert "labctl-native.service: keeping operator drop-ins 50-operator.conf" in res.stdout
            assert demo_stack.run("cat", DROP_IN).stdout == "[Service]\nEnvironment=OPERATOR_MARK=kept\n"
        plan = json_out(demo_stack.labctl("plan", "-i", INVENTORY, "--json"))
        assert plan["drop_ins"] == {"labctl-native.service": [
            "systemd/user/labctl-native.service.d/50-operator.conf"]}, plan["drop_ins"]
        # It takes effect: the manager reads it, the restarted process has its variable.
        assert demo_stack.labctl("restart", "native", "-i", INVENTORY).rc == 0
        pid = int(demo_stack.show("labctl-native.service", "MainPID")["MainPID"])
        environ = demo_stack.run("cat", f"/proc/{pid}/environ").stdout
        assert "OPERATOR_MARK=kept" in environ.split("\0")
        doc = json_out(demo_stack.labctl("status", "-i", INVENTORY, "--json"))
        native = next(s for s in doc["services"] if s["service"] == "native")
        assert native["drop_ins"] == [DROP_IN], native["drop_ins"]
    finally:
        demo_stack.run("rm", "-rf", DROP_IN.rsplit("/", 1)[0])
        demo_stack.run("systemctl", "--user", "daemon-reload")
        assert demo_stack.labctl("restart", "native", "-i", INVENTORY).rc == 0
