"""The registry of running machines: one JSON file per machine, so that a machine booted by
one process can be re-attached, used and shut down by later ones.

Default directory ``~/.cache/labctl/sandbox/machines`` (``$LABCTL_SANDBOX_MACHINES``
overrides). Files are written atomically, mode 0600 (they hold the host's PIP_* settings).
A record is only a claim: :func:`stale_reason` checks it against /proc (boot id, PIDs and
their start times) before anyone trusts it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from labctl.fsio import atomic_write
from labctl.sandbox.base import SandboxError, default_cache_dir
from labctl.sandbox.procs import host_boot_id, proc_stat, same_process

log = logging.getLogger(__name__)

RECORD_VERSION = 1
SUFFIX = ".json"


def machines_dir(registry: Path | None = None) -> Path:
    """Where the records live: ``registry``, else $LABCTL_SANDBOX_MACHINES, else the cache."""
    if registry is not None:
        return Path(registry)
    env = os.environ.get("LABCTL_SANDBOX_MACHINES")
    if env:
        return Path(env)
    return default_cache_dir().parent / "machines"


@dataclasses.dataclass
class MachineRecord:
    """What a later process needs to re-attach to a running machine."""

    name: str
    nspawn_pid: int
    nspawn_start: int  # /proc/PID/stat start time, clock ticks after boot
    pid: int  # the container's init (its PID 1), as the host sees it
    pid_start: int
    boot_id: str  # the host's boot; PIDs mean nothing across a reboot
    cgroups: list[str]
    ssh_port: int | None
    state_dir: str
    rootfs: str
    binds_ro: list[tuple[str, str]]
    binds_rw: list[tuple[str, str]]
    pip: dict[str, Any] | None  # PipSettings as a dict, or None
    created: float  # wall-clock seconds
    system_state: str = ""
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    ssh_address: str = "127.0.0.1"  # sshd's ListenAddress, with ssh_port
    network_namespace: str | None = None  # its path; None: the host's
    version: int = RECORD_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> MachineRecord:
        """Parse a record; ValueError when it is not one this version understands."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
            raise ValueError("unknown record version")
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            rec = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        for key in ("nspawn_pid", "nspawn_start", "pid", "pid_start"):
            if not isinstance(getattr(rec, key), int):
                raise ValueError(f"{key} is not an integer")
        rec.binds_ro = [(str(h), str(g)) for h, g in rec.binds_ro]
        rec.binds_rw = [(str(h), str(g)) for h, g in rec.binds_rw]
        return rec


def record_path(name: str, registry: Path | None = None) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise SandboxError(f"bad machine name {name!r}")
    return machines_dir(registry) / f"{name}{SUFFIX}"


def write_record(record: MachineRecord, registry: Path | None = None) -> Path:
    path = record_path(record.name, registry)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, record.to_json(), mode=0o600)
    return path


def read_record(name: str, registry: Path | None = None) -> MachineRecord | None:
    """The record for ``name``; None when there is none. A file that cannot be parsed is
    removed (with a warning) and reported as None."""
    path = record_path(name, registry)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SandboxError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return MachineRecord.from_json(text)
    except ValueError as exc:
        log.warning("removing unreadable sandbox record %s: %s", path, exc)
        remove_record(name, registry)
        return None


def remove_record(
    name: str, registry: Path | None = None, *, if_nspawn: tuple[int, int] | None = None
) -> None:
    """Delete the record of ``name``; with ``if_nspawn=(pid, start)`` only if it still
    describes that nspawn process (a newer machine of the same name keeps its record)."""
    path = record_path(name, registry)
    if if_nspawn is not None:
        with contextlib.suppress(OSError, ValueError):
            current = MachineRecord.from_json(path.read_text())
            if (current.nspawn_pid, current.nspawn_start) != if_nspawn:
                return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def record_names(registry: Path | None = None) -> list[str]:
    directory = machines_dir(registry)
    try:
        entries = sorted(directory.iterdir())
    except FileNotFoundError:
        return []
    return [
        p.name[: -len(SUFFIX)]
        for p in entries
        if p.name.endswith(SUFFIX) and not p.name.startswith(".") and p.is_file()
    ]


def stale_reason(record: MachineRecord) -> str | None:
    """Why ``record`` no longer describes a running machine; None when it still does."""
    if record.boot_id != host_boot_id():
        return "the host has rebooted since"
    nspawn = proc_stat(record.nspawn_pid)
    if nspawn is None or nspawn.exited:
        return f"systemd-nspawn (PID {record.nspawn_pid}) has exited"
    if nspawn.start != record.nspawn_start or nspawn.comm != "systemd-nspawn":
        return f"PID {record.nspawn_pid} is now another process ({nspawn.comm})"
    init = proc_stat(record.pid)
    if init is None or not same_process(record.pid, record.pid_start):
        return f"the container's init (PID {record.pid}) has exited"
    if init.ppid != record.nspawn_pid:
        return f"PID {record.pid} is no longer the container's init"
    return None


@contextlib.contextmanager
def name_lock(name: str, registry: Path | None = None) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on ``name`` (e.g. for the whole of an ``up``)."""
    path = record_path(name, registry)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock_path = path.with_name(f".{name}.lock")
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SandboxError(
                f"another labctl process is starting or stopping sandbox {name}"
            ) from None
        yield
