"""``up``, ``down`` and ``status`` across a fleet: prepare the run, let Ansible carry it, report.

``up``: the backends' keys are made sure of (generated once, 0600), every host's slice and
the Ansible inventory written, then the ``up`` playbook runs: hosts without a gateway first,
all at once, then the gateways' hosts. On each host labctl is installed (pinned to the
controller's version) and ``labctl up --json`` runs there, converging that host exactly as it
would alone: nothing restarts where nothing changed. A host that fails, or that Ansible cannot
reach, is reported by name; the others keep what they converged to.

``status``: every host's ``labctl status --json`` at once, each bounded by
``fleet.status_timeout_sec`` (and SSH by ``fleet.connect_timeout_sec``): a host that is down
is named in one row, never waited on past those bounds.

One ``up`` or ``down`` at a time per fleet (a lock in the fleet's state dir on the controller);
``status`` uses a run directory of its own and can run beside them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from labctl import fsio, progress
from labctl.fleet import keys
from labctl.fleet.ansible import (HostResult, RunDir, TaskEvent, controller_path, from_this_controller, prepare,
                                  run_playbook)
from labctl.handover import ANSIBLE, SSH, hand_over
from labctl.host.lock import host_lock
from labctl.load import Loaded

Say = Callable[[str], None]


@dataclass
class FleetReport:
    action: str
    hosts: dict[str, HostResult]
    seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status == "ok" for r in self.hosts.values())

    def failed(self) -> list[HostResult]:
        return [r for r in self.hosts.values() if r.status != "ok"]

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "action": self.action, "seconds": round(self.seconds, 2), "warnings": self.warnings,
                "hosts": {name: r.as_dict() for name, r in self.hosts.items()}}


def _state_dir(loaded: Loaded) -> Path:
    inv = loaded.inventory
    assert inv.fleet is not None
    with from_this_controller():
        path = Path(hand_over(controller_path(inv.fleet.state_dir), ANSIBLE, SSH))
    fsio.ensure_dir(path, 0o700)
    return path


#: A task still running this long on a host gets a line saying so (Ansible announces a task
#: before it knows whether its condition skips it: one that ends sooner is said by its end).
RUNNING_LINE_SEC = 2.0


def host_lines(say: Say, started: float) -> Callable[[TaskEvent | None], None]:
    """Per-host progress lines from the run's task events, each with the run's elapsed time:
    a task still running after RUNNING_LINE_SEC, a task that changed something, labctl's
    own command done, a task that failed or found its host unreachable; nothing for a task
    that found nothing to do."""
    running: dict[tuple[str, str], float] = {}

    def on_event(e: TaskEvent | None) -> None:
        now, elapsed = time.monotonic(), f"({progress.elapsed(started)})"
        if e is None:
            for (host, task), since in list(running.items()):
                if now - since >= RUNNING_LINE_SEC:
                    del running[(host, task)]
                    say(f"{host}: {task} ... {elapsed}")
            return
        if e.event == "start":
            running[(e.host, e.task)] = now
            return
        running.pop((e.host, e.task), None)
        if e.event in ("failed", "unreachable"):
            say(f"{e.host}: {e.task}: {e.event} {elapsed}")
        elif e.event == "ok" and (e.changed or e.task.startswith("labctl ")):
            say(f"{e.host}: {e.task}: {'done' if e.task.startswith('labctl ') else 'changed'} {elapsed}")
    return on_event


def _run(loaded: Loaded, action: str, playbook: str, *, hosts: list[str] | None, timeout: float,
         key_files: dict[str, Path], say: Say, lines: bool = True) -> FleetReport:
    inv, plan = loaded.inventory, loaded.fleet
    assert plan is not None
    state_dir = _state_dir(loaded)
    unknown = [h for h in hosts or [] if h not in inv.hosts]
    if unknown:
        from labctl.errors import UsageError

        raise UsageError(f"no host named {', '.join(unknown)} in {loaded.path} (hosts: {', '.join(inv.hosts)})")
    run: RunDir = prepare(inv, plan, state_dir, key_files, hosts, name=f"run-{action}")
    started = time.monotonic()
    if lines:
        say(f"{action} on {', '.join(run.hosts)} through Ansible")
    with progress.step(f"{action} on {len(run.hosts)} host(s) through Ansible"):
        results = run_playbook(run, playbook, timeout=timeout, echo=progress.echo(),
                               on_event=host_lines(say, started) if lines else None)
    return FleetReport(action, results, time.monotonic() - started, list(plan.warnings))


def up(loaded: Loaded, *, say: Say, hosts: list[str] | None = None, wait_lock: bool = True) -> FleetReport:
    inv, plan = loaded.inventory, loaded.fleet
    assert inv.fleet is not None and plan is not None
    for warning in plan.warnings:
        say(f"warning: {warning}")
    state_dir = _state_dir(loaded)
    with host_lock(state_dir / "fleet.lock", wait=wait_lock, on_wait=say):
        key_files = keys.ensure_keys(state_dir, plan.keyed)
        # Each phase may take a host's whole up; Ansible's own timeouts bound each task.
        timeout = inv.fleet.up_timeout_sec * len(plan.order()) + 300
        return _run(loaded, "up", "up.yml", hosts=hosts, timeout=timeout, key_files=key_files, say=say)


def down(loaded: Loaded, *, say: Say, hosts: list[str] | None = None, wait_lock: bool = True) -> FleetReport:
    inv, plan = loaded.inventory, loaded.fleet
    assert inv.fleet is not None and plan is not None
    state_dir = _state_dir(loaded)
    with host_lock(state_dir / "fleet.lock", wait=wait_lock, on_wait=say):
        timeout = inv.fleet.up_timeout_sec * len(plan.order()) + 300
        return _run(loaded, "down", "down.yml", hosts=hosts, timeout=timeout,
                    key_files={b: keys.key_file(state_dir, b) for b in plan.keyed}, say=say)


def status(loaded: Loaded, *, say: Say, hosts: list[str] | None = None) -> FleetReport:
    inv, plan = loaded.inventory, loaded.fleet
    assert inv.fleet is not None and plan is not None
    state_dir = _state_dir(loaded)
    # SSH's connect timeout, the status itself, and Ansible's own start and module transfer.
    timeout = inv.fleet.connect_timeout_sec + inv.fleet.status_timeout_sec + 60
    return _run(loaded, "status", "status.yml", hosts=hosts, timeout=timeout,
                key_files={b: keys.key_file(state_dir, b) for b in plan.keyed}, say=say, lines=False)
