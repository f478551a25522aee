"""The command line: parse arguments, call the core, print. Nothing else lives here.

Every failure the operator can fix is a LabctlError, printed as one line per problem on
stderr with the exit code from labctl.errors. A traceback means a labctl bug.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from labctl import __version__, cmdline
from labctl.cmdline import find_inventory
from labctl.errors import HostIOError, LabctlError, UsageError, os_reason
from labctl.text import terminal_width

# Start-up: this module and the command groups import typer and rich's Console, nothing
# heavy. Each command imports what it needs (pydantic models, jinja2, httpx, docker, gguf,
# rich tables) in its body; tests/unit/test_lazy_imports.py keeps it so; bench/startup.py
# measures it. Help is typer's plain (click) formatter, rich_markup_mode=None on every
# Typer: the rich one imports rich's markdown, syntax and panels (~70 ms) for a help page.

app = typer.Typer(
    name="labctl",
    help="Run a local LLM serving stack from one inventory.yaml, as systemd user units.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    rich_markup_mode=None,
)
# The width every line is laid out for: labctl.text's, the one `status` from its snapshot
# (labctl.__main__) uses too, so the two paths fold alike.
out = Console(highlight=False, soft_wrap=True, width=terminal_width())
Command = TypeVar("Command", bound=Callable[..., Any])


def typer_option(option: cmdline.Option) -> Any:
    """A parameter's type as typer reads it (``Annotated[type, typer.Option(...)]``), made
    from the option's one declaration in labctl.cmdline."""
    kinds: dict[str, Any] = {"flag": bool, "path": Path | None, "float": float, "text": str,
                             "texts": list[str] | None}
    return Annotated[kinds[option.kind], typer.Option(*option.flags, help=option.help, envvar=option.envvar,
                                                      show_default=option.show_default)]


def options_of(options: tuple[cmdline.Option, ...]) -> Callable[[Command], Command]:
    """A command whose parameters are ``options`` (keyword arguments, by name): typer reads
    them from the signature this gives it, so a declaration in labctl.cmdline is the whole
    of adding one."""
    import inspect

    def made(command: Command) -> Command:
        params = [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.default,
                                    annotation=typer_option(o)) for o in options]
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return made


InventoryOpt = typer_option(cmdline.INVENTORY)
JsonOpt = typer_option(cmdline.JSON)
CheckFilesOpt = Annotated[bool, typer.Option(
    "--check-files", help="Also check binaries, interpreters and model files on this machine.")]


@app.callback()
def _options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the tools' own output (pip, ...) "
                                          "as they run, instead of a spinner.")] = False,
) -> None:
    """Run a local LLM serving stack from one inventory.yaml, as systemd user units."""
    from labctl import progress

    progress.configure(live=True, verbose=verbose)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def print_lines(lines: list[str], style: str = "") -> None:
    """Lines already folded to ``out.width`` (labctl.text.terminal_width: $COLUMNS, else the
    terminal's width, else 80), printed as they are: as Text, so nothing in them is read as markup or
    ``:emoji:``, and never wrapped again."""
    from rich.text import Text

    for line in lines:
        out.print(Text(line, style=style))


@app.command()
def version() -> None:
    """Print labctl's version."""
    out.print(f"labctl {__version__}")


