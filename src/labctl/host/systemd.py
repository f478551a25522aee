"""The user's systemd manager: facts from ``systemctl --user show``, and its verbs.

Facts are parsed from ``show``'s key=value output, never from the human text of
``systemctl status``, which changes between versions and locales.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from labctl.host.proc import CommandFailed, CommandResult, run_cmd
from labctl.records import Record
from labctl.unitcmd import SHOW_PROPERTIES, journalctl_argv, show_argv, systemctl_argv  # noqa: F401

# systemd prints this for "no value" in numeric properties such as MemoryCurrent.
_UINT64_MAX = str(2**64 - 1)
SHOW_TIMEOUT = 30.0  # seconds a manager has to answer `systemctl show`


class UnitState(Record):
    """What the user manager says about a unit (``systemctl --user show``)."""

    __slots__ = ("load_state", "active_state", "unit_file_state", "need_daemon_reload")
    load_state: str
    active_state: str
    unit_file_state: str
    # The unit file on disk differs from what the manager loaded: a daemon-reload is owed.
    need_daemon_reload: bool
    _defaults = {"load_state": "not-found", "active_state": "inactive", "unit_file_state": "",
                 "need_daemon_reload": False}

    @property
    def enabled(self) -> bool:
        return self.unit_file_state in ("enabled", "enabled-runtime", "linked", "static")

    @property
    def active(self) -> bool:
        return self.active_state in ("active", "activating", "reloading")


class UnitFacts(Record):
    __slots__ = ("unit", "load_state", "active_state", "sub_state", "unit_file_state", "n_restarts", "main_pid",
                 "memory_bytes", "active_enter_timestamp", "active_enter_monotonic_usec", "invocation_id", "result",
                 "exec_main_status", "need_daemon_reload", "drop_in_paths", "exec_main_code")
    unit: str
    load_state: str
    active_state: str
    sub_state: str
    unit_file_state: str
    n_restarts: int
    main_pid: int
    memory_bytes: int | None
    active_enter_timestamp: str
    active_enter_monotonic_usec: int
    invocation_id: str
    result: str
    exec_main_status: int
    need_daemon_reload: bool
    drop_in_paths: tuple[str, ...]
    # How the main process last ended (CLD_EXITED 1, CLD_KILLED 2, CLD_DUMPED 3; 0: it has
    # not ended, or runs): with exec_main_status, the exit code or the signal's number.
    exec_main_code: int
    _defaults = {"drop_in_paths": (), "exec_main_code": 0}

    @property
    def last_exit(self) -> str:
        """The main process's last end as systemd recorded it, for a message: "killed by
        SIGILL (status=4/ILL: ...)"; "" while it has not ended."""
        return exit_text(self.exec_main_code, self.exec_main_status)

    @property
    def state(self) -> UnitState:
        return UnitState(self.load_state, self.active_state, self.unit_file_state, self.need_daemon_reload)

    @classmethod
    def parse(cls, unit: str, props: dict[str, str]) -> "UnitFacts":
        def num(key: str) -> int:
            value = props.get(key, "")
            return int(value) if value.isdigit() and value != _UINT64_MAX else 0

        memory = props.get("MemoryCurrent", "")
        return cls(
            unit=unit,
            load_state=props.get("LoadState", "not-found"),
            active_state=props.get("ActiveState", "inactive"),
            sub_state=props.get("SubState", "dead"),
            unit_file_state=props.get("UnitFileState", ""),
            n_restarts=num("NRestarts"),
            main_pid=num("MainPID"),
            memory_bytes=int(memory) if memory.isdigit() and memory != _UINT64_MAX else None,
            active_enter_timestamp=props.get("ActiveEnterTimestamp", ""),
            active_enter_monotonic_usec=num("ActiveEnterTimestampMonotonic"),
            invocation_id=props.get("InvocationID", ""),
            result=props.get("Result", ""),
            exec_main_status=num("ExecMainStatus"),
            exec_main_code=num("ExecMainCode"),
            need_daemon_reload=props.get("NeedDaemonReload", "no") == "yes",
            drop_in_paths=tuple(props.get("DropInPaths", "").split()),
        )


# systemd's names for exit statuses (systemd.exec(5), "Process Exit Codes"): the LSB ones
# and those systemd itself gives when it could not run the command.
EXIT_NAMES = {0: "SUCCESS", 1: "FAILURE", 2: "INVALIDARGUMENT", 3: "NOTIMPLEMENTED", 4: "NOPERMISSION",
              5: "NOTINSTALLED", 6: "NOTCONFIGURED", 7: "NOTRUNNING", 200: "CHDIR", 203: "EXEC", 209: "STDOUT",
              217: "USER", 218: "CAPABILITIES", 226: "NAMESPACE", 228: "SECCOMP"}


def exit_text(code: int, status: int) -> str:
    """How a main process ended, in systemd's words (``status=4/ILL``), with what a signal
    usually means; "" when it has not ended (code 0)."""
    import signal

    from labctl.host.proc import SIGNAL_MEANING

    if code == 1:
        name = EXIT_NAMES.get(status)
        return f"exited with status {status}" + (f" (status={status}/{name})" if name else "")
    if code in (2, 3):
        try:
            sig = signal.Signals(status)
        except ValueError:
            return f"killed by signal {status}"
        meaning = SIGNAL_MEANING.get(sig)
        dumped = ", core dumped" if code == 3 else ""
        return (f"killed by {sig.name} (status={status}/{sig.name.removeprefix('SIG')}{dumped}"
                + (f": {meaning}" if meaning else "") + ")")
    return ""


