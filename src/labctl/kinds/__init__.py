"""The service kinds: one module (the gateway: one package) per kind, each holding its schema
model and its :class:`labctl.kinds.base.Kind` (argv, environment, files, probe, scrape job,
panels, GPU share, start order, status facts, checks). Adding a kind is one module here and
its entry in :data:`KINDS`; the schema, the renderers, the checks, status, the budget, the
docs and the hostile-input tests take it from this registry.
"""

from __future__ import annotations

from labctl.kinds import external, litellm, llama_cpp_python, llama_server, ollama, program, redis, redis_exporter, vllm
from labctl.kinds.base import Kind, Listener, ServiceBase

#: Every kind, by its ``kind:`` value, in the order the docs list them.
KINDS: dict[str, Kind] = {k.name: k for k in (
    ollama.KIND, llama_cpp_python.KIND, llama_server.KIND, vllm.KIND, program.KIND, litellm.KIND, external.KIND,
    redis.KIND, redis_exporter.KIND)}

#: Their schema models, for the inventory's discriminated union.
MODELS = tuple(kind.model for kind in KINDS.values())


def kind_of(svc: Listener) -> Kind:
    """The kind of a service of the inventory."""
    return KINDS[svc.kind]  # type: ignore[attr-defined]


__all__ = ["KINDS", "MODELS", "Kind", "Listener", "ServiceBase", "kind_of"]
