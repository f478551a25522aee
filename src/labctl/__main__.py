"""The ``labctl`` command (and ``python -m labctl``).

``labctl status`` with only the options its snapshot can answer (labctl.cmdline.STATUS: ``-i``,
``--probe-timeout``, ``--json``) first tries the fast path: the plan the last full status kept
for this inventory (labctl.ops.status, "the snapshot"), valid only while the inventory's
bytes, labctl's own files and the environment are what they were. It reads its arguments
with the same declarations as the typer command, and imports neither typer nor pydantic,
yaml, jinja2, httpx or rich's console (bench/startup.py). Anything else, or no valid
snapshot, goes to the full CLI (labctl.cli), which prints the same thing.
"""

from __future__ import annotations

import os
import sys


def fast_status(args: list[str]) -> int | None:
    """The status from the snapshot, printed; its exit code. None: no snapshot fits, or the
    arguments are the full CLI's to read."""
    from labctl import cmdline

    opts = cmdline.parse([o for o in cmdline.STATUS if o.snapshot], args)
    if opts is None:
        return None
    from labctl.errors import UsageError
    from labctl.ops.status import status_from_snapshot

    try:
        inventory = cmdline.find_inventory(opts["inventory"])  # type: ignore[arg-type]
    except UsageError:
        return None  # the full CLI says where it looked
    report = status_from_snapshot(inventory, probe_timeout=float(opts["probe_timeout"]))  # type: ignore[arg-type]
    if report is None:
        return None
    if opts["as_json"]:
        import json

        sys.stdout.write(json.dumps(report.as_dict(), indent=2, sort_keys=True) + "\n")
    else:
        from labctl.statustext import status_lines
        from labctl.text import terminal_width

        sys.stdout.write("".join(line + "\n" for line in status_lines(report, terminal_width())))
    sys.stdout.flush()
    return 0 if report.healthy else 1


def main() -> None:
    if sys.argv[1:2] == ["status"] and os.environ.get("LABCTL_NO_SNAPSHOT") != "1":
        code = fast_status(sys.argv[2:])
        if code is not None:
            # Done: the answer is printed and flushed, every probe and systemctl waited for,
            # and this path registers no atexit handler. The interpreter's teardown (its
            # modules, objects and GC) would add a few ms to the command (bench/startup.py).
            sys.stderr.flush()
            os._exit(code)
    from labctl.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
