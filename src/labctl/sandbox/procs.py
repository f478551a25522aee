"""Host-side process and cgroup plumbing for nspawn machines (/proc, /sys/fs/cgroup)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)


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



# ----------------------------------------------------------------- process identity
#
# A machine outlives the process that booted it, so later processes know nspawn and the
# container's init only by PID. A PID alone can be reused: each is paired with its start time
# (field 22 of /proc/PID/stat, clock ticks after boot) and the host's boot id.


@dataclasses.dataclass(frozen=True)
class ProcStat:
    pid: int
    comm: str
    state: str  # R, S, D, Z (zombie), X (dead)...
    ppid: int
    start: int  # clock ticks after the host's boot

    @property
    def exited(self) -> bool:
        return self.state in ("Z", "X", "x")


def proc_stat(pid: int) -> ProcStat | None:
    """The parsed /proc/PID/stat, or None when there is no such process."""
    if pid <= 0:
        return None
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    head, _, rest = text.rpartition(")")  # comm may contain spaces and parentheses
    fields = rest.split()
    try:
        return ProcStat(pid, head.partition("(")[2], fields[0], int(fields[1]), int(fields[19]))
    except (IndexError, ValueError):
        return None


def host_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def same_process(pid: int, start: int) -> bool:
    """True when PID is still the live (not zombie) process that started at ``start``."""
    st = proc_stat(pid)
    return st is not None and st.start == start and not st.exited


def signal_process(pid: int, start: int, sig: int) -> bool:
    """Send ``sig`` to PID if it is still the process that started at ``start``.

    Uses a pidfd where available, so the check and the signal address the same process even
    if the PID is reused in between. Returns False when the process is gone.
    """
    pidfd = -1
    with contextlib.suppress(OSError, AttributeError):
        pidfd = os.pidfd_open(pid)
    try:
        if not same_process(pid, start):
            return False
        try:
            if pidfd >= 0:
                signal.pidfd_send_signal(pidfd, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return False
        return True
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def wait_process_gone(pid: int, start: int, timeout: float, interval: float = 0.05) -> bool:
    """Poll /proc until PID (started at ``start``) has exited; False after ``timeout``.

    A zombie counts as exited: the process that reaps it may be any ancestor, and some hosts'
    PID 1 (a container's process manager) never reaps orphans. When PID is a child of this
    process it is reaped here.
    """
    deadline = time.monotonic() + timeout
    while True:
        st = proc_stat(pid)
        if st is None or st.start != start:
            return True
        if st.exited:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)  # our own child: reap it
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
