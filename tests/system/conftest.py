"""Fixtures for system tests: one booted systemd machine (systemd-nspawn) per session.

Needs root plus the host packages debootstrap and systemd-container. Without them the tests
skip, except under CI=true, where they fail and say what to install. The rootfs is cached in
~/.cache/labctl/sandbox/bookworm-rootfs (LABCTL_SANDBOX_CACHE overrides): the first run
debootstraps it (about two minutes), later runs boot in about a second.

``fleet_lab`` (per module): three such machines, gpu-a, gpu-b and edge, each in a network
namespace of its own on a private bridge network with a controller namespace
(tests/harness/fleetlab.py); ``fleet_wheelhouse`` (per session): labctl and its dependencies
as wheels for the machines' offline pip.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

try:
    from labctl import sandbox
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from labctl import sandbox

_timings: dict[str, float] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "system: a booted systemd machine (systemd-nspawn), reached with nsenter and testinfra",
    )


def _unavailable(reason: str) -> None:
    from harness.tools import missing

    missing("the system tier", reason)


@pytest.fixture(scope="session")
def sandbox_rootfs() -> Path:
    if os.geteuid() != 0:
        _unavailable("the systemd sandbox needs root")
    missing = sandbox.missing_host_tools()
    if missing:
        _unavailable(f"missing {', '.join(missing)}: {sandbox.HOST_PACKAGES_HINT}")
    cache = os.environ.get("LABCTL_SANDBOX_CACHE")
    started = time.monotonic()
    rootfs = sandbox.build_rootfs(Path(cache) if cache else None)
    _timings["rootfs (build or cache hit)"] = time.monotonic() - started
    return rootfs


@pytest.fixture(scope="session")
def machine(sandbox_rootfs: Path):
    """A booted bookworm machine with labuser's manager running and sshd on 127.0.0.1."""
    name = f"labctl-test-{os.getpid()}"
    m = sandbox.Machine.boot(name, sandbox_rootfs, sandbox.free_port())
    try:
        yield m
    finally:
        m.shutdown()
        _timings.update({f"machine {k}": v for k, v in m.timings.items()})


#: The fleet_lab fixture's machines, in order (addresses .11, .12, .13 of the lab's CIDR).
FLEET = ("gpu-a", "gpu-b", "edge")


@pytest.fixture(scope="module")
def fleet_lab(sandbox_rootfs: Path):
    """Three booted machines on a private network with a controller namespace
    (tests/harness/fleetlab.py); torn down at the end of the module, on failure and on Ctrl-C."""
    import shutil

    from harness import fleetlab

    for tool in ("ip", "ssh"):
        if shutil.which(tool) is None:
            _unavailable(f"missing {tool}: {fleetlab.HOST_HINT}")
    if not fleetlab.TOOLS_DIR.is_dir():
        _unavailable(f"{fleetlab.TOOLS_DIR} is missing: run scripts/bootstrap.sh")
    lab = fleetlab.FleetLab(FLEET, rootfs=sandbox_rootfs)
    lab.start()  # on any failure it tears down what it made, then raises
    try:
        yield lab
    finally:
        try:
            lab.close()
        finally:
            _timings.update({f"fleet {k}": v for k, v in lab.timings.items()})


@pytest.fixture(scope="session")
def fleet_wheelhouse():
    """labctl and its dependencies as wheels for the machines' Python (fleetlab.build_wheelhouse),
    cached in ~/.cache/labctl/fleet/wheels."""
    from harness import fleetlab

    python = fleetlab.wheelhouse_python()
    if not python.exists():
        _unavailable(f"{python} is missing: run scripts/bootstrap.sh")
    wheels = fleetlab.build_wheelhouse()
    what = "built" if wheels.built else "cache hit"
    _timings[f"fleet wheelhouse ({what})"] = wheels.seconds
    return wheels


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if _timings:
        terminalreporter.section("labctl sandbox timings (s)")
        for key, value in _timings.items():
            terminalreporter.write_line(f"{key:40s} {value:7.2f}")
