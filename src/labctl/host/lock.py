"""One labctl run at a time may change a host.

An advisory ``flock`` on a file in the state dir: the kernel drops it when the holder
exits, however it exits (SIGKILL included), so a crashed run never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from labctl import fsio
from labctl.errors import LockBusy


@contextmanager
def host_lock(path: Path, *, wait: bool = True, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    path = Path(path)
    fsio.ensure_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            message = f"another labctl run (pid {holder}) is changing this host; lock {path}"
            if not wait:
                raise LockBusy(message + " (--no-wait given)") from None
            if on_wait:
                on_wait(message + "; waiting")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
