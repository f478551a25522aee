"""What a command acts on: this host, or every host of a fleet through Ansible.

An inventory with ``hosts:`` is a fleet; ``labctl up``, ``down``, ``status`` and ``validate``
then act on its hosts (labctl.fleet.apply), the others on one host and refuse a fleet
(labctl.cli). :func:`of` makes that choice once, and each target refuses, in one line, an
option that means nothing for it: ``--host`` on one host's inventory; ``--purge``,
``--force``, ``--no-monitoring``, ``--wide``, ``--endpoints`` and ``--probe-timeout``, which
are one host's, on a fleet (run the command on that host, where ``up`` left its slice).
The command line only parses, calls a target and prints what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from labctl.errors import UsageError

if TYPE_CHECKING:
    from labctl.load import Loaded
    from labctl.ops.gpu_budget import Budget

Say = Callable[[str], None]


@dataclass
class Validation:
    """What ``validate`` found: the document ``--json`` prints, each host's GPU budget (one
    host: the key ""), and what is accepted but likely not meant."""

    document: dict[str, Any]
    budgets: dict[str, Budget | None]
    warnings: list[str] = field(default_factory=list)


def of(loaded: Loaded, hosts: list[str] | None = None) -> HostTarget | FleetTarget:
    """The target ``loaded`` describes; ``hosts`` (``--host``) only for a fleet."""
    if loaded.fleet is not None:
        return FleetTarget(loaded, hosts or None)
    if hosts:
        raise UsageError("--host is for a fleet inventory (hosts:); this one describes one host")
    return HostTarget(loaded)


def _refuse(command: str, given: dict[str, bool]) -> None:
    """A fleet's command given options that are one host's: one line naming them."""
    named = [option for option, set_ in given.items() if set_]
    if named:
        raise UsageError(f"{', '.join(named)} {'is' if len(named) == 1 else 'are'} for one host's `labctl {command}`: "
                         f"run it on that host, where `labctl up` left its slice (no -i needed)")


class HostTarget:
    """This host: its user manager, its files, its services."""

    fleet = False

    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded

    def validate(self, *, force: bool) -> Validation:
        from labctl.ops import gpu_budget

        inv = self.loaded.inventory
        budget = gpu_budget.compute(inv) if gpu_budget.applies(inv) else None
        if budget is not None:
            gpu_budget.enforce(self.loaded, budget, force=force)
        document = {"ok": True, "inventory": str(self.loaded.path),
                    "services": {n: s.kind for n, s in inv.enabled().items()},
                    "gpu_budget": budget.as_dict() if budget else None, "warnings": list(self.loaded.warnings)}
        return Validation(document, {"": budget}, list(self.loaded.warnings))

    def up(self, *, say: Say, wait_lock: bool, with_monitoring: bool, force: bool) -> Any:
        from labctl.ops import apply

        return apply.up(self.loaded, say=say, wait_lock=wait_lock, with_monitoring=with_monitoring, force=force)

    def down(self, *, say: Say, wait_lock: bool, purge: bool) -> Any:
        from labctl.ops import apply

        return apply.down(self.loaded, say=say, purge=purge, wait_lock=wait_lock)

    def status(self, *, say: Say, probe_timeout: float, endpoints: bool, wide: bool) -> Any:
        from labctl.ops.status import gather, status_inputs, save_snapshot, snapshot_fits

        plan = status_inputs(self.loaded.inventory)
        report = gather(self.loaded.inventory, probe_timeout=probe_timeout, endpoints=endpoints, plan=plan)
        if snapshot_fits(plan):
            save_snapshot(self.loaded.path, plan)  # the next `labctl status` of it skips the inventory (__main__)
        return report


class FleetTarget:
    """Every host of a fleet (or those ``--host`` names), through Ansible from this controller."""

    fleet = True

    def __init__(self, loaded: Loaded, hosts: list[str] | None) -> None:
        self.loaded, self.hosts = loaded, hosts

    def validate(self, *, force: bool) -> Validation:
        """Every host's view was checked by the loader; here each host's GPU budget, added up
        from what the inventory says of that host (the controller cannot ask its nvidia-smi)."""
        from labctl.ops import gpu_budget

        inv, plan = self.loaded.inventory, self.loaded.fleet
        assert plan is not None
        hosts: dict[str, Any] = {}
        budgets: dict[str, Budget | None] = {}
        for name, view in plan.views.items():
            budget = gpu_budget.compute(view, measure=False) if gpu_budget.applies(view) else None
            if budget is not None and not budget.fits and not force:
                loc = (gpu_budget.refusal_field(view, budget) if budget.fraction > 1.0
                       else ("hosts", name, "gpu_memory_gib") if inv.hosts[name].gpu_memory_gib is not None
                       else ("hosts", name))
                raise self.loaded.source.error(loc, f"{budget.summary()}; lower gpu_memory_utilization or "
                                                    "n_gpu_layers, or pass --force; nothing was changed")
            budgets[name] = budget
            hosts[name] = {"address": inv.hosts[name].address,
                           "services": {n: s.kind for n, s in view.enabled().items()},
                           "gpu_budget": budget.as_dict() if budget else None}
        warnings = plan.warnings + list(self.loaded.warnings)
        document = {"ok": True, "inventory": str(self.loaded.path), "hosts": hosts, "keyed": plan.keyed,
                    "warnings": warnings}
        return Validation(document, budgets, warnings)

    def up(self, *, say: Say, wait_lock: bool, with_monitoring: bool, force: bool) -> Any:
        from labctl.fleet import apply as fleet

        _refuse("up", {"--no-monitoring": not with_monitoring, "--force": force})
        return fleet.up(self.loaded, say=say, hosts=self.hosts, wait_lock=wait_lock)

    def down(self, *, say: Say, wait_lock: bool, purge: bool) -> Any:
        from labctl.fleet import apply as fleet

        _refuse("down", {"--purge": purge})
        return fleet.down(self.loaded, say=say, hosts=self.hosts, wait_lock=wait_lock)

    def status(self, *, say: Say, probe_timeout: float, endpoints: bool, wide: bool) -> Any:
        """Bounded by fleet.status_timeout_sec, not by a probe timeout of the command line's."""
        from labctl import cmdline
        from labctl.fleet import apply as fleet

        _refuse("status", {"--wide": wide, "--endpoints": endpoints,
                           "--probe-timeout": probe_timeout != cmdline.default(cmdline.STATUS, "probe_timeout")})
        return fleet.status(self.loaded, say=say, hosts=self.hosts)
