"""Facts -> plan: what would change, and the systemctl actions that follow.

``make_plan`` is pure: it takes the rendered files, the installed files and (when known)
the units' states, and returns what to do. ``labctl plan`` prints it; ``labctl up``
executes it. "Nothing changed" is therefore a checked property: the plan is empty.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from labctl import fsio
from labctl.host.systemd import UnitState
from labctl.inventory.schema import Inventory, unit_name
from labctl.kinds import kind_of
from labctl.inventory.layout import UNIT_DIR, Layout
from labctl.render.units import dependencies


@dataclass(frozen=True)
class FileChange:
    path: str
    change: Literal["create", "update", "delete"]
    diff: str


@dataclass(frozen=True)
class Action:
    verb: Literal["daemon-reload", "enable", "start", "restart", "stop", "disable", "monitoring-up",
                  "monitoring-down"]
    unit: str | None
    reason: str

    def __str__(self) -> str:
        target = f" {self.unit}" if self.unit else ""
        return f"{self.verb}{target}  ({self.reason})"


@dataclass(frozen=True)
class Plan:
    files: list[FileChange] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.files and not self.actions

    def as_dict(self) -> dict[str, object]:
        return {"changes": not self.empty,
                "files": [asdict(f) for f in self.files],
                "actions": [asdict(a) for a in self.actions],
                "unchanged": list(self.unchanged)}


def read_installed(root: Path) -> dict[str, str]:
    return fsio.read_tree(root, Layout.managed_dirs, Layout.is_managed)


def with_drop_in_reload(inv: Inventory, root: Path, facts: dict) -> dict:  # type: ignore[type-arg]
    """Unit facts, marked as owing a daemon-reload when the operator's drop-ins on disk are
    not the ones the manager loaded (a drop-in written by hand, without the reload that
    `systemctl --user edit` does): it would otherwise take effect at some later reload."""
    on_disk = {unit: {str(root / rel) for rel in rels} for unit, rels in operator_drop_ins(inv, root).items()}
    ours = str(root / UNIT_DIR) + "/"
    out = {}
    for unit, f in facts.items():
        loaded = {p for p in f.drop_in_paths if p.startswith(ours)}
        stale = f.load_state == "loaded" and loaded != on_disk.get(unit, set())
        out[unit] = f.replace(need_daemon_reload=True) if stale and not f.need_daemon_reload else f
    return out


def operator_drop_ins(inv: Inventory, root: Path) -> dict[str, list[str]]:
    """Drop-ins beside labctl's units (``<unit>.d/*.conf``, e.g. from ``systemctl --user
    edit``): the operator's. labctl never writes, changes or deletes them; they override
    what it renders, so plan, up and status say they are there."""
    out: dict[str, list[str]] = {}
    for name in inv.managed():
        unit = unit_name(name)
        folder = root / UNIT_DIR / f"{unit}.d"
        try:
            confs = sorted(p.name for p in folder.iterdir() if p.name.endswith(".conf"))
        except OSError:
            continue
        if confs:
            out[unit] = [f"{UNIT_DIR}/{unit}.d/{c}" for c in confs]
    return out


def _diff(path: str, old: str | None, new: str | None) -> str:
    lines = difflib.unified_diff(
        (old or "").splitlines(keepends=True), (new or "").splitlines(keepends=True),
        fromfile=f"a/{path}" if old is not None else "/dev/null",
        tofile=f"b/{path}" if new is not None else "/dev/null",
    )
    return "".join(lines)


def start_order(inv: Inventory) -> list[str]:
    """The services labctl runs, in start order: backends first, then what depends on
    them. External services are never started, so never in it."""
    names = list(inv.managed())
    # An exporter after the Redis it reads (labctl waits for each to answer in turn).
    rank = {n: kind_of(s).start_rank for n, s in inv.managed().items()}
    return sorted(names, key=lambda n: (rank[n], n))


def make_plan(inv: Inventory, rendered: dict[str, str], installed: dict[str, str],
              states: dict[str, UnitState] | None = None) -> Plan:
    """``states`` is None when no user manager is consulted (``plan --root DIR``): the
    installed files are then taken to be what is running."""
    layout = Layout.of(inv)
    files: list[FileChange] = []
    unchanged: list[str] = []
    for path in sorted(set(rendered) | set(installed)):
        old, new = installed.get(path), rendered.get(path)
        if old == new:
            unchanged.append(path)
        elif new is None:
            files.append(FileChange(path, "delete", _diff(path, old, None)))
        else:
            files.append(FileChange(path, "create" if old is None else "update", _diff(path, old, new)))
    changed = {f.path: f.change for f in files}

    actions: list[Action] = []
    # Units that disappear: stopped and disabled while their file still exists.
    for path, change in changed.items():
        if change == "delete" and path.startswith(f"{UNIT_DIR}/"):
            unit = path.rsplit("/", 1)[-1]
            actions.append(Action("stop", unit, "no longer in the inventory"))
            actions.append(Action("disable", unit, "no longer in the inventory"))
    if any(p.startswith(f"{UNIT_DIR}/") for p in changed):
        actions.append(Action("daemon-reload", None, "unit files changed"))
    elif any(s.need_daemon_reload for s in (states or {}).values()):
        actions.append(Action("daemon-reload", None, "the manager has not loaded the unit files on disk"))

    restart: dict[str, str] = {}
    for name in start_order(inv):
        unit = unit_name(name)
        path = layout.unit(name)
        state = (states or {}).get(unit)
        change = changed.get(path)
        if change == "create" or (state is not None and not state.enabled):
            actions.append(Action("enable", unit, "new unit" if change == "create" else "unit is disabled"))
        if change == "create" or (state is not None and not state.active):
            actions.append(Action("start", unit, "new unit" if change == "create" else "unit is not running"))
            continue
        if change == "update":
            restart[unit] = "unit file changed"
        svc = inv.services[name]
        # Its kind's own files (the gateway's config and what it loads, Redis's config).
        for path in sorted(kind_of(svc).restart_files(inv, name, svc, layout)):  # type: ignore[arg-type]
            if path in changed:
                restart.setdefault(unit, f"{path.rsplit('/', 1)[1]} changed")
        # A restarted backend restarts what depends on it, so the gateway re-reads it.
        for dep in dependencies(inv, name, svc):  # type: ignore[arg-type]
            if dep in restart:
                restart.setdefault(unit, f"depends on {dep}, which restarts")
        if unit in restart:
            actions.append(Action("restart", unit, restart[unit]))
    monitoring_changed = [p for p in changed if p.startswith(layout.monitoring_dir + "/")]
    if monitoring_changed:
        verb = "monitoring-down" if inv.monitoring.enabled is False else "monitoring-up"
        actions.append(Action(verb, None, f"{len(monitoring_changed)} monitoring file(s) changed"))
    return Plan(files, actions, unchanged)
