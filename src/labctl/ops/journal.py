"""A service's journal: which unit's, in which manager (``labctl logs``, ``labctl top``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from labctl.errors import UsageError

if TYPE_CHECKING:
    from labctl.host.systemd import UserManager
    from labctl.inventory.schema import Inventory


def journal_argv(inv: Inventory, service: str, manager: UserManager, lines: int, follow: bool) -> list[str]:
    """``journalctl``'s argv for ``service``: its labctl unit's journal (the user manager's),
    or, for a service labctl does not run, that of the unit the inventory names for it (the
    user's or the system's); a UsageError when it names none."""
    from labctl.inventory.schema import unit_name
    from labctl.kinds import kind_of

    svc = inv.services[service]
    kind = kind_of(svc)
    if kind.managed:
        return manager.journal_argv(unit_name(service), lines, follow)
    unit = kind.unit(service, svc)
    if unit is None:
        raise UsageError(f"{service} is {kind.name} and the inventory names no unit for it "
                         f"(services.{service}.unit): its logs are wherever its owner keeps them")
    return manager.journal_argv(unit.name, lines, follow, user=unit.user)


def journal_lines(inv: Inventory, service: str, manager: UserManager, lines: int) -> list[str]:
    """The last ``lines`` lines of ``service``'s journal, as ``labctl logs`` shows them (a
    journal this user may not read says so in its own words)."""
    from labctl.host.proc import run_cmd

    res = run_cmd(journal_argv(inv, service, manager, lines, False), check=False, timeout=30, env=manager.env)
    out = res.stdout.splitlines()
    return out if out or res.rc == 0 else res.stderr.strip().splitlines()