def parse_show(output: str, units: Sequence[str]) -> dict[str, UnitFacts]:
    """``systemctl show`` prints one block per unit, in argument order, separated by blank
    lines. The Id property names the block when present (it is absent for unknown units
    on some versions), otherwise the position does."""
    blocks: list[dict[str, str]] = [{}]
    for line in output.splitlines():
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
            continue
        key, _, value = line.partition("=")
        blocks[-1][key] = value
    blocks = [b for b in blocks if b]
    facts: dict[str, UnitFacts] = {}
    for unit, props in zip(units, blocks):
        facts[unit] = UnitFacts.parse(unit, props)
    for unit in units:
        facts.setdefault(unit, UnitFacts.parse(unit, {}))
    return facts


def show_units(units: Sequence[str], *, user: bool, env: dict[str, str] | None = None) -> dict[str, UnitFacts]:
    """Facts about units of either manager, read only (``systemctl show`` needs no
    privilege): how labctl looks at a unit it does not run."""
    if not units:
        return {}
    res = run_cmd(show_argv(units, user=user), timeout=SHOW_TIMEOUT, env=env)
    return parse_show(res.stdout, units)


class UserManager:
    """``systemctl --user`` / ``journalctl --user`` for the current user. Every argv comes
    from labctl.unitcmd, which puts unit names where no option parser reads them."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        base = dict(os.environ if env is None else env)
        # Without XDG_RUNTIME_DIR systemctl --user fails with "No medium found".
        base.setdefault("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}")
        self.env = base

    def systemctl(self, verb: str, *units: str, check: bool = True, timeout: float = 90) -> CommandResult:
        return run_cmd(systemctl_argv(verb, *units), check=check, timeout=timeout, env=self.env)

    def reachable(self) -> tuple[bool, str]:
        try:
            res = self.systemctl("is-system-running", check=False, timeout=15)
        except CommandFailed as exc:
            return False, str(exc)
        state = res.stdout.strip()
        if state in ("running", "degraded", "starting", "initializing"):
            return True, f"user manager is {state}"
        why = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else state or "no answer"
        return False, f"user manager not reachable: {why}"

    def lingers(self, user: str) -> bool:
        """Whether logind starts ``user``'s manager at boot and keeps it with no session
        (``loginctl enable-linger``): its flag file."""
        return (Path("/var/lib/systemd/linger") / user).exists()

    def environment_names(self) -> set[str] | None:
        """The names in the user manager's environment (what a unit inherits), or None when
        the manager cannot say. Values are never kept: some are secrets."""
        try:
            res = self.systemctl("show-environment", check=False, timeout=15)
        except CommandFailed:
            return None
        if res.rc != 0:
            return None
        return {line.split("=", 1)[0] for line in res.stdout.splitlines() if "=" in line}

    def show(self, units: Sequence[str]) -> dict[str, UnitFacts]:
        return show_units(units, user=True, env=self.env)

    def daemon_reload(self) -> None:
        self.systemctl("daemon-reload")

    def enable(self, units: Sequence[str]) -> None:
        if units:
            self.systemctl("enable", *units)

    def disable(self, units: Sequence[str]) -> None:
        if units:
            self.systemctl("disable", *units, check=False)

    def start(self, unit: str) -> None:
        # A unit that hit its start limit refuses to start until its failure is reset.
        self.systemctl("reset-failed", unit, check=False)
        self.systemctl("start", unit)

    def restart(self, unit: str) -> None:
        self.systemctl("reset-failed", unit, check=False)
        self.systemctl("restart", unit)

    def stop(self, unit: str) -> None:
        self.systemctl("stop", unit, check=False)

    def journal(self, unit: str, lines: int = 10, manager_lines: int = 6) -> list[str]:
        """The service's own last lines (its SyslogIdentifier, which labctl's units set to the
        unit's name), then the manager's last lines about it (exit status, restarts). Taken
        together, systemd's stop and restart messages would push the service's error out."""
        ident = unit.removesuffix(".service")
        own = self._journal(unit, ident, lines)
        return own + self._journal(unit, "systemd", manager_lines)

    def _journal(self, unit: str, identifier: str, lines: int) -> list[str]:
        argv = journalctl_argv(unit, options=["-n", str(lines), "--no-pager", "-o", "cat"],
                               matches=[f"SYSLOG_IDENTIFIER={identifier}"])
        res = run_cmd(argv, check=False, timeout=30, env=self.env)
        out = [line for line in res.stdout.splitlines() if line.strip() and not line.startswith("-- ")]
        return out[-lines:]

    def journal_argv(self, unit: str, lines: int, follow: bool, *, user: bool = True) -> list[str]:
        """``user=False``: a system unit's journal (an external service's; reading it may
        need the adm or systemd-journal group, which journalctl itself says)."""
        options = ["-n", str(lines), "--no-pager", *(["--follow"] if follow else [])]
        return journalctl_argv(unit, user=user, options=options)
