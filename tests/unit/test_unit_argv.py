"""A unit name reaches systemctl and journalctl as a unit, never as an option (issue 23).

Two guards, each tested with the other removed, against the real systemctl and journalctl
(no manager needed: what matters is how they parse their argv):

- every argv that names a unit comes from labctl.unitcmd, which puts units after ``--``
  (journalctl: ``--unit=UNIT``, one word). With the name check removed, a unit such as
  ``-Hattacker.service`` is still a unit: a fake ``ssh`` first on PATH never runs, and
  systemctl reports no option (the bus is missing, or the unit file is). Control: the argv
  labctl built before (units straight after the options) runs that ssh (``systemctl -H HOST``
  reaches a remote manager through ``ssh HOST``), or, with ``--user``, says
  "Cannot access user instance remotely".
- the unit name follows systemd's unit-name rules and never starts with ``-``: the schema
  refuses anything else with one line, the argv builders again (UnitNameError).

tests/integration/test_systemctl_bus.py watches a private D-Bus to see which unit the real
systemctl then asks the manager about.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.invtext import edit
from harness.tools import require_command

from labctl import unitcmd
from labctl.cli import main
from labctl.host import proc, systemd
from labctl.host.proc import CommandFailed
from labctl.load import load_inventory
from labctl.ops import status

pytestmark = pytest.mark.unit

HOSTILE = "-Hattacker.example.service"  # systemctl's -H: a remote manager, over `ssh attacker.example.service`
OPTION_READ = ("Cannot access user instance remotely", "invalid option", "unrecognized option", "ssh:")


@pytest.fixture
def fake_host(tmp_path: Path, monkeypatch) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """An environment with a fake ``ssh`` first on PATH that records being run, and a runtime
    directory with no bus in it; the process's own environment too (status's UserManager reads it)."""
    require_command("systemctl", "apt-get install systemd")
    require_command("journalctl", "apt-get install systemd")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    ssh = bindir / "ssh"
    ssh.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/ssh-ran\nexit 255\n')
    ssh.chmod(0o755)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime), "HOME": str(tmp_path / "home"),
           "LANG": "C", "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "cat", "DBUS_SESSION_BUS_ADDRESS": "",
           "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={runtime}/no-system-bus"}
    for key in list(os.environ):
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def ssh_ran(env: dict[str, str]) -> bool:
    return (Path(env["XDG_RUNTIME_DIR"]).parent / "ssh-ran").exists()


def ran(monkeypatch, env: dict[str, str], call: Callable[[], object]) -> list[tuple[list[str], str]]:  # type: ignore[no-untyped-def]
    """(argv, stderr) of every systemctl/journalctl ``call`` ran: through run_cmd, or exec'd
    by the CLI (run here instead)."""
    seen: list[tuple[list[str], str]] = []
    real_run = proc.run_cmd

    def recording(argv, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["check"] = False
        result = real_run(argv, **kwargs)
        seen.append((list(argv), result.stderr))
        return result

    def execvpe(file: str, argv: list[str], environ: dict[str, str]) -> None:
        res = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=60, check=False,
                             stdin=subprocess.DEVNULL)
        seen.append((list(argv), res.stderr))

    monkeypatch.setattr(systemd, "run_cmd", recording)
    monkeypatch.setattr(os, "execvpe", execvpe)
    try:
        call()
    except (CommandFailed, SystemExit):
        pass
    return seen


def external_inventory(tmp_path: Path, unit: str, scope: str) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(edit(("  gateway:\n", f"  theirs:\n    kind: external\n    api: openai\n    port: 8090\n"
                                          f"    models: [tiny]\n    unit: '{unit}'\n    unit_scope: {scope}\n"
                                          "  gateway:\n")))
    return path


def logs(tmp_path: Path, unit: str, scope: str) -> Callable[[], object]:
    path = external_inventory(tmp_path, unit, scope)
    return lambda: main(["logs", "theirs", "-i", str(path), "-n", "1"])


# Every place labctl names a unit to systemctl or journalctl: (scope, call).
PLACES: dict[str, Callable[[Path, dict[str, str], str], tuple[bool, Callable[[], object]]]] = {
    "status (managed units, its own call)": lambda tmp, env, unit: (
        True, lambda: status._show(systemd.UserManager(), [unit])),
    "status (managed units, a manager)": lambda tmp, env, unit: (
        True, lambda: systemd.UserManager(env=env).show([unit])),
    "status (external, system manager)": lambda tmp, env, unit: (
        False, lambda: systemd.show_units([unit], user=False, env=env)),
    "status (external, user manager)": lambda tmp, env, unit: (
        True, lambda: systemd.show_units([unit], user=True, env=env)),
    "start": lambda tmp, env, unit: (True, lambda: systemd.UserManager(env=env).start(unit)),
    "restart": lambda tmp, env, unit: (True, lambda: systemd.UserManager(env=env).restart(unit)),
    "stop": lambda tmp, env, unit: (True, lambda: systemd.UserManager(env=env).stop(unit)),
    "enable": lambda tmp, env, unit: (True, lambda: systemd.UserManager(env=env).enable([unit])),
    "disable": lambda tmp, env, unit: (True, lambda: systemd.UserManager(env=env).disable([unit])),
    "journal (up's failure report)": lambda tmp, env, unit: (True, lambda: systemd.UserManager(env=env).journal(unit)),
    "logs (external, system)": lambda tmp, env, unit: (False, logs(tmp, unit, "system")),
    "logs (external, user)": lambda tmp, env, unit: (True, logs(tmp, unit, "user")),
}


def no_name_check(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The schema's and the builders' unit-name check, removed: only the argv's shape is left."""
    from labctl import fields

    monkeypatch.setattr(unitcmd, "unit_name_problem", lambda name: None)
    monkeypatch.setattr(fields, "unit_name_problem", lambda name: None)


