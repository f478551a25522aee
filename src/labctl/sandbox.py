"""A throwaway booted systemd machine, for hosts without a user systemd manager.

labctl renders systemd *user* units. Where the host cannot run them (CI, containers whose
PID 1 is not systemd) this module boots a small Debian bookworm tree under
``systemd-nspawn --boot`` and drives the lingering user ``labuser`` (uid 1000) inside it.

Pure library: no CLI imports. Every external command goes through :func:`run_cmd`
(argv lists only, logged), and every failure is a :class:`SandboxError` with a one-line message.

Layout and behaviour:

* :func:`build_rootfs` debootstraps the tree once into a cache directory (default
  ``~/.cache/labctl/sandbox/bookworm-rootfs``), atomically (temp dir, then rename). A stamp
  file inside (``etc/labctl-sandbox/stamp.json``) records suite, package list and format
  version; a change rebuilds. The tree inherits the host's CA trust (hosts behind an
  intercepting proxy need that for pip) and ``resolv.conf``; it holds an ed25519 key pair whose
  public half is authorised for root and labuser.
* :meth:`Machine.boot` starts ``systemd-nspawn --volatile=overlay``: every write inside goes to
  a tmpfs overlay and vanishes at shutdown, so the cached tree stays pristine.
* The container shares the host's network namespace: a port bound to 127.0.0.1 inside is
  reachable from the host, and **ports clash** with the host and with other sandboxes. sshd
  inside listens only on ``127.0.0.1:<ssh_port>`` (and does not start at all without a port).
* Commands run inside through ``nsenter -t <container PID 1> -a``: ``machinectl`` and
  ``systemd-run -M`` need a systemd host, which is exactly what is missing.
* Cgroups: nspawn is placed in its own cgroup directory, in each of the ``name=systemd`` v1
  and the v2 (``unified``) hierarchies that exist on the host; otherwise two containers
  collide. Resource limits (``MemoryMax=``...) are not reliably enforced in there.

Needs root and the host packages ``debootstrap`` and ``systemd-container``.
"""

from __future__ import annotations

import atexit
import configparser
import contextlib
import dataclasses
import errno
import fcntl
import io
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from labctl.errors import OperationFailed
from labctl.proc import CommandFailed, CommandResult, CommandTimeout, one_line, run_cmd, short

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
)
#: Bump when build_rootfs changes what it puts into the tree: forces a rebuild of caches.
ROOTFS_FORMAT = 1

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


# A command inside the sandbox timed out (labctl.proc raises it).
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


# --------------------------------------------------------------------------- host facts


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


# --------------------------------------------------------------------------- rootfs


def _stamp(packages: Sequence[str]) -> dict[str, object]:
    return {"format": ROOTFS_FORMAT, "suite": SUITE, "packages": sorted(packages)}


def ssh_key_path(rootfs: Path) -> Path:
    """Private key authorised for root@ and labuser@ inside machines booted from ``rootfs``."""
    return Path(rootfs) / META_DIR / "id_ed25519"


