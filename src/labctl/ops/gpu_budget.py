"""The GPU memory the whole stack will take, added up before anything starts.

Each service's share is its kind's to say (labctl.kinds): a llama.cpp server's follows from
its GGUF's header (weights times the share of layers offloaded, the KV cache for its context,
a compute buffer: labctl.kinds.llama), vLLM takes ``gpu_memory_utilization`` of the whole
GPU whatever the model needs (a fraction: more than 1.0 together fits no GPU), a program
says its ``gpu_memory_gib``, Ollama is not counted (it loads and evicts models itself), and
the budget says so.

The capacity is ``host.gpu_memory_gib``, or what ``nvidia-smi`` reports (total, minus
what processes outside the stack hold) when the inventory gives none. ``validate``, ``plan``
and ``up`` print the table; ``up`` and ``validate`` refuse an inventory that does not fit
(exit 2, nothing changed) unless ``--force``.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from labctl.host import gguf_header
from labctl.host.proc import CommandFailed, run_cmd
from labctl.inventory.schema import Inventory
from labctl.kinds import kind_of
from labctl.kinds.llama import COMPUTE_BUFFER_MIB, GIB, MIB  # noqa: F401 - the figures the budget states


@dataclass(frozen=True)
class Share:
    service: str
    kind: str
    bytes: int | None        # None: not known (no model file), or not counted (Ollama)
    how: str                 # one line: how the figure was reached

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Budget:
    shares: list[Share]
    capacity: int | None     # bytes
    source: str              # "host.gpu_memory_gib", "nvidia-smi", or why there is none
    notes: list[str] = field(default_factory=list)
    # Services that take a fraction of the whole GPU, whatever its size (vLLM's
    # gpu_memory_utilization): more than 1.0 together fits no GPU, known size or not.
    fractions: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(s.bytes or 0 for s in self.shares)

    @property
    def fraction(self) -> float:
        return sum(self.fractions.values())

    @property
    def fits(self) -> bool:
        return self.fraction <= 1.0 and (self.capacity is None or self.total <= self.capacity)

    def summary(self) -> str:
        if self.fraction > 1.0:
            parts = ", ".join(f"{name} {f:g}" for name, f in self.fractions.items())
            return (f"gpu_memory_utilization adds up to {self.fraction:.2f} of one GPU ({parts}): more than any "
                    "GPU holds, whatever its size")
        parts = ", ".join(f"{s.service} {s.bytes / GIB:.2f}" for s in self.shares if s.bytes)
        least = "at least " if any(s.bytes is None for s in self.shares) else ""
        need = f"the stack needs {least}{self.total / GIB:.2f} GiB of GPU memory ({parts or 'nothing counted'})"
        if self.capacity is None:
            share = f", and {self.fraction:.2f} of the GPU" if self.fractions else ""
            return f"{need}{share}; not checked ({self.source})"
        verb = "fits in" if self.fits else "does not fit in"
        return f"{need}, which {verb} {self.capacity / GIB:.2f} GiB ({self.source})"

    def as_dict(self) -> dict[str, object]:
        return {"shares": [s.as_dict() for s in self.shares], "total": self.total, "capacity": self.capacity,
                "source": self.source, "fits": self.fits, "notes": list(self.notes),
                "fractions": dict(self.fractions)}


def nvidia_smi_memory() -> tuple[int, int] | None:
    """(total, in use) bytes of nvidia-smi's first GPU, or None where there is none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        res = run_cmd([smi, "--query-gpu=memory.total,memory.used", "--format=csv,noheader,nounits"], timeout=20)
    except CommandFailed:
        return None
    first = res.stdout.strip().splitlines()[:1]
    try:
        total, used = (int(x.strip()) * MIB for x in first[0].split(","))
    except (IndexError, ValueError):
        return None
    return total, used


def compute(inv: Inventory, *, measure: bool = True) -> Budget:
    notes: list[str] = []
    total: int | None = None
    if inv.host.gpu_memory_gib is not None:
        total = capacity = int(inv.host.gpu_memory_gib * GIB)
        source = "host.gpu_memory_gib"
    elif (measured := nvidia_smi_memory() if measure else None) is not None:
        # What processes outside the stack hold is not the stack's to use.
        total, used = measured
        capacity, source = total - used, f"nvidia-smi: {total / GIB:.2f} GiB, {used / GIB:.2f} GiB in use"
    else:
        capacity, source = None, "no host.gpu_memory_gib and no nvidia-smi"
    shares: list[Share] = []
    fractions: dict[str, float] = {}
    for name, svc in inv.managed().items():
        kind = kind_of(svc)
        claim = kind.gpu_share(inv, name, svc, total)
        model = kind.model_file(inv, svc)
        if claim is None and model is not None:
            # A GGUF server's share follows from its model's header.
            try:
                info, error = gguf_header.read(Path(model)), None
            except gguf_header.GGUFError as exc:
                info, error = None, str(exc)
            claim = kind.gguf_share(inv, svc, info, error)
        if claim is None:
            continue
        shares.append(Share(name, kind.name, claim.bytes, claim.how))
        if claim.fraction is not None:
            fractions[name] = claim.fraction
        if claim.note:
            notes.append(claim.note)
    return Budget(shares, capacity, source, notes, fractions)


def applies(inv: Inventory) -> bool:
    return inv.host.gpu


def enforce(loaded, budget: Budget, *, force: bool) -> None:  # type: ignore[no-untyped-def]
    """Refuse (exit 2, one line naming the budget's field) a stack that does not fit,
    unless forced."""
    if budget.fits or force:
        return
    raise loaded.source.error(refusal_field(loaded.inventory, budget), f"{budget.summary()}; lower "
                              "gpu_memory_utilization or n_gpu_layers, or pass --force; nothing was changed")


def refusal_field(inv: Inventory, budget: Budget) -> tuple:
    """Where a budget that does not fit points: the last fraction that tips it over 1.0, or
    the capacity the inventory gives (the host, when it gives none)."""
    if budget.fraction > 1.0:
        return ("services", list(budget.fractions)[-1], "gpu_memory_utilization")
    return ("host", "gpu_memory_gib") if inv.host.gpu_memory_gib is not None else ("host",)


def table(budget: Budget, width: int = 80) -> list[str]:
    """The budget as plain lines of at most ``width`` cells, folded between words."""
    from labctl.text import fold

    lines = fold(f"GPU memory: {budget.summary()}", width, "", "  ")
    for s in budget.shares:
        figure = f"{s.bytes / GIB:6.2f} GiB" if s.bytes is not None else "     - GiB"
        lines += fold(f"{s.service} ({s.kind}): {figure.strip()}", width, "  ", "    ")
        lines += fold(s.how, width, "      ", "      ")
    for note in budget.notes:
        lines += fold(f"note: {note}", width, "  ", "    ")
    return lines
