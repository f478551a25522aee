"""Runtime provisioning: real venvs and real pip, with a small pinned package standing in
for the heavy runtimes (llama-cpp-python, LiteLLM, vLLM take minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labctl.errors import MultiLineFailure, OperationFailed
from labctl.host.provision import STAMP, provision
from labctl.inventory.load import load_inventory


def inventory(tmp_path: Path, spec: str) -> object:
    text = (f"version: 1\nhost: {{user: llm, home: {tmp_path}, gpu: false}}\nservices:\n"
            f"  gateway:\n    kind: litellm\n    runtime:\n      venv: ~/venvs/gw\n      pip: [\"{spec}\"]\n"
            f"    routes: [{{name: n, service: native}}]\n"
            f"  native: {{kind: llama-server, binary: /bin/true, alias: n, n_gpu_layers: 0}}\n"
            "monitoring: {enabled: false}\n")
    return load_inventory("inventory.yaml", text=text).inventory


def test_provision_is_idempotent_and_follows_the_pins(tmp_path: Path) -> None:
    said: list[str] = []
    venv = tmp_path / "venvs/gw"
    first = provision(inventory(tmp_path, "six==1.16.0"), say=said.append)
    assert [p.changed for p in first] == [True]
    assert (venv / "lib").exists() and list(venv.glob("lib/python3*/site-packages/six.py"))
    assert json.loads((venv / STAMP).read_text())["pip"] == ["six==1.16.0"]
    assert any("installing six==1.16.0" in line for line in said)
    again = provision(inventory(tmp_path, "six==1.16.0"), say=said.append)
    assert [p.changed for p in again] == [False]
    changed = provision(inventory(tmp_path, "six==1.17.0"), say=said.append)
    assert [p.changed for p in changed] == [True]
    assert list(venv.glob("lib/python3*/site-packages/six-1.17.0.dist-info"))


def wheel_program_inventory(tmp_path: Path, spec: str, command: str, pip_env: str = "") -> object:
    text = (f"version: 1\nhost: {{user: llm, home: {tmp_path}, gpu: false}}\nservices:\n"
            f"  native:\n    kind: llama-server\n    alias: n\n    n_gpu_layers: 0\n"
            f"    runtime:\n      venv: ~/venvs/native\n      pip: [\"{spec}\"]\n      command: {command}\n"
            + (f"      pip_env: {{{pip_env}}}\n" if pip_env else "")
            + "monitoring: {enabled: false}\n")
    return load_inventory("inventory.yaml", text=text).inventory


def test_a_program_from_a_wheel_is_provisioned_and_its_command_checked(tmp_path: Path) -> None:
    # pyflakes stands in for the llama-server wheel: a small package with a console script.
    inv = wheel_program_inventory(tmp_path, "pyflakes==3.2.0", "pyflakes")
    said: list[str] = []
    assert [p.changed for p in provision(inv, say=said.append)] == [True]
    program = tmp_path / "venvs/native/bin/pyflakes"
    assert program.is_file()
    assert inv.services["native"].program(inv.host) == str(program)  # type: ignore[union-attr]
    assert [p.changed for p in provision(inv, say=said.append)] == [False]

    wrong = wheel_program_inventory(tmp_path / "other", "pyflakes==3.2.0", "llama-server")
    with pytest.raises(OperationFailed, match=r"installed no executable bin/llama-server"):
        provision(wrong, say=said.append)
    # No stamp: the next up tries again instead of trusting the venv.
    assert not (tmp_path / "other/venvs/native" / STAMP).exists()


def test_a_failed_install_shows_pips_last_lines(tmp_path: Path) -> None:
    inv = wheel_program_inventory(tmp_path, "labctl-no-such-package==0.0.1", "x", pip_env="PIP_NO_INDEX: '1'")
    with pytest.raises(MultiLineFailure) as info:
        provision(inv, say=lambda _line: None)
    lines = info.value.lines()
    assert lines[0].startswith("labctl: native: installing labctl-no-such-package==0.0.1 failed")
    assert any(line.startswith("  | ") and "No matching distribution" in line for line in lines[1:]), lines


def test_verbose_passes_pips_own_output_through(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from labctl import progress

    progress.configure(live=False, verbose=True)
    try:
        provision(inventory(tmp_path, "six==1.16.0"), say=lambda _line: None)
    finally:
        progress.configure(live=False, verbose=False)
    assert "six" in capfd.readouterr().err  # pip's "Collecting six==1.16.0" / "Successfully installed"
