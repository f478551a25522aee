"""Start-up stays lazy: a command imports only what it needs (bench/startup.py has the figures).

Each case runs labctl in a fresh interpreter and lists the modules it imported. What a
help page or `version` must not pull in: pydantic (~60-90 ms), jinja2, httpx, yaml, rich's
tables, markdown and typer's rich help formatter. What `labctl status` from its snapshot must
not pull in: see LEAN_OUT below. And labctl imports no private interpreter module.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

HEAVY = ("pydantic", "jinja2", "httpx", "yaml", "rich.table", "rich.markdown", "typer.rich_utils", "gguf", "docker")

SNIPPET = """
import json, sys
sys.argv = ["labctl", *json.loads(sys.argv[1])]
{prelude}
try:
    from labctl.cli import main
    main()
except SystemExit:
    pass
sys.stdout.flush()
print("\\n" + json.dumps(sorted(sys.modules)))
"""


def imported(args: list[str], prelude: str = "") -> set[str]:
    res = subprocess.run([sys.executable, "-c", SNIPPET.format(prelude=prelude), json.dumps(args)],
                         capture_output=True, text=True, timeout=60, check=False,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "COLUMNS": "80"})
    assert res.returncode == 0, res.stderr[-2000:]
    return set(json.loads(res.stdout.strip().splitlines()[-1]))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m in HEAVY or m.split(".")[0] in HEAVY and m.split(".")[0] != "rich")


@pytest.mark.parametrize("args", [["--help"], ["model", "--help"], ["gateway", "--help"], ["sandbox", "--help"]])
def test_help_imports_nothing_heavy(args: list[str]) -> None:
    modules = imported(args)
    assert "labctl.cli" in modules
    found = heavy(modules)
    # typer coerces a sub-command's parameters through pydantic: a group's help pays it.
    if args != ["--help"]:
        found = [m for m in found if m.split(".")[0] != "pydantic"]
    assert found == []


def test_version_imports_no_renderer_client_or_table() -> None:
    modules = imported(["version"])
    assert [m for m in heavy(modules) if m.split(".")[0] != "pydantic"] == []


def test_the_check_sees_a_heavy_import() -> None:
    """Control: the same harness reports what a prelude imports."""
    modules = imported(["--help"], prelude="import labctl.load, labctl.ops.gateway_check")
    assert {"httpx", "pydantic", "yaml"} <= set(heavy(modules))


def test_every_command_group_uses_the_plain_help_formatter() -> None:
    """rich_markup_mode=None on every Typer, the root's and each group's (a new group that
    forgets it brings rich's help formatter back: ~70 ms on its help page)."""
    from labctl.cli import app, main  # noqa: F401 - main registers every group

    groups = [app, *(g.typer_instance for g in app.registered_groups)]
    assert len(groups) > 1
    assert [g.info.name or "labctl" for g in groups if g.rich_markup_mode is not None] == []


# --- `labctl status` from its snapshot (labctl.__main__): public modules, none of the CLI's

# What the snapshot path keeps out: the CLI and what it parses and renders with (typer and
# its click, pydantic, yaml, jinja2, rich's console), the clients it does not need (httpx,
# httpcore, http.client with email), logging (labctl.host.proc logs only where logging is
# loaded), and labctl's inventory, render and CLI layers.
LEAN_OUT = ("typer", "click", "pydantic", "yaml", "jinja2", "httpx", "httpcore", "anyio", "rich.console", "rich.text",
            "rich.table", "email", "http.client", "logging", "concurrent.futures", "labctl.cli", "labctl.inventory",
            "labctl.render", "labctl.fsio", "labctl.secretscan")


def fast_status(tmp_path: Path, kinds: dict[str, str], *args: str, prelude: str = "") -> tuple[str, set[str]]:
    """``labctl status`` of an inventory of stand-in servers (``kinds``: name -> kind), from its
    snapshot (a stand-in systemctl answering): (stdout, modules imported)."""
    from test_status_snapshot import serve, systemctl_path
    from test_status_snapshot import labctl as run_status

    servers = serve(kinds)
    try:
        rows = "\n".join(f"  {n}: {{kind: {k}, binary: /bin/true, port: {s.server_address[1]}, alias: {n}, "
                         f"n_gpu_layers: 0}}" if k == "llama-server" else
                         f"  {n}: {{kind: {k}, runtime: {{python: {sys.executable}}}, port: {s.server_address[1]}, "
                         f"alias: {n}, n_gpu_layers: 0}}" for (n, k), s in zip(kinds.items(), servers.values()))
        inventory = tmp_path / "inventory.yaml"
        inventory.write_text(f"version: 1\nhost: {{user: labuser, gpu: false, home: {tmp_path}/home, "
                             f"models_dir: {tmp_path}/home/models}}\nservices:\n{rows}\nmonitoring: {{enabled: false}}\n")
        env = {"PATH": systemctl_path(tmp_path, "answers"), "HOME": str(tmp_path / "me"), "COLUMNS": "80"}
        code, _, _ = run_status(inventory, snapshot=False, env=env)  # the full CLI keeps the snapshot
        assert code == 0
        code, out, modules = run_status(inventory, *args, snapshot=True, env=env, prelude=prelude)
        assert code == 0, out
    finally:
        for s in servers.values():
            s.shutdown()
    assert "labctl.ops.status" in modules and "labctl.cli" not in modules  # it ran from the snapshot
    return out, set(modules)


def found(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """The modules that are one of ``names`` or inside one."""
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_status_from_its_snapshot_imports_none_of_the_cli(tmp_path: Path) -> None:
    """llama-cpp-python's probe reads a JSON answer (/v1/models), h11 reads every answer."""
    out, modules = fast_status(tmp_path, {"native": "llama-server", "bindings": "llama-cpp-python"})
    assert out.startswith("labctl status (") and "ok  native (llama-server) active/running" in out
    assert "ok  bindings (llama-cpp-python) active/running" in out and {"h11", "json", "rich.cells"} <= modules
    assert found(modules, LEAN_OUT) == []


def test_status_json_imports_none_of_the_cli(tmp_path: Path) -> None:
    out, modules = fast_status(tmp_path, {"native": "llama-server", "bindings": "llama-cpp-python"}, "--json")
    assert '"healthy": true' in out and "json" in modules
    assert found(modules, LEAN_OUT) == []


def test_the_snapshot_check_sees_what_a_prelude_imports(tmp_path: Path) -> None:
    """Control: the same harness reports a module kept out that something imported."""
    _, modules = fast_status(tmp_path, {"native": "llama-server"},
                             prelude="import logging, http.client, labctl.inventory.schema")
    assert {"logging", "http.client", "email", "labctl.inventory.schema"} <= set(found(modules, LEAN_OUT))


# --- no private interpreter modules -----------------------------------------------------------


def private_imports(source: str) -> list[str]:
    """The modules ``source`` imports whose top-level name is private (``_socket``, ``_json``,
    ``_thread``...): CPython's own halves of public modules, with no contract to rely on."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return sorted(n for n in names if n.startswith("_") and n != "__future__")


def test_labctl_imports_no_private_interpreter_module() -> None:
    """Only public modules: where a private one shows up under status (python -X importtime),
    a public module imported it (socket imports _socket, json _json, threading _thread)."""
    src = Path(__file__).resolve().parents[2] / "src" / "labctl"
    found_ = {str(path.relative_to(src)): private_imports(path.read_text()) for path in sorted(src.rglob("*.py"))}
    assert {path: names for path, names in found_.items() if names} == {}


def test_the_private_import_check_sees_one() -> None:
    """Control: the check reports each form of import."""
    source = ("import _socket\nfrom _json import make_scanner\nimport os, _thread as t\n"
              "from __future__ import annotations\n")
    assert private_imports(source) == ["_json", "_socket", "_thread"]
