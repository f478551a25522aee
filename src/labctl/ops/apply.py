"""Converge the host to the inventory: ``up``, ``down``, ``restart``, ``rollback``.

Order in ``up``: lock, pull the declared models (and link the default model when
current.gguf does not exist), pre-flight (doctor; refuse before changing anything), provision
runtimes, secrets, render, plan against the installed files and the manager's unit
states, snapshot the installed generation, write files atomically, daemon-reload, enable,
start/restart in dependency order, each followed by a readiness wait, then monitoring.

Interrupted at any point (SIGKILL included), every file is old or new, never torn, and
the next ``up`` recomputes the plan from what is there and converges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from labctl import fsio, progress
from labctl.errors import HostNotReady, MultiLineFailure, OperationFailed, UsageError
from labctl.host import generations, secrets
from labctl.host.lock import host_lock
from labctl.host.proc import CommandFailed
from labctl.host.provision import provision
from labctl.host.systemd import UnitFacts, UserManager
from labctl.load import Loaded, load_inventory
from labctl.inventory.schema import Inventory, unit_name
from labctl.kinds import kind_of
from labctl.kinds.base import Listener
from labctl.ops import gpu_budget
from labctl.ops.doctor import failures, run_doctor
from labctl.ops.plan import (
    Plan,
    UnitState,
    make_plan,
    operator_drop_ins,
    read_installed,
    start_order,
    with_drop_in_reload,
)
from labctl.ops.probes import ProbeResult, Readiness, probe, probe_all, wait_ready
from labctl.render import render_all
from labctl.inventory.layout import UNIT_DIR, Layout
from labctl.render.units import writable_paths

Say = Callable[[str], None]
APPLIED_INVENTORY = "applied-inventory.yaml"


@dataclass
class Report:
    changed: bool = False
    files: list[dict[str, str]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    ready: dict[str, dict[str, object]] = field(default_factory=dict)
    monitoring: str = ""
    generation: int | None = None

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class Prober:
    """What an operation asks the services themselves: one probe (labctl.ops.probes), a
    readiness wait, a backend's count of requests in flight (its kind). The manager is how
    an operation reads and changes units, this is how it hears from what runs in them: an
    operation takes both (:class:`HostContext`), so its orchestration (what starts, restarts and
    stops, in which order, what a failure stops) runs host-free against a fake of each
    (tests/harness/fakes.py)."""

    def probe(self, inv: Inventory, name: str, *, timeout: float = 5.0, deep: bool = False) -> ProbeResult:
        return probe(inv, name, timeout=timeout, deep=deep)

    def probe_all(self, inv: Inventory, names: list[str]) -> dict[str, ProbeResult]:
        return probe_all(inv, names)

    def wait_ready(self, inv: Inventory, name: str, *, deadline_sec: float,
                   alive: Callable[[], str | None]) -> Readiness:
        return wait_ready(inv, name, deadline_sec=deadline_sec, alive=alive)

    def in_flight(self, inv: Inventory, svc: Listener) -> int | None:
        return kind_of(svc).in_flight(inv, svc, secrets.auth_headers(inv, svc))


@dataclass(frozen=True)
class HostContext:
    """What an operation acts on: the inventory, where its files live, the manager, and
    the prober that hears from the services."""

    inv: Inventory
    layout: Layout
    manager: UserManager
    prober: Prober = field(default_factory=Prober)

    @classmethod
    def of(cls, inv: Inventory, manager: UserManager | None = None, prober: Prober | None = None) -> "HostContext":
        return cls(inv, Layout.of(inv), manager or UserManager(), prober or Prober())

    @property
    def config_root(self) -> Path:
        return Path(self.layout.config_root)

    @property
    def state_dir(self) -> Path:
        return Path(self.layout.state_dir)

    def lock(self, wait: bool, say: Say):  # type: ignore[no-untyped-def]
        return host_lock(self.state_dir / "labctl.lock", wait=wait, on_wait=say)

    def installed_units(self, installed: dict[str, str]) -> list[str]:
        return [p.rsplit("/", 1)[-1] for p in installed if p.startswith(f"{UNIT_DIR}/")]

    def unit_states(self, installed: dict[str, str]) -> dict[str, UnitState]:
        """What the manager says about every unit a plan can touch: the inventory's, and
        the installed ones it may have to remove."""
        units = sorted({unit_name(n) for n in self.inv.managed()} | set(self.installed_units(installed)))
        facts = self.manager.show(units)
        return {u: f.state for u, f in with_drop_in_reload(self.inv, self.config_root, facts).items()}


def ensure_secrets(inv: Inventory, say: Say) -> None:
    """Every secret a service's kind keeps: generated (0600) when missing and labctl makes it,
    and the files derived from them (a server's own key variable, Redis's requirepass)
    written again whenever a value changed. No value is ever printed."""
    for name, svc in inv.managed().items():
        kind = kind_of(svc)
        for secret in kind.secrets(inv, name, svc):
            ref = secret.ref
            if ref.env_file and secret.generate:
                path = Path(inv.host.expand(ref.env_file))
                if secrets.ensure_env_secret(path, ref.variable, prefix=secret.prefix):
                    say(f"{name}: generated {ref.variable} in {path} (mode 0600; the value is never printed)")
        for derived in kind.derived(inv, name, svc):
            env_file = Path(inv.host.expand(derived.ref.env_file or ""))
            text = derived.text(secrets.read_secret(env_file, derived.ref.variable))  # type: ignore[operator]
            path = Path(derived.path)
            if not path.exists() or path.read_text() != text:
                fsio.ensure_dir(path.parent, 0o700)
                fsio.atomic_write(path, text, mode=0o600)
    if inv.monitoring.enabled:
        path = Path(inv.host.expand(inv.monitoring.grafana.admin_password_file))
        if secrets.ensure_file_secret(path):
            say(f"monitoring: generated the Grafana admin password in {path} (mode 0600)")


def _alive(host: HostContext, unit: str, baseline_restarts: int) -> Callable[[], str | None]:
    """Why the unit cannot come up, or None. How its process ended is added by the caller,
    from facts read while it waits to restart (a new process may be running here already,
    and systemd's ExecMain* would then describe that one)."""
    def check() -> str | None:
        facts = host.manager.show([unit])[unit]
        if facts.active_state == "failed":
            why = "hit its start limit" if facts.result == "start-limit-hit" else f"failed ({facts.result})"
            return f"{unit} {why}"
        if facts.n_restarts > baseline_restarts:
            return f"{unit} keeps exiting (restarted {facts.n_restarts - baseline_restarts} time(s))"
        if facts.active_state == "inactive":
            return f"{unit} is not running ({facts.result or 'stopped'})"
        return None
    return check


def _ended(facts: UnitFacts | None) -> str:
    """``; its main process killed by SIGILL (status=4/ILL...)``, or "" when not known."""
    return f"; its main process {facts.last_exit}" if facts is not None and facts.last_exit else ""


def bring_up(host: HostContext, name: str, verb: str, say: Say) -> Readiness:
    """Start or restart one service and wait for its readiness. A unit that fails or
    loops is stopped (so it does not keep restarting) and reported with its journal."""
    unit = unit_name(name)
    svc = host.inv.services[name]
    baseline = host.manager.show([unit])[unit].n_restarts
    try:
        (host.manager.start if verb == "start" else host.manager.restart)(unit)
    except CommandFailed:
        # A process that exits at once can fail the start job itself (before Type=exec
        # reports it started); Restart= then keeps trying in the background: stop that too.
        facts = host.manager.show([unit])[unit]
        ended = _stop_between_restarts(host, unit) or facts
        raise _unit_failure(host, unit, f"systemctl {verb} failed ({facts.result or 'no result'}){_ended(ended)}; "
                                        "stopped it so it does not restart in a loop") from None
    say(f"{verb}ed {unit}; waiting up to {svc.ready_timeout_sec}s for readiness")
    with progress.step(f"{name}: waiting for readiness"):
        result = host.prober.wait_ready(host.inv, name, deadline_sec=svc.ready_timeout_sec,
                                        alive=_alive(host, unit, baseline))
    if not result.ready:
        facts = host.manager.show([unit])[unit]
        if facts.active_state == "failed" or facts.n_restarts > baseline:
            ended = _stop_between_restarts(host, unit)
            raise _unit_failure(host, unit, f"{result.reason}{_ended(ended)}; stopped it so it does not restart "
                                            "in a loop")
        raise _unit_failure(host, unit, result.reason)
    say(f"{name}: ready in {result.seconds}s ({result.last.check}: {result.last.detail})")
    return result


def _stop_between_restarts(host: HostContext, unit: str, within: float = 10.0) -> UnitFacts | None:
    """Stop a looping unit while it waits to restart, not while a try is running: stopping
    a running process is a clean stop (Result=success), and status would then say the
    loop succeeded. A unit that never pauses is stopped when ``within`` runs out. Returns
    the facts read between two tries (they say how the last process ended), or None."""
    import time

    deadline = time.monotonic() + within
    between = None
    while time.monotonic() < deadline:
        facts = host.manager.show([unit])[unit]
        if facts.sub_state == "auto-restart" or facts.active_state in ("failed", "inactive"):
            between = facts
            break
        time.sleep(0.1)
    host.manager.stop(unit)
    return between


def _unit_failure(host: HostContext, unit: str, reason: str) -> OperationFailed:
    journal = host.manager.journal(unit, lines=10)
    lines = [f"{unit} did not become ready: {reason}"]
    lines += [f"  | {line}" for line in journal] or ["  | (no journal lines)"]
    lines.append(f"  see: labctl logs {unit.removeprefix('labctl-').removesuffix('.service')}")
    return MultiLineFailure(lines)


def execute(host: HostContext, plan: Plan, rendered: dict[str, str], say: Say, report: Report) -> None:
    """Carry out a plan: the one code path shared by up and rollback."""
    for action in plan.actions:
        if action.verb == "stop" and action.unit:
            host.manager.stop(action.unit)
        elif action.verb == "disable" and action.unit:
            host.manager.disable([action.unit])
    for name, svc in host.inv.managed().items():
        # A hardened unit can write only these, and systemd refuses to start it when one is missing.
        for path in writable_paths(host.inv, name, svc, host.layout):
            fsio.ensure_dir(Path(path))
    for change in plan.files:
        target = host.config_root / change.path
        if change.change == "delete":
            target.unlink(missing_ok=True)
        else:
            fsio.atomic_write(target, rendered[change.path])
        report.files.append({"path": change.path, "change": change.change})
    if any(a.verb == "daemon-reload" for a in plan.actions):
        host.manager.daemon_reload()
        report.actions.append("daemon-reload")
    enable = [a.unit for a in plan.actions if a.verb == "enable" and a.unit]
    host.manager.enable(enable)
    report.actions += [f"enable {u}" for u in enable]
    by_unit = {unit_name(n): n for n in host.inv.services}
    for action in plan.actions:
        if action.verb in ("start", "restart") and action.unit in by_unit:
            result = bring_up(host, by_unit[action.unit], action.verb, say)
            report.actions.append(f"{action.verb} {action.unit}")
            report.restarted.append(action.unit)
            report.ready[by_unit[action.unit]] = {"ready": True, "seconds": result.seconds}
    if any(a.verb == "monitoring-up" for a in plan.actions):
        report.monitoring = monitoring_up(host, say)


def check_gateway_settings(loaded: Loaded, layout: Layout, say: Say) -> None:
    """The gateway's pass-through settings and endpoint providers, judged by the lists of the
    LiteLLM installed in its venv when that is another version than the one labctl pins (the
    load checks judged them by the pinned one's). A key that LiteLLM would ignore is refused
    with one line at its field; nothing is changed."""
    from labctl.errors import InvalidInventory
    from labctl.kinds.litellm import checks as litellm_checks
    from labctl.kinds.litellm import setting_keys
    from labctl.ops import litellm_validate

    for name, gw in loaded.inventory.gateways().items():
        python = gw.runtime.interpreter(loaded.inventory.host)
        try:
            keys = litellm_validate.installed_keys(python, Path(layout.state_dir) / "litellm-keys.json")
        except CommandFailed as exc:
            say(f"{name}: could not ask the installed LiteLLM which settings it reads ({exc}); judged by "
                "the pinned version's lists")
            continue
        if keys is None or keys == setting_keys.shipped():
            continue
        say(f"{name}: LiteLLM {keys.version} is installed; its settings are judged by its own lists")
        problems = [loaded.source.error(loc, message) for loc, message in
                    litellm_checks.settings(loaded.inventory, name, gw, keys)]
        if problems:
            raise InvalidInventory(problems)


def validate_gateway_config(loaded: Loaded, layout: Layout, plan: Plan, rendered: dict[str, str], say: Say) -> None:
    """A changed gateway config is shown to the gateway's own LiteLLM before it is installed
    (``--validate_config``); a refusal stops ``up`` with nothing changed."""
    from labctl.ops import litellm_validate

    path = layout.litellm_config
    if not any(f.path == path and f.change != "delete" for f in plan.files):
        return
    for name, gw in loaded.inventory.gateways().items():
        verdict = litellm_validate.validate(loaded.inventory, name, gw, rendered[path])
        if verdict.refused:
            loc = ("services", name) + litellm_validate.field_of(gw, verdict.detail)
            raise loaded.source.error(loc, f"the gateway's LiteLLM refuses the rendered config: {verdict.detail}; "
                                           "nothing was changed")
        if verdict.status == "ok":
            say(f"{name}: LiteLLM accepts the new config ({verdict.detail.removeprefix('LiteLLM: ')})")
        else:
            say(f"{name}: LiteLLM's own config check was not run: {verdict.detail}")


def check_externals(host: HostContext, say: Say, report: Report) -> None:
    """Probe each external service once (deep, within its ready_timeout_sec): labctl never
    starts them, so one that does not answer is reported, not waited for or failed on; its
    routes fall back meanwhile."""
    inv = host.inv
    for name, ext in inv.externals().items():
        result = host.prober.probe(inv, name, timeout=float(ext.ready_timeout_sec), deep=True)
        report.ready[name] = {"ready": result.ok, "external": True, "detail": result.detail}
        if result.ok:
            say(f"{name}: external, answering ({result.check}: {result.detail})")
        else:
            say(f"warning: {name} (external, not run by labctl) does not answer: {result.detail}; "
                f"to start it: {kind_of(ext).start_hint(name, ext)}; its routes fall back meanwhile")


def monitoring_up(host: HostContext, say: Say) -> str:
    from labctl.ops import monitoring

    engine = monitoring.engine_status()
    if not engine.reachable:
        message = f"monitoring skipped: {engine.detail}"
        say(message)
        return message
    result = monitoring.up(host.inv, host.layout, host.config_root)
    say(f"monitoring: {result.summary}")
    return result.summary


@dataclass(frozen=True)
class Preview:
    """What ``up`` would change and do (``labctl plan``): the plan against ``root``, the
    operator's drop-ins there, and the GPU budget. ``files_only``: no unit states were read
    (``--root``, or no user manager here)."""

    root: Path
    plan: Plan
    drop_ins: dict[str, list[str]]
    budget: gpu_budget.Budget | None
    files_only: bool

    def as_dict(self) -> dict[str, object]:
        return {"root": str(self.root), **self.plan.as_dict(), "drop_ins": self.drop_ins,
                "gpu_budget": self.budget.as_dict() if self.budget else None}


def preview(inv: Inventory, root: Path | None = None, manager: UserManager | None = None) -> Preview:
    """``up``'s plan, changing nothing: against ``root`` (files only), or against this host's
    config root and its user manager's unit states (files only when there is none)."""
    host = HostContext.of(inv, manager)
    target = root if root is not None else host.config_root
    installed = read_installed(target)
    states = host.unit_states(installed) if root is None and host.manager.reachable()[0] else None
    plan = make_plan(inv, render_all(inv), installed, states=states)
    budget = gpu_budget.compute(inv) if gpu_budget.applies(inv) else None
    return Preview(target, plan, operator_drop_ins(inv, target), budget, states is None)


def up(loaded: Loaded, *, say: Say, manager: UserManager | None = None, prober: Prober | None = None,
       wait_lock: bool = True, with_monitoring: bool = True, force: bool = False) -> Report:
    inv = loaded.inventory
    host = HostContext.of(inv, manager, prober)
    report = Report()
    with host.lock(wait_lock, say):
        if inv.models:  # the declared models first: pre-flight then checks the files for real
            from labctl.ops.model_pull import pull

            pull(inv, say=say)
        problems = failures(run_doctor(loaded, manager=host.manager, docker=with_monitoring))
        if problems:
            raise HostNotReady("pre-flight failed; nothing was changed:\n" + "\n".join(f"  {c}" for c in problems))
        if gpu_budget.applies(inv):
            budget = gpu_budget.compute(inv)
            gpu_budget.enforce(loaded, budget, force=force)
            say(budget.summary() + (" (--force)" if not budget.fits else ""))
        provision(inv, say=say)
        check_gateway_settings(loaded, host.layout, say)
        ensure_secrets(inv, say)
        rendered = render_all(inv)
        if not with_monitoring:
            rendered = {p: c for p, c in rendered.items() if not p.startswith(host.layout.monitoring_dir + "/")}
        installed = read_installed(host.config_root)
        plan = make_plan(inv, rendered, installed, host.unit_states(installed))
        validate_gateway_config(loaded, host.layout, plan, rendered, say)
        for unit, files in operator_drop_ins(inv, host.config_root).items():
            say(f"{unit}: keeping operator drop-ins {', '.join(f.rsplit('/', 1)[-1] for f in files)} "
                "(they override labctl's unit)")
        if plan.empty:
            say("no changes: nothing to install, nothing restarted")
            for name, result in host.prober.probe_all(inv, list(inv.managed())).items():
                report.ready[name] = {"ready": result.ok, "detail": result.detail}
            check_externals(host, say, report)
            return report
        applied = host.state_dir / APPLIED_INVENTORY
        gen = generations.snapshot(host.state_dir, installed,
                                   applied.read_text() if applied.exists() else None, "before up")
        report.generation = gen.number
        report.changed = True
        execute(host, plan, rendered, say, report)
        check_externals(host, say, report)
        # The applied inventory can hold values an operator considers private: owner only.
        fsio.atomic_write(applied, loaded.path.read_text(), mode=0o600)
    return report


def restart(loaded: Loaded, services: list[str], *, say: Say, manager: UserManager | None = None,
            prober: Prober | None = None, wait_lock: bool = True) -> Report:
    inv = loaded.inventory
    host = HostContext.of(inv, manager, prober)
    unknown = [s for s in services if s not in inv.enabled()]
    if unknown:
        raise UsageError(f"no enabled service named {', '.join(unknown)} in {loaded.path}")
    external = [s for s in services if s in inv.externals()]
    if external:
        raise UsageError(f"{', '.join(external)}: external (kind: external); labctl never restarts a service "
                         "it does not run")
    report = Report(changed=True)
    with host.lock(wait_lock, say):
        for name in [n for n in start_order(inv) if not services or n in services]:
            result = bring_up(host, name, "restart", say)
            report.restarted.append(unit_name(name))
            report.ready[name] = {"ready": True, "seconds": result.seconds}
    return report


def down(loaded: Loaded, *, say: Say, purge: bool = False, manager: UserManager | None = None,
         wait_lock: bool = True) -> Report:
    inv = loaded.inventory
    host = HostContext.of(inv, manager)
    report = Report(changed=True)
    with host.lock(wait_lock, say):
        installed = read_installed(host.config_root)
        order = [unit_name(n) for n in reversed(start_order(inv))]
        units = order + [u for u in host.installed_units(installed) if u not in order]
        present = [u for u in units if f"{UNIT_DIR}/{u}" in installed]
        for unit in present:
            host.manager.stop(unit)
            report.actions.append(f"stop {unit}")
        host.manager.disable(present)
        report.actions += [f"disable {u}" for u in present]
        compose = host.config_root / host.layout.compose_file
        if compose.exists():
            from labctl.ops import monitoring

            if monitoring.engine_status().reachable:
                monitoring.down(inv, host.layout, host.config_root)
                report.monitoring = "stopped"
        if purge and installed:
            applied = host.state_dir / APPLIED_INVENTORY
            gen = generations.snapshot(host.state_dir, installed,
                                       applied.read_text() if applied.exists() else None, "before down --purge")
            report.generation = gen.number
            for rel in installed:
                (host.config_root / rel).unlink(missing_ok=True)
                report.files.append({"path": rel, "change": "delete"})
            host.manager.daemon_reload()
            applied.unlink(missing_ok=True)
            say(f"removed {len(installed)} file(s); generation {gen.number} keeps them (labctl rollback)")
    return report


def rollback(loaded: Loaded, *, say: Say, manager: UserManager | None = None, prober: Prober | None = None,
             wait_lock: bool = True) -> Report:
    """Restore the newest saved generation: the files installed before the last change."""
    host = HostContext.of(loaded.inventory, manager, prober)
    report = Report(changed=True)
    with host.lock(wait_lock, say):
        gens = generations.list_generations(host.state_dir)
        if not gens:
            raise OperationFailed(f"no saved generation in {host.state_dir / 'generations'}; nothing to roll back to")
        target = gens[-1]
        if target.inventory_text is None:
            raise OperationFailed(f"generation {target.number} was saved before any labctl up; "
                                  "use labctl down --purge to remove the stack instead")
        previous = load_inventory(target.path / "inventory.yaml")
        inv = previous.inventory
        host = HostContext.of(inv, host.manager, host.prober)
        installed = read_installed(host.config_root)
        desired = target.files()
        plan = make_plan(inv, desired, installed, host.unit_states(installed))
        applied = host.state_dir / APPLIED_INVENTORY
        gen = generations.snapshot(host.state_dir, installed,
                                   applied.read_text() if applied.exists() else None, "before rollback")
        report.generation = gen.number
        say(f"rolling back to generation {target.number} ({target.reason}); current state saved as {gen.number}")
        execute(host, plan, desired, say, report)
        fsio.atomic_write(applied, target.inventory_text, mode=0o600)
    return report
