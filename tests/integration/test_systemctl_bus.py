"""Which unit the real systemctl asks the manager about, for every argv labctl builds (issue 23).

A private D-Bus daemon listens where ``systemctl --user`` looks for the user's bus
($XDG_RUNTIME_DIR/bus), with no service to activate, and ``dbus-monitor`` records every
method call on it: ``StartUnit("NAME", ...)``, ``GetAll`` on ``/org/freedesktop/systemd1/unit/…``.
No manager answers, so each call fails, after systemctl has said which unit it meant.

- With the unit-name check removed, ``-Hattacker.example.service`` still reaches the manager
  as a unit name, from every verb labctl runs (tests/unit/test_unit_argv.py shows what the
  old argv did with it instead).
- With the check in place, an unusual name systemd takes (an instance, an escape) reaches
  it exactly as the inventory wrote it.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness.tools import require_command

from labctl import unitcmd
from labctl.host import systemd
from labctl.host.proc import CommandFailed
from labctl import fields
from labctl.ops import status

pytestmark = pytest.mark.integration

HOSTILE = "-Hattacker.example.service"
UNUSUAL = "a\\x2db:c_d@inst.e-f.service"

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class Bus:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log

    def calls(self) -> str:
        time.sleep(0.3)  # dbus-monitor writes what it saw as it sees it
        return self.log.read_text()


@pytest.fixture
def bus(tmp_path: Path, monkeypatch) -> Iterator[Bus]:  # type: ignore[no-untyped-def]
    daemon_bin = require_command("dbus-daemon", "apt-get install dbus-daemon")
    monitor_bin = require_command("dbus-monitor", "apt-get install dbus-bin")
    send_bin = require_command("dbus-send", "apt-get install dbus-bin")
    require_command("systemctl", "apt-get install systemd")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    socket = runtime / "bus"
    config = tmp_path / "bus.conf"
    config.write_text(BUS_CONFIG.format(socket=socket))
    address = f"unix:path={socket}"
    daemon = subprocess.Popen([daemon_bin, f"--config-file={config}", "--nofork", "--nopidfile"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "monitor.log"
    monitor = None
    try:
        deadline = time.monotonic() + 10
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with open(log, "w") as out:
            monitor = subprocess.Popen([monitor_bin, "--address", address, "type='method_call'"], stdout=out,
                                       stderr=subprocess.STDOUT)
        # The monitor is in place once it sees a call made after it started.
        while "member=GetId" not in log.read_text() and time.monotonic() < deadline:
            subprocess.run([send_bin, f"--bus={address}", "--print-reply", "--dest=org.freedesktop.DBus", "/",
                            "org.freedesktop.DBus.GetId"], capture_output=True, timeout=10, check=False)
            time.sleep(0.1)
        assert "member=GetId" in log.read_text(), log.read_text()
        env = {"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime), "HOME": str(tmp_path / "home"),
               "LANG": "C", "SYSTEMD_LOG_COLOR": "0"}
        for key in list(os.environ):
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        yield Bus(env, log)
    finally:
        for proc in (monitor, daemon):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=10)


def bus_path(unit: str) -> str:
    """The object path systemd gives a unit (sd_bus_path_encode: _XX for all but [A-Za-z0-9])."""
    return "/org/freedesktop/systemd1/unit/" + "".join(
        ch if ch.isascii() and ch.isalnum() else f"_{ord(ch):02x}" for ch in unit)


# labctl's calls that reach the user manager: (the call, what systemctl asks the manager).
CALLS: dict[str, tuple[Callable[[dict[str, str], str], object], list[str]]] = {
    "status (its own call)": (lambda env, unit: status._show(systemd.UserManager(env=env), [unit]), ["member=GetAll"]),
    "status (show_units)": (lambda env, unit: systemd.show_units([unit], user=True, env=env), ["member=GetAll"]),
    "start": (lambda env, unit: systemd.UserManager(env=env).start(unit), ["member=ResetFailedUnit",
                                                                            "member=StartUnit"]),
    "restart": (lambda env, unit: systemd.UserManager(env=env).restart(unit), ["member=ResetFailedUnit",
                                                                                "member=RestartUnit"]),
    "stop": (lambda env, unit: systemd.UserManager(env=env).stop(unit), ["member=StopUnit"]),
}


def asked(log: str, member: str, unit: str) -> bool:
    """Whether a call to ``member`` named ``unit`` (as its argument, or its object path)."""
    blocks = log.split("method call ")
    return any(member in b and (f'string "{unit}"' in b or f"path={bus_path(unit)};" in b) for b in blocks)


@pytest.mark.parametrize("call", list(CALLS))
def test_the_manager_is_asked_about_the_unit_even_one_that_looks_like_an_option(bus: Bus, monkeypatch,
                                                                                call: str) -> None:
    monkeypatch.setattr(unitcmd, "unit_name_problem", lambda name: None)
    monkeypatch.setattr(fields, "unit_name_problem", lambda name: None)
    run, members = CALLS[call]
    try:
        run(bus.env, HOSTILE)
    except CommandFailed as exc:
        assert HOSTILE in str(exc) or "org.freedesktop.systemd1" in str(exc), exc
    log = bus.calls()
    for member in members:
        assert asked(log, member, HOSTILE), (member, log[-3000:])


@pytest.mark.parametrize("call", list(CALLS))
def test_an_unusual_unit_name_reaches_the_manager_as_written(bus: Bus, call: str) -> None:
    assert unitcmd.unit_name_problem(UNUSUAL) is None
    run, members = CALLS[call]
    try:
        run(bus.env, UNUSUAL)
    except CommandFailed:
        pass
    log = bus.calls()
    for member in members:
        assert asked(log, member, UNUSUAL), (member, log[-3000:])


def test_control_the_monitor_sees_what_a_name_check_alone_would_let_through(bus: Bus) -> None:
    """Control for the harness: a unit systemctl reads as options (the old argv) never
    reaches the bus as a unit: nothing names it."""
    res = subprocess.run(["systemctl", "--user", "start", HOSTILE], env=bus.env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert "Cannot access user instance remotely" in res.stderr
    assert not asked(bus.calls(), "member=StartUnit", HOSTILE)
