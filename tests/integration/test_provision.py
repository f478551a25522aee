"""Runtime provisioning: real venvs and real pip, with a small pinned package standing in
for the heavy runtimes (llama-cpp-python, LiteLLM, vLLM take minutes)."""

from __future__ import annotations

import json
from pathlib import Path

from labctl.load import load_inventory
from labctl.provision import STAMP, provision


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
