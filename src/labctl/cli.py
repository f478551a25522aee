"""The command line: parse arguments, call the core, print. Nothing else lives here.

Every failure the operator can fix is a LabctlError, printed as one line per problem on
stderr with the exit code from labctl.errors. A traceback means a labctl bug.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from labctl import __version__
from labctl.errors import LabctlError, OperationFailed, UsageError

app = typer.Typer(
    name="labctl",
    help="Run a local LLM serving stack from one inventory.yaml, as systemd user units.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(highlight=False, soft_wrap=True)

InventoryOpt = Annotated[
    Path, typer.Option("--inventory", "-i", envvar="LABCTL_INVENTORY", help="The inventory file.",
                       show_default=True),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output (see docs/cli.md).")]
CheckFilesOpt = Annotated[bool, typer.Option(
    "--check-files", help="Also check binaries, interpreters and model files on this machine.")]


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


model_app = typer.Typer(help="GGUF models and the current.gguf symlink.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("make-tiny")
def model_make_tiny(
    path: Annotated[Path, typer.Argument(help="Where to write the GGUF.")],
    arch: Annotated[str, typer.Option(help="Architecture name (an unknown one makes a file llama.cpp refuses).")] = "llama",
) -> None:
    """Write a tiny random-weight GGUF (~0.5 MB) that llama.cpp servers load in milliseconds."""
    from labctl.demo_models import write_tiny_gguf

    write_tiny_gguf(path, arch=arch)
    out.print(f"wrote {path}")


@model_app.command("list")
def model_list(inventory: InventoryOpt = Path("inventory.yaml"), as_json: JsonOpt = False) -> None:
    """GGUF files in the models dir, from their headers, and which one current.gguf points at."""
    from rich.table import Table

    from labctl.models import list_models

    entries = list_models(_load(inventory).inventory)
    if as_json:
        emit_json([e.as_dict() for e in entries])
        return
    table = Table()
    for column in ("", "file", "size", "architecture", "context", "quantisation", "note"):
        table.add_column(column)
    for e in entries:
        info = e.info or {}
        table.add_row("*" if e.current else "", e.name, f"{int(info.get('size', 0)) / 2**20:.1f} MiB" if info else "-",
                      str(info.get("architecture", "-")), str(info.get("context_length", "-")),
                      str(info.get("quantization", "-")), e.problem or "")
    out.print(table)


@model_app.command("current")
def model_current(inventory: InventoryOpt = Path("inventory.yaml"), as_json: JsonOpt = False) -> None:
    """The link's target, what each llama service is really serving, and any mismatch."""
    from labctl.models import current
    from labctl.systemd import UserManager

    report = current(_load(inventory).inventory, UserManager())
    if as_json:
        emit_json(report)
    else:
        out.print(f"{report['link']} -> {report['target']}", markup=False)
        for s in report["services"]:  # type: ignore[union-attr]
            out.print(f"  {s['service']}: {s['state']} (pid {s['pid'] or '-'}; mapped: "
                      f"{', '.join(s['mapped']) or '-'})", markup=False)
    raise typer.Exit(1 if report["mismatch"] else 0)


