"""The ``labctl`` command (and ``python -m labctl``).

``labctl status [-i FILE] [--probe-timeout S] [--json]`` first tries the fast path: the plan
the last full status kept for this inventory (labctl.ops.status, "the snapshot"), valid only
while the inventory's bytes, labctl's own files and the environment are what they were. It
imports neither typer nor pydantic, yaml, jinja2, httpx or rich: a status then costs about
what ``systemctl --user show`` and one probe round cost (bench/startup.py). Anything else,
or no valid snapshot, goes to the full CLI (labctl.cli), which prints the same thing.
"""

from __future__ import annotations

import os
import sys


def _status_args(args: list[str]) -> dict[str, object] | None:
    """``status``'s options when they are only these (else None: the full CLI parses)."""
    opts: dict[str, object] = {"inventory": os.environ.get("LABCTL_INVENTORY") or None, "timeout": 3.0,
                               "json": False}
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if arg == "--json":
            opts["json"] = True
        elif name in ("-i", "--inventory", "--probe-timeout"):
            if not eq:
                if i + 1 >= len(args):
                    return None
                i, value = i + 1, args[i + 1]
            if name == "--probe-timeout":
                try:
                    opts["timeout"] = float(value)
                except ValueError:
                    return None
            else:
                opts["inventory"] = value
        else:
            return None
        i += 1
    return opts


def _inventory(given: object) -> str | None:
    """The file the full CLI would read (labctl.load.find_inventory's order)."""
    if given:
        return str(given)
    applied = os.path.join(os.path.expanduser("~"), ".local", "state", "labctl", "applied-inventory.yaml")
    for candidate in ("inventory.yaml", applied):
        if os.path.isfile(candidate):
            return candidate
    return None


def width() -> int:
    """The width rich's Console gives the full CLI: $COLUMNS, else 80 on a dumb terminal,
    else the size of the first of stdin, stdout, stderr that is a terminal, else 80."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit():
        return int(columns)
    if os.environ.get("TERM", "").lower() in ("dumb", "unknown"):
        return 80
    for fd in (0, 1, 2):
        try:
            return os.get_terminal_size(fd).columns or 80
        except OSError:
            continue
    return 80


def fast_status(args: list[str]) -> int | None:
    """The status from the snapshot, printed; its exit code. None: no snapshot fits."""
    opts = _status_args(args)
    if opts is None:
        return None
    inventory = _inventory(opts["inventory"])
    if inventory is None:
        return None
    from labctl.ops.status import status_from_snapshot

    report = status_from_snapshot(inventory, probe_timeout=float(opts["timeout"]))  # type: ignore[arg-type]
    if report is None:
        return None
    if opts["json"]:
        import json

        sys.stdout.write(json.dumps(report.as_dict(), indent=2, sort_keys=True) + "\n")
    else:
        from labctl.statustext import status_lines

        sys.stdout.write("".join(line + "\n" for line in status_lines(report, width())))
    sys.stdout.flush()
    return 0 if report.healthy else 1


def main() -> None:
    if sys.argv[1:2] == ["status"] and os.environ.get("LABCTL_NO_SNAPSHOT") != "1":
        code = fast_status(sys.argv[2:])
        if code is not None:
            # Done: the answer is printed and flushed, every probe and systemctl waited for,
            # and this path registers no atexit handler. The interpreter's teardown (its
            # modules, objects and GC) would add ~2-3 ms to a ~35 ms command (bench/startup.py).
            sys.stderr.flush()
            os._exit(code)
    from labctl.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
