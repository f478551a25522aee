"""``kind: llama-cpp-python``: llama-cpp-python's OpenAI-compatible server
(``python -m llama_cpp.server``), from a Python runtime. It has no ``/health`` (404) and no
``/metrics``: ``GET /v1/models`` answers once the model is loaded, and a deep probe asks
for one token. Its key is ``ServerSettings.api_key``, read from ``API_KEY``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from labctl.fields import ModelName, ModelRef, Port, Runtime, SecretRef
from labctl.kinds.base import Listener, ServiceBase
from labctl.kinds.llama import LlamaKind

if TYPE_CHECKING:
    from labctl.inventory.layout import Layout
    from labctl.inventory.schema import Inventory


class LlamaCppPython(ServiceBase):
    kind: Literal["llama-cpp-python"]
    runtime: Runtime
    port: Port = 8000
    model: ModelRef = "current"
    alias: ModelName
    # Layers to offload; -1 is all of them, as llama-cpp-python means it.
    n_gpu_layers: Annotated[int, Field(ge=-1)]
    n_ctx: Annotated[int, Field(ge=64, le=1_048_576)] = 4096
    n_threads: Annotated[int, Field(ge=1, le=1024)] | None = None
    # Clients must send this key (Authorization: Bearer). The reference is an env file
    # (0600) and a variable; labctl derives the server's own variable from it, the gateway
    # sends it, labctl's probes send it. A fleet sets it on every backend another host reaches.
    api_key: SecretRef | None = None


class LlamaCppPythonKind(LlamaKind):
    name = "llama-cpp-python"
    model = LlamaCppPython
    example = {"kind": "llama-cpp-python", "bind": "127.0.0.1", "runtime": {"python": "/opt/lcp/bin/python"},
               "port": 8000, "alias": "bindings", "n_gpu_layers": 0, "n_threads": 2, "n_ctx": 2048,
               "model": "tiny.gguf", "description": "bindings", "extra_args": ["--verbose", "false"],
               "environment": {"OMP_NUM_THREADS": "2"}, "environment_files": ["/etc/labctl/bindings.env"],
               "read_write_paths": ["/srv/bindings"],
               "api_key": {"env_file": "~/.config/labctl/secrets/api-keys/bindings.env",
                           "var": "LABCTL_API_KEY_BINDINGS"}}
    context_field = "n_ctx"
    args_start = 3  # python -m module
    key_variable = "API_KEY"  # llama_cpp.server's ServerSettings.api_key

    def argv(self, inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> list[str]:
        assert isinstance(svc, LlamaCppPython)
        args = [svc.runtime.interpreter(inv.host), "-m", "llama_cpp.server", "--model", self.model_file(inv, svc),
                "--model_alias", svc.alias, "--host", self.address(inv, svc), "--port", str(svc.port),
                "--n_gpu_layers", str(svc.n_gpu_layers), "--n_ctx", str(svc.n_ctx)]
        if svc.n_threads:
            args += ["--n_threads", str(svc.n_threads)]
        return args

    def probe(self, inv: Inventory, name: str, svc: Listener) -> dict[str, object]:
        return {"service": name, "recipe": "openai-models", "url": self.base_url(inv, svc),
                "models": self.served_models(svc), "key": self.key_plan(inv, svc)}

    def scrape(self, inv: Inventory, name: str, svc: Listener) -> str:
        return f"{name}: llama-cpp-python has no /metrics; `labctl status` probes it"


KIND = LlamaCppPythonKind()
