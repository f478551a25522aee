"""Installed generations: what was on the host before each change, so it can come back.

Before ``up`` (or ``down --purge``, or ``rollback``) changes files, the managed files as
they are, plus the inventory that produced them, are saved as a numbered generation under
``<state_dir>/generations/``. A generation is written to a temporary directory and
renamed into place, so it exists whole or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from labctl import fsio

KEEP = 10


@dataclass(frozen=True)
class Generation:
    number: int
    path: Path
    created: float
    reason: str
    inventory_text: str | None

    def files(self) -> dict[str, str]:
        root = self.path / "files"
        return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}

    def as_dict(self) -> dict[str, object]:
        return {"number": self.number, "path": str(self.path), "created": self.created, "reason": self.reason}


def _root(state_dir: Path) -> Path:
    return Path(state_dir) / "generations"


def list_generations(state_dir: Path) -> list[Generation]:
    out = []
    root = _root(state_dir)
    if not root.is_dir():
        return []
    for path in root.iterdir():
        if not path.name.isdigit() or not (path / "meta.json").is_file():
            continue  # a temporary directory of an interrupted snapshot
        meta = json.loads((path / "meta.json").read_text())
        inv = path / "inventory.yaml"
        out.append(Generation(int(path.name), path, meta["created"], meta["reason"],
                              inv.read_text() if inv.is_file() else None))
    return sorted(out, key=lambda g: g.number)


def snapshot(state_dir: Path, files: dict[str, str], inventory_text: str | None, reason: str) -> Generation:
    root = _root(state_dir)
    # Generations keep old inventories: the directory is the owner's alone.
    fsio.ensure_dir(root, 0o700)
    os.chmod(root, 0o700)
    existing = list_generations(state_dir)
    number = existing[-1].number + 1 if existing else 1
    tmp = root / f".tmp-{number}"
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, content in files.items():
        target = tmp / "files" / rel
        fsio.ensure_dir(target.parent)
        # Owner only, like everything here: a file an older labctl installed may hold what
        # today's checks would refuse.
        fsio.atomic_write(target, content, mode=0o600)
    fsio.ensure_dir(tmp, 0o700)
    if inventory_text is not None:
        fsio.atomic_write(tmp / "inventory.yaml", inventory_text, mode=0o600)
    created = time.time()
    (tmp / "meta.json").write_text(json.dumps({"created": created, "reason": reason}))
    final = root / f"{number:06d}"
    tmp.rename(final)
    fsio.fsync_dir(root)
    for old in existing[: max(0, len(existing) + 1 - KEEP)]:
        shutil.rmtree(old.path, ignore_errors=True)
    return Generation(number, final, created, reason, inventory_text)
