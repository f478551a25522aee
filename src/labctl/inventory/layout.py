"""Where labctl's files live on a host.

Rendered files are keyed by their path relative to the *config root*, which on a host is
``~/.config`` (so ``systemd/user/labctl-x.service`` lands where the user manager reads
units). ``labctl render --out DIR`` writes the same tree under DIR, and ``labctl plan
--root DIR`` compares against it, so a render can be inspected or staged anywhere.

Absolute paths *inside* rendered files always point at the real host locations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from labctl.inventory.schema import Inventory, unit_name

UNIT_DIR = "systemd/user"
LABCTL_DIR = "labctl"


@dataclass(frozen=True)
class Layout:
    home: str
    state_dir: str
    models_dir: str

    @classmethod
    def of(cls, inv: Inventory) -> "Layout":
        host = inv.host
        return cls(home=host.home_dir, state_dir=host.expand(host.state_dir),
                   models_dir=host.expand(host.models_dir))

    @property
    def config_root(self) -> str:
        return str(PurePosixPath(self.home) / ".config")

    def installed(self, relpath: str) -> PurePosixPath:
        return PurePosixPath(self.config_root) / relpath

    def litellm_file(self, name: str) -> str:
        """A file the gateway's config loads or is started by, beside it (relative path)."""
        return self.litellm_config.rsplit("/", 1)[0] + "/" + name

    def unit(self, service: str) -> str:
        return f"{UNIT_DIR}/{unit_name(service)}"

    litellm_config = f"{LABCTL_DIR}/litellm/config.yaml"

    @staticmethod
    def redis_config(service: str) -> str:
        return f"{LABCTL_DIR}/redis/{service}.conf"
    monitoring_dir = f"{LABCTL_DIR}/monitoring"
    compose_file = f"{LABCTL_DIR}/monitoring/compose.yaml"

    @property
    def secrets_dir(self) -> str:
        return str(self.installed(f"{LABCTL_DIR}/secrets"))

    def working_directory(self, service: str) -> str:
        return str(PurePosixPath(self.state_dir) / service)

    # The only directories under the config root that labctl reads or writes.
    managed_dirs = [UNIT_DIR, f"{LABCTL_DIR}/litellm", f"{LABCTL_DIR}/monitoring", f"{LABCTL_DIR}/redis"]

    @staticmethod
    def is_managed(relpath: str) -> bool:
        """Files labctl owns: a stale one (service removed) is deleted by plan/up.
        Secrets are never managed this way: they outlive any render."""
        if relpath.startswith(f"{UNIT_DIR}/"):
            name = relpath.removeprefix(f"{UNIT_DIR}/")
            # Only unit files directly in the unit dir: `systemctl enable` puts symlinks
            # to them in default.target.wants/, which belong to the manager, not to us.
            return "/" not in name and name.startswith("labctl-") and name.endswith(".service")
        return relpath.startswith((f"{LABCTL_DIR}/litellm/", f"{LABCTL_DIR}/monitoring/", f"{LABCTL_DIR}/redis/"))
