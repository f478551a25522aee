"""``kind: ollama``: Ollama's server (``ollama serve``), on the GPU when the host has one.

It has no authentication, so it stays on loopback unless the operator says otherwise
(``allow_unauthenticated_remote``), and no /metrics of its own: its probe asks
``/api/version`` and ``/api/tags``. It loads models on demand and evicts them itself, so
the GPU budget does not count it. Its Go runtime reads interfaces over netlink.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from labctl.fields import ExecPath, ModelName, Port, check_path
from labctl.kinds.base import Kind, Listener, Problem, ServiceBase, Share

if TYPE_CHECKING:
    from labctl.inventory.layout import Layout
    from labctl.inventory.schema import Inventory


class Ollama(ServiceBase):
    kind: Literal["ollama"]
    binary: ExecPath = "/usr/local/bin/ollama"
    port: Port = 11434
    models: Annotated[list[ModelName], Field(min_length=1)]
    # Ollama has no authentication: in a fleet it stays loopback-only, and a gateway on
    # another host may route to it only with this set (validate and up warn every time).
    allow_unauthenticated_remote: bool = False
    ready_timeout_sec: Annotated[int, Field(ge=1, le=7200)] = 60


class OllamaKind(Kind):
    name = "ollama"
    model = Ollama
    backend = True
    # It serves any model it has pulled: a route names the one it wants.
    route_names_model = True
    netlink = True
    owned_environment = {"OLLAMA_HOST": "bind and port"}
    example = {"kind": "ollama", "bind": "127.0.0.1", "binary": "/usr/local/bin/ollama", "port": 11434,
               "models": ["llama3.1:8b"], "description": "ollama",
               "environment": {"OLLAMA_KEEP_ALIVE": "5m", "OLLAMA_MODELS": "~/ollama-models"},
               "extra_args": ["--verbose"], "environment_files": ["~/.config/ollama.env"],
               "read_write_paths": ["/srv/ollama"]}

    def argv(self, inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> list[str]:
        assert isinstance(svc, Ollama)
        return [inv.host.expand(svc.binary), "serve"]

    def environment(self, inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> dict[str, str]:
        return {"OLLAMA_HOST": f"{self.address(inv, svc)}:{svc.port}"}

    def operator_environment(self, inv: Inventory, svc: ServiceBase) -> dict[str, str]:
        # Expanded and normalised, as ReadWritePaths= lists it: Ollama itself expands no ~/.
        return {"OLLAMA_MODELS": models_dir(inv, svc)} if "OLLAMA_MODELS" in svc.environment else {}

    def writable(self, inv: Inventory, name: str, svc: ServiceBase) -> list[tuple[str, str, tuple]]:
        # Its key pair lives in ~/.ollama whatever OLLAMA_MODELS says.
        said = svc.environment.get("OLLAMA_MODELS")
        return [(inv.host.expand("~/.ollama"), "~/.ollama", ("host", "home")),
                (models_dir(inv, svc), said or "~/.ollama",
                 ("services", name, "environment", "OLLAMA_MODELS") if said else ("host", "home"))]

    def uses_gpu(self, inv: Inventory, svc: Listener) -> bool:
        return inv.host.gpu

    def served_models(self, svc: Listener) -> list[str]:
        return list(getattr(svc, "models"))

    def api(self, svc: Listener) -> str:
        return "ollama"

    def gpu_share(self, inv: Inventory, name: str, svc: Listener, gpu_total: int | None) -> Share | None:
        if not inv.host.gpu:
            return None
        return Share(None, "loads models on demand and evicts them itself: not counted",
                     note=f"{name}: Ollama's models are not counted; leave it room (OLLAMA_MAX_LOADED_MODELS)")

    def probe(self, inv: Inventory, name: str, svc: Listener) -> dict[str, object]:
        return {"service": name, "recipe": "ollama", "url": self.base_url(inv, svc),
                "models": self.served_models(svc)}

    def status_row(self, inv: Inventory, name: str, svc: Listener) -> dict[str, object]:
        return {"model": None}

    def scrape(self, inv: Inventory, name: str, svc: Listener) -> str:
        return f"{name}: Ollama has no native /metrics; `labctl status` probes /api/version"

    def checks(self, inv: Inventory, name: str, svc: Listener) -> Iterator[Problem]:
        assert isinstance(svc, Ollama)
        if "OLLAMA_MODELS" in svc.environment:
            # A path like any path field: the unit lists it in ReadWritePaths=, labctl creates it.
            try:
                check_path(svc.environment["OLLAMA_MODELS"])
            except ValueError as exc:
                yield Problem(("services", name, "environment", "OLLAMA_MODELS"), str(exc))

    def remote_bind_problem(self, svc: Listener) -> str | None:
        if getattr(svc, "allow_unauthenticated_remote"):
            return None
        return ("is reachable from other hosts and Ollama has no authentication: bind to loopback, or set "
                "allow_unauthenticated_remote: true")

    def cross_host_problem(self, name: str, svc: Listener, gateway_host: str) -> tuple[tuple | None, str] | None:
        if getattr(svc, "allow_unauthenticated_remote"):
            return None
        return None, ("Ollama has no authentication, so it stays on loopback; run the gateway beside it, or set "
                      f"services.{name}.allow_unauthenticated_remote: true (anyone on the network can then use it)")

    def cross_host_warning(self, name: str, svc: Listener) -> str | None:
        return "Ollama, no authentication"


def models_dir(inv: Inventory, svc: ServiceBase) -> str:
    """Ollama's model store: OLLAMA_MODELS read as any path field is (absolute or ~/,
    normalised by the one normaliser), since it becomes a ReadWritePaths= entry. Its check
    refuses one that is no such path first."""
    from labctl.encode import EncodeError

    try:
        path = check_path(svc.environment.get("OLLAMA_MODELS", "~/.ollama"))
    except ValueError as exc:
        raise EncodeError(f"OLLAMA_MODELS {exc}") from None
    return inv.host.expand(path)


KIND = OllamaKind()
