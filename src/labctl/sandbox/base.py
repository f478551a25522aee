"""Constants, the error type and the pre-flight checks shared by the sandbox modules."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from labctl.errors import OperationFailed
from labctl.host.proc import CommandTimeout

log = logging.getLogger(__name__)

SUITE = "bookworm"
PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "dbus-user-session",
    "libpam-systemd",
    "python3",
    "python3-venv",
    "python3-pip",
    "iproute2",
    "procps",
    "curl",
    "sudo",
    "openssh-server",
    "ca-certificates",
    # OpenMP runtime: llama.cpp builds (llama-server, llama-cpp-python) bound in from the
    # host's tool venvs link against libgomp.so.1.
    "libgomp1",
    # vLLM's CPU kernels (vllm._C) link against libnuma.so.1; without it the engine core
    # fails to initialise inside the machine.
    "libnuma1",
    # kind: redis runs Debian's redis-server (the gateway's cache, in the system tier).
    "redis-server",
    "prometheus-redis-exporter",
)
#: Bump when build_rootfs changes what it puts into the tree: forces a rebuild of caches.
#: 2: labuser in systemd-journal.
ROOTFS_FORMAT = 2

USER = "labuser"
UID = 1000
USER_HOME = f"/home/{USER}"
USER_RUNTIME_DIR = f"/run/user/{UID}"
VENV_DIR = f"{USER_HOME}/.local/share/labctl/venv"
SRC_DIR = f"{USER_HOME}/src"

#: Inside the tree: stamp.json, the ssh key pair.
META_DIR = "etc/labctl-sandbox"
#: sshd reads this (bound in per boot); ssh.service only starts when it exists.
SSHD_LISTEN_CONF = "/etc/ssh/sshd_config.d/01-labctl-listen.conf"

GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

HOST_PACKAGES_HINT = "apt-get install -y --no-install-recommends debootstrap systemd-container"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "labctl" / "sandbox" / f"{SUITE}-rootfs"


class SandboxError(OperationFailed):
    """A sandbox step failed; the message is one line."""


# A command inside the sandbox timed out (labctl.host.proc raises it).
SandboxTimeout = CommandTimeout


def _require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise SandboxError(f"missing {', '.join(missing)}: {HOST_PACKAGES_HINT}")


def missing_host_tools() -> list[str]:
    """Host commands the sandbox needs and that are absent (empty list: all there)."""
    return [t for t in ("debootstrap", "systemd-nspawn", "nsenter") if shutil.which(t) is None]


def _require_root() -> None:
    if os.geteuid() != 0:
        raise SandboxError("the sandbox needs root (debootstrap, systemd-nspawn, nsenter)")

