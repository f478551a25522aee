"""`labctl model`: GGUF models and the current.gguf switch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from labctl.cli import (
    InventoryOpt,
    JsonOpt,
    _load,
    _say,
    app,
    emit_json,
    out,
    print_lines,
)


# rich's tables cost ~15 ms to import: only the commands that print them pay it.
def plain(text: object, style: str = ""):  # type: ignore[no-untyped-def]
    from labctl.cli.tables import plain as _plain

    return _plain(text, style)


def unfolded(table, console):  # type: ignore[no-untyped-def]
    from labctl.cli.tables import unfolded as _unfolded

    return _unfolded(table, console)

# Everything printed here that came from a file (GGUF metadata, file and link names, the
# history, /proc/PID/maps) goes through plain()/shown(): control characters are escaped
# and nothing is read as rich markup or emoji. --json prints the raw strings (JSON escapes).


model_app = typer.Typer(help="GGUF models and the current.gguf symlink.", no_args_is_help=True,
                        rich_markup_mode=None)
app.add_typer(model_app, name="model")


@model_app.command("make-tiny")
def model_make_tiny(
    path: Annotated[Path, typer.Argument(help="Where to write the GGUF.")],
    arch: Annotated[str, typer.Option(help="Architecture name (an unknown one makes a file llama.cpp refuses).")] = "llama",
) -> None:
    """Write a tiny random-weight GGUF (~0.5 MB) that llama.cpp servers load in milliseconds."""
    from labctl.host.gguf_writer import write_tiny_gguf

    write_tiny_gguf(path, arch=arch)
    out.print(plain(f"wrote {path}"))


@model_app.command("pull")
def model_pull(
    names: Annotated[list[str] | None, typer.Argument(help="Declared models to fetch (default: all).")] = None,
    inventory: InventoryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fetch the inventory's declared models (models:) into the models dir, checked against
    their sha256, and point current.gguf at the default one if it does not exist yet."""
    from labctl.ops.model_pull import pull

    results = pull(_load(inventory).inventory, names or None, say=_say(as_json))
    if as_json:
        emit_json([{"name": r.name, "path": str(r.path), "sha256": r.sha256, "size": r.size,
                    "action": r.action, "seconds": round(r.seconds, 2)} for r in results])
        return
    fetched = sum(1 for r in results if r.action != "present")
    out.print(plain(f"pull: {fetched} fetched, {len(results) - fetched} already present"))


@model_app.command("list")
def model_list(
    inventory: InventoryOpt = None,
    wide: Annotated[bool, typer.Option("--wide", help="One table row per model, at its natural width.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """GGUF files in the models dir, from their headers, and which one current.gguf points at."""
    from labctl.host.modelfiles import models_dir, roots_text
    from labctl.ops.switch import list_models
    from labctl.text import fold, shown

    inv = _load(inventory).inventory
    entries = list_models(inv)
    if as_json:
        emit_json([e.as_dict() for e in entries])
        return
    if not entries:
        missing = not models_dir(inv).is_dir()
        print_lines(fold(shown(f"no models: the models dir {models_dir(inv)} does not exist" if missing else
                               f"no models in {roots_text(inv)}"), out.width, "", "  "))
        return
    if wide:
        from labctl.cli.tables import model_table

        out.print(unfolded(model_table(entries), out))
    else:
        from labctl.cli.tables import model_lines

        print_lines(model_lines(entries, out.width))


@model_app.command("current")
def model_current(inventory: InventoryOpt = None, as_json: JsonOpt = False) -> None:
    """The link's target, what each llama service is really serving, and any mismatch."""
    from labctl.host.systemd import UserManager
    from labctl.ops.switch import current

    report = current(_load(inventory).inventory, UserManager())
    if as_json:
        emit_json(report)
    else:
        out.print(plain(f"{report['link']} -> {report['target']}"))
        for s in report["services"]:  # type: ignore[union-attr]
            out.print(plain(f"  {s['service']}: {s['state']} (pid {s['pid'] or '-'}; mapped: "
                            f"{', '.join(s['mapped']) or '-'})"))
    raise typer.Exit(1 if report["mismatch"] else 0)


@model_app.command("switch")
def model_switch(
    gguf: Annotated[str, typer.Argument(help="A file in the models dir (name or path), or linked into it.")],
    inventory: InventoryOpt = None,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse a model over the GPU memory budget.")] = False,
    drain_timeout: Annotated[float, typer.Option(help="Seconds to wait for in-flight requests.")] = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Repoint current.gguf safely: validate, drain, swap atomically, restart one service at a
    time with real readiness, roll back on failure."""
    from labctl.host.systemd import UserManager
    from labctl.ops.switch import switch

    result = switch(_load(inventory).inventory, gguf, manager=UserManager(), say=_say(as_json), strict=strict,
                    drain_sec=drain_timeout)
    if as_json:
        emit_json(result.as_dict())
    else:
        out.print(plain(f"switched to {result.target} ({result.outcome})"))
    _degraded_exit(result)


def _degraded_exit(result) -> None:  # type: ignore[no-untyped-def]
    """A switch that changed the model but not cleanly (a stop that timed out and was
    SIGKILLed) says why on stderr and exits 1: never a plain success."""
    from labctl.text import shown

    if result.outcome == "degraded":
        for note in result.notes:
            print(shown(f"labctl: degraded: {note}"), file=sys.stderr)
        raise typer.Exit(1)


@model_app.command("rollback")
def model_rollback(inventory: InventoryOpt = None, as_json: JsonOpt = False) -> None:
    """Switch back to the model the last successful switch replaced."""
    from labctl.host.systemd import UserManager
    from labctl.ops.switch import rollback_target, switch

    inv = _load(inventory).inventory
    target = rollback_target(Path(inv.host.expand(inv.host.state_dir)))
    result = switch(inv, target, manager=UserManager(), say=_say(as_json))
    if as_json:
        emit_json(result.as_dict())
    else:
        out.print(plain(f"rolled back to {result.target}"))
    _degraded_exit(result)


@model_app.command("history")
def model_history(inventory: InventoryOpt = None, as_json: JsonOpt = False) -> None:
    """Every switch: time, from, to, outcome, durations."""
    from labctl.ops.switch import history

    inv = _load(inventory).inventory
    entries = history(Path(inv.host.expand(inv.host.state_dir)))
    if as_json:
        emit_json(entries)
        return
    for e in entries:
        durations = e.get("durations")
        total = durations.get("total", "-") if isinstance(durations, dict) else "-"
        failed = f" (failed at {e['failed_step']})" if e.get("failed_step") else ""
        out.print(plain(f"{_when(e.get('time'))}  {_base(e.get('previous'))} -> {_base(e.get('target'))}  "
                        f"{e.get('outcome', '?')}{failed}  {total}s"))


def _when(value: object) -> str:
    import datetime

    try:
        return datetime.datetime.fromtimestamp(float(value)).isoformat(timespec="seconds")  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def _base(value: object) -> str:
    return Path(str(value)).name or str(value) if value else "-"
