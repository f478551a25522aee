"""File writes that never leave a torn file behind.

Each write goes to a temporary file in the destination's own directory and is renamed
over the target: rename(2) within one filesystem is atomic, so a reader (or a crash)
sees the old content or the new, never a mix. The directory is fsynced so the rename
itself survives a power cut.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: Path, content: str | bytes, *, mode: int = 0o644) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
