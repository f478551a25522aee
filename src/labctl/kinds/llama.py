"""What llama.cpp's two servers share: a GGUF model (the switchable ``current.gguf`` or a
file), layers offloaded to the GPU, a context, and the GPU share that follows from the
model's header. labctl.kinds.llama_server and labctl.kinds.llama_cpp_python build on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from labctl.kinds.base import Kind, Listener, Problem, Share

if TYPE_CHECKING:
    from labctl.host.gguf_header import GGUFInfo
    from labctl.inventory.schema import Inventory

GIB = 2**30
MIB = 2**20
# llama.cpp's compute buffer for the default batch: 22 MiB measured on the CPU build for
# Gemma 3 270M; GPU backends reserve more (larger graphs, per-device copies). A flat 128 MiB
# per server is an upper bound for small models and a floor for large ones.
COMPUTE_BUFFER_MIB = 128


def size(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.1f} MiB"


def offloads(svc: Listener) -> bool:
    """Whether a llama server puts any layer on the GPU."""
    return getattr(svc, "n_gpu_layers", 0) != 0


def layer_share(svc: Listener, blocks: int | None) -> float:
    """The share of a model's layers a llama server offloads (1.0 for all of them)."""
    layers = getattr(svc, "n_gpu_layers")
    if layers in ("all", -1):
        return 1.0
    return 1.0 if not blocks else min(1.0, layers / blocks)


class LlamaKind(Kind):
    """A llama.cpp server: llama-server or llama-cpp-python's."""

    backend = True
    served_field = "alias"
    #: The field that sizes its context.
    context_field: str

    def model_file(self, inv: Inventory, svc: Listener) -> str:
        """The GGUF path it is started with (the symlink, not its target)."""
        model = getattr(svc, "model")
        if model == "current":
            return inv.host.current_path
        if not model.startswith(("/", "~/")):
            return str(PurePosixPath(inv.host.expand(inv.host.models_dir)) / model)
        return inv.host.expand(model)

    def context(self, svc: Listener) -> tuple[str, int]:
        return self.context_field, getattr(svc, self.context_field)

    def served_models(self, svc: Listener) -> list[str]:
        return [getattr(svc, "alias")]

    def uses_gpu(self, inv: Inventory, svc: Listener) -> bool:
        return offloads(svc)

    def gguf_share(self, inv: Inventory, svc: Listener, info: GGUFInfo | None, error: str | None) -> Share:
        """The GGUF's weights times the share of its layers offloaded (``n_gpu_layers`` /
        ``block_count``), the KV cache for the context (llama.cpp sizes one cache for all
        parallel slots together) at f16 on that share, and a compute buffer."""
        layers = getattr(svc, "n_gpu_layers")
        if layers == 0:
            return Share(0, "n_gpu_layers: 0 (CPU only)")
        if info is None:
            return Share(None, f"{self.model_file(inv, svc)}: {error}; not counted")
        ctx = self.context(svc)[1]
        blocks = info.block_count
        share = layer_share(svc, blocks)
        weights = int((info.tensor_bytes or info.size) * share)
        kv = int((info.kv_bytes_per_token or 0) * ctx * share)
        compute = COMPUTE_BUFFER_MIB * MIB
        kv_how = (f"KV {ctx} tokens x {info.kv_bytes_per_token} B = {size(kv)}" if info.kv_bytes_per_token
                  else "KV unknown (header lacks the attention shape)")
        return Share(weights + kv + compute,
                     f"{round(share * blocks) if blocks else layers}/{blocks or '?'} layers of "
                     f"{size(info.tensor_bytes or info.size)} = {size(weights)}, {kv_how}, "
                     f"compute {COMPUTE_BUFFER_MIB} MiB")

    def status_row(self, inv: Inventory, name: str, svc: Listener) -> dict[str, object]:
        return {"model_link": self.model_file(inv, svc)}

    def checks(self, inv: Inventory, name: str, svc: Listener) -> Iterator[Problem]:
        if inv.host.gpu and svc.enabled and getattr(svc, "n_gpu_layers") == 0:
            yield Problem(("services", name, "n_gpu_layers"),
                          "0 on a GPU host runs the model on the CPU; set the layers to offload, "
                          "or host.gpu: false for a CPU-only host")
        yield from super().checks(inv, name, svc)
