"""host.library_dir: a models library beside the models dir (library/<dir>/<file>.gguf),
with one rule for switch, doctor/--check-files and list: a model's real file is under the
models dir or the library, nothing else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labctl.host.gguf_writer import write_tiny_gguf
from labctl.load import checks
from labctl.load import load_inventory
from labctl.ops.switch import SwitchRefused, list_models, validate

pytestmark = pytest.mark.unit


def layout(tmp_path: Path, library: bool) -> object:
    (tmp_path / "models").mkdir()
    write_tiny_gguf(tmp_path / "library/qwen/qwen-tiny.gguf")
    write_tiny_gguf(tmp_path / "elsewhere/stray.gguf")
    os.symlink("../library/qwen/qwen-tiny.gguf", tmp_path / "models/current.gguf")
    lib = f"  library_dir: {tmp_path}/library\n" if library else ""
    text = (f"version: 1\nhost:\n  user: llm\n  home: {tmp_path}\n  gpu: false\n  models_dir: {tmp_path}/models\n{lib}"
            "services:\n  native: {kind: llama-server, binary: /bin/true, alias: n, n_gpu_layers: 0}\n"
            "monitoring: {enabled: false}\n")
    return load_inventory("inventory.yaml", text=text)


def file_errors(loaded) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.message for e in checks.file_problems(loaded.inventory, loaded.source) if e.path.endswith("model")]


def test_current_may_point_into_the_library(tmp_path: Path) -> None:
    loaded = layout(tmp_path, library=True)
    assert file_errors(loaded) == []
    inv = loaded.inventory
    path, info = validate(inv, "qwen/qwen-tiny.gguf")
    assert path == tmp_path / "library/qwen/qwen-tiny.gguf" and info.architecture
    # A bare name not in the models dir is looked up in the library's top level.
    write_tiny_gguf(tmp_path / "library/top.gguf")
    assert validate(inv, "top.gguf")[0] == tmp_path / "library/top.gguf"
    listed = {m.name: m for m in list_models(inv)}
    assert listed["qwen/qwen-tiny.gguf"].current and listed["qwen/qwen-tiny.gguf"].problem is None
    with pytest.raises(SwitchRefused, match="outside the models dir .* and the library"):
        validate(inv, str(tmp_path / "elsewhere/stray.gguf"))
    # A link in the library that leaves it is outside too.
    os.symlink(tmp_path / "elsewhere/stray.gguf", tmp_path / "library/qwen/sneaky.gguf")
    with pytest.raises(SwitchRefused, match="outside"):
        validate(inv, "qwen/sneaky.gguf")
    assert "model switch refuses it" in str({m.name: m for m in list_models(inv)}["qwen/sneaky.gguf"].problem)


def test_without_a_library_the_same_link_is_refused_everywhere(tmp_path: Path) -> None:
    loaded = layout(tmp_path, library=False)
    (message,) = file_errors(loaded)
    assert "outside the models dir" in message and "and the library" not in message
    with pytest.raises(SwitchRefused, match="outside the models dir"):
        validate(loaded.inventory, str(tmp_path / "library/qwen/qwen-tiny.gguf"))