@model_app.command("switch")
def model_switch(
    gguf: Annotated[str, typer.Argument(help="A file in the models dir (name or path), or linked into it.")],
    inventory: InventoryOpt = Path("inventory.yaml"),
    strict: Annotated[bool, typer.Option("--strict", help="Refuse a model over the GPU memory budget.")] = False,
    drain_timeout: Annotated[float, typer.Option(help="Seconds to wait for in-flight requests.")] = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Repoint current.gguf safely: validate, drain, swap atomically, restart one service at a
    time with real readiness, roll back on failure."""
    from labctl.models import switch
    from labctl.systemd import UserManager

    result = switch(_load(inventory).inventory, gguf, manager=UserManager(), say=_say(as_json), strict=strict,
                    drain_sec=drain_timeout)
    if as_json:
        emit_json(result.as_dict())
    else:
        out.print(f"switched to {result.target} ({result.outcome})", markup=False)


@model_app.command("rollback")
def model_rollback(inventory: InventoryOpt = Path("inventory.yaml"), as_json: JsonOpt = False) -> None:
    """Switch back to the model the last successful switch replaced."""
    from labctl.models import rollback_target, switch
    from labctl.systemd import UserManager

    inv = _load(inventory).inventory
    target = rollback_target(Path(inv.host.expand(inv.host.state_dir)))
    result = switch(inv, target, manager=UserManager(), say=_say(as_json))
    if as_json:
        emit_json(result.as_dict())
    else:
        out.print(f"rolled back to {result.target}", markup=False)


@model_app.command("history")
def model_history(inventory: InventoryOpt = Path("inventory.yaml"), as_json: JsonOpt = False) -> None:
    """Every switch: time, from, to, outcome, durations."""
    import datetime

    from labctl.models import history

    inv = _load(inventory).inventory
    entries = history(Path(inv.host.expand(inv.host.state_dir)))
    if as_json:
        emit_json(entries)
        return
    for e in entries:
        when = datetime.datetime.fromtimestamp(float(e["time"])).isoformat(timespec="seconds")  # type: ignore[arg-type]
        prev = Path(str(e.get("previous"))).name if e.get("previous") else "-"
        out.print(f"{when}  {prev} -> {Path(str(e['target'])).name}  {e['outcome']}"
                  + (f" (failed at {e['failed_step']})" if e.get("failed_step") else "")
                  + f"  {e.get('durations', {}).get('total', '-')}s", markup=False)


sandbox_app = typer.Typer(help="A throwaway booted systemd machine, for hosts without a user manager.",
                          no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")
NameOpt = Annotated[str, typer.Option("--name", help="The machine's name.")]


@sandbox_app.command("up")
def sandbox_up(
    name: NameOpt = "labctl-sandbox",
    project: Annotated[Path | None, typer.Option(help="The labctl checkout to install inside.")] = None,
    ssh_port: Annotated[int | None, typer.Option(help="Start sshd inside on 127.0.0.1:PORT.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Boot a Debian machine with systemd (systemd-nspawn), a lingering user and labctl inside."""
    from labctl import sandbox_ops

    facts = sandbox_ops.sandbox_up(name, project, ssh_port=ssh_port, say=_say(as_json))
    if as_json:
        emit_json(facts)
    else:
        out.print(f"sandbox {name} is up; run commands with: labctl sandbox exec --name {name} -- CMD", markup=False)


@sandbox_app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sandbox_exec(
    command: Annotated[list[str], typer.Argument(help="The command to run inside, after --.")],
    name: NameOpt = "labctl-sandbox",
    user: Annotated[str, typer.Option(help="Run as this user.")] = "labuser",
) -> None:
    """Run a command inside the machine (as labuser, in its home), streaming its output."""
    from labctl import sandbox_ops

    raise typer.Exit(sandbox_ops.sandbox_exec(name, command, user=user))


@sandbox_app.command("copy")
def sandbox_copy(
    source: Annotated[Path, typer.Argument(help="A file or directory on this host.")],
    destination: Annotated[str, typer.Argument(help="The path inside the machine.")],
    name: NameOpt = "labctl-sandbox",
) -> None:
    """Copy a file or directory into the machine, owned by labuser."""
    from labctl import sandbox_ops

    sandbox_ops.sandbox_copy(name, source, destination)


@sandbox_app.command("down")
def sandbox_down(name: NameOpt = "labctl-sandbox") -> None:
    """Power the machine off; everything written inside it is gone."""
    from labctl import sandbox_ops

    sandbox_ops.sandbox_down(name)
    out.print(f"sandbox {name} is down")


@sandbox_app.command("list")
def sandbox_list(as_json: JsonOpt = False) -> None:
    """Running sandbox machines."""
    from labctl import sandbox_ops

    machines = sandbox_ops.sandbox_list()
    if as_json:
        emit_json(machines)
        return
    for m in machines:
        out.print(f"{m.get('name')}  ssh {m.get('ssh_port') or '-'}  {m.get('state', '')}", markup=False)


gateway_app = typer.Typer(help="The LiteLLM gateway.", no_args_is_help=True)
app.add_typer(gateway_app, name="gateway")


@gateway_app.command("check")
def gateway_check(
    inventory: InventoryOpt = Path("inventory.yaml"),
    timeout: Annotated[float, typer.Option(help="Seconds each request may take.")] = 60.0,
    as_json: JsonOpt = False,
) -> None:
    """Ask every route for one token and exercise every fallback chain; route -> backend -> latency."""
    from rich.table import Table

    from labctl.gateway_check import all_ok, check_gateway, gateway_of
    from labctl.probes import gateway_key

    inv = _load(inventory).inventory
    _, gw = gateway_of(inv)
    key = gateway_key(inv, gw)
    if key is None:
        raise OperationFailed(f"cannot read {gw.master_key.variable} (from {gw.master_key.env_file or 'the environment'})")
    results = check_gateway(inv, key, timeout=timeout)
    ok = all_ok(results)
    if as_json:
        emit_json({"ok": ok, "results": [r.as_dict() for r in results]})
    else:
        table = Table(title="labctl gateway check", title_justify="left")
        for column in ("check", "route", "fallback to", "status", "answered by", "backend", "fallbacks", "ms", "error"):
            table.add_column(column, overflow="fold")
        for r in results:
            table.add_row(r.check, r.route, r.fallback_to or "-", str(r.status or "-"), r.answered_by or "-",
                          r.backend or "-", str(r.attempted_fallbacks if r.attempted_fallbacks is not None else "-"),
                          f"{r.latency_ms:.0f}", r.error or "")
        out.print(table)
    raise typer.Exit(0 if ok else OperationFailed.exit_code)


monitoring_app = typer.Typer(help="The Prometheus + Grafana stack (docker compose).", no_args_is_help=True)
app.add_typer(monitoring_app, name="monitoring")


@monitoring_app.command("up")
def monitoring_up(inventory: InventoryOpt = Path("inventory.yaml"), as_json: JsonOpt = False) -> None:
    """Render the monitoring files, then `docker compose up --wait` them."""
    from labctl import fsio, monitoring
    from labctl.layout import Layout
    from labctl.render import render_all

    inv = _load(inventory).inventory
    layout = Layout.of(inv)
    root = Path(layout.config_root)
    for rel, content in render_all(inv).items():
        if rel.startswith(layout.monitoring_dir + "/"):
            fsio.atomic_write(root / rel, content)
    result = monitoring.up(inv, layout, root)
    if as_json:
        emit_json(result.as_dict())
    else:
        out.print(f"monitoring: {result.summary}", markup=False)


@monitoring_app.command("down")
def monitoring_down(
    inventory: InventoryOpt = Path("inventory.yaml"),
    purge: Annotated[bool, typer.Option("--purge", help="Also remove the data volumes.")] = False,
) -> None:
    """Stop and remove the monitoring containers (data volumes stay unless --purge)."""
    from labctl import monitoring
    from labctl.layout import Layout

    inv = _load(inventory).inventory
    layout = Layout.of(inv)
    result = monitoring.down(inv, layout, Path(layout.config_root), purge=purge)
    out.print(f"monitoring: {result.summary}", markup=False)


@monitoring_app.command("status")
def monitoring_status(inventory: InventoryOpt = Path("inventory.yaml"), as_json: JsonOpt = False) -> None:
    """The monitoring containers' state and health, from the Docker engine."""
    from labctl import monitoring

    inv = _load(inventory).inventory
    engine = monitoring.engine_status()
    containers = monitoring.status(inv) if engine.reachable else []
    if as_json:
        emit_json({"engine": engine.as_dict(), "containers": [c.as_dict() for c in containers]})
    else:
        out.print(engine.detail, markup=False)
        for c in containers:
            out.print(f"  {c.service:<14} {c.state:<10} {c.health or '-':<10} {c.image}", markup=False)
    raise typer.Exit(0 if engine.reachable and containers and all(c.ok for c in containers) else 1)


@app.command()
def version() -> None:
    """Print labctl's version."""
    out.print(f"labctl {__version__}")


@app.command()
def validate(
    inventory: InventoryOpt = Path("inventory.yaml"),
    check_files: CheckFilesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Check the inventory: schema, cross-references, safety rules; exit 2 on any problem."""
    from labctl.load import load_inventory

    loaded = load_inventory(inventory, check_files=check_files)
    enabled = loaded.inventory.enabled()
    if as_json:
        emit_json({"ok": True, "inventory": str(inventory),
                   "services": {n: s.kind for n, s in enabled.items()}})  # type: ignore[attr-defined]
        return
    out.print(f"{inventory}: ok ({len(enabled)} enabled service(s)"
              f"{', files checked' if check_files else ''})")


@app.command()
def render(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the rendered tree into.")],
    inventory: InventoryOpt = Path("inventory.yaml"),
    as_json: JsonOpt = False,
) -> None:
    """Render every file into OUT (laid out as under ~/.config on a host)."""
    from labctl import fsio
    from labctl.load import load_inventory
    from labctl.render import render_all

    files = render_all(load_inventory(inventory).inventory)
    for rel, content in files.items():
        fsio.atomic_write(out_dir / rel, content)
    if as_json:
        emit_json({"out": str(out_dir), "files": list(files)})
        return
    for rel in files:
        out.print(f"wrote {out_dir / rel}")


@app.command()
def plan(
    inventory: InventoryOpt = Path("inventory.yaml"),
    root: Annotated[Path | None, typer.Option(
        "--root", help="Compare against this directory instead of the host's ~/.config (files only; "
                       "no unit states are read).")] = None,
    as_json: JsonOpt = False,
    diff: Annotated[bool, typer.Option("--diff/--no-diff", help="Show file diffs.")] = True,
) -> None:
    """Show what `labctl up` would change and do, changing nothing."""
    from labctl.layout import Layout
    from labctl.load import load_inventory
    from labctl.plan import make_plan, read_installed
    from labctl.render import render_all

    inv = load_inventory(inventory).inventory
    target = root if root is not None else Path(Layout.of(inv).config_root)
    installed = read_installed(target)
    states = None
    if root is None:
        states = _unit_states(inv, installed)
    result = make_plan(inv, render_all(inv), installed, states=states)
    if as_json:
        emit_json({"root": str(target), **result.as_dict()})
        return
    if result.empty:
        out.print(f"no changes: {len(result.unchanged)} file(s) up to date in {target}; no actions")
        return
    for change in result.files:
        out.print(f"{change.change:>6} {change.path}")
        if diff and change.diff:
            out.print(change.diff.rstrip("\n"), markup=False)
    out.print(f"{len(result.unchanged)} file(s) unchanged")
    out.print("actions:" if result.actions else "actions: none")
    for action in result.actions:
        out.print(f"  {action}", markup=False)


def _unit_states(inv, installed):  # type: ignore[no-untyped-def]
    """Unit states from the user manager, when there is one; None means files only."""
    from labctl.inventory import unit_name
    from labctl.layout import UNIT_DIR
    from labctl.systemd import UserManager

    manager = UserManager()
    if not manager.reachable()[0]:
        out.print("(no user manager here: comparing files only)", style="dim")
        return None
    units = {unit_name(n) for n in inv.enabled()}
    units |= {p.rsplit("/", 1)[-1] for p in installed if p.startswith(f"{UNIT_DIR}/")}
    facts = manager.show(sorted(units))
    return {u: f.state for u, f in facts.items()}


def fail(error: LabctlError, as_json: bool) -> NoReturn:
    if as_json:
        emit_json({"ok": False, "exit_code": error.exit_code, "errors": error.as_dicts()})
    for line in error.lines():
        sys.stderr.write(line + "\n")
    raise SystemExit(error.exit_code)


NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="Fail at once if another labctl run holds the lock.")]


def _say(as_json: bool):  # type: ignore[no-untyped-def]
    """Progress lines: stdout normally, stderr under --json so stdout stays one document."""
    if as_json:
        return lambda message: sys.stderr.write(message + "\n")
    return lambda message: out.print(message, markup=False)


def _load(inventory: Path):  # type: ignore[no-untyped-def]
    from labctl.load import load_inventory

    return load_inventory(inventory)


@app.command()
def up(
    inventory: InventoryOpt = Path("inventory.yaml"),
    no_wait: NoWaitOpt = False,
    no_monitoring: Annotated[bool, typer.Option("--no-monitoring", help="Leave the monitoring stack alone.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Converge this host to the inventory: install, daemon-reload, start in order, probe."""
    from labctl import apply

    report = apply.up(_load(inventory), say=_say(as_json), wait_lock=not no_wait, with_monitoring=not no_monitoring)
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
    inventory: InventoryOpt = Path("inventory.yaml"),
    purge: Annotated[bool, typer.Option("--purge", help="Also remove the installed files (kept as a generation).")] = False,
    no_wait: NoWaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Stop and disable every labctl unit (and the monitoring stack)."""
    from labctl import apply

    report = apply.down(_load(inventory), say=_say(as_json), purge=purge, wait_lock=not no_wait)
    if as_json:
        emit_json(report.as_dict())
        return
    out.print(f"down: {sum(1 for a in report.actions if a.startswith('stop'))} unit(s) stopped"
              + (f", {len(report.files)} file(s) removed" if purge else ""))


@app.command()
def restart(
    services: Annotated[list[str] | None, typer.Argument(help="Services to restart (default: all).")] = None,
    inventory: InventoryOpt = Path("inventory.yaml"),
    no_wait: NoWaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Restart services in dependency order, waiting for each to be ready."""
    from labctl import apply

    report = apply.restart(_load(inventory), services or [], say=_say(as_json), wait_lock=not no_wait)
    if as_json:
        emit_json(report.as_dict())


@app.command()
def rollback(
    inventory: InventoryOpt = Path("inventory.yaml"),
    no_wait: NoWaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Restore the installed files from before the last change, restart what changed, probe."""
    from labctl import apply

    report = apply.rollback(_load(inventory), say=_say(as_json), wait_lock=not no_wait)
    if as_json:
        emit_json(report.as_dict())
        return
    out.print(f"rollback: {len(report.files)} file(s) restored, {len(report.restarted)} unit(s) restarted")


@app.command()
def status(
    inventory: InventoryOpt = Path("inventory.yaml"),
    probe_timeout: Annotated[float, typer.Option(help="Seconds each probe may take.")] = 3.0,
    as_json: JsonOpt = False,
) -> None:
    """One table: unit state, restarts, PID, memory, uptime, port, probe, model, drift."""
    from labctl.status import gather

    report = gather(_load(inventory).inventory, probe_timeout=probe_timeout)
    if as_json:
        emit_json(report.as_dict())
    else:
        from labctl.clitables import status_table

        out.print(status_table(report))
    raise typer.Exit(0 if report.healthy else 1)


@app.command()
def logs(
    service: Annotated[str, typer.Argument(help="Service name from the inventory.")],
    inventory: InventoryOpt = Path("inventory.yaml"),
    follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n")] = 50,
) -> None:
    """The service's journal (journalctl --user)."""
    from labctl.inventory import unit_name
    from labctl.systemd import UserManager

    inv = _load(inventory).inventory
    if service not in inv.services:
        raise UsageError(f"no service named {service!r} in {inventory} (have: {', '.join(inv.services)})")
    manager = UserManager()
    argv = manager.journal_argv(unit_name(service), lines, follow)
    sys.stdout.flush()
    os.execvpe(argv[0], argv, manager.env)


@app.command()
def doctor(
    inventory: InventoryOpt = Path("inventory.yaml"),
    as_json: JsonOpt = False,
) -> None:
    """Check that this host can run the inventory; each line is ok, warn or fail, with the fix."""
    from labctl.doctor import failures, run_doctor

    checks = run_doctor(_load(inventory))
    if as_json:
        emit_json({"ok": not failures(checks), "checks": [c.as_dict() for c in checks]})
    else:
        for check in checks:
            style = {"ok": "green", "warn": "yellow", "fail": "red"}[check.status]
            out.print(f"[{style}]{check.status:<4}[/{style}] ", end="")
            out.print(str(check)[5:], markup=False)
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
        sys.stderr.write(f"labctl: {exc.format_message()}\n")  # type: ignore[attr-defined]
        raise SystemExit(UsageError.exit_code) from None
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if os.environ.get("LABCTL_DEBUG"):
            raise
        sys.stderr.write(f"labctl: internal error: {type(exc).__name__}: {exc} "
                         "(a labctl bug; rerun with LABCTL_DEBUG=1 for the traceback)\n")
        raise SystemExit(1) from None
    raise SystemExit(code if isinstance(code, int) else 0)