@pytest.mark.parametrize("place", list(PLACES))
def test_a_unit_is_an_operand_wherever_labctl_names_one(tmp_path: Path, monkeypatch, fake_host, place: str) -> None:  # type: ignore[no-untyped-def]
    no_name_check(monkeypatch)
    _, call = PLACES[place](tmp_path, fake_host, HOSTILE)
    seen = ran(monkeypatch, fake_host, call)
    named = [(argv, err) for argv, err in seen if HOSTILE in argv or f"--unit={HOSTILE}" in argv]
    assert named, seen
    for argv, err in named:
        if argv[0] == "systemctl":
            assert argv.index("--") < argv.index(HOSTILE), argv
        else:
            assert argv[0] == "journalctl" and f"--unit={HOSTILE}" in argv and HOSTILE not in argv, argv
        assert not any(sign in err for sign in OPTION_READ), (argv, err)
        if argv[2] in ("enable", "disable"):  # these read unit files before the bus: the error names it
            assert f"unit {HOSTILE} does not exist" in err, err
    assert not ssh_ran(fake_host)


def old_argv(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The argv labctl built before: units straight after the options, no ``--``."""
    def systemctl_argv(verb: str, *units: str, user: bool = True, options=()) -> list[str]:  # type: ignore[no-untyped-def]
        return ["systemctl", *(["--user"] if user else []), verb, *options, *units]

    def show_argv(units, *, user: bool = True) -> list[str]:  # type: ignore[no-untyped-def]
        return systemctl_argv("show", *units, user=user, options=["--property=" + ",".join(unitcmd.SHOW_PROPERTIES)])

    monkeypatch.setattr(systemd, "show_argv", show_argv)
    monkeypatch.setattr(systemd, "systemctl_argv", systemctl_argv)


@pytest.mark.parametrize("place", [p for p in PLACES if not p.startswith(("logs", "journal"))])
def test_control_without_the_separator_systemctl_reads_the_unit_as_options(tmp_path: Path, monkeypatch, fake_host,
                                                                         place: str) -> None:  # type: ignore[no-untyped-def]
    """Control: the same calls with the old argv. systemctl takes -H as a host: the system
    manager's show runs the fake ssh; a user manager's refuses a remote one."""
    no_name_check(monkeypatch)
    old_argv(monkeypatch)
    user, call = PLACES[place](tmp_path, fake_host, HOSTILE)
    seen = ran(monkeypatch, fake_host, call)
    named = [(argv, err) for argv, err in seen if HOSTILE in argv]
    assert named and all("--" not in argv for argv, _ in named), seen
    if user:
        assert all("Cannot access user instance remotely" in err for _, err in named), named
    else:
        assert ssh_ran(fake_host)
        assert "attacker.example.service" in (tmp_path / "ssh-ran").read_text()


def test_journalctl_takes_its_unit_as_one_word(fake_host) -> None:  # type: ignore[no-untyped-def]
    """journalctl's own parse of what labctl builds: the unit with its option, matches after
    ``--``; a name that looks like an option stays the unit's name."""
    argv = unitcmd.journalctl_argv("labctl-native.service", options=["-n", "1", "--no-pager", "-o", "cat"],
                                   matches=["SYSLOG_IDENTIFIER=labctl-native"])
    assert argv == ["journalctl", "--user", "--unit=labctl-native.service", "-n", "1", "--no-pager", "-o", "cat",
                    "--", "SYSLOG_IDENTIFIER=labctl-native"]
    res = subprocess.run(argv, env=fake_host, capture_output=True, text=True, timeout=60, check=False)
    assert not any(sign in res.stderr for sign in OPTION_READ), res.stderr


def test_edit_names_its_unit_after_the_separator(tmp_path: Path, monkeypatch, fake_host) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "inventory.yaml"
    path.write_text(edit())
    seen = ran(monkeypatch, fake_host, lambda: main(["edit", "native", "-i", str(path)]))
    ((argv, err),) = seen
    assert argv == ["systemctl", "--user", "edit", "--", "labctl-native.service"]
    assert "Cannot edit units if not on a tty" in err  # systemctl got as far as the verb


# --- the names themselves -------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "ollama.service", "getty@tty1.service", "a.b.service", "x:y_z-w.service", "a\\x2db.service",
    "user@1000.service", "a@b@c.service", "x" * 247 + ".service", "ollama.socket",
])
def test_unit_names_systemd_takes(name: str) -> None:
    assert unitcmd.unit_name_problem(name) is None
    assert unitcmd.show_argv([name])[-2:] == ["--", name]


