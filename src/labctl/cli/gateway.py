"""`labctl gateway check`: every route and fallback chain asked for one token."""

from __future__ import annotations

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
    from labctl.ops.gateway_check import all_ok, check_gateway

    results = check_gateway(_load(inventory).inventory, timeout=timeout)
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
