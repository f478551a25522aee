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
from labctl.errors import LabctlError, UsageError

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
    result = make_plan(inv, render_all(inv), read_installed(target), states=None)
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


def fail(error: LabctlError, as_json: bool) -> NoReturn:
    if as_json:
        emit_json({"ok": False, "exit_code": error.exit_code, "errors": error.as_dicts()})
    for line in error.lines():
        sys.stderr.write(line + "\n")
    raise SystemExit(error.exit_code)


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
