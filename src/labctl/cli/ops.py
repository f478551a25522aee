"""`labctl gateway|monitoring`: the gateway check and the monitoring stack."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from labctl.cli import InventoryOpt, JsonOpt, _load, app, emit_json, out, print_lines
from labctl.errors import OperationFailed

gateway_app = typer.Typer(help="The LiteLLM gateway.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(gateway_app, name="gateway")


@gateway_app.command("check")
def gateway_check(
    inventory: InventoryOpt = None,
    timeout: Annotated[float, typer.Option(help="Seconds each request may take.")] = 60.0,
    wide: Annotated[bool, typer.Option("--wide", help="One table row per check, at its natural width.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Ask every route for one token and exercise every fallback chain; route -> backend -> latency."""
    from labctl.ops.gateway_check import all_ok, check_gateway, gateway_of
    from labctl.ops.probes import gateway_key

    inv = _load(inventory).inventory
    _, gw = gateway_of(inv)
    key = gateway_key(inv, gw)
    if key is None:
        raise OperationFailed(f"cannot read {gw.master_key.variable} (from {gw.master_key.env_file or 'the environment'})")
    results = check_gateway(inv, key, timeout=timeout)
    ok = all_ok(results)
    if as_json:
        emit_json({"ok": ok, "results": [r.as_dict() for r in results]})
    elif wide:
        from labctl.cli.tables import gateway_table, unfolded

        out.print(unfolded(gateway_table(results), out))
    else:
        from labctl.cli.tables import gateway_lines

        # Headers and errors come from the gateway and backends: shown, never obeyed.
        print_lines(gateway_lines(results, out.width))
    raise typer.Exit(0 if ok else OperationFailed.exit_code)


monitoring_app = typer.Typer(help="The Prometheus + Grafana stack (docker compose).", no_args_is_help=True,
                             rich_markup_mode=None)
app.add_typer(monitoring_app, name="monitoring")


@monitoring_app.command("up")
def monitoring_up(inventory: InventoryOpt = None, as_json: JsonOpt = False) -> None:
    """Render the monitoring files, then `docker compose up --wait` them."""
    from labctl import fsio
    from labctl.ops import monitoring
    from labctl.render import render_all
    from labctl.inventory.layout import Layout

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
    inventory: InventoryOpt = None,
    purge: Annotated[bool, typer.Option("--purge", help="Also remove the data volumes.")] = False,
) -> None:
    """Stop and remove the monitoring containers (data volumes stay unless --purge)."""
    from labctl.ops import monitoring
    from labctl.inventory.layout import Layout

    inv = _load(inventory).inventory
    layout = Layout.of(inv)
    result = monitoring.down(inv, layout, Path(layout.config_root), purge=purge)
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
