"""`labctl sandbox`: a throwaway booted systemd machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from labctl.cli import JsonOpt, _say, app, emit_json, out

sandbox_app = typer.Typer(help="A throwaway booted systemd machine, for hosts without a user manager.",
                          no_args_is_help=True, rich_markup_mode=None)
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
    from labctl.sandbox import detached

    facts = detached.sandbox_up(name, project, ssh_port=ssh_port, say=_say(as_json))
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
    from labctl.sandbox import detached

    raise typer.Exit(detached.sandbox_exec(name, command, user=user))


@sandbox_app.command("copy")
def sandbox_copy(
    source: Annotated[Path, typer.Argument(help="A file or directory on this host.")],
    destination: Annotated[str, typer.Argument(help="The path inside the machine.")],
    name: NameOpt = "labctl-sandbox",
) -> None:
    """Copy a file or directory into the machine, owned by labuser."""
    from labctl.sandbox import detached

    detached.sandbox_copy(name, source, destination)


@sandbox_app.command("down")
def sandbox_down(name: NameOpt = "labctl-sandbox") -> None:
    """Power the machine off; everything written inside it is gone."""
    from labctl.sandbox import detached

    detached.sandbox_down(name)
    out.print(f"sandbox {name} is down")


@sandbox_app.command("list")
def sandbox_list(as_json: JsonOpt = False) -> None:
    """Running sandbox machines."""
    from labctl.sandbox import detached

    machines = detached.sandbox_list()
    if as_json:
        emit_json(machines)
        return
    for m in machines:
        out.print(f"{m.get('name')}  ssh {m.get('ssh_port') or '-'}  {m.get('state', '')}", markup=False)