def rootfs_is_current(rootfs: Path, packages: Sequence[str] = PACKAGES) -> bool:
    stamp = Path(rootfs) / META_DIR / "stamp.json"
    try:
        return bool(json.loads(stamp.read_text()) == _stamp(packages))
    except (OSError, ValueError):
        return False


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def build_rootfs(
    cache_dir: Path | None = None,
    *,
    packages: Sequence[str] = PACKAGES,
    mirror: str | None = None,
    force: bool = False,
    timeout: float = 1800,
) -> Path:
    """Return a ready bookworm tree in ``cache_dir``, debootstrapping it first when needed.

    The build happens in a sibling temp dir that is renamed into place when complete, under an
    flock so concurrent callers build once. Takes 1-2 minutes and ~300 MB the first time.
    """
    _require_root()
    rootfs = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not force and rootfs_is_current(rootfs, packages):
        log.info("sandbox rootfs %s is current", rootfs)
        return rootfs
    _require_tools("debootstrap", "chroot")
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    lock_path = rootfs.parent / f".{rootfs.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and rootfs_is_current(rootfs, packages):  # built while we waited
            return rootfs
        for stale in rootfs.parent.glob(f".{rootfs.name}.tmp-*"):
            log.info("removing stale partial build %s", stale)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{rootfs.name}.tmp-", dir=rootfs.parent))
        started = time.monotonic()
        try:
            url = mirror or apt_mirror()
            log.info("debootstrap %s into %s from %s", SUITE, tmp, url)
            run_cmd(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(packages)}",
                    SUITE,
                    tmp,
                    url,
                ],
                timeout=timeout,
            )
            _configure_rootfs(tmp)
            (tmp / META_DIR / "stamp.json").write_text(
                json.dumps(_stamp(packages), indent=1) + "\n"
            )
            old = None
            if rootfs.exists() or rootfs.is_symlink():
                old = rootfs.parent / f".{rootfs.name}.tmp-old-{os.getpid()}"
                os.rename(rootfs, old)
            os.rename(tmp, rootfs)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info(
            "sandbox rootfs built in %.1fs, %d MB",
            time.monotonic() - started,
            _dir_size(rootfs) // 2**20,
        )
    return rootfs