@app.command()
def validate(
    inventory: InventoryOpt = None,
    check_files: CheckFilesOpt = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Check the inventory: schema, cross-references, safety rules, GPU budget; exit 2 on any problem."""
    from labctl.fleet import target
    from labctl.load import load_inventory
    from labctl.text import fold, shown

    loaded = load_inventory(find_inventory(inventory), check_files=check_files)
    found = target.of(loaded).validate(force=force)
    if as_json:
        emit_json(found.document)
        return
    doc, checked = found.document, ", files checked" if check_files else ""
    if "hosts" in doc:
        out.print(f"{loaded.path}: ok (a fleet of {len(doc['hosts'])} host(s){checked})", markup=False)
        for name, facts in doc["hosts"].items():
            services = ", ".join(f"{n} ({k})" for n, k in facts["services"].items()) or "nothing"
            print_lines(fold(shown(f"{name} {facts['address']}: {services}"), out.width, "  ", "    "))
    else:
        out.print(f"{loaded.path}: ok ({len(doc['services'])} enabled service(s){checked})", markup=False)
        if found.budgets[""] is not None:
            out.print(found.budgets[""].summary(), markup=False)
    _print_warnings(found.warnings)


def _print_warnings(warnings: Any, *, stderr: bool = False) -> None:
    """``warning: ...`` lines, folded to the terminal: on stdout after a command's own text,
    or on stderr where stdout is a command's document or table."""
    from labctl.text import fold, shown

    for warning in warnings:
        lines = fold(shown(f"warning: {warning}"), out.width, "", "  ")
        if stderr:
            sys.stderr.write("".join(line + "\n" for line in lines))
        else:
            print_lines(lines, style="yellow")


@app.command()
def render(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the rendered tree into.")],
    inventory: InventoryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Render every file into OUT (laid out as under ~/.config on a host)."""
    from labctl import fsio
    from labctl.render import render_all

    loaded = _load(inventory, fleet=True)
    if loaded.fleet is not None:
        # A fleet: each host's slice and what it renders, under OUT/HOST/.
        from labctl.fleet.slices import slice_text

        files = {}
        private: set[str] = set()  # an inventory slice: owner only, as the fleet's own copies are
        for host, view in loaded.fleet.views.items():
            files[f"{host}/inventory.yaml"] = slice_text(view, host=host)
            private.add(f"{host}/inventory.yaml")
            files.update({f"{host}/{rel}": content for rel, content in render_all(view).items()})
    else:
        files, private = render_all(loaded.inventory), set()
    try:
        for rel, content in files.items():
            fsio.atomic_write(out_dir / rel, content, mode=0o600 if rel in private else None)
    except OSError as exc:
        # --out is the operator's argument: a file in the way, a read-only or full disk.
        raise UsageError(f"--out {out_dir}: cannot write {exc.filename or out_dir}: {os_reason(exc)}") from None
    if as_json:
        emit_json({"out": str(out_dir), "files": list(files)})
        return
    for rel in files:
        out.print(f"wrote {out_dir / rel}")


@app.command()
def plan(
    inventory: InventoryOpt = None,
    root: Annotated[Path | None, typer.Option(
        "--root", help="Compare against this directory instead of the host's ~/.config (files only; "
                       "no unit states are read).")] = None,
    as_json: JsonOpt = False,
    diff: Annotated[bool, typer.Option("--diff/--no-diff", help="Show file diffs.")] = True,
    wide: Annotated[bool, typer.Option("--wide", help="One line per action and note, at its natural width.")] = False,
) -> None:
    """Show what `labctl up` would change and do, changing nothing."""
    from labctl.ops import gpu_budget
    from labctl.ops.apply import preview
    from labctl.text import fold, shown

    found = preview(_load(inventory).inventory, root)
    if as_json:
        emit_json(found.as_dict())
        return
    if found.files_only and root is None:
        out.print("(no user manager here: comparing files only)", style="dim")
    # Prose is folded between words to out.width; a diff line is printed as it is (only
    # shown(): the installed side is whatever is on disk).
    width = 1 << 20 if wide else out.width

    def say(text: str, indent: str = "", more: str = "  ") -> None:
        print_lines(fold(shown(text), width, indent, more))

    result = found.plan
    print_lines([shown(line) for line in gpu_budget.table(found.budget, width)] if found.budget else [])
    for unit, files in found.drop_ins.items():
        say(f"{unit}: operator drop-ins, kept as they are and overriding labctl's unit: "
            f"{', '.join(f.rsplit('/', 1)[-1] for f in files)}")
    if result.empty:
        say(f"no changes: {len(result.unchanged)} file(s) up to date in {found.root}; no actions")
        return
    for change in result.files:
        say(f"{change.change:>6} {change.path}", more="       ")
        if diff and change.diff:
            print_lines([shown(line) for line in change.diff.rstrip("\n").split("\n")])
    say(f"{len(result.unchanged)} file(s) unchanged")
    say("actions:" if result.actions else "actions: none")
    for action in result.actions:
        say(str(action), "  ", "    ")


def fail(error: LabctlError, as_json: bool) -> NoReturn:
    """Print ``error`` (text on stderr; with --json also the documented document on stdout).
    Everything passes through the secret redactor: an error never echoes a key."""
    from labctl.secretscan import redact
    from labctl.text import shown

    if as_json:
        dicts = [{k: redact(v) if isinstance(v, str) else v for k, v in d.items()} for d in error.as_dicts()]
        emit_json({"ok": False, "exit_code": error.exit_code, "errors": dicts})
    for line in error.lines():
        # A message can quote a file name or journal line: control characters shown, not obeyed.
        sys.stderr.write(shown(line if error.redacted else redact(line)) + "\n")
    raise SystemExit(error.exit_code)


ForceOpt = Annotated[bool, typer.Option("--force", help="Go on although the GPU memory budget does not fit.")]
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="Fail at once if another labctl run holds the lock.")]


def _say(as_json: bool):  # type: ignore[no-untyped-def]
    """Progress lines: stdout normally, stderr under --json so stdout stays one document."""
    from labctl.text import shown  # progress can quote journal lines and file names

    if as_json:
        return lambda message: sys.stderr.write(shown(message) + "\n")
    return lambda message: out.print(shown(message), markup=False)


def _load(inventory: Path | None, *, fleet: bool = False):  # type: ignore[no-untyped-def]
    """The inventory, loaded and checked. A fleet inventory (hosts:) only where the command
    acts on the whole fleet (``fleet``); a command that acts on one host is run on that host."""
    from labctl.load import load_inventory

    loaded = load_inventory(find_inventory(inventory))
    if loaded.fleet is not None and not fleet:
        command = click_context_command()
        raise UsageError(f"{loaded.path} describes a fleet (hosts: {', '.join(loaded.inventory.hosts)}): "
                         f"`labctl {command}` acts on one host; run it there, where `labctl up` left that "
                         "host's slice (no -i needed), or use up, down, status, validate or render here")
    _print_warnings(loaded.warnings, stderr=True)
    return loaded


def _target(inventory: Path | None, hosts: list[str] | None):  # type: ignore[no-untyped-def]
    """This host or a fleet's hosts (labctl.fleet.target), from the inventory and --host."""
    from labctl.fleet import target

    return target.of(_load(inventory, fleet=True), hosts)


def click_context_command() -> str:
    """The command being run, for a message (``model switch``)."""
    try:  # newer typer vendors its own click (see _click_error)
        from typer._click.globals import get_current_context  # type: ignore[import-not-found]
    except ImportError:
        from click import get_current_context
    ctx = get_current_context(silent=True)
    return ctx.command_path.removeprefix("labctl ") if ctx is not None else "this command"


HostsOpt = typer_option(cmdline.HOSTS)


def _fleet_exit(report: Any, as_json: bool, lines: list[str], healthy: bool) -> None:
    """Print a fleet report; exit 4 naming every host that failed (or 1: status not healthy)."""
    if as_json:
        emit_json(report.as_dict())
    else:
        print_lines(lines)
    failed = report.failed()
    if failed:
        for r in failed:
            sys.stderr.write(f"labctl: host {r.host} ({r.address}): {r.status}: {r.error or 'no detail'}\n")
        raise typer.Exit(4)
    raise typer.Exit(0 if healthy else 1)


@app.command()
def up(
    inventory: InventoryOpt = None,
    no_wait: NoWaitOpt = False,
    no_monitoring: Annotated[bool, typer.Option("--no-monitoring", help="Leave the monitoring stack alone.")] = False,
    force: ForceOpt = False,
    hosts: HostsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Converge this host to the inventory: install, daemon-reload, start in order, probe.

    A fleet inventory (hosts:) is applied to every host through Ansible: backends first."""
    where = _target(inventory, hosts)
    report = where.up(say=_say(as_json), wait_lock=not no_wait, with_monitoring=not no_monitoring, force=force)
    if where.fleet:
        from labctl.cli.fleet import fleet_up_lines

        _fleet_exit(report, as_json, fleet_up_lines(report, out.width), True)
    if as_json:
        emit_json(report.as_dict())
        return
    if report.changed:
        out.print(f"up: {len(report.files)} file(s) changed, {len(report.restarted)} unit(s) started or "
                  f"restarted; previous state saved as generation {report.generation}")
    else:
        ready = sum(1 for r in report.ready.values() if r["ready"])
        out.print(f"up: no changes, nothing restarted; {ready}/{len(report.ready)} service(s) answering")


@app.command()
def down(
    inventory: InventoryOpt = None,
    purge: Annotated[bool, typer.Option("--purge", help="Also remove the installed files (kept as a generation).")] = False,
    no_wait: NoWaitOpt = False,
    hosts: HostsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop and disable every labctl unit (and the monitoring stack); on every host of a fleet."""
    where = _target(inventory, hosts)
    report = where.down(say=_say(as_json), wait_lock=not no_wait, purge=purge)
    if where.fleet:
        from labctl.cli.fleet import fleet_up_lines

        _fleet_exit(report, as_json, fleet_up_lines(report, out.width), True)
    if as_json:
        emit_json(report.as_dict())
        return
    out.print(f"down: {sum(1 for a in report.actions if a.startswith('stop'))} unit(s) stopped"
              + (f", {len(report.files)} file(s) removed" if purge else ""))


@app.command()
def restart(
    services: Annotated[list[str] | None, typer.Argument(help="Services to restart (default: all).")] = None,
    inventory: InventoryOpt = None,
    no_wait: NoWaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Restart services in dependency order, waiting for each to be ready."""
    from labctl.ops import apply

    report = apply.restart(_load(inventory), services or [], say=_say(as_json), wait_lock=not no_wait)
    if as_json:
        emit_json(report.as_dict())


@app.command()
def rollback(
    inventory: InventoryOpt = None,
    no_wait: NoWaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Restore the installed files from before the last change, restart what changed, probe."""
    from labctl.ops import apply

    report = apply.rollback(_load(inventory), say=_say(as_json), wait_lock=not no_wait)
    if as_json:
        emit_json(report.as_dict())
        return
    out.print(f"rollback: {len(report.files)} file(s) restored, {len(report.restarted)} unit(s) restarted")


@app.command()
@options_of(cmdline.STATUS)
def status(**opts: Any) -> None:
    """Each service: unit state, restarts, PID, memory, uptime, port, probe, model, drift.

    A fleet inventory: every host's status at once, one row per service with its host."""
    as_json, wide = opts["as_json"], opts["wide"]
    where = _target(opts["inventory"], opts["hosts"])
    report = where.status(say=_say(as_json), probe_timeout=opts["probe_timeout"], endpoints=opts["endpoints"],
                          wide=wide)
    if where.fleet:
        from labctl.cli.fleet import fleet_status_lines, is_healthy

        _fleet_exit(report, as_json, fleet_status_lines(report, out.width), is_healthy(report))
    if as_json:
        emit_json(report.as_dict())
    elif wide:
        from labctl.cli.tables import status_table, unfolded

        out.print(unfolded(status_table(report), out))
    else:
        from labctl.statustext import status_lines

        print_lines(status_lines(report, out.width))
    raise typer.Exit(0 if report.healthy else 1)


@app.command()
def logs(
    service: Annotated[str, typer.Argument(help="Service name from the inventory.")],
    inventory: InventoryOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n")] = 50,
) -> None:
    """The service's journal (journalctl --user; an external service's own unit's journal)."""
    from labctl.host.systemd import UserManager
    from labctl.ops.journal import journal_argv

    loaded = _load(inventory)
    inv = loaded.inventory
    if service not in inv.services:
        raise UsageError(f"no service named {service!r} in {loaded.path} (have: {', '.join(inv.services)})")
    manager = UserManager()
    argv = journal_argv(inv, service, manager, lines, follow)
    sys.stdout.flush()
    os.execvpe(argv[0], argv, manager.env)


@app.command("edit")
def edit_unit(
    service: Annotated[str, typer.Argument(help="Service name from the inventory.")],
    inventory: InventoryOpt = None,
) -> None:
    """Override a setting of a service's unit with a drop-in (systemctl --user edit); labctl keeps it."""
    from labctl.host.systemd import UserManager
    from labctl.inventory.schema import unit_name
    from labctl.unitcmd import systemctl_argv

    loaded = _load(inventory)
    inv = loaded.inventory
    if service not in inv.managed(disabled=True):
        what = "is external: labctl runs no unit for it" if service in inv.services else "is no service"
        raise UsageError(f"{service!r} {what} in {loaded.path}")
    manager = UserManager()
    argv = systemctl_argv("edit", unit_name(service))
    sys.stdout.flush()
    os.execvpe(argv[0], argv, manager.env)


@app.command()
def doctor(
    inventory: InventoryOpt = None,
    wide: Annotated[bool, typer.Option("--wide", help="One line per check, at its natural width.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check that this host can run the inventory; each check is ok, warn or fail, with the fix."""
    from rich.text import Text

    from labctl.cli.tables import doctor_lines
    from labctl.ops.doctor import failures, run_doctor
    from labctl.text import shown

    checks = run_doctor(_load(inventory))
    if as_json:
        emit_json({"ok": not failures(checks), "checks": [c.as_dict() for c in checks]})
    else:
        for check in checks:
            first, *more = [shown(str(check))] if wide else doctor_lines(check, out.width)
            style = {"ok": "green", "warn": "yellow", "fail": "red"}[check.status]
            out.print(Text.assemble((first[:4], style), first[4:]))
            print_lines(more)
    raise typer.Exit(1 if failures(checks) else 0)


def _click_error() -> type[Exception]:
    """Newer typer vendors its own click (typer._click); older typer uses click itself."""
    try:
        from typer._click.exceptions import ClickException  # type: ignore[import-not-found]
    except ImportError:
        from click.exceptions import ClickException
    return ClickException


def main(argv: list[str] | None = None) -> None:
    """Entry point: the one place where exceptions become exit codes."""
    click_error = _click_error()
    args = sys.argv[1:] if argv is None else argv
    if not args:
        args = ["--help"]
    try:
        code = app(args=args, prog_name="labctl", standalone_mode=False)
    except LabctlError as exc:
        fail(exc, "--json" in args)
    except (KeyboardInterrupt, typer.Abort):
        sys.stderr.write("labctl: interrupted\n")
        raise SystemExit(130) from None
    except click_error as exc:
        fail(UsageError(exc.format_message()), "--json" in args)  # type: ignore[attr-defined]
    except OSError as exc:
        # The host refused a file operation (disk full, read-only, permissions): the
        # operator's to fix, so one line naming the file, never a traceback.
        if os.environ.get("LABCTL_DEBUG"):
            raise
        fail(HostIOError.of(exc), "--json" in args)
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if os.environ.get("LABCTL_DEBUG"):
            raise
        internal = LabctlError(f"internal error: {type(exc).__name__}: {exc} "
                               "(a labctl bug; rerun with LABCTL_DEBUG=1 for the traceback)")
        internal.exit_code = 1
        fail(internal, "--json" in args)
    raise SystemExit(code if isinstance(code, int) else 0)


# The command groups register themselves on `app`; imported last, once everything they
# use from this module exists.
from labctl.cli import gateway, model, monitoring, sandbox, top  # noqa: E402,F401
