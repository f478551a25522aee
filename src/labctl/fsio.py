"""File writes that never leave a torn file behind.

Each write goes to a temporary file in the destination's own directory and is renamed
over the target: rename(2) within one filesystem is atomic, so a reader (or a crash)
sees the old content or the new, never a mix. The directory is fsynced so the rename
itself survives a power cut.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable

# labctl never creates anything group- or world-writable, whatever the umask says; a
# tighter umask (077) is honoured.
FILE_MODE, DIR_MODE = 0o644, 0o755


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str | None:
    """None for a regular file; else what it is ("a FIFO", "a character device"...), for
    the one-line refusals of readers that take only regular files (inventory, GGUF)."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "an unusual file")


def umask() -> int:
    """The process umask, read without changing it (os.umask can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def ensure_dir(path: Path, mode: int = DIR_MODE) -> None:
    """``mkdir -p`` where every directory created gets at most ``mode`` (masked by the
    umask): Path.mkdir(parents=True) gives missing parents 0777 & ~umask, which under
    umask 000 makes the directories above a 0700 secrets dir world-writable."""
    path = Path(path)
    missing = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode & ~umask())
        except FileExistsError:
            if not directory.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(directory)) from None
            continue
        os.chmod(directory, mode & ~umask())


def atomic_write(path: Path, content: str | bytes, *, mode: int | None = None) -> None:
    """Write ``content`` to ``path`` atomically, as ``mode`` (default 0644, narrowed by the
    umask; a secret passes 0600)."""
    path = Path(path)
    if mode is None:
        mode = FILE_MODE & ~umask()
    ensure_dir(path.parent)
    data = content.encode() if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; set the final mode before any byte is visible under the
        # real name, so a secret is never briefly world-readable.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_symlink(target: str, link: Path) -> None:
    """Point ``link`` at ``target`` with no moment where ``link`` is missing."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_tree(root: Path, subdirs: list[str], keep: Callable[[str], bool]) -> dict[str, str]:
    """``{path relative to root: text}`` for files under ``root/<subdir>`` that ``keep``.

    Only the named subdirectories are walked: on a host the root is ~/.config, which
    holds every other program's settings too.
    """
    root = Path(root)
    out: dict[str, str] = {}
    for sub in subdirs:
        for dirpath, dirnames, filenames in os.walk(root / sub):
            dirnames.sort()
            for filename in sorted(filenames):
                if filename.startswith(".") and filename.endswith(".tmp"):
                    continue  # a write interrupted before its rename; never content
                full = Path(dirpath) / filename
                rel = full.relative_to(root).as_posix()
                if keep(rel) and full.is_file() and not full.is_symlink():
                    out[rel] = full.read_text(encoding="utf-8", errors="replace")
    return dict(sorted(out.items()))
