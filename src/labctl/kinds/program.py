"""``kind: program``: any model server labctl runs from a command line the operator writes:
SGLang, TabbyAPI, mistral.rs, koboldcpp, a llama-server build of one's own.

The operator's ``executable`` and ``args`` are the command line; ``{host}``, ``{port}`` and
``{model}`` in the arguments are filled by labctl (from ``bind``, ``port`` and ``model``), and
the command reaches the unit's ``ExecStart=`` through the one escaping layer (labctl.encode)
like any argv: nothing in it is read by systemd as a specifier, a variable or a second
command.
``api`` says what it speaks (``openai``: ``/v1/...``; ``ollama``: ``/api/...``), ``health``
the path that answers 200 once it can serve (a deep probe also asks for one token), and
``gpu_memory_gib`` its share of the GPU, counted in the budget like any other backend's.

labctl knows nothing else of it: which of its flags set what, or how it reads a key. So no
flag is labctl's own (extra_args may say anything the command may), and it checks no key
labctl can give it: it stays on loopback, and no gateway on another host routes to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from labctl.fields import ARGV, ExecPath, ModelName, Port, Word
from labctl.kinds.base import Kind, Listener, Problem, Scrape, ServiceBase, Share

if TYPE_CHECKING:
    from labctl.inventory.layout import Layout
    from labctl.inventory.schema import Inventory

GIB = 2**30
class Program(ServiceBase):
    kind: Literal["program"]
    # The program (taken as written: systemd refuses quotes and backslashes there) and its
    # arguments, in which labctl fills {host}, {port} and {model}.
    executable: ExecPath
    args: Annotated[list[Word], Field(max_length=256), ARGV] = []
    port: Port
    # The model name it serves: routes ask for it, the probe sends it.
    model: ModelName
    # What it speaks: the OpenAI API (routes use openai/ and .../v1) or Ollama's (ollama_chat/).
    api: Literal["openai", "ollama"] = "openai"
    # A GET that answers 200 once it can serve (503 while it loads is "loading").
    health: Annotated[str, Field(pattern=r"^/[A-Za-z0-9/_.-]{0,200}$")] = "/health"
    # Its Prometheus endpoint, if it has one; unset, it is not scraped.
    metrics_path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9/_.-]{0,200}$")] | None = None
    # GPU memory it takes, in GiB: counted in the GPU budget; 0 runs it without the GPU's devices.
    gpu_memory_gib: Annotated[float, Field(ge=0, le=4096)] = 0


class ProgramKind(Kind):
    name = "program"
    model = Program
    backend = True
    metrics_endpoint = True
    served_field = "model"
    example = {"kind": "program", "bind": "127.0.0.1", "port": 8095, "model": "mine", "api": "openai",
               "executable": "/opt/llama/bin/llama-server",
               "args": ["--host", "{host}", "--port", "{port}", "--alias", "{model}", "--model", "/srv/models/mine.gguf"],
               "health": "/health", "metrics_path": "/metrics", "gpu_memory_gib": 2.5, "description": "my build",
               "extra_args": ["--flash-attn", "on"], "environment": {"MY_MODE": "fast"},
               "environment_files": ["~/.config/mine.env"], "read_write_paths": ["~/mine-scratch"]}

    def argv(self, inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> list[str]:
        assert isinstance(svc, Program)
        values = {"{host}": self.address(inv, svc), "{port}": str(svc.port), "{model}": svc.model}
        words = [inv.host.expand(svc.executable)]
        for word in svc.args:
            for placeholder, value in values.items():
                word = word.replace(placeholder, value)
            words.append(word)
        return words

    def owned_flags(self, inv: Inventory, name: str, layout: Layout) -> set[str]:
        return set()  # the whole command is the operator's

    def executables(self, inv: Inventory, name: str, svc: Listener) -> list[tuple[tuple, str]]:
        return [(("executable",), inv.host.expand(getattr(svc, "executable")))]

    def uses_gpu(self, inv: Inventory, svc: Listener) -> bool:
        return getattr(svc, "gpu_memory_gib") > 0

    def served_models(self, svc: Listener) -> list[str]:
        return [getattr(svc, "model")]

    def api(self, svc: Listener) -> str:
        return getattr(svc, "api")

    def api_key(self, svc: Listener) -> None:
        return None

    def gpu_share(self, inv: Inventory, name: str, svc: Listener, gpu_total: int | None) -> Share | None:
        gib = getattr(svc, "gpu_memory_gib")
        return Share(int(gib * GIB), f"gpu_memory_gib {gib:g}") if gib else None

    def probe(self, inv: Inventory, name: str, svc: Listener) -> dict[str, object]:
        if self.api(svc) == "ollama":
            return {"service": name, "recipe": "ollama", "url": self.base_url(inv, svc),
                    "models": self.served_models(svc)}
        return {"service": name, "recipe": f"health:{getattr(svc, 'health')}", "url": self.base_url(inv, svc),
                "models": self.served_models(svc)}

    def status_row(self, inv: Inventory, name: str, svc: Listener) -> dict[str, object]:
        return {"model": getattr(svc, "model")}

    def scrape(self, inv: Inventory, name: str, svc: Listener) -> Scrape | str:
        path = getattr(svc, "metrics_path")
        if not path:
            return f"{name}: a program without metrics_path, not scraped; `labctl status` probes it"
        return Scrape(f"program-{name}", path)

    def checks(self, inv: Inventory, name: str, svc: Listener) -> Iterator[Problem]:
        assert isinstance(svc, Program)
        for placeholder, flag, why in (("{port}", "--port", "labctl probes and routes to the port it gives it"),
                                       ("{host}", "--host", "labctl binds every server where bind says (loopback "
                                                            "unless told otherwise), never where a program defaults")):
            if not any(placeholder in word for word in svc.args):
                yield Problem(("services", name, "args"), f"the arguments never say {placeholder}: {why}; pass it "
                                                          f"(for example {flag} {placeholder})")

    def remote_bind_problem(self, svc: Listener) -> str | None:
        return ("is reachable from other hosts, and a program checks no key labctl can give it: bind it to "
                "loopback and put a gateway beside it")

    def cross_host_problem(self, name: str, svc: Listener, gateway_host: str) -> tuple[None, str]:
        return None, ("a program checks no key labctl can give it, so it stays on loopback: run the gateway beside "
                      "it")


KIND = ProgramKind()