def _write(path: Path, text: str, mode: int = 0o644, uid: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    path.write_text(text)
    os.chmod(path, mode)
    os.chown(path, uid, uid)


def _install_host_trust(root: Path) -> None:
    """Make the guest trust what the host trusts (intercepting proxies, corporate CAs)."""
    local = Path("/usr/local/share/ca-certificates")
    if local.is_dir():
        dest = root / "usr/local/share/ca-certificates"
        dest.mkdir(parents=True, exist_ok=True)
        for crt in local.rglob("*.crt"):
            target = dest / crt.relative_to(local)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(crt, target)
        run_cmd(["chroot", root, "update-ca-certificates"], check=False, timeout=120)
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.is_file():  # certificates added to the bundle by other means too
        target = root / "etc/ssl/certs/ca-certificates.crt"
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        shutil.copyfile(bundle, target)


def _configure_rootfs(root: Path) -> None:
    meta = root / META_DIR
    meta.mkdir(parents=True, exist_ok=True)
    os.chmod(meta, 0o700)

    _install_host_trust(root)
    resolv = Path("/etc/resolv.conf")
    if resolv.exists():
        _write(root / "etc/resolv.conf", resolv.read_text())

    # The lingering user: user@1000.service starts at boot with no login.
    run_cmd(["chroot", root, "useradd", "-m", "-u", str(UID), "-U", "-s", "/bin/bash", USER])
    linger = root / "var/lib/systemd/linger"
    linger.mkdir(parents=True, exist_ok=True)
    (linger / USER).touch()

    # ssh: a key pair for test tools, authorised for root and the user.
    key = meta / "id_ed25519"
    run_cmd(
        [
            "chroot",
            root,
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "labctl-sandbox",
            "-f",
            f"/{META_DIR}/id_ed25519",
        ]
    )
    pub = (meta / "id_ed25519.pub").read_text()
    run_cmd(["chroot", root, "ssh-keygen", "-A"])
    for home, uid in (("root", 0), (USER_HOME.lstrip("/"), UID)):
        ssh_dir = root / home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(ssh_dir, uid, uid)
        _write(ssh_dir / "authorized_keys", pub, 0o600, uid)
    os.chmod(key, 0o600)
    _write(
        root / "etc/ssh/sshd_config.d/00-labctl.conf",
        "# labctl sandbox: key auth only; the listen address comes per boot in\n"
        f"# {SSHD_LISTEN_CONF}.\n"
        "PermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UseDNS no\n",
    )
    # Shared network namespace: never let sshd take the host's port 22.
    _write(
        root / "etc/systemd/system/ssh.service.d/labctl.conf",
        f"[Unit]\nConditionPathExists={SSHD_LISTEN_CONF}\n",
    )
    # Units that have nothing to do in a throwaway container and only slow the boot.
    for unit in (
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "e2scrub_all.timer",
        "fstrim.timer",
        "systemd-timesyncd.service",
    ):
        link = root / "etc/systemd/system" / unit
        if not link.exists() and not link.is_symlink():
            link.symlink_to("/dev/null")
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------- pip from the host


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


# --------------------------------------------------------------------------- machine


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now (the sandbox shares the host's ports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _cgroup_roots() -> list[Path]:
    """Where to make the per-machine cgroup: the v1 name=systemd and the v2 hierarchies."""
    roots: list[Path] = []
    own: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _hid, controllers, path = line.split(":", 2)
            own[controllers] = path
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():  # pure v2
        return [base / own.get("", "/").lstrip("/")]
    if (base / "systemd" / "cgroup.procs").exists():
        roots.append(base / "systemd" / own.get("name=systemd", "/").lstrip("/"))
    if (base / "unified" / "cgroup.procs").exists():
        roots.append(base / "unified" / own.get("", "/").lstrip("/"))
    return roots


def _cgroup_pids(path: Path) -> list[int]:
    pids: list[int] = []
    for procs in path.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids += [int(p) for p in procs.read_text().split()]
    return pids


def _remove_cgroup(path: Path) -> None:
    if not path.is_dir():
        return
    for pid in _cgroup_pids(path):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while True:
        left = []
        for dirpath, _dirs, _files in os.walk(path, topdown=False):
            try:
                os.rmdir(dirpath)
            except FileNotFoundError:
                pass
            except OSError:
                left.append(dirpath)
        if not left or time.monotonic() > deadline:
            if left:
                log.warning("could not remove cgroup %s", left[-1])
            return
        time.sleep(0.1)


def _container_pid1(nspawn_pid: int) -> int | None:
    """The child of nspawn that is PID 1 of a new PID namespace, if it exists yet."""
    try:
        children = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children").read_text().split()
    except OSError:
        children = []
    if not children:  # kernels without CONFIG_PROC_CHILDREN
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == nspawn_pid:
                    children.append(stat.parent.name)
    for child in children:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("NSpid:"):
                    ids = line.split()[1:]
                    if len(ids) >= 2 and ids[-1] == "1":
                        return int(child)
    return None


def _validate_bind(host: Path, guest: Path) -> tuple[str, str]:
    h, g = os.fspath(host), os.fspath(guest)
    if ":" in h or ":" in g:
        raise SandboxError(f"bind path with ':' is not supported: {h} -> {g}")
    if not os.path.isabs(g):
        raise SandboxError(f"bind target must be absolute: {g}")
    if not os.path.exists(h):
        raise SandboxError(f"bind source does not exist: {h}")
    return os.path.abspath(h), g


@dataclasses.dataclass(frozen=True)
class ProjectInstall:
    src: str  # source tree inside the machine
    venv: str  # venv inside the machine
    seconds: float  # copy + venv + pip install


_live_machines: set[Machine] = set()


@atexit.register
def _shutdown_leftovers() -> None:
    for machine in list(_live_machines):
        with contextlib.suppress(Exception):
            machine.shutdown()


class Machine:
    """A booted nspawn container; create with :meth:`boot`, end with :meth:`shutdown`."""

    def __init__(
        self,
        name: str,
        rootfs: Path,
        ssh_port: int | None,
        proc: subprocess.Popen[bytes],
        state_dir: Path,
        cgroups: list[Path],
        pip: PipSettings | None,
    ) -> None:
        self.name = name
        self.rootfs = rootfs
        self.ssh_port = ssh_port
        self.state_dir = state_dir
        self.log_path = state_dir / "console.log"
        self.pip = pip
        self.pid: int = 0  # the container's systemd, as the host sees it
        self.timings: dict[str, float] = {}
        self._proc = proc
        self._cgroups = cgroups
        self._down = False

    # ------------------------------------------------------------- lifecycle

    @classmethod
    def boot(
        cls,
        name: str,
        rootfs: Path,
        ssh_port: int | None,
        bind_ro: Iterable[tuple[Path, Path]] = (),
        bind_rw: Iterable[tuple[Path, Path]] = (),
        *,
        inherit_pip: bool = True,
        timeout: float = 90,
    ) -> Machine:
        """Boot ``rootfs`` as machine ``name`` and wait until its system and labuser's manager run.

        ``bind_ro``/``bind_rw`` are (host path, guest path) pairs. With ``inherit_pip`` the host's
        pip configuration is written to the guest's /etc/pip.conf and the local indexes, wheel
        dirs and constraint files it names are bound in read-only at the same paths.
        ``ssh_port`` (None: no sshd) must be free on the host's 127.0.0.1: the machine shares the
        host's network namespace, so any port a service inside binds can clash with the host's
        and with other machines' (pick them with :func:`free_port`). ``name`` must be unique
        among running machines. ``timeout`` bounds the whole boot up to labuser's manager.
        """
        _require_root()
        _require_tools("systemd-nspawn", "nsenter")
        rootfs = Path(rootfs).resolve()
        if not rootfs_is_current(rootfs) and not (rootfs / "sbin/init").exists():
            raise SandboxError(f"{rootfs} is not a sandbox rootfs (run build_rootfs first)")
        ok_chars = all(c.isascii() and (c.isalnum() or c in "-.") for c in name)
        if not name or not ok_chars or len(name) > 64 or name[0] in "-.":
            raise SandboxError(f"bad machine name {name!r}: use letters, digits, '-' and '.'")
        if ssh_port is not None and _port_in_use(ssh_port):
            raise SandboxError(f"ssh port 127.0.0.1:{ssh_port} is already in use on the host")
        binds_ro: list[tuple[str, str]] = [_validate_bind(h, g) for h, g in bind_ro]
        binds_rw: list[tuple[str, str]] = [_validate_bind(h, g) for h, g in bind_rw]
        pip = host_pip_settings() if inherit_pip else None

        cgroups = [root / f"labctl-sandbox-{name}" for root in _cgroup_roots()]
        for cg in cgroups:
            if cg.exists() and _cgroup_pids(cg):
                raise SandboxError(f"a machine named {name} is already running ({cg})")
        for cg in cgroups:
            _remove_cgroup(cg)  # an empty leftover of a crashed run
            cg.mkdir(parents=True)

        state_dir = Path(tempfile.mkdtemp(prefix=f"labctl-sandbox-{name}-"))
        started = time.monotonic()
        try:
            proc = cls._start(name, rootfs, ssh_port, binds_ro, binds_rw, pip, state_dir, cgroups)
        except BaseException:
            for cg in cgroups:
                _remove_cgroup(cg)
            shutil.rmtree(state_dir, ignore_errors=True)
            raise
        machine = cls(name, rootfs, ssh_port, proc, state_dir, cgroups, pip)
        _live_machines.add(machine)
        try:
            machine._wait_booted(started, timeout)
        except BaseException:
            machine.shutdown()
            raise
        return machine

    @staticmethod
    def _start(
        name: str,
        rootfs: Path,
        ssh_port: int | None,
        binds_ro: list[tuple[str, str]],
        binds_rw: list[tuple[str, str]],
        pip: PipSettings | None,
        state_dir: Path,
        cgroups: list[Path],
    ) -> subprocess.Popen[bytes]:
        argv: list[str] = [
            "systemd-nspawn",
            "--boot",
            "--quiet",
            "-D",
            os.fspath(rootfs),
            "-M",
            name,
            "--register=no",
            "--keep-unit",
            "--console=read-only",
            "--volatile=overlay",
            "--link-journal=no",
            "--resolv-conf=copy-host",
        ]
        # The tree's /etc/hostname is the build host's: name the machine instead.
        (state_dir / "hostname").write_text(f"{name}\n")
        (state_dir / "hosts").write_text(
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        )
        binds_ro += [
            (os.fspath(state_dir / "hostname"), "/etc/hostname"),
            (os.fspath(state_dir / "hosts"), "/etc/hosts"),
        ]
        if ssh_port is not None:
            listen = state_dir / "sshd-listen.conf"
            listen.write_text(f"ListenAddress 127.0.0.1:{ssh_port}\n")
            binds_ro.append((os.fspath(listen), SSHD_LISTEN_CONF))
        if pip is not None:
            conf = state_dir / "pip.conf"
            conf.write_text(pip.conf)
            binds_ro.append((os.fspath(conf), "/etc/pip.conf"))
            taken = {g for _h, g in binds_ro + binds_rw}
            for path in pip.paths:
                if os.fspath(path) not in taken:
                    binds_ro.append(_validate_bind(path, path))
        argv += [f"--bind-ro={h}:{g}" for h, g in binds_ro]
        argv += [f"--bind={h}:{g}" for h, g in binds_rw]

        def enter_cgroups() -> None:  # runs in the child between fork and exec
            for cg in cgroups:
                (cg / "cgroup.procs").write_text(str(os.getpid()))

        log.info("boot: %s", shlex.join(argv))
        with open(state_dir / "console.log", "wb") as console:
            try:
                return subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    preexec_fn=enter_cgroups,
                    start_new_session=True,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise SandboxError(f"cannot start systemd-nspawn: {exc}") from exc

    def _fail_if_exited(self, what: str) -> None:
        if self._proc.poll() is not None:
            tail = (
                one_line(self.log_path.read_text(errors="replace"))
                if self.log_path.exists()
                else ""
            )
            raise SandboxError(
                f"systemd-nspawn for {self.name} exited {self._proc.returncode}"
                f" while {what}: {tail}"
            )

    def _wait_booted(self, started: float, timeout: float) -> None:
        deadline = started + timeout
        while True:
            self._fail_if_exited("starting")
            pid = _container_pid1(self._proc.pid)
            if pid is not None:
                self.pid = pid
                break
            if time.monotonic() > deadline:
                raise SandboxError(f"{self.name}: no container PID 1 after {timeout:g}s")
            time.sleep(0.02)
        self.timings["pid1"] = time.monotonic() - started

        state = ""
        while True:
            self._fail_if_exited("booting")
            left = deadline - time.monotonic()
            if left <= 0:
                raise SandboxError(f"{self.name}: system not running after {timeout:g}s ({state})")
            res = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=left)
            state = res.stdout.strip() or one_line(res.stderr)
            if state in ("running", "degraded"):
                break
            # "Failed to connect to bus" until the guest's dbus is up; anything else: retry too.
            time.sleep(0.1)
        self.timings["system_running"] = time.monotonic() - started
        self.system_state = state
        if state == "degraded":
            failed = self.run(["systemctl", "--failed", "--plain", "--no-legend"], check=False)
            log.warning(
                "%s booted degraded: %s",
                self.name,
                " ".join(ln.split()[0] for ln in failed.stdout.splitlines() if ln.strip()),
            )

        while True:
            self._fail_if_exited(f"waiting for user@{UID}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise SandboxError(f"{self.name}: user@{UID}.service not active after {timeout:g}s")
            res = self.run(["systemctl", "is-active", f"user@{UID}.service"], check=False)
            if res.stdout.strip() == "active":
                user = self.run(
                    ["systemctl", "--user", "is-system-running", "--wait"],
                    user=USER,
                    check=False,
                    timeout=max(left, 1),
                )
                if user.stdout.strip() in ("running", "degraded"):
                    break
            time.sleep(0.05)
        self.timings["user_manager"] = time.monotonic() - started
        log.info("%s up: %s", self.name, self.timings)

    def shutdown(self, timeout: float = 20) -> None:
        """Power the machine off (SIGTERM to nspawn), SIGKILL after ``timeout``; clean up."""
        if self._down:
            return
        self._down = True
        started = time.monotonic()
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not power off in %gs: killing it", self.name, timeout)
                # Kill the container's init first so that nspawn reaps it (killing nspawn first
                # would hand it to the host's PID 1, which may never reap it).
                if self.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGKILL)
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(10)
        for cg in self._cgroups:
            _remove_cgroup(cg)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        _live_machines.discard(self)
        self.timings["shutdown"] = time.monotonic() - started
        log.info("%s down in %.2fs", self.name, self.timings["shutdown"])

    @property
    def running(self) -> bool:
        return not self._down and self._proc.poll() is None

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"Machine({self.name!r}, pid={self.pid}, ssh_port={self.ssh_port})"

    # ------------------------------------------------------------- commands inside

    def run(
        self,
        argv: Sequence[str],
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = 120,
        *,
        check: bool = True,
        cwd: str | None = None,
        input: bytes | str | None = None,
    ) -> CommandResult:
        """Run ``argv`` inside, as root or (``user="labuser"``) as the lingering user.

        The environment is clean (not the host's): PATH, HOME, LANG, plus for the user
        XDG_RUNTIME_DIR and the session bus, plus ``env``.
        """
        if not self.pid or self._down:
            raise SandboxError(f"machine {self.name} is not running")
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        chdir = ["-C", cwd] if cwd else []
        enter = ["nsenter", "-t", str(self.pid), "-a", "--"]
        clean = ["env", "-i", *chdir, f"PATH={GUEST_PATH}", "LANG=C.UTF-8"]
        if user is None or user == "root":
            cmd = [*enter, *clean, "HOME=/root", "USER=root", "LOGNAME=root", *extra, *argv]
        else:
            home = USER_HOME if user == USER else f"/home/{user}"
            user_env = [f"HOME={home}", f"USER={user}", f"LOGNAME={user}"]
            if user == USER:
                rt = USER_RUNTIME_DIR
                user_env += [
                    f"XDG_RUNTIME_DIR={rt}",
                    f"DBUS_SESSION_BUS_ADDRESS=unix:path={rt}/bus",
                ]
            # env -C runs after runuser, so the directory is entered as the user.
            cmd = [*enter, "runuser", "-u", user, "--", *clean, *user_env, *extra, *argv]
        try:
            res = run_cmd(cmd, check=False, timeout=timeout, input=input)
        except SandboxTimeout:  # name the command as the caller wrote it
            raise SandboxTimeout(
                f"{self.name}: {short(argv)}: timed out after {timeout:g}s"
            ) from None
        if check and res.rc != 0:
            why = one_line(res.stderr) or one_line(res.stdout) or "no output"
            who = f" (as {user})" if user and user != "root" else ""
            raise SandboxError(f"{self.name}: {short(argv)}{who} exited {res.rc}: {why}")
        return res

    def user_systemctl(
        self, *args: str, check: bool = True, timeout: float | None = 60
    ) -> CommandResult:
        """``systemctl --user ARGS`` as labuser."""
        return self.run(["systemctl", "--user", *args], user=USER, check=check, timeout=timeout)

    def copy_in(
        self,
        src: Path | str,
        dst: str,
        *,
        owner: str | None = None,
        exclude: Iterable[str] = (),
        timeout: float | None = 300,
    ) -> None:
        """Copy a host file or directory tree to ``dst`` inside (tar through nsenter).

        ``owner`` "labuser" makes everything owned by uid/gid 1000 (default: root). Parent dirs
        of ``dst`` are created. Names matching an ``exclude`` glob are skipped at any depth; a
        glob starting with "/" only at the top of the tree.
        """
        src = Path(src)
        if not src.exists():
            raise SandboxError(f"copy_in: {src} does not exist")
        uid = UID if owner == USER else 0 if owner in (None, "root") else None
        if uid is None:
            raise SandboxError(f"copy_in: unknown owner {owner!r}")
        anchored = [p.lstrip("/") for p in exclude if p.startswith("/")]
        anywhere = [p for p in exclude if not p.startswith("/")]
        top = Path(dst).name

        def fix(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            rel = Path(info.name).relative_to(top) if info.name != top else Path(".")
            if any(Path(rel.name).match(p) for p in anywhere if rel.name):
                return None
            if len(rel.parts) == 1 and any(rel.match(p) for p in anchored):
                return None
            info.uid = info.gid = uid
            info.uname = info.gname = ""
            return info

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(src, arcname=Path(dst).name, filter=fix)
        parent = os.path.dirname(dst.rstrip("/")) or "/"
        self.mkdir(parent, owner=owner)
        self.run(
            ["tar", "-x", "--numeric-owner", "--same-owner", "-C", parent, "-f", "-"],
            input=buf.getvalue(),
            timeout=timeout,
        )

    def write_text(
        self, dst: str, text: str, *, owner: str | None = None, mode: int = 0o644
    ) -> None:
        """Write ``text`` to the file ``dst`` inside, owned by ``owner`` (default root)."""
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(dst).name
            local.write_text(text)
            os.chmod(local, mode)
            self.copy_in(local, dst, owner=owner)

    def mkdir(self, path: str, *, owner: str | None = None) -> None:
        """``mkdir -p`` inside; with ``owner`` the directories created below an existing
        ancestor in the user's home get that owner."""
        self.run(["mkdir", "-p", path])
        if owner and owner != "root" and path.startswith(USER_HOME + "/"):
            parts = Path(path).relative_to(USER_HOME).parts
            dirs = [f"{USER_HOME}/{'/'.join(parts[: i + 1])}" for i in range(len(parts))]
            self.run(["chown", f"{owner}:{owner}", *dirs])

    # ------------------------------------------------------------- ssh and python

    def ssh_identity_file(self) -> Path:
        return ssh_key_path(self.rootfs)

    def ssh_config(self) -> Path:
        """An ssh_config (OpenSSH and paramiko/testinfra) naming this machine as ``Host NAME``."""
        if self.ssh_port is None:
            raise SandboxError(f"machine {self.name} was booted without sshd")
        path = self.state_dir / "ssh_config"
        path.write_text(
            f"Host {self.name}\n"
            "  HostName 127.0.0.1\n"
            f"  Port {self.ssh_port}\n"
            "  User root\n"
            f"  IdentityFile {self.ssh_identity_file()}\n"
            "  IdentitiesOnly yes\n"
            "  StrictHostKeyChecking no\n"
            "  UserKnownHostsFile /dev/null\n"
            "  LogLevel ERROR\n"
        )
        return path

    def install_python_project(
        self,
        src_dir: Path | str,
        *,
        venv: str = VENV_DIR,
        extras: Sequence[str] = (),
        timeout: float = 1200,
    ) -> ProjectInstall:
        """Copy the source tree to /home/labuser/src/NAME and ``pip install`` it into ``venv``
        as labuser. pip uses the host's settings when the machine was booted with inherit_pip."""
        src_dir = Path(src_dir).resolve()
        if not (src_dir / "pyproject.toml").is_file() and not (src_dir / "setup.py").is_file():
            raise SandboxError(f"{src_dir} has no pyproject.toml or setup.py")
        started = time.monotonic()
        dst = f"{SRC_DIR}/{src_dir.name}"
        self.run(["rm", "-rf", dst])
        self.copy_in(
            src_dir,
            dst,
            owner=USER,
            exclude=(
                ".git",
                ".venv",
                "venv",
                "__pycache__",
                "*.pyc",
                ".pytest_cache",
                ".mypy_cache",
                ".ruff_cache",
                ".tox",
                "*.egg-info",
                "/build",
                "/dist",
                "node_modules",
            ),
        )
        self.mkdir(os.path.dirname(venv), owner=USER)
        self.run(["python3", "-m", "venv", venv], user=USER, timeout=timeout)
        pip_env = dict(self.pip.env) if self.pip else {}
        spec = dst + (f"[{','.join(extras)}]" if extras else "")
        self.run(
            [f"{venv}/bin/pip", "install", "--no-input", "--disable-pip-version-check", spec],
            user=USER,
            env=pip_env,
            timeout=timeout,
            cwd=USER_HOME,
        )
        seconds = time.monotonic() - started
        self.timings["install_python_project"] = seconds
        log.info("installed %s into %s in %.1fs", src_dir.name, venv, seconds)
        return ProjectInstall(src=dst, venv=venv, seconds=seconds)
