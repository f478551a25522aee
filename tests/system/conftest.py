"""Fixtures for system tests: one booted systemd machine (systemd-nspawn) per session.

Needs root plus the host packages debootstrap and systemd-container. Without them the tests
skip, except under CI=true, where they fail and say what to install. The rootfs is cached in
~/.cache/labctl/sandbox/bookworm-rootfs (LABCTL_SANDBOX_CACHE overrides): the first run
debootstraps it (about two minutes), later runs boot in about a second.
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
    from tools import missing

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


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if _timings:
        terminalreporter.section("labctl sandbox timings (s)")
        for key, value in _timings.items():
            terminalreporter.write_line(f"{key:40s} {value:7.2f}")
