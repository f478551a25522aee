"""The GPU memory budget of `labctl model switch`: how the figure is computed, and --strict."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.host.gguf_writer import write_tiny_gguf
from labctl.load import load_inventory
from labctl.ops.switch import SwitchRefused, budget, switch, validate


def inventory(tmp_path: Path, gib: float | None, layers: int = 2) -> object:
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    write_tiny_gguf(models / "tiny.gguf")
    extra = f"  gpu_memory_gib: {gib}\n" if gib is not None else ""
    text = (f"version: 1\nhost:\n  user: llm\n  home: {tmp_path}\n  gpu: true\n{extra}services:\n"
            f"  native: {{kind: llama-server, binary: /bin/true, alias: n, n_gpu_layers: {layers}}}\n"
            f"  bindings: {{kind: llama-cpp-python, runtime: {{python: /bin/true}}, alias: b, "
            f"n_gpu_layers: 1}}\nmonitoring: {{enabled: false}}\n")
    return load_inventory("inventory.yaml", text=text).inventory


def test_budget_sums_the_offloaded_share_per_service(tmp_path: Path) -> None:
    inv = inventory(tmp_path, gib=1.0)
    _, info = validate(inv, "tiny.gguf")
    fits, text = budget(inv, info)
    size = info.size / 2**30
    assert fits is True
    # native offloads 2 of 2 blocks (all of it), bindings 1 of 2 (half): 1.5 x the file.
    assert text.startswith(f"{size * 1.5:.2f} GiB fits the 1 GiB budget")
    assert "native: 2/2 layers" in text and "bindings: 1/2 layers" in text
    assert "weights only, KV cache not counted" in text


def test_over_budget_warns_or_refuses_with_strict(tmp_path: Path) -> None:
    inv = inventory(tmp_path, gib=0.0001)
    _, info = validate(inv, "tiny.gguf")
    fits, text = budget(inv, info)
    assert fits is False and "EXCEEDS the 0.0001 GiB budget" in text
    link = tmp_path / "models/current.gguf"
    with pytest.raises(SwitchRefused) as err:
        switch(inv, "tiny.gguf", manager=None, say=lambda _: None, strict=True)
    assert "over the GPU memory budget (--strict)" in str(err.value)
    assert not link.exists()  # refused before anything was touched


def test_no_budget_configured_is_said(tmp_path: Path) -> None:
    inv = inventory(tmp_path, gib=None)
    _, info = validate(inv, "tiny.gguf")
    assert budget(inv, info) == (True, "no GPU memory budget configured (host.gpu_memory_gib); not checked")
