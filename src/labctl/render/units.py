"""systemd user units, one per enabled service."""

from __future__ import annotations

from pathlib import PurePosixPath

from labctl import templates
from labctl.render import encode
from labctl.inventory import (
    Inventory,
    LiteLLM,
    LlamaCppPython,
    LlamaServer,
    Ollama,
    ServiceBase,
    Vllm,
    unit_name,
)
from labctl.layout import Layout

# Seconds a llama-server unit waits for its process to stop before SIGKILL.
LLAMA_SERVER_STOP_SEC = 5
# How values are written into a unit (quoting, %, $, line ends): labctl.render.encode.


def argv(inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> list[str]:
    host, bind, port = inv.host, inv.bind_of(svc), str(svc.port)
    if isinstance(svc, Ollama):
        args = [host.expand(svc.binary), "serve"]
    elif isinstance(svc, LlamaServer):
        args = [host.expand(svc.binary), "--model", inv.model_path(svc), "--alias", svc.alias,
                "--host", bind, "--port", port, "--n-gpu-layers", str(svc.n_gpu_layers),
                "--ctx-size", str(svc.ctx_size), "--parallel", str(svc.parallel)]
        if svc.threads:
            args += ["--threads", str(svc.threads)]
        if svc.metrics:
            args.append("--metrics")
    elif isinstance(svc, LlamaCppPython):
        args = [svc.runtime.interpreter(host), "-m", "llama_cpp.server", "--model", inv.model_path(svc),
                "--model_alias", svc.alias, "--host", bind, "--port", port,
                "--n_gpu_layers", str(svc.n_gpu_layers), "--n_ctx", str(svc.n_ctx)]
        if svc.n_threads:
            args += ["--n_threads", str(svc.n_threads)]
    elif isinstance(svc, Vllm):
        # `serve MODEL` (positional): the api_server module and --model are deprecated.
        args = [svc.runtime.interpreter(host), "-m", "vllm.entrypoints.cli.main", "serve",
                host.expand(svc.model) if svc.model.startswith(("/", "~/")) else svc.model,
                "--served-model-name", svc.served_model_name, "--host", bind, "--port", port,
                "--max-model-len", str(svc.max_model_len), "--dtype", svc.dtype,
                "--gpu-memory-utilization", str(svc.gpu_memory_utilization)]
        if svc.quantization:
            args += ["--quantization", svc.quantization]
        if svc.enforce_eager:
            args.append("--enforce-eager")
    elif isinstance(svc, LiteLLM):
        args = [svc.runtime.interpreter(host), "-m", "litellm.proxy.proxy_cli",
                "--config", str(layout.installed(layout.litellm_config)), "--host", bind, "--port", port]
    else:  # pragma: no cover - the schema admits no other kind
        raise TypeError(f"unknown service kind {type(svc).__name__}")
    return args + list(svc.extra_args)


def environment(inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> dict[str, str]:
    env: dict[str, str] = {}
    if isinstance(svc, Ollama):
        env["OLLAMA_HOST"] = f"{inv.bind_of(svc)}:{svc.port}"
    elif isinstance(svc, LlamaServer) and svc.library_path:
        env["LD_LIBRARY_PATH"] = inv.host.expand(svc.library_path)
    elif isinstance(svc, Vllm):
        state = PurePosixPath(layout.working_directory(name))
        env["VLLM_CACHE_ROOT"] = str(state / "vllm-cache")
        env["HF_HOME"] = str(state / "hf")
        env["VLLM_NO_USAGE_STATS"] = "1"
        env["DO_NOT_TRACK"] = "1"
        if svc.device == "cpu" and svc.cpu_kv_cache_gib:
            # Without it vLLM on the CPU reserves gpu_memory_utilization of all RAM and
            # refuses to start when that much is not free.
            env["VLLM_CPU_KVCACHE_SPACE"] = str(svc.cpu_kv_cache_gib)
        if svc.offline:
            env["HF_HUB_OFFLINE"] = "1"
            env["TRANSFORMERS_OFFLINE"] = "1"
    elif isinstance(svc, LiteLLM):
        # Without this LiteLLM fetches a model cost map from the internet at start-up.
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        env["NO_DOCS"] = "True"
    env.update(svc.environment)
    return env


def environment_files(inv: Inventory, svc: ServiceBase) -> list[str]:
    files = [inv.host.expand(p) for p in svc.environment_files]
    if isinstance(svc, LiteLLM):
        for ref in svc.secret_refs():
            if ref.env_file:
                files.append(inv.host.expand(ref.env_file))
    return list(dict.fromkeys(files))


def dependencies(inv: Inventory, svc: ServiceBase) -> list[str]:
    """Units this one starts after: a gateway after the backends its routes use."""
    if not isinstance(svc, LiteLLM):
        return []
    # An external backend is no unit of this manager: nothing to order against.
    managed = inv.managed()
    deps = dict.fromkeys(r.service for r in svc.routes if r.service is not None and r.service in managed)
    return [unit_name(d) for d in deps]


def render_unit(inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> str:
    restart = inv.restart_of(svc)
    note = None
    if isinstance(svc, Vllm) and restart.restart in ("on-failure", "on-abnormal"):
        # vLLM's API server exits with status 0 after its engine dies, which on-failure and
        # on-abnormal treat as a clean stop: the model would stay down.
        restart = restart.model_copy(update={"restart": "always"})
        note = "always: vLLM exits 0 after an engine crash, which on-failure would not restart"
    stop_note = None
    if isinstance(svc, LlamaServer) and restart.stop_timeout_sec > LLAMA_SERVER_STOP_SEC:
        # Measured: with a request in flight llama-server never completes a SIGTERM stop
        # (it hangs until SIGKILL and the request is lost either way), so a long stop
        # timeout only delays restarts. `labctl model switch` drains it first.
        restart = restart.model_copy(update={"stop_timeout_sec": LLAMA_SERVER_STOP_SEC})
        stop_note = (f"{LLAMA_SERVER_STOP_SEC}s: llama-server hangs on SIGTERM while a request is in flight; "
                     "waiting longer only delays the restart")
    return templates.render(
        "units/service.j2",
        stop_note=stop_note,
        header=f"{name} ({svc.kind}), listening on {inv.bind_of(svc)}:{svc.port}",  # type: ignore[attr-defined]
        description=svc.description or f"labctl: {name} ({svc.kind}) on {inv.bind_of(svc)}:{svc.port}",  # type: ignore[attr-defined]
        after=dependencies(inv, svc),
        restart=restart,
        restart_note=note,
        working_directory=layout.working_directory(name),
        environment=[encode.sd_assign(k, v) for k, v in sorted(environment(inv, name, svc, layout).items())],
        environment_files=environment_files(inv, svc),
        exec_start=encode.sd_exec(argv(inv, name, svc, layout)),
        # Type=exec: start completes at exec, so this bounds only a hung exec; sized from the
        # readiness deadline so a future notify-style start is not cut short.
        timeout_start_sec=svc.ready_timeout_sec,
        unit_stem=unit_name(name).removesuffix(".service"),
    )


def render_units(inv: Inventory, layout: Layout) -> dict[str, str]:
    return {layout.unit(name): render_unit(inv, name, svc, layout) for name, svc in inv.managed().items()}
