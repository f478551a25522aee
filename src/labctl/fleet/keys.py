"""The backends' API keys, generated once on the controller and shipped by the playbook.

One env file per keyed backend under the fleet's state dir (``keys/NAME.env``, mode 0600,
``LABCTL_API_KEY_NAME=...``): the same file lands on the backend's host and on each gateway's
host at ``~/.config/labctl/secrets/api-keys/NAME.env``. A key is never printed or logged;
the playbook copies it with ``no_log``.
"""

from __future__ import annotations

from pathlib import Path

from labctl import fsio
from labctl.host import secrets
from labctl.load.fleet import key_variable


def key_file(state_dir: Path, service: str) -> Path:
    return state_dir / "keys" / f"{service}.env"


def ensure_keys(state_dir: Path, services: list[str]) -> dict[str, Path]:
    """Each service's key file, generated when missing; returns the new ones' paths too."""
    fsio.ensure_dir(state_dir / "keys", 0o700)
    out = {}
    for service in services:
        path = key_file(state_dir, service)
        secrets.ensure_env_secret(path, key_variable(service))
        out[service] = path
    return out
