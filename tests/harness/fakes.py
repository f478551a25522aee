"""The two fakes an operation's orchestration runs against host-free: a user manager and a prober.

An operation (labctl.ops.apply's up, restart, rollback; labctl.ops.switch's switch) reads
and changes units only through its manager (labctl.host.systemd.UserManager) and hears
from the services only through its prober (labctl.ops.apply.Prober). Everything else it
does for real: it writes the files under a temporary home, takes its lock, runs its
pre-flight. These two stand in for systemd and for the servers:

- :class:`FakeManager` holds each unit's state, reads the unit files where labctl writes
  them (so ``NeedDaemonReload`` and a start before the daemon-reload behave as systemd's
  do), and moves a unit as a start, restart or stop would. A test sets the facts first
  (:meth:`FakeManager.given`) and scripts what a start does (:meth:`FakeManager.script`).
- :class:`FakeProber` answers readiness waits from a script per service: ``ready``,
  ``loading`` (one probe that is not ready yet), ``dies`` (the process crashes: the unit
  restarts, as ``Restart=on-failure`` makes it), ``fails`` (the unit fails). A script that
  ends without ``ready`` is a service that never becomes ready within its deadline.

Both write to one :class:`Timeline`: what the manager was told to do and what the prober
was asked, in order, the orchestration's observable behaviour. Reads (``show``) are left
out of it; :attr:`FakeManager.calls` keeps every call, reads included.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from labctl.host.proc import CommandFailed
from labctl.host.systemd import UnitFacts
from labctl.inventory.schema import Inventory, unit_name
from labctl.kinds import kind_of
from labctl.ops.probes import ProbeResult, Readiness

UNIT_DIR = "systemd/user"


@dataclass
class Timeline:
    """The ordered story both fakes tell. ``context``, when set, is called at each event and
    its answer appended (``start labctl-a.service [gate a]``): what else held at that moment."""

    events: list[str] = field(default_factory=list)
    context: Callable[[], str] | None = None

    def add(self, event: str) -> None:
        extra = self.context() if self.context else ""
        self.events.append(f"{event} [{extra}]" if extra else event)

    def take(self) -> list[str]:
        """The events so far, and a fresh start."""
        out, self.events = self.events, []
        return out


@dataclass
class Unit:
    """One unit as the fake manager holds it (the properties ``systemctl show`` gives)."""

    load_state: str = "not-found"
    active_state: str = "inactive"
    sub_state: str = "dead"
    unit_file_state: str = ""
    n_restarts: int = 0
    main_pid: int = 0
    invocation: int = 0
    result: str = ""
    exec_main_code: int = 0
    exec_main_status: int = 0
    loaded_text: str | None = None  # the unit file as the manager last loaded it


@dataclass
class StartScript:
    """What a start or restart of one unit does: ``fail`` makes the start job fail (the
    process exits at once, ``code``/``status`` as systemd records it)."""

    fail: bool = False
    code: int = 1
    status: int = 1


class FakeManager:
    """A user manager (the interface of labctl.host.systemd.UserManager) over an in-memory
    set of units and the real unit files under ``config_root``."""

    def __init__(self, config_root: Path, runtime_dir: Path, timeline: Timeline) -> None:
        self.unit_dir = Path(config_root) / UNIT_DIR
        self.env = {"XDG_RUNTIME_DIR": str(runtime_dir)}
        self.timeline = timeline
        self.units: dict[str, Unit] = {}
        self.calls: list[tuple[str, ...]] = []    # every call, reads included
        self.changes: list[tuple[str, ...]] = []  # the calls that change something
        self.journals: dict[str, list[str]] = {}
        self.starts: dict[str, list[StartScript]] = {}
        self.stop_results: dict[str, tuple[str, int, int]] = {}  # unit: (Result, ExecMainCode, ExecMainStatus)
        self._pid = 1000

    # --- the facts a test sets ----------------------------------------------------------

    def given(self, unit: str, *, active: bool = True, enabled: bool = True, loaded: bool = True) -> None:
        """A unit whose file is on disk: loaded as it is now (``loaded=False``: an older text
        was loaded, a daemon-reload is owed), running or not, enabled or not."""
        u = self.units.setdefault(unit, Unit())
        text = self._file(unit)
        u.load_state = "loaded"
        u.loaded_text = text if loaded else (text or "") + "# the text before\n"
        u.unit_file_state = "enabled" if enabled else "disabled"
        if active:
            self._run(unit)
        else:
            u.active_state, u.sub_state, u.main_pid = "inactive", "dead", 0

    def script(self, unit: str, *starts: StartScript) -> None:
        """What the next starts or restarts of ``unit`` do, in turn; then they succeed."""
        self.starts.setdefault(unit, []).extend(starts)

    def crash(self, unit: str, *, code: int, status: int) -> None:
        """The main process ended (``code`` 1: exited with ``status``; 2: killed by signal
        ``status``) and Restart= waits to start it again."""
        u = self.units[unit]
        u.active_state, u.sub_state, u.main_pid = "activating", "auto-restart", 0
        u.result = "exit-code" if code == 1 else "signal"
        u.exec_main_code, u.exec_main_status = code, status
        u.n_restarts += 1

    def fail(self, unit: str, *, code: int, status: int) -> None:
        """The main process ended and the unit failed (no restart left)."""
        u = self.units[unit]
        u.active_state, u.sub_state, u.main_pid = "failed", "failed", 0
        u.result = "exit-code" if code == 1 else "signal"
        u.exec_main_code, u.exec_main_status = code, status

    def active(self) -> list[str]:
        return sorted(n for n, u in self.units.items() if u.active_state == "active")

    # --- the interface the operations use ---------------------------------------------------

    def reachable(self) -> tuple[bool, str]:
        self.calls.append(("reachable",))
        return True, "user manager is running (fake)"

    def lingers(self, user: str) -> bool:
        self.calls.append(("lingers", user))
        return True

    def environment_names(self) -> set[str] | None:
        self.calls.append(("environment_names",))
        return set()

    def show(self, units: Sequence[str]) -> dict[str, UnitFacts]:
        self.calls.append(("show", *units))
        return {unit: self._facts(unit) for unit in units}

    def daemon_reload(self) -> None:
        self._mutation("daemon-reload")
        names = set(self.units) | {p.name for p in self.unit_dir.glob("*.service")}
        for unit in names:
            u = self.units.setdefault(unit, Unit())
            u.loaded_text = self._file(unit)
            if u.loaded_text is not None:
                u.load_state = "loaded"
            elif u.active_state in ("inactive", "failed"):
                u.load_state = "not-found"  # systemd unloads a stopped unit whose file is gone

    def enable(self, units: Sequence[str]) -> None:
        if not units:
            self.calls.append(("enable",))  # UserManager runs no systemctl for none: no change
            return
        self._mutation("enable", *units)
        for unit in units:
            if self._file(unit) is None:
                raise CommandFailed(f"systemctl --user enable {unit}: Unit file {unit} does not exist.")
            self.units.setdefault(unit, Unit()).unit_file_state = "enabled"

    def disable(self, units: Sequence[str]) -> None:
        if not units:
            self.calls.append(("disable",))
            return
        self._mutation("disable", *units)
        for unit in units:
            # Without its file, systemctl disable fails (UserManager ignores that): the unit
            # stays enabled, its link in default.target.wants/ left behind.
            if unit in self.units and self._file(unit) is not None:
                self.units[unit].unit_file_state = "disabled"

    def start(self, unit: str) -> None:
        self._mutation("start", unit)
        self._begin(unit, "start")

    def restart(self, unit: str) -> None:
        self._mutation("restart", unit)
        self._begin(unit, "restart")

    def stop(self, unit: str) -> None:
        self._mutation("stop", unit)
        u = self.units.setdefault(unit, Unit())
        if u.active_state in ("active", "activating", "reloading"):
            u.result, u.exec_main_code, u.exec_main_status = self.stop_results.get(unit, ("success", 1, 0))
        u.active_state, u.sub_state, u.main_pid = "inactive", "dead", 0

    def journal(self, unit: str, lines: int = 10, manager_lines: int = 6) -> list[str]:
        self.calls.append(("journal", unit))
        return self.journals.get(unit, [])[-lines:]

    # --- inside ---------------------------------------------------------------------------

    def _mutation(self, *call: str) -> None:
        self.calls.append(call)
        self.changes.append(call)
        self.timeline.add(" ".join(call))

    def _file(self, unit: str) -> str | None:
        try:
            return (self.unit_dir / unit).read_text()
        except FileNotFoundError:
            return None

    def _begin(self, unit: str, verb: str) -> None:
        u = self.units.setdefault(unit, Unit())
        if u.load_state != "loaded":
            raise CommandFailed(f"systemctl --user {verb} {unit}: Unit {unit} not found.")
        queued = self.starts.get(unit)
        script = queued.pop(0) if queued else StartScript()
        if script.fail:
            self.fail(unit, code=script.code, status=script.status)
            raise CommandFailed(f"systemctl --user {verb} {unit}: Job for {unit} failed because the control "
                                "process exited with error code.")
        self._run(unit)

    def _run(self, unit: str) -> None:
        u = self.units[unit]
        self._pid += 1
        u.active_state, u.sub_state, u.main_pid = "active", "running", self._pid
        u.invocation += 1
        u.result, u.exec_main_code, u.exec_main_status = "success", 0, 0

    def _facts(self, unit: str) -> UnitFacts:
        u = self.units.get(unit, Unit())
        on_disk = self._file(unit)
        return UnitFacts(unit=unit, load_state=u.load_state, active_state=u.active_state, sub_state=u.sub_state,
                         unit_file_state=u.unit_file_state, n_restarts=u.n_restarts, main_pid=u.main_pid,
                         memory_bytes=None, active_enter_timestamp="", active_enter_monotonic_usec=0,
                         invocation_id=f"{u.invocation:032x}" if u.invocation else "", result=u.result,
                         exec_main_status=u.exec_main_status, exec_main_code=u.exec_main_code,
                         need_daemon_reload=u.load_state == "loaded" and on_disk != u.loaded_text)


LOADING = "loading"
READY = "ready"
DIES = "dies"      # killed by SIGILL, restarted by Restart=on-failure
FAILS = "fails"    # exited with status 1, and the unit failed


class FakeProber:
    """A prober (labctl.ops.apply.Prober) whose answers come from a script per service."""

    def __init__(self, manager: FakeManager, timeline: Timeline) -> None:
        self.manager = manager
        self.timeline = timeline
        self.runs: dict[str, list[list[str]]] = {}
        self.busy: dict[str, list[int]] = {}
        self.down: set[str] = set()  # services a probe finds not answering

    def script(self, name: str, *runs: Sequence[str]) -> None:
        """What the next readiness waits for ``name`` see, one run of steps each; after
        them, a wait sees ``ready`` at once."""
        self.runs.setdefault(name, []).extend(list(r) for r in runs)

    def in_flight_answers(self, name: str, *counts: int) -> None:
        """What the next in-flight reads of ``name`` say; then 0."""
        self.busy.setdefault(name, []).extend(counts)

    # --- the interface the operations use ---------------------------------------------------

    def wait_ready(self, inv: Inventory, name: str, *, deadline_sec: float,
                   alive: Callable[[], str | None]) -> Readiness:
        """labctl.ops.probes.wait_ready's contract, one scripted probe per poll: ready ends
        the wait; otherwise ``alive()`` (the operation's own check of the unit) may end it;
        a script that runs out is the deadline passing."""
        self.timeline.add(f"wait {name}{_loads(inv, name)}")
        queued = self.runs.get(name)
        steps = queued.pop(0) if queued else [READY]
        unit = unit_name(name)
        last = ProbeResult(name, False, "GET /health", None, 0.0, "not probed yet")
        for polls, step in enumerate(steps, start=1):
            if step == READY:
                return Readiness(name, True, float(polls), _answer(name, True), "ready")
            if step == DIES:
                self.manager.crash(unit, code=2, status=4)
                last = ProbeResult(name, False, "GET /health", None, 0.1, "connection refused")
            elif step == FAILS:
                self.manager.fail(unit, code=1, status=1)
                last = ProbeResult(name, False, "GET /health", None, 0.1, "connection refused")
            else:
                last = ProbeResult(name, False, "GET /health", 503, 1.0, "loading model")
            dead = alive()
            if dead:
                return Readiness(name, False, float(polls), last, dead)
        return Readiness(name, False, float(deadline_sec), last,
                         f"not ready within {deadline_sec:g}s (last probe: {last.check}: {last.detail})")

    def probe(self, inv: Inventory, name: str, *, timeout: float = 5.0, deep: bool = False) -> ProbeResult:
        self.timeline.add(f"probe {name}")
        return _answer(name, name not in self.down)

    def probe_all(self, inv: Inventory, names: list[str]) -> dict[str, ProbeResult]:
        self.timeline.add(f"probe {' '.join(names)}")
        return {n: _answer(n, n not in self.down) for n in names}

    def in_flight(self, inv: Inventory, svc: object) -> int | None:
        name = next(n for n, s in inv.services.items() if s is svc)
        self.timeline.add(f"in-flight {name}")
        queued = self.busy.get(name)
        return queued.pop(0) if queued else 0


def _answer(name: str, ok: bool) -> ProbeResult:
    return ProbeResult(name, ok, "GET /health", 200 if ok else None, 1.0, "ready" if ok else "connection refused")


def _loads(inv: Inventory, name: str) -> str:
    """`` on MODEL``: the file a llama service would load now (current.gguf resolved)."""
    model = kind_of(inv.services[name]).model_file(inv, inv.services[name])
    return f" on {os.path.basename(os.path.realpath(model))}" if model else ""

