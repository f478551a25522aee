"""Command-line options are declared once (labctl.cmdline): the typer command is made from
the declaration, and `labctl status` from its snapshot reads its arguments with it, as click
reads them, or leaves them to the full CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from labctl import cmdline
from labctl.cmdline import STATUS, parse

pytestmark = pytest.mark.unit

FAST = [o for o in STATUS if o.snapshot]


def click_reads(args: list[str]) -> dict[str, object]:
    """What the typer command's parser (click) makes of ``args``, as plain values."""
    import typer

    from labctl.cli import app, main  # noqa: F401 - main registers every group

    command = typer.main.get_command(app).commands["status"]  # type: ignore[attr-defined]
    params = command.make_context("status", list(args)).params
    return {k: str(v) if isinstance(v, Path) else v for k, v in params.items()}


def test_the_typer_command_takes_exactly_the_declared_options() -> None:
    import typer

    from labctl.cli import app, main  # noqa: F401

    command = typer.main.get_command(app).commands["status"]  # type: ignore[attr-defined]
    declared = {o.name: (set(o.flags), o.default) for o in STATUS}
    made = {p.name: (set(p.opts), p.default) for p in command.params if p.name != "help"}
    assert made == declared


@pytest.mark.parametrize("args", [
    [], ["-i", "x.yaml"], ["-ix.yaml"], ["--inventory", "x.yaml"], ["--inventory=x.yaml"], ["-i", "a", "-i", "b"],
    ["--json"], ["--probe-timeout", "2"], ["--probe-timeout=0.5", "--json", "-i", "x.yaml"], ["-i", "--x.yaml"],
    ["-i", "-"], ["-i=x.yaml"], ["-i", ""], ["--probe-timeout", " 7 "], ["--probe-timeout", "1e1"],
])
def test_the_fast_path_reads_arguments_as_click_does(args: list[str], monkeypatch) -> None:
    monkeypatch.delenv("LABCTL_INVENTORY", raising=False)
    fast = parse(FAST, args)
    if fast is None:  # left to the full CLI: only where an argument could read two ways
        assert any(a.startswith("--") and a.partition("=")[0] not in {f for o in FAST for f in o.flags} for a in args)
        return
    clicked = click_reads(args)
    # A path is a path to both (click's is a Path already; find_inventory makes the other one).
    fast = {k: str(Path(v)) if k == "inventory" and v is not None else v  # type: ignore[arg-type]
            for k, v in fast.items()}
    assert fast == {name: clicked[name] for name in fast}, (fast, clicked)


def test_the_environment_gives_the_inventory_as_click_does(monkeypatch) -> None:
    monkeypatch.setenv("LABCTL_INVENTORY", "from-env.yaml")
    assert parse(FAST, [])["inventory"] == click_reads([])["inventory"] == "from-env.yaml"  # type: ignore[index]
    given = ["-i", "x.yaml"]
    assert parse(FAST, given)["inventory"] == click_reads(given)["inventory"] == "x.yaml"  # type: ignore[index]
    monkeypatch.setenv("LABCTL_INVENTORY", "")
    assert parse(FAST, [])["inventory"] is click_reads([])["inventory"] is None  # type: ignore[index]


@pytest.mark.parametrize("args", [["--wide"], ["--endpoints"], ["--host", "a"], ["--help"], ["--inv", "x.yaml"],
                                  ["--json=yes"], ["x.yaml"], ["--probe-timeout", "soon"], ["-i"], ["-x"], ["--", "a"]])
def test_what_the_fast_path_does_not_read_goes_to_the_full_cli(args: list[str]) -> None:
    assert parse(FAST, args) is None


# One fake option, added to the declaration only (in a fresh interpreter, before
# labctl.cli makes its commands).
ADD_OPTION = """
import json, sys
from labctl import cmdline
fake = cmdline.Option("fake_level", ("--fake-level",), "float", 1.0, help="A fake option.", snapshot={snapshot})
if {add}:
    cmdline.STATUS = (*cmdline.STATUS, fake)
args = ["--fake-level", "2", "-i", sys.argv[1]]
fast = cmdline.parse([o for o in cmdline.STATUS if o.snapshot], args)
from labctl.cli import main
try:
    main(["status", *args])
except SystemExit as exc:
    code = exc.code
print(json.dumps({{"fast": fast, "code": code}}))
"""


def add_an_option(tmp_path: Path, *, add: bool, snapshot: bool) -> tuple[dict[str, object], str]:
    missing = tmp_path / "missing.yaml"
    res = subprocess.run([sys.executable, "-c", ADD_OPTION.format(add=add, snapshot=snapshot), str(missing)],
                         capture_output=True, text=True, timeout=60, check=False,
                         env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "COLUMNS": "200"})
    return json.loads(res.stdout.strip().splitlines()[-1]), res.stderr


@pytest.mark.parametrize("snapshot", [True, False])
def test_a_status_option_is_added_in_one_place(tmp_path: Path, snapshot: bool) -> None:
    """Declared in labctl.cmdline.STATUS only: the typer command takes it (status then fails
    on the missing inventory, not on the option), and the fast path reads it, or, when the
    snapshot cannot answer with it, leaves the command to the full CLI."""
    said, err = add_an_option(tmp_path, add=True, snapshot=snapshot)
    assert said["code"] == 2 and "No such option" not in err and "missing.yaml" in err, err
    if snapshot:
        assert said["fast"] == {"inventory": str(tmp_path / "missing.yaml"), "probe_timeout": 3.0, "as_json": False,
                                "fake_level": 2.0}
    else:
        assert said["fast"] is None


def test_an_option_not_declared_is_refused_by_both(tmp_path: Path) -> None:
    """Control: without the declaration, neither path takes it."""
    said, err = add_an_option(tmp_path, add=False, snapshot=True)
    assert said == {"fast": None, "code": 2} and "No such option: --fake-level" in err


def test_an_option_of_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind 'int' is not one of"):
        cmdline.Option("n", ("--n",), "int")
