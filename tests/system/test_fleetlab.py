"""The fleet test bed (fleetlab.py): three booted machines on a network the test created.

Proves what the fleet tests rely on: the controller reaches every machine's sshd as labuser
with the lab's key and host keys; a server bound to a machine's private address is reachable
from the other machines and the controller, one bound to 127.0.0.1 is not; the host's own
network namespace reaches nothing in the lab; power_off and power_on; the wheelhouse installs
labctl offline inside a machine. Tests run in file order (the power cycle is last).
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from harness import fleetlab
from harness.fleetlab import FleetLab
from harness.tools import missing

from labctl import sandbox

pytestmark = pytest.mark.system

NAMES = ("gpu-a", "gpu-b", "edge")
PUBLIC_PORT, LOOPBACK_PORT = 8000, 8001
CURL = ["curl", "-sS", "--noproxy", "*", "--connect-timeout", "3", "--max-time", "10"]


def _serve(lab: FleetLab, name: str, bind: str, port: int, unit: str) -> None:
    """A python HTTP server as a transient user unit of labuser's in ``name``, listening."""
    machine = lab.machines[name]
    machine.write_text(f"/home/labuser/www-{port}/index.html", f"hello from {name}\n",
                       owner=sandbox.USER)
    machine.run(["systemd-run", "--user", f"--unit={unit}", "--", "/usr/bin/python3", "-m",
                 "http.server", "--bind", bind, "--directory", f"/home/labuser/www-{port}", str(port)],
                user=sandbox.USER)
    deadline = time.monotonic() + 15
    while machine.run([*CURL, f"http://{bind}:{port}/"], check=False).rc != 0:
        assert time.monotonic() < deadline, f"{unit} does not answer on {bind}:{port} inside {name}"
        time.sleep(0.1)


def test_addresses_hostnames_and_routes(fleet_lab: FleetLab) -> None:
    lab = fleet_lab
    net = ipaddress.ip_network("10.77.0.0/24")
    assert lab.names == list(NAMES)
    assert lab.controller_address == "10.77.0.1"
    assert [lab.address[n] for n in NAMES] == ["10.77.0.11", "10.77.0.12", "10.77.0.13"]
    for name in NAMES:
        m = lab.machines[name]
        assert m.run(["hostname"]).stdout.strip() == name
        addrs = m.run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
        assert f"inet {lab.address[name]}/24" in addrs
        # Only the lab's network: no default route, nothing outside the CIDR.
        routes = m.run(["ip", "-4", "route"]).stdout.splitlines()
        assert routes and all(ipaddress.ip_network(r.split()[0]).subnet_of(net) for r in routes), routes
        assert m.run(["systemctl", "is-active", "ssh"]).stdout.strip() == "active"
    ctl = lab.controller(["ip", "-4", "-o", "addr"], check=True).stdout
    assert "inet 10.77.0.1/24" in ctl and "inet 127.0.0.1/8" in ctl
    assert lab.controller(["ip", "-4", "route"], check=True).stdout.split()[0] == "10.77.0.0/24"
    # the machines' names resolve in the controller (its own /etc/hosts), not in the host's namespace
    for name in NAMES:
        found = lab.controller(["getent", "ahostsv4", lab.dns_name[name]], check=True).stdout.split()
        assert found[0] == lab.address[name], found
    import subprocess
    assert subprocess.run(["getent", "hosts", lab.dns_name["edge"]], capture_output=True).returncode != 0


