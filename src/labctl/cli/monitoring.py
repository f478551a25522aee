"""`labctl monitoring up|down|status`: the Prometheus + Grafana stack (docker compose)."""

from __future__ import annotations

from typing import Annotated

import typer

from labctl.cli import InventoryOpt, JsonOpt, _load, app, emit_json, out

monitoring_app = typer.Typer(help="The Prometheus + Grafana stack (docker compose).", no_args_is_help=True,
                             rich_markup_mode=None)
app.add_typer(monitoring_app, name="monitoring")


@monitoring_app.command("up")
def monitoring_up(inventory: InventoryOpt = None, as_json: JsonOpt = False) -> None:
    """Render the monitoring files, then `docker compose up --wait` them."""
    from labctl.ops import monitoring

    result = monitoring.install_and_up(_load(inventory).inventory)
    if as_json:
        emit_json(result.as_dict())
    else:
        out.print(f"monitoring: {result.summary}", markup=False)


@monitoring_app.command("down")
def monitoring_down(
    inventory: InventoryOpt = None,
    purge: Annotated[bool, typer.Option("--purge", help="Also remove the data volumes.")] = False,
) -> None:
    """Stop and remove the monitoring containers (data volumes stay unless --purge)."""
    from labctl.ops import monitoring

    result = monitoring.down_here(_load(inventory).inventory, purge=purge)
    out.print(f"monitoring: {result.summary}", markup=False)


@monitoring_app.command("status")
def monitoring_status(inventory: InventoryOpt = None, as_json: JsonOpt = False) -> None:
    """The monitoring containers' state and health, from the Docker engine."""
    from labctl.ops import monitoring

    inv = _load(inventory).inventory
    engine = monitoring.engine_status()
    containers = monitoring.status(inv) if engine.reachable else []
    if as_json:
        emit_json({"engine": engine.as_dict(), "containers": [c.as_dict() for c in containers]})
    else:
        from labctl.text import shown

        out.print(shown(engine.detail), markup=False)
        for c in containers:
            out.print(shown(f"  {c.service:<14} {c.state:<10} {c.health or '-':<10} {c.image}"), markup=False)
    raise typer.Exit(0 if engine.reachable and containers and all(c.ok for c in containers) else 1)
