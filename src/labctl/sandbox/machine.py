"""A booted machine: boot, commands inside, shutdown."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import io
import logging
import os
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from labctl.host.proc import CommandResult, one_line, run_cmd, short
from labctl.sandbox.base import (
    GUEST_PATH,
    SRC_DIR,
    SSHD_LISTEN_CONF,
    UID,
    USER,
    USER_HOME,
    USER_RUNTIME_DIR,
    VENV_DIR,
    SandboxError,
    SandboxTimeout,
    _require_root,
    _require_tools,
)
from labctl.sandbox.host import PipSettings, _port_in_use, host_pip_settings
from labctl.sandbox.procs import (
    _cgroup_pids,
    _cgroup_roots,
    _container_pid1,
    _remove_cgroup,
    host_boot_id,
    proc_stat,
    signal_process,
    wait_process_gone,
)
from labctl.sandbox.registry import (
    MachineRecord,
    read_record,
    record_names,
    record_path,
    remove_record,
    stale_reason,
    write_record,
)
from labctl.sandbox.rootfs import rootfs_is_current, ssh_key_path

log = logging.getLogger(__name__)


def _validate_bind(host: Path, guest: Path) -> tuple[str, str]:
    h, g = os.fspath(host), os.fspath(guest)
    if ":" in h or ":" in g:
        raise SandboxError(f"bind path with ':' is not supported: {h} -> {g}")
    if not os.path.isabs(g):
        raise SandboxError(f"bind target must be absolute: {g}")
    if not os.path.exists(h):
        raise SandboxError(f"bind source does not exist: {h}")
    return os.path.abspath(h), g


def _valid_name(name: str) -> bool:
    ok_chars = all(c.isascii() and (c.isalnum() or c in "-.") for c in name)
    return bool(name) and ok_chars and len(name) <= 64 and name[0] not in "-."


def _netns_path(netns: Path | str) -> str:
    """A network namespace's file: a path as given, a bare name under /run/netns."""
    text = os.fspath(netns)
    path = text if "/" in text else f"/run/netns/{text}"
    if not text or ":" in path or not os.path.isabs(path):
        raise SandboxError(f"bad network namespace {text!r}")
    if not os.path.exists(path):
        raise SandboxError(f"network namespace {path} does not exist (ip netns add?)")
    return path


def _host_port(address: str, port: int) -> str:
    """``address:port`` as sshd's ListenAddress wants it (IPv6 in brackets)."""
    if not address or any(c.isspace() for c in address):
        raise SandboxError(f"bad listen address {address!r}")
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _check_record_paths(record: MachineRecord, path: Path) -> None:
    """Shutdown deletes a record's cgroups and state dir: accept only the shapes boot makes."""
    prefix = f"labctl-sandbox-{record.name}"
    bad = [
        cg
        for cg in record.cgroups
        if not cg.startswith("/sys/fs/cgroup/") or Path(cg).name != prefix
    ]
    state = Path(record.state_dir)
    if not state.is_absolute() or not state.name.startswith(prefix + "-"):
        bad.append(record.state_dir)
    if bad:
        raise SandboxError(f"sandbox record {path} names unexpected paths: {', '.join(bad)}")