def test_controller_ssh_as_labuser_on_every_machine(fleet_lab: FleetLab) -> None:
    """Strict host-key checking against lab.known_hosts, key auth with lab.ssh_key."""
    lab = fleet_lab
    assert lab.ssh_key.is_file() and lab.host_keys
    for name in NAMES:
        t0 = time.monotonic()
        res = lab.ssh(name, "id -un; hostname; systemctl --user is-system-running")
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == ["labuser", name, "running"], res.stdout
        print(f"ssh labuser@{name} ({lab.address[name]}): {time.monotonic() - t0:.2f}s")
    # The same with plain ssh options, by address, as the fleet code will call it.
    res = lab.controller(["ssh", "-i", str(lab.ssh_key), "-o", "IdentitiesOnly=yes",
                          "-o", f"UserKnownHostsFile={lab.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                          "-o", "BatchMode=yes", f"labuser@{lab.address['edge']}", "systemctl --user is-system-running"],
                         timeout=30)
    assert (res.returncode, res.stdout.strip()) == (0, "running"), res.stderr
    # A host key that is not the lab's is refused: the check is real.
    other = lab.dir / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    bad = lab.dir / "wrong_known_hosts"
    bad.write_text(f"{lab.address['edge']} {other.with_suffix('.pub').read_text()}")
    res = lab.controller(["ssh", *lab.ssh_options, "-o", f"UserKnownHostsFile={bad}", "edge", "true"], timeout=30)
    assert res.returncode == 255 and "host key" in res.stderr.lower(), res.stderr


@pytest.fixture(scope="module")
def servers(fleet_lab: FleetLab) -> None:
    """gpu-a serves "hello from gpu-a" on its private address and on 127.0.0.1."""
    _serve(fleet_lab, "gpu-a", fleet_lab.address["gpu-a"], PUBLIC_PORT, "fleetlab-public")
    _serve(fleet_lab, "gpu-a", "127.0.0.1", LOOPBACK_PORT, "fleetlab-loopback")


def test_private_address_reachable_from_other_machine_and_controller(fleet_lab: FleetLab, servers) -> None:
    lab = fleet_lab
    addr = lab.address["gpu-a"]
    from_edge = lab.machines["edge"].run([*CURL, f"http://{addr}:{PUBLIC_PORT}/"], check=False)
    assert (from_edge.rc, from_edge.stdout) == (0, "hello from gpu-a\n"), from_edge.stderr
    from_ctl = lab.controller([*CURL, f"http://{addr}:{PUBLIC_PORT}/"], timeout=30)
    assert (from_ctl.returncode, from_ctl.stdout) == (0, "hello from gpu-a\n"), from_ctl.stderr


def test_loopback_bind_is_not_reachable_from_other_machines(fleet_lab: FleetLab, servers) -> None:
    lab = fleet_lab
    addr = lab.address["gpu-a"]
    inside = lab.machines["gpu-a"].run([*CURL, f"http://127.0.0.1:{LOOPBACK_PORT}/"])
    assert inside.stdout == "hello from gpu-a\n"  # it does serve, on gpu-a's loopback
    assert lab.tcp_probe(addr, LOOPBACK_PORT, source="edge") == "refused"
    assert lab.tcp_probe("127.0.0.1", LOOPBACK_PORT, source="edge") == "refused"  # edge's own
    assert lab.tcp_probe(addr, LOOPBACK_PORT) == "refused"  # from the controller
    assert lab.tcp_probe(addr, PUBLIC_PORT, source="edge") == "open"  # the control


def test_host_namespace_cannot_reach_the_lab(fleet_lab: FleetLab, servers) -> None:
    """No lab address is on the host's interfaces, and from the host's namespace neither
    gpu-a's sshd nor its HTTP server answers. (A bare TCP connect proves nothing here: the
    host's own network accepts connections to any address, so the test asks for content.)"""
    lab = fleet_lab
    addr = lab.address["gpu-a"]
    host_addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    for a in (lab.controller_address, *lab.address.values()):
        assert f"inet {a}/" not in host_addrs
    route = subprocess.run(["ip", "route", "get", addr], capture_output=True, text=True, check=False).stdout
    print(f"host namespace: ip route get {addr}: {route.strip() or '(no route)'}")

    # sshd: the controller reads the lab's host keys, the host's namespace reads none.
    scan = ["ssh-keyscan", "-T", "3", "-t", "ed25519", addr]
    from_ctl = lab.controller(scan, timeout=30).stdout.split()
    assert from_ctl[1:] in [k.split() for k in lab.host_keys], from_ctl
    from_host = subprocess.run(scan, capture_output=True, text=True, timeout=30, check=False)
    assert from_host.stdout.strip() == "", from_host.stdout

    # HTTP: whatever the host's network does with the connection, gpu-a does not answer it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{addr}:{PUBLIC_PORT}/", timeout=3) as resp:
            body = resp.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        body = f"({type(exc).__name__})"
    assert "hello from gpu-a" not in body
    print(f"host namespace -> http://{addr}:{PUBLIC_PORT}/: {body[:80]}")


def test_wheelhouse_installs_labctl_offline_as_labuser(fleet_lab: FleetLab, fleet_wheelhouse) -> None:
    lab, wh = fleet_lab, fleet_wheelhouse
    m = lab.machines["gpu-b"]
    venv, wheels = "/home/labuser/.local/share/labctl/venv", "/home/labuser/wheels"
    t0 = time.monotonic()
    m.copy_in(wh.path, wheels, owner=sandbox.USER)
    t_copy = time.monotonic() - t0
    m.mkdir("/home/labuser/.local/share/labctl", owner=sandbox.USER)
    t0 = time.monotonic()
    m.run(["python3", "-m", "venv", venv], user=sandbox.USER)
    res = m.run([f"{venv}/bin/pip", "install", "-q", "--disable-pip-version-check", "--no-index",
                 "--find-links", wheels, f"labctl=={wh.version}"], user=sandbox.USER, timeout=600,
                cwd="/home/labuser", check=False)
    t_install = time.monotonic() - t0
    assert res.rc == 0, res.stderr
    out = m.run([f"{venv}/bin/labctl", "version"], user=sandbox.USER).stdout
    assert out.strip() == f"labctl {wh.version}"
    # A second call finds it current (the checkout unchanged): no rebuild.
    again = fleetlab.build_wheelhouse()
    assert (again.path, again.version, again.built) == (wh.path, wh.version, False)
    print(f"wheelhouse: {'built' if wh.built else 'cached'} in {wh.seconds:.1f}s; copy into gpu-b "
          f"{t_copy:.1f}s; venv + pip install --no-index {t_install:.1f}s; current check {again.seconds:.2f}s")


def test_power_off_then_on(fleet_lab: FleetLab) -> None:
    lab = fleet_lab
    addr = lab.address["gpu-a"]
    lab.machines["gpu-a"].write_text("/home/labuser/marker", "before\n", owner=sandbox.USER)
    t0 = time.monotonic()
    lab.power_off("gpu-a")
    t_off = time.monotonic() - t0
    assert not lab.machines["gpu-a"].running
    deadline = time.monotonic() + 5
    while (state := lab.tcp_probe(addr, 22, timeout=2)) == "open":
        assert time.monotonic() < deadline, "sshd still answers after power_off"
        time.sleep(0.2)
    assert state in ("refused", "timeout"), state
    t_dark = time.monotonic() - t0
    assert lab.tcp_probe(addr, PUBLIC_PORT, timeout=2) in ("refused", "timeout")
    res = lab.ssh("gpu-a", "true", timeout=30)
    assert res.returncode == 255, (res.returncode, res.stderr)
    assert lab.ssh("edge", "true").returncode == 0  # the others stay up

    t0 = time.monotonic()
    lab.power_on("gpu-a")
    t_on = time.monotonic() - t0
    res = lab.ssh("gpu-a", "systemctl --user is-system-running; cat marker 2>/dev/null || echo gone")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["running", "gone"], res.stdout  # a fresh overlay
    print(f"power_off {t_off:.2f}s (address dark after {t_dark:.2f}s); power_on to ssh {t_on:.2f}s; "
          f"boots: " + ", ".join(f"{k} {v:.2f}s" for k, v in lab.timings.items()))


def test_leftovers_of_a_crashed_run_are_removed(tmp_path) -> None:
    """A run whose process died leaves a namespace with a process in it and a temp dir:
    cleanup_leftovers (called by every FleetLab.start) removes them; a live run's stay."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        missing("the fleet lab", "it needs root and iproute2")
    dead = next(pid for pid in range(4_000_000, 3_000_000, -1) if not os.path.exists(f"/proc/{pid}"))
    crashed, live = f"{fleetlab.PREFIX}{dead}x1-sw", f"{fleetlab.PREFIX}{os.getpid()}x999-sw"
    leftover_dir = Path(tempfile.mkdtemp(prefix=f"{fleetlab.PREFIX}{dead}x1-"))
    for ns in (crashed, live):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", crashed, "sleep", "300"])
    try:
        time.sleep(0.2)
        removed = fleetlab.cleanup_leftovers()
        assert f"netns {crashed}" in removed and str(leftover_dir) in removed, removed
        assert sleeper.wait(5) == -9  # the process left in the namespace is killed
        assert not os.path.exists(f"/run/netns/{crashed}") and not leftover_dir.exists()
        assert os.path.exists(f"/run/netns/{live}")  # this process is alive: not a leftover
    finally:
        sleeper.kill()
        for ns in (crashed, live):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        shutil.rmtree(leftover_dir, ignore_errors=True)
