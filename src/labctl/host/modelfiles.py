"""Where a host's GGUF models live, and the one rule for "in the models dir".

The models dir, the optional library beside it and the ``current.gguf`` link, read without
ever hanging or raising: switch, doctor, up, list and the inventory's file checks all ask
here. Nothing in this module opens a model file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labctl.inventory.schema import Inventory


def models_dir(inv: Inventory) -> Path:
    return Path(inv.host.expand(inv.host.models_dir))


def link_path(inv: Inventory) -> Path:
    return Path(inv.host.current_path)


def current_target(inv: Inventory) -> Path | None:
    link = link_path(inv)
    try:
        if not os.path.islink(link):
            return None
        target = Path(os.readlink(link))
    except (OSError, ValueError):
        return None
    return target if target.is_absolute() else link.parent / target


# --- paths: resolved without hanging or raising ------------------------------------------
# Path.resolve() raises RuntimeError on a symlink loop (Python 3.11) and is_dir()/exists()
# raise on some errors (EACCES, ENAMETOOLONG); these never do, and none opens the file.


def real_path(path: Path | str) -> Path | None:
    """``path`` with every symlink followed (os.path.realpath, strict), or None when that
    cannot be done: a dangling link, a loop, a component that is not a directory, an
    unreadable directory, a NUL byte."""
    try:
        return Path(os.path.realpath(path, strict=True))
    except (OSError, ValueError, RuntimeError):
        return None


def _resolved(path: Path | str) -> str:
    """As far as ``path`` resolves (a dangling link's target, a loop left as it is): for
    showing and comparing, never for deciding what is inside the models dir."""
    try:
        return os.path.realpath(path)
    except (OSError, ValueError, RuntimeError):
        return os.path.abspath(path)


def library_dir(inv: Inventory) -> Path | None:
    return Path(inv.host.expand(inv.host.library_dir)) if inv.host.library_dir else None


def model_roots(inv: Inventory) -> list[Path]:
    """Where a model may live: the models dir, and the library when there is one."""
    lib = library_dir(inv)
    return [models_dir(inv)] + ([lib] if lib is not None else [])


def roots_text(inv: Inventory) -> str:
    lib = library_dir(inv)
    return f"the models dir {models_dir(inv)}" + (f" and the library {lib}" if lib else "")


def inside_models_dir(inv: Inventory, path: Path | str) -> bool:
    """The one rule for "in the models dir" (switch, doctor, up and list all use it):
    ``path``'s real location, every symlink followed (the file itself, a link placed in
    the dir, or current.gguf), is strictly under the real models dir or the real library.
    False when either cannot be resolved (dangling link, loop, missing dir...), so callers
    that want a more precise message check existence first; a link in the models dir that
    points outside both is outside."""
    real = real_path(path)
    if real is None:
        return False
    for root in (real_path(r) for r in model_roots(inv)):
        if root is not None and real != root and real.is_relative_to(root):
            return True
    return False
