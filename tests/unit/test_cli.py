"""CLI surface: usage errors are one line with exit 2; help and version work."""

from __future__ import annotations

import subprocess
import sys

import pytest

from labctl.cli import main


@pytest.mark.parametrize("args,message", [
    (["validate", "--bogus"], "labctl: No such option: --bogus"),
    (["nosuch"], "labctl: No such command 'nosuch'."),
    (["render"], "labctl: Missing option '--out' / '-o'."),
])
def test_usage_errors_are_one_line_exit_2(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == message + "\n"


def test_console_script_runs_and_no_traceback(tmp_path):
    """Through the real entry point, as an operator runs it."""
    bad = tmp_path / "inventory.yaml"
    bad.write_text("version: 1\nhost: {user: llm}\nservices: {x: {kind: nope}}\n")
    proc = subprocess.run([sys.executable, "-m", "labctl", "validate", "-i", str(bad)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"{bad}:3: services.x: unknown service kind 'nope'")


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("validate", "render", "plan"):
        assert command in out


def test_outage_inventory_refused_by_validate_and_up(tmp_path, capsys):
    """The operators' outage: a fallback naming a model the gateway does not define."""
    from harness.invtext import edit

    path = tmp_path / "inventory.yaml"
    path.write_text(edit(("bindings: [native]", "bindings: [native, llama3.1:latest]")))
    expected = (f"{path}:31: services.gateway.fallbacks.bindings[1]: chain 'bindings' falls back to undefined "
                "model 'llama3.1:latest' (routes: bindings, native)\n")
    for command in ("validate", "up", "plan"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "-i", str(path)])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == expected


@pytest.mark.parametrize("command", [["logs", "nosuch"], ["edit", "nosuch"]])
def test_logs_and_edit_name_the_inventory_they_read_without_i(tmp_path, monkeypatch, capsys, command):
    """Run without -i, the message names the file found (./inventory.yaml), never "None"."""
    from harness.invtext import BASE

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LABCTL_INVENTORY", raising=False)
    (tmp_path / "inventory.yaml").write_text(BASE)
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "None" not in err and "inventory.yaml" in err and "'nosuch'" in err, err
