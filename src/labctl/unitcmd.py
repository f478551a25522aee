"""The command lines labctl runs about systemd units: every ``systemctl`` and ``journalctl``
argv that names a unit is built here, and nowhere else.

A unit name is an operand, never an option. systemctl and journalctl parse their whole argv
with getopt, so a name starting with ``-`` would be read as options: ``-Hhost.service`` makes
``systemctl show`` run ``ssh host.service`` (a remote manager), ``--user -M…`` reaches another
machine's manager. So operands follow ``--``, and journalctl gets its unit as the value of
``--unit=`` (one word: getopt never reads it as an option). And a name from the inventory must
be a unit name by systemd's own rules (:func:`unit_name_problem`: the schema checks it at
load, the builders here again, so a labctl bug cannot hand systemctl something else).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

# What `systemctl show` is asked for (labctl.host.systemd.UnitFacts).
SHOW_PROPERTIES = (
    "Id", "LoadState", "ActiveState", "SubState", "UnitFileState", "NRestarts", "MainPID",
    "MemoryCurrent", "ActiveEnterTimestamp", "ActiveEnterTimestampMonotonic", "InvocationID", "Result",
    "ExecMainCode", "ExecMainStatus", "NeedDaemonReload", "DropInPaths",
)

# systemd's unit names (src/basic/unit-name.c, unit_name_is_valid): at most 255 bytes with the
# suffix; ASCII letters, digits and ":-_.\" before the type suffix, plus "@", which splits a
# template's name from an instance ("getty@tty1.service"); the suffix is a unit type.
UNIT_NAME_MAX = 255
_UNIT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:-_.\\@")
UNIT_TYPES = ("service", "socket", "target", "device", "mount", "automount", "swap", "timer", "path", "slice",
              "scope")


def unit_name_problem(name: str) -> str | None:
    """Why ``name`` is not a unit labctl may hand systemctl, or None: systemd's rules, and
    further no leading ``-`` (an option to systemctl, though systemd allows it) and no bare
    template (``name@.service`` runs nothing; an instance does)."""
    if not name:
        return "must name a unit"
    if len(name.encode("utf-8", "surrogatepass")) > UNIT_NAME_MAX:
        return f"is longer than {UNIT_NAME_MAX} bytes, systemd's limit for a unit name"
    stem, dot, suffix = name.rpartition(".")
    if not dot or suffix not in UNIT_TYPES:
        return "must end in a unit type, such as .service"
    if not stem:
        return "must have a name before its ." + suffix
    if not set(stem) <= _UNIT_CHARS:
        return "may hold only ASCII letters, digits and : - _ . \\ @ (systemd's unit-name characters)"
    if stem.startswith("-"):
        return "must not start with '-' (systemctl and journalctl would read it as an option)"
    template, at, instance = stem.partition("@")
    if at and not template:
        return "must not start with '@' (systemd refuses it)"
    if at and not instance:
        return f"is a template, which runs nothing: name an instance ({template}@INSTANCE.{suffix})"
    return None


class UnitNameError(ValueError):
    """A string that is no unit name reached an argv builder (a labctl bug: the schema refuses
    such a name first)."""


def _units(units: Iterable[str]) -> list[str]:
    out = list(units)
    for unit in out:
        problem = unit_name_problem(unit)
        if problem:
            raise UnitNameError(f"systemctl: {unit!r} {problem}")
    return out


def systemctl_argv(verb: str, *units: str, user: bool = True, options: Iterable[str] = ()) -> list[str]:
    """``systemctl [--user] VERB [OPTIONS] -- UNIT...``: the units after ``--``."""
    argv = ["systemctl", *(["--user"] if user else []), verb, *options]
    return argv + ["--", *_units(units)] if units else argv


def show_argv(units: Iterable[str], *, user: bool = True) -> list[str]:
    """``systemctl show`` of ``units``: the properties labctl reads (labctl.host.systemd.parse_show)."""
    return systemctl_argv("show", *units, user=user, options=["--property=" + ",".join(SHOW_PROPERTIES)])


def journalctl_argv(unit: str, *, user: bool = True, options: Iterable[str] = (),
                    matches: Iterable[str] = ()) -> list[str]:
    """``journalctl [--user] --unit=UNIT [OPTIONS] -- [FIELD=VALUE...]``: the unit as one word
    with its option, the journal matches after ``--``."""
    (unit,) = _units([unit])
    return ["journalctl", *(["--user"] if user else []), f"--unit={unit}", *options, "--", *matches]
