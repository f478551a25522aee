"""Command-line options declared once, as data, and where the inventory is looked for.

labctl.cli makes each command's typer parameter from an :class:`Option`; ``labctl status``
from its snapshot (labctl.__main__) reads its arguments with the same declarations
(:func:`parse`), without importing typer. A status option is added to :data:`STATUS` and
nowhere else: the typer command takes it, and the fast path reads it (``snapshot=True``) or
leaves the command to the full CLI.

Imported first by the fast path: os and labctl.records at the top.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from labctl.records import Record

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

# What an option's value is, and how the fast path converts one (click converts the same way
# for the typer parameter: labctl.cli.typer_option maps each to its type).
KINDS = ("flag", "path", "float", "text", "texts")


class Option(Record):
    """One command-line option: the command's parameter ``name``, its ``flags`` as click reads
    them (long ones ``--name``, short ones ``-n``), the ``kind`` of its value, its default,
    help and environment variable. ``snapshot``: ``status`` from its snapshot can answer
    with it (an option that is not is left to the full CLI)."""

    __slots__ = ("name", "flags", "kind", "default", "help", "envvar", "show_default", "snapshot")
    name: str
    flags: tuple[str, ...]
    kind: str
    default: object
    help: str
    envvar: str | None
    show_default: bool
    snapshot: bool
    _defaults = {"default": None, "help": "", "envvar": None, "show_default": True, "snapshot": False}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.kind not in KINDS:
            raise ValueError(f"option {self.name}: kind {self.kind!r} is not one of {', '.join(KINDS)}")

    def value(self, text: str) -> object:
        """``text`` from the command line as this option's value (ValueError: not one)."""
        return float(text) if self.kind == "float" else True if self.kind == "flag" else text


APPLIED = "applied-inventory.yaml"  # written by `labctl up` into the state dir

INVENTORY = Option("inventory", ("--inventory", "-i"), "path", None, envvar="LABCTL_INVENTORY", show_default=False,
                   snapshot=True, help="The inventory file [default: $LABCTL_INVENTORY, else ./inventory.yaml, "
                                       "else the one labctl up last applied].")
JSON = Option("as_json", ("--json",), "flag", False, help="Machine-readable output (see docs/cli.md).", snapshot=True)
HOSTS = Option("hosts", ("--host",), "texts", None, show_default=False,
               help="A fleet inventory: act on this host only (repeatable).")

STATUS: tuple[Option, ...] = (
    INVENTORY,
    Option("probe_timeout", ("--probe-timeout",), "float", 3.0, help="Seconds each probe may take.", snapshot=True),
    Option("endpoints", ("--endpoints",), "flag", False,
           help="Also ask whether the gateway's remote endpoints are reachable (never sends a key)."),
    Option("wide", ("--wide",), "flag", False, help="One table row per service, at its natural width."),
    HOSTS,
    JSON,
)


def default(options: Sequence[Option], name: str) -> object:
    """The default of the option called ``name``."""
    return next(o.default for o in options if o.name == name)


def parse(options: Sequence[Option], args: list[str]) -> dict[str, object] | None:
    """``args`` read as the typer command of ``options`` reads them (getopt's grammar, which
    is click's for options: ``--name value``, ``--name=value``, ``-n value``, ``-nvalue``,
    the last one given wins), each value converted as its kind, an option not given taken
    from its environment variable or its default. None when ``args`` hold anything else: an
    argument, an option not among ``options``, a long one abbreviated (getopt would expand
    it, click refuses it), a value that does not convert; the full CLI then reads them, and
    says what is wrong."""
    import getopt

    longs = {flag: o for o in options for flag in o.flags if flag.startswith("--")}
    shorts = {flag: o for o in options for flag in o.flags if not flag.startswith("--")}
    if any(a.startswith("--") and a != "--" and a.partition("=")[0] not in longs for a in args):
        return None  # (or a value that looks like a long option: the full CLI reads that too)
    try:
        given, rest = getopt.getopt(args, "".join(f[1:] + ("" if o.kind == "flag" else ":") for f, o in shorts.items()),
                                    [f[2:] + ("" if o.kind == "flag" else "=") for f, o in longs.items()])
    except getopt.GetoptError:
        return None
    if rest:
        return None
    values = {o.name: (o.envvar and os.environ.get(o.envvar)) or o.default for o in options}
    for flag, text in given:
        option = longs.get(flag) or shorts[flag]
        try:
            value = option.value(text)
        except ValueError:
            return None
        if option.kind == "texts":
            value = [*(values[option.name] or []), value]  # type: ignore[misc]
        values[option.name] = value
    return values


def applied_path() -> Path:
    """Where ``up`` keeps the last applied inventory under the default state dir
    (host.state_dir's default, ~/.local/state/labctl)."""
    from pathlib import Path

    return Path.home() / ".local" / "state" / "labctl" / APPLIED


def find_inventory(given: str | os.PathLike[str] | None) -> Path:
    """``-i`` (or $LABCTL_INVENTORY), else ./inventory.yaml, else the inventory ``up`` last
    applied on this host; a one-line error naming every place tried."""
    from pathlib import Path

    if given is not None:
        return Path(given)
    for candidate in (Path("inventory.yaml"), applied_path()):
        if candidate.is_file():
            return candidate
    from labctl.errors import UsageError

    raise UsageError(f"no inventory: tried -i/--inventory, $LABCTL_INVENTORY, ./inventory.yaml and "
                     f"{applied_path()} (the last one labctl up applied)")