def _kill_group(proc: subprocess.Popen[bytes], sig: int, grace: float = 0) -> None:
    """Signal ``proc``'s process group; after ``grace`` seconds SIGKILL it; reap ``proc``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    if sig != signal.SIGKILL:
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


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


def list_machines(registry: Path | None = None) -> list[MachineRecord]:
    """Records of the machines that are running now, by name. Stale records (their processes
    are gone) are deleted on the way."""
    found = []
    for name in record_names(registry):
        record = read_record(name, registry)
        if record is None:
            continue
        why = stale_reason(record)
        if why is not None:
            log.info("removing stale sandbox record %s: %s", name, why)
            remove_record(name, registry, if_nspawn=(record.nspawn_pid, record.nspawn_start))
            continue
        found.append(record)
    return found


class Machine:
    """A booted nspawn container; create with :meth:`boot` (or re-attach to one that another
    process booted and detached with :meth:`attach`), end with :meth:`shutdown`."""

    def __init__(
        self,
        name: str,
        rootfs: Path,
        ssh_port: int | None,
        proc: subprocess.Popen[bytes] | None,
        state_dir: Path,
        cgroups: list[Path],
        pip: PipSettings | None,
        *,
        nspawn_pid: int | None = None,
        binds_ro: Sequence[tuple[str, str]] = (),
        binds_rw: Sequence[tuple[str, str]] = (),
        ssh_address: str = "127.0.0.1",
        network_namespace: str | None = None,
    ) -> None:
        self.name = name
        self.rootfs = rootfs
        self.ssh_port = ssh_port
        self.ssh_address = ssh_address
        #: The network namespace the machine runs in (a path, e.g. /run/netns/NAME), or None
        #: when it shares the host's.
        self.network_namespace = network_namespace
        self.state_dir = state_dir
        self.log_path = state_dir / "console.log"
        self.pip = pip
        self.pid: int = 0  # the container's systemd, as the host sees it
        self.timings: dict[str, float] = {}
        self.system_state = ""
        #: Free-form facts saved with the record (e.g. what was installed inside).
        self.labels: dict[str, str] = {}
        self.binds_ro = list(binds_ro)
        self.binds_rw = list(binds_rw)
        self._proc = proc  # None for a machine re-attached by PID
        self._cgroups = cgroups
        self._down = False
        self.nspawn_pid: int = proc.pid if proc is not None else int(nspawn_pid or 0)
        if self.nspawn_pid <= 0:
            raise SandboxError(f"machine {name}: no systemd-nspawn process")
        # Start times pair each PID with one process: PIDs get reused.
        st = proc_stat(self.nspawn_pid)
        self._nspawn_start: int = st.start if st is not None else -1
        self._pid_start: int = -1
        self._registry: Path | None = None  # the record file this machine wrote
        self.created = time.time()

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
        ssh_address: str = "127.0.0.1",
        network_namespace: Path | str | None = None,
        hostname: str | None = None,
    ) -> Machine:
        """Boot ``rootfs`` as machine ``name`` and wait until its system and labuser's manager run.

        ``bind_ro``/``bind_rw`` are (host path, guest path) pairs. With ``inherit_pip`` the host's
        pip configuration is written to the guest's /etc/pip.conf and the local indexes, wheel
        dirs and constraint files it names are bound in read-only at the same paths.
        ``ssh_port`` (None: no sshd) must be free on the host's 127.0.0.1: the machine shares the
        host's network namespace, so any port a service inside binds can clash with the host's
        and with other machines' (pick them with :func:`free_port`). ``name`` must be unique
        among running machines. ``timeout`` bounds the whole boot up to labuser's manager.

        ``network_namespace``: run the machine in that network namespace (a path, or a name
        under /run/netns as ``ip netns add`` makes them) instead of the host's; sshd then
        listens on ``ssh_address:ssh_port`` there (the address must already be on one of the
        namespace's interfaces) and the host's ports are not checked. ``hostname``: the
        machine's host name (default ``name``).
        """
        _require_root()
        _require_tools("systemd-nspawn", "nsenter")
        rootfs = Path(rootfs).resolve()
        netns = _netns_path(network_namespace) if network_namespace is not None else None
        host = hostname or name
        if not _valid_name(host):
            raise SandboxError(f"bad host name {host!r}: use letters, digits, '-' and '.'")
        if not rootfs_is_current(rootfs) and not (rootfs / "sbin/init").exists():
            raise SandboxError(f"{rootfs} is not a sandbox rootfs (run build_rootfs first)")
        if not _valid_name(name):
            raise SandboxError(f"bad machine name {name!r}: use letters, digits, '-' and '.'")
        if netns is None and ssh_port is not None and _port_in_use(ssh_port):
            raise SandboxError(f"ssh port 127.0.0.1:{ssh_port} is already in use on the host")
        binds_ro: list[tuple[str, str]] = [_validate_bind(h, g) for h, g in bind_ro]
        binds_rw: list[tuple[str, str]] = [_validate_bind(h, g) for h, g in bind_rw]
        requested_ro, requested_rw = list(binds_ro), list(binds_rw)
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
            proc = cls._start(
                name,
                rootfs,
                ssh_port,
                list(binds_ro),
                list(binds_rw),
                pip,
                state_dir,
                cgroups,
                ssh_address=ssh_address,
                network_namespace=netns,
                hostname=host,
            )
        except BaseException:
            for cg in cgroups:
                _remove_cgroup(cg)
            shutil.rmtree(state_dir, ignore_errors=True)
            raise
        machine = cls(
            name,
            rootfs,
            ssh_port,
            proc,
            state_dir,
            cgroups,
            pip,
            binds_ro=requested_ro,
            binds_rw=requested_rw,
            ssh_address=ssh_address,
            network_namespace=netns,
        )
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
        *,
        ssh_address: str = "127.0.0.1",
        network_namespace: str | None = None,
        hostname: str | None = None,
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
        if network_namespace is not None:
            argv.append(f"--network-namespace-path={network_namespace}")
        host = hostname or name
        if host != name:
            argv.append(f"--hostname={host}")
        # The tree's /etc/hostname is the build host's: name the machine instead.
        (state_dir / "hostname").write_text(f"{host}\n")
        (state_dir / "hosts").write_text(
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{host}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        )
        binds_ro += [
            (os.fspath(state_dir / "hostname"), "/etc/hostname"),
            (os.fspath(state_dir / "hosts"), "/etc/hosts"),
        ]
        if ssh_port is not None:
            listen = state_dir / "sshd-listen.conf"
            listen.write_text(f"ListenAddress {_host_port(ssh_address, ssh_port)}\n")
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
        if self._proc is not None and self._proc.poll() is not None:
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
            pid = _container_pid1(self.nspawn_pid)
            st = proc_stat(pid) if pid is not None else None
            if pid is not None and st is not None:
                self.pid, self._pid_start = pid, st.start
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
        """Power the machine off (SIGTERM to nspawn), SIGKILL after ``timeout``; clean up.

        Works the same for a machine this process booted and for one re-attached by PID (then
        nspawn is signalled by PID and its exit awaited by polling /proc). Deletes the
        machine's registry record, if it has one."""
        if self._down:
            return
        self._down = True
        started = time.monotonic()
        if not self._nspawn_exited():
            self._signal_nspawn(signal.SIGTERM)
            if not self._wait_nspawn(timeout):
                log.warning("%s did not power off in %gs: killing it", self.name, timeout)
                # Kill the container's init first so that nspawn reaps it (killing nspawn first
                # would hand it to the host's PID 1, which may never reap it).
                if self.pid:
                    signal_process(self.pid, self._pid_start, signal.SIGKILL)
                if not self._wait_nspawn(5):
                    self._signal_nspawn(signal.SIGKILL)
                    if not self._wait_nspawn(10):
                        log.warning("%s: systemd-nspawn %d survived SIGKILL", self.name,
                                    self.nspawn_pid)
        for cg in self._cgroups:
            _remove_cgroup(cg)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        _live_machines.discard(self)
        if self._registry is not None:
            remove_record(
                self.name, self._registry, if_nspawn=(self.nspawn_pid, self._nspawn_start)
            )
        self.timings["shutdown"] = time.monotonic() - started
        log.info("%s down in %.2fs", self.name, self.timings["shutdown"])

    def _nspawn_exited(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is not None
        st = proc_stat(self.nspawn_pid)
        return st is None or st.start != self._nspawn_start or st.exited

    def _signal_nspawn(self, sig: int) -> None:
        if self._proc is None:
            signal_process(self.nspawn_pid, self._nspawn_start, sig)
        elif self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    def _wait_nspawn(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for nspawn to exit; False if it still runs."""
        if self._proc is None:
            return wait_process_gone(self.nspawn_pid, self._nspawn_start, timeout)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    @property
    def running(self) -> bool:
        return not self._down and not self._nspawn_exited()

    # ------------------------------------------------------------- outliving this process

    def record(self) -> MachineRecord:
        """What a later process needs to re-attach (see :meth:`attach`)."""
        pip = None
        if self.pip is not None:
            pip = {
                "conf": self.pip.conf,
                "env": dict(self.pip.env),
                "paths": [os.fspath(p) for p in self.pip.paths],
            }
        return MachineRecord(
            name=self.name,
            nspawn_pid=self.nspawn_pid,
            nspawn_start=self._nspawn_start,
            pid=self.pid,
            pid_start=self._pid_start,
            boot_id=host_boot_id(),
            cgroups=[os.fspath(c) for c in self._cgroups],
            ssh_port=self.ssh_port,
            ssh_address=self.ssh_address,
            network_namespace=self.network_namespace,
            state_dir=os.fspath(self.state_dir),
            rootfs=os.fspath(self.rootfs),
            binds_ro=list(self.binds_ro),
            binds_rw=list(self.binds_rw),
            pip=pip,
            created=self.created,
            system_state=self.system_state,
            timings=dict(self.timings),
            labels=dict(self.labels),
        )

    def save(self, registry: Path | None = None) -> Path:
        """Write (or rewrite) this machine's registry record; :meth:`shutdown` deletes it.

        The machine still shuts down when this process exits: see :meth:`detach`."""
        if not self.running or not self.pid or self._pid_start < 0:
            raise SandboxError(f"machine {self.name} is not running")
        path = write_record(self.record(), registry)
        self._registry = path.parent
        return path

    def detach(self, registry: Path | None = None) -> Path:
        """Let the machine outlive this process: write its registry record and drop it from the
        shutdown-at-exit set. Later processes use :meth:`attach`; returns the record's path."""
        path = self.save(registry)
        _live_machines.discard(self)
        log.info("%s detached: %s", self.name, path)
        return path

    @classmethod
    def attach(cls, name: str, registry: Path | None = None) -> Machine:
        """Re-create the machine ``name`` that some process booted and detached.

        The record's PIDs must still be the same processes (start times, host boot id); if not,
        the stale record is deleted and SandboxError says "no running sandbox named NAME". The
        attached machine is not shut down when this process exits."""
        _require_root()
        record = read_record(name, registry)
        if record is None:
            raise SandboxError(f"no running sandbox named {name}")
        why = stale_reason(record)
        if why is not None:
            remove_record(name, registry, if_nspawn=(record.nspawn_pid, record.nspawn_start))
            raise SandboxError(f"no running sandbox named {name} (stale record removed: {why})")
        _check_record_paths(record, record_path(name, registry))
        pip = None
        if record.pip is not None:
            pip = PipSettings(
                conf=str(record.pip.get("conf", "")),
                env={str(k): str(v) for k, v in dict(record.pip.get("env", {})).items()},
                paths=tuple(Path(p) for p in record.pip.get("paths", [])),
            )
        machine = cls(
            record.name,
            Path(record.rootfs),
            record.ssh_port,
            None,
            Path(record.state_dir),
            [Path(c) for c in record.cgroups],
            pip,
            nspawn_pid=record.nspawn_pid,
            binds_ro=record.binds_ro,
            binds_rw=record.binds_rw,
            ssh_address=record.ssh_address,
            network_namespace=record.network_namespace,
        )
        machine._nspawn_start = record.nspawn_start
        machine.pid, machine._pid_start = record.pid, record.pid_start
        machine.timings = dict(record.timings)
        machine.system_state = record.system_state
        machine.labels = dict(record.labels)
        machine.created = record.created
        machine._registry = record_path(name, registry).parent
        return machine

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
        cmd = self.enter_command(argv, user, env, cwd)
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

    def enter_command(
        self,
        argv: Sequence[str],
        user: str | None,
        env: Mapping[str, str] | None,
        cwd: str | None,
    ) -> list[str]:
        """The host argv that runs ``argv`` inside (nsenter, runuser, a clean env): for
        :meth:`run` and :meth:`call`, and for a caller that runs it its own way (in a
        terminal of tmux's: tests/system/test_top.py)."""
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
        return cmd

    def call(
        self,
        argv: Sequence[str],
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        *,
        cwd: str | None = None,
    ) -> int:
        """Run ``argv`` inside like :meth:`run`, but with this process's stdin, stdout and
        stderr (output streams live, nothing is captured); return its exit status.

        A signal death is reported shell-style as 128+N. Ctrl-C (KeyboardInterrupt) and
        ``timeout`` end the command's whole process group (SIGINT or SIGKILL) and raise."""
        if not argv:
            raise SandboxError("no command given")
        cmd = self.enter_command(argv, user, env, cwd)
        log.debug("call: %s", shlex.join(cmd))
        try:
            # Own process group, so that a timeout or Ctrl-C reaches runuser and the command
            # (nsenter forks into the container's PID namespace; its children would live on).
            proc = subprocess.Popen(cmd, start_new_session=True)
        except OSError as exc:
            raise SandboxError(f"cannot run nsenter: {exc.strerror or exc}") from exc
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGKILL)
            raise SandboxTimeout(
                f"{self.name}: {short(argv)}: timed out after {timeout:g}s"
            ) from None
        except KeyboardInterrupt:
            _kill_group(proc, signal.SIGINT, grace=5)
            raise
        return 128 - rc if rc < 0 else rc

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
        """An ssh_config (OpenSSH and paramiko/testinfra) naming this machine as ``Host NAME``.

        For a machine in its own network namespace it works only from a namespace that
        reaches ``ssh_address``."""
        if self.ssh_port is None:
            raise SandboxError(f"machine {self.name} was booted without sshd")
        path = self.state_dir / "ssh_config"
        path.write_text(
            f"Host {self.name}\n"
            f"  HostName {self.ssh_address}\n"
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