@pytest.mark.parametrize("name, problem", [
    ("-Hattacker.service", "must not start with '-'"),
    ("--user.service", "must not start with '-'"),
    ("-.service", "must not start with '-'"),
    ("", "must name a unit"),
    ("ollama", "must end in a unit type"),
    ("ollama.servic", "must end in a unit type"),
    (".service", "must have a name before"),
    ("@x.service", "must not start with '@'"),
    ("getty@.service", "is a template"),
    ("a b.service", "systemd's unit-name characters"),
    ("a;b.service", "systemd's unit-name characters"),
    ("caf\u00e9.service", "systemd's unit-name characters"),
    ("a\nb.service", "systemd's unit-name characters"),
    ("a/b.service", "systemd's unit-name characters"),
    ("x" * 248 + ".service", "longer than 255 bytes"),
])
def test_names_systemd_refuses_or_systemctl_would_read_as_options(name: str, problem: str) -> None:
    assert problem in (unitcmd.unit_name_problem(name) or "")
    with pytest.raises(unitcmd.UnitNameError):
        unitcmd.show_argv([name])
    with pytest.raises(unitcmd.UnitNameError):
        unitcmd.journalctl_argv(name)


def test_systemd_agrees_on_the_limits(tmp_path: Path) -> None:
    """systemd-analyze reads a unit of 255 bytes and refuses one of 256, and refuses a
    template-less '@' start, as unit_name_problem says."""
    analyze = require_command("systemd-analyze", "apt-get install systemd")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "SYSTEMD_LOG_COLOR": "0"}
    for name, ok in (("x" * 247 + ".service", True), ("x" * 248 + ".service", False), ("@x.service", False),
                     ("a\\x2db.service", True)):
        unit = tmp_path / name
        try:
            unit.write_text("[Service]\nExecStart=/bin/true\n")
        except OSError:  # longer than NAME_MAX: no file can have the name either
            assert not ok
            continue
        res = subprocess.run([analyze, "--user", "verify", str(unit)], capture_output=True, text=True, env=env,
                             timeout=60, check=False)
        assert (res.returncode == 0) == ok == (unitcmd.unit_name_problem(name) is None), (name, res.stderr)


@pytest.mark.parametrize("unit, message", [
    ("-Hattacker.service", "must not start with '-' (systemctl and journalctl would read it as an option)"),
    ("ollama@.service", "is a template, which runs nothing: name an instance (ollama@INSTANCE.service)"),
    ("ollama.socket", "must be a service unit (NAME.service)"),
    ("ollama service", "must end in a unit type, such as .service"),
    ("x" * 300 + ".service", "is longer than 255 bytes"),
])
def test_an_external_unit_is_refused_in_one_line_at_its_field(tmp_path: Path, capsys, unit: str, message: str) -> None:
    path = external_inventory(tmp_path, unit, "system")
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "-i", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.startswith("    unit:"))
    assert err.startswith(f"{path}:{line}: services.theirs.unit: {message}"), err


def test_a_snapshot_naming_no_unit_is_not_used() -> None:
    """status from its snapshot hands the plan's units to systemctl: a plan whose units are
    not unit names (an edited snapshot) is not run."""
    inv = load_inventory("inventory.yaml", text=edit()).inventory
    plan = status.status_inputs(inv)
    assert status._plan_ok(plan)
    assert not status._plan_ok({**plan, "managed": [*plan["managed"], HOSTILE]})
