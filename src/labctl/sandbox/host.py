"""Facts about the host: its user manager, apt mirror, pip settings and free ports."""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import errno
import io
import os
import shutil
import socket
import urllib.parse
from pathlib import Path

from labctl.host.proc import CommandFailed, run_cmd
from labctl.sandbox.base import SUITE, SandboxError


def host_has_user_manager() -> bool:
    """True when ``systemctl --user`` is usable here: PID 1 is systemd and the user bus exists."""
    try:
        pid1 = Path("/proc/1/comm").read_text().strip()
    except OSError:
        return False
    if pid1 != "systemd" or not Path("/run/systemd/system").is_dir():
        return False
    if shutil.which("systemctl") is None:
        return False
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    bus = Path(runtime) / "bus"
    if not bus.is_socket():
        return False
    env = {**os.environ, "XDG_RUNTIME_DIR": runtime}
    try:
        res = run_cmd(
            ["systemctl", "--user", "is-system-running"], check=False, timeout=10, env=env
        )
    except CommandFailed:
        return False
    return res.stdout.strip() in {"running", "degraded", "starting", "initializing", "maintenance"}


def apt_mirror(suite: str = SUITE) -> str:
    """The host's Debian mirror for ``suite`` (deb822 ``URIs:`` or one-line ``deb`` entry)."""
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    candidates: list[tuple[str, list[str]]] = []
    if deb822.is_file():
        for stanza in deb822.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith(("#", " ", "\t")):
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            if "uris" in fields:
                candidates.append((fields["uris"].split()[0], fields.get("suites", "").split()))
    classic = Path("/etc/apt/sources.list")
    if classic.is_file():
        for line in classic.read_text().splitlines():
            parts = [p for p in line.split() if not p.startswith("[")]
            if len(parts) >= 3 and parts[0] == "deb":
                candidates.append((parts[1], [parts[2]]))
    for uri, suites in candidates:
        if suite in suites:
            return uri.rstrip("/")
    raise SandboxError(f"no apt source for {suite} in {deb822} or {classic}")




@dataclasses.dataclass(frozen=True)
class PipSettings:
    """How the host's pip finds packages, to be replicated inside a machine."""

    conf: str  # merged pip.conf text (written to the guest's /etc/pip.conf)
    env: dict[str, str]  # PIP_* variables of this process
    paths: tuple[Path, ...]  # local files/dirs those settings name (bound in read-only)


def _pip_config_files() -> list[Path]:
    """pip's config files in increasing priority (global, user, PIP_CONFIG_FILE)."""
    files: list[Path] = []
    xdg_dirs = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(os.pathsep)
    files += [Path(d) / "pip" / "pip.conf" for d in reversed(xdg_dirs) if d]
    files.append(Path("/etc/pip.conf"))
    home = Path.home()
    files.append(home / ".pip" / "pip.conf")
    xdg_home = os.environ.get("XDG_CONFIG_HOME") or str(home / ".config")
    files.append(Path(xdg_home) / "pip" / "pip.conf")
    extra = os.environ.get("PIP_CONFIG_FILE")
    if extra and extra != os.devnull:
        files.append(Path(extra))
    return files


def _local_paths(value: str) -> list[Path]:
    found = []
    for token in value.split():
        if token.startswith("file://"):
            token = urllib.parse.unquote(urllib.parse.urlparse(token).path)
        if token.startswith("/"):
            found.append(Path(token))
    return found


def host_pip_settings() -> PipSettings:
    """Read the host's pip configuration (files and PIP_* variables) and what it points at."""
    merged = configparser.RawConfigParser()
    merged.optionxform = str  # type: ignore[assignment,method-assign]
    for path in _pip_config_files():
        if path.is_file():
            with contextlib.suppress(configparser.Error, OSError):
                merged.read(path)
    env = {k: v for k, v in os.environ.items() if k.startswith("PIP_") and k != "PIP_CONFIG_FILE"}
    values = [v for s in merged.sections() for _k, v in merged.items(s)] + list(env.values())
    paths: list[Path] = []
    for value in values:
        for path in _local_paths(value):
            # A PEP 503 tree ".../simple/" usually links to files beside it ("../../files/").
            if path.name == "simple" and path.is_dir():
                path = path.parent
            if path.exists() and path not in paths:
                paths.append(path)
    buf = io.StringIO()
    buf.write("# written by labctl sandbox from the host's pip configuration\n")
    merged.write(buf)
    return PipSettings(conf=buf.getvalue(), env=env, paths=tuple(paths))



def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False
