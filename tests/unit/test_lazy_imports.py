"""Start-up stays lazy: a command imports only what it needs (bench/startup.py has the figures).

Each case runs labctl in a fresh interpreter and lists the modules it imported. What a
help page or `version` must not pull in: pydantic (~60-90 ms), jinja2, httpx, yaml, rich's
tables, markdown and typer's rich help formatter.
"""

from __future__ import annotations

import json
import subprocess
import sys

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
    modules = imported(["--help"], prelude="import labctl.inventory.load, labctl.ops.switch")
    assert {"httpx", "pydantic", "yaml"} <= set(heavy(modules))


def test_every_command_group_uses_the_plain_help_formatter() -> None:
    """rich_markup_mode=None on every Typer, the root's and each group's (a new group that
    forgets it brings rich's help formatter back: ~70 ms on its help page)."""
    from labctl.cli import app, main  # noqa: F401 - main registers every group

    groups = [app, *(g.typer_instance for g in app.registered_groups)]
    assert len(groups) > 1
    assert [g.info.name or "labctl" for g in groups if g.rich_markup_mode is not None] == []
