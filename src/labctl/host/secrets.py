"""Secrets: generated once, stored in 0600 files, never printed, logged or rendered.

Two shapes: an environment file (``VAR=value`` lines, for systemd's EnvironmentFile=)
and a bare file (the value alone, for Docker's file secrets such as Grafana's
``GF_SECURITY_ADMIN_PASSWORD__FILE``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from labctl.errors import OperationFailed

if TYPE_CHECKING:
    from labctl.inventory.schema import Inventory

# `labctl status` from its snapshot reads keys with read_env_file (labctl.ops.probes): what
# only the writers need (secrets' random source, fsio's temporary files) is imported there.

SECRET_MODE = 0o600


def new_value(prefix: str = "") -> str:
    import secrets as _random

    return prefix + _random.token_urlsafe(32)


def _check_mode(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise OperationFailed(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``VAR=value`` lines of an environment file: blank lines and ``#`` comments
    skipped, one pair of matching quotes around a value taken off."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def ensure_env_secret(path: Path, var: str, *, prefix: str = "sk-") -> bool:
    """Make sure ``path`` holds ``var``; generate a value if it does not. Returns True when
    something was written. Other variables in the file are kept."""
    path = Path(path)
    if path.exists():
        _check_mode(path)
        values = read_env_file(path)
        if values.get(var):
            return False
        text = path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            text += "\n"
    else:
        text = ""
    from labctl import fsio

    fsio.ensure_dir(path.parent, 0o700)
    fsio.atomic_write(path, text + f"{var}={new_value(prefix)}\n", mode=SECRET_MODE)
    return True


def ensure_file_secret(path: Path) -> bool:
    path = Path(path)
    if path.exists() and path.read_text(encoding="utf-8").strip():
        _check_mode(path)
        return False
    from labctl import fsio

    fsio.ensure_dir(path.parent, 0o700)
    fsio.atomic_write(path, new_value() + "\n", mode=SECRET_MODE)
    return True


def read_secret(path: Path, var: str | None = None) -> str:
    """The value, for labctl's own use (probes with the gateway key). Never print it."""
    path = Path(path)
    if var is None:
        return path.read_text(encoding="utf-8").strip()
    value = read_env_file(path).get(var)
    if value is None:
        raise OperationFailed(f"{path} does not define {var}")
    return value


def env_or_file(env_file: str | os.PathLike[str] | None, var: str) -> str | None:
    """Resolve a SecretRef-shaped pair: the file when given (None when it does not exist),
    else this process' environment."""
    if env_file is not None:
        return read_env_file(env_file).get(var) if os.path.exists(env_file) else None
    return os.environ.get(var)


def api_key_of(inv: Inventory, svc: object) -> str | None:
    """A backend's API key (``api_key`` of a llama server, vLLM or an external service), for
    labctl's own requests to it; None when it has none or it cannot be read."""
    ref = getattr(svc, "api_key", None)
    if ref is None:
        return None
    path = Path(inv.host.expand(ref.env_file)) if ref.env_file else None
    try:
        return env_or_file(path, ref.variable)
    except (OSError, UnicodeError):
        return None


def auth_headers(inv: Inventory, svc: object) -> dict[str, str]:
    """The header a keyed backend wants on every request but /health; empty for the others."""
    key = api_key_of(inv, svc)
    return {"Authorization": f"Bearer {key}"} if key else {}
