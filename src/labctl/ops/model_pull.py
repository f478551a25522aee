"""``labctl model pull`` and the first step of ``up``: fetch the inventory's declared
models into host.models_dir (labctl.host.fetch does the transfer, checksum and atomic
placement), then point current.gguf at the default model if the link does not exist yet.

A model already in place is not fetched again; an existing current.gguf is never moved
here (that is ``labctl model switch``, which drains and probes).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from labctl import fsio, progress
from labctl.errors import UsageError
from labctl.host import fetch
from labctl.inventory.schema import Inventory, ModelSource

Say = Callable[[str], None]
CACHE_DIR = "~/.cache/labctl/models"


def source(name: str, model: ModelSource) -> fetch.Source:
    kind = model.kind()
    return fetch.Source(name=name, file=model.file_name(name), kind=kind,  # type: ignore[arg-type]
                        location=str(getattr(model, kind)), sha256=model.sha256, member=model.member,
                        assemble=model.assemble)


def cache_dir(inv: Inventory) -> Path:
    return Path(inv.host.expand(CACHE_DIR))


def missing(inv: Inventory) -> list[str]:
    """Declared models not in place yet (cheap: no hashing of a file already verified)."""
    models_dir = Path(inv.host.expand(inv.host.models_dir))
    return [name for name, m in inv.models.items() if not fetch.is_present(source(name, m), models_dir)]


def pull(inv: Inventory, names: list[str] | None = None, *, say: Say) -> list[fetch.Fetched]:
    """Fetch ``names`` (default: every declared model) and link the default. Idempotent."""
    unknown = [n for n in names or [] if n not in inv.models]
    if unknown:
        declared = ", ".join(inv.models) or "none"
        raise UsageError(f"no declared model {', '.join(unknown)} (models: {declared})")
    models_dir = Path(inv.host.expand(inv.host.models_dir))
    fsio.ensure_dir(models_dir)
    results = []
    for name in names or list(inv.models):
        src = source(name, inv.models[name])
        if fetch.is_present(src, models_dir):
            results.append(fetch.fetch(src, models_dir, cache_dir=cache_dir(inv)))
            continue
        label = f"models.{name}: {src.kind} {src.file}"
        if src.kind in ("url", "hf"):
            with progress.download(label) as bar:
                result = fetch.fetch(src, models_dir, cache_dir=cache_dir(inv), progress=bar)
        else:
            with progress.step(label):
                result = fetch.fetch(src, models_dir, cache_dir=cache_dir(inv))
        say(f"models.{name}: {result.action} {result.path} ({result.size / 2**20:.1f} MiB, "
            f"sha256 {result.sha256[:12]}, {result.seconds:.1f}s)")
        results.append(result)
    link_default(inv, say)
    return results


def link_default(inv: Inventory, say: Say) -> bool:
    """Point current.gguf at the default model when the link does not exist at all."""
    default = inv.default_model()
    link = Path(inv.host.current_path)
    if default is None or os.path.lexists(link):
        return False
    target = Path(inv.model_file(default))
    if not target.is_file():
        return False
    # Relative when in the same directory, as `model switch` writes it.
    fsio.atomic_symlink(target.name if target.parent == link.parent else str(target), link)
    say(f"{link.name} -> {target.name} (models.{default}, the default)")
    return True
