"""What only a VM shows: the default hardening (ProtectSystem=strict, ProtectHome=read-only,
ReadWritePaths= the state dir, PrivateUsers=yes) is in force in the service's own context.

The writes are attempted from inside the running service's namespaces (nsenter into its
MainPID's user and mount namespaces, then as its uid 1000), not from a fresh systemd-run.
"""

from __future__ import annotations

import pytest
from harness.qemu_vm import note
from harness.stack import HOME, Stack

pytestmark = pytest.mark.vm


@pytest.mark.parametrize("service", ["native", "gateway"])
def test_service_cannot_write_outside_its_state_dir(demo_stack: Stack, service: str) -> None:
    unit = f"labctl-{service}.service"
    pid = demo_stack.show(unit, "MainPID")["MainPID"]
    assert pid != "0"
    state = f"{HOME}/.local/state/labctl/{service}"

    def write_as_service(path: str):  # type: ignore[no-untyped-def]
        return demo_stack.run("nsenter", "-t", pid, "-a", "-S", "1000", "-G", "1000", "--",
                              "sh", "-c", f"echo probe > '{path}' && rm -f '{path}'", user=None, check=False)

    ok = write_as_service(f"{state}/hardening-probe")
    assert ok.rc == 0, ok.stderr
    for path in ("/usr/hardening-probe", f"{HOME}/hardening-probe", f"{HOME}/.config/hardening-probe"):
        res = write_as_service(path)
        assert res.rc != 0, f"{service} could write {path}"
        # Refused by a read-only mount, not by file permissions.
        assert "Read-only file system" in res.stderr, res.stderr
        note(f"hardening: {service} writing {path}: {res.stderr.strip()}")
    # Control: the same uid outside the service's namespaces may write its home.
    plain = demo_stack.run("sh", "-c", f"echo probe > {HOME}/hardening-probe && rm {HOME}/hardening-probe",
                           check=False)
    assert plain.rc == 0, plain.stderr
    # And the kernel's view of the service's mounts says so.
    mounts = demo_stack.run("cat", f"/proc/{pid}/mountinfo", user=None).stdout.splitlines()
    over_usr = [m.split() for m in mounts if m.split()[4] in ("/", "/usr")]
    deepest = max(len(m[4]) for m in over_usr)
    top = [m for m in over_usr if len(m[4]) == deepest][-1]  # the mount that /usr is on
    assert "ro" in top[5].split(","), top
    note(f"hardening: {service} state dir writable; its / is mounted {top[5]} (mountinfo)")
