"""systemd user units, one per enabled service."""

from __future__ import annotations

from pathlib import PurePosixPath

from labctl.inventory.schema import (
    Inventory,
    LiteLLM,
    LlamaCppPython,
    LlamaServer,
    Ollama,
    Redis,
    RedisExporter,
    ServiceBase,
    Vllm,
    check_path,
    offloads,
    unit_name,
)
from labctl.render import templates
from labctl import encode
from labctl.render.apikeys import server_key_file
from labctl.inventory.layout import Layout

# Seconds a llama-server unit waits for its process to stop before SIGKILL.
LLAMA_SERVER_STOP_SEC = 5
# How values are written into a unit (quoting, %, $, line ends): labctl.encode.


def argv(inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> list[str]:
    host, bind, port = inv.host, inv.bind_of(svc), str(svc.port)
    if isinstance(svc, Ollama):
        args = [host.expand(svc.binary), "serve"]
    elif isinstance(svc, LlamaServer):
        args = [svc.program(host), "--model", inv.model_path(svc), "--alias", svc.alias,
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
    elif isinstance(svc, Redis):
        args = [host.expand(svc.binary), encode.redis_path(str(layout.installed(layout.redis_config(name))))]
    elif isinstance(svc, RedisExporter):
        from labctl.render.gateway import host_port, reach

        redis = inv.services[svc.redis]
        args = [host.expand(svc.binary), f"-redis.addr=redis://{host_port(reach(inv.bind_of(redis)), redis.port)}",
                f"-web.listen-address={host_port(bind, svc.port)}"]
    elif isinstance(svc, LiteLLM):
        from labctl.render import litellm_launch

        # proxy_cli's own entry point, on asyncio rather than uvloop (labctl.render.litellm_launch)
        args = [svc.runtime.interpreter(host), str(layout.installed(layout.litellm_file(litellm_launch.MODULE_FILE))),
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
    if isinstance(svc, Ollama) and "OLLAMA_MODELS" in env:
        # Expanded and normalised, as ReadWritePaths= lists it: Ollama itself expands no ~/.
        env["OLLAMA_MODELS"] = ollama_models_dir(inv, svc)
    return env


def environment_files(inv: Inventory, name: str, svc: ServiceBase) -> list[str]:
    files = [inv.host.expand(p) for p in svc.environment_files]
    if isinstance(svc, RedisExporter):
        redis = inv.services.get(svc.redis)
        if isinstance(redis, Redis) and redis.password.env_file:
            files.append(inv.host.expand(redis.password.env_file))
    if isinstance(svc, LiteLLM):
        for ref in inv.gateway_secret_refs(svc):
            if ref.env_file:
                files.append(inv.host.expand(ref.env_file))
    if isinstance(svc, (LlamaServer, LlamaCppPython, Vllm)) and svc.api_key is not None:
        # The server's own variable, derived from the reference by `labctl up` (render/apikeys).
        files.append(server_key_file(inv, name, svc))
    return list(dict.fromkeys(files))


def dependencies(inv: Inventory, svc: ServiceBase) -> list[str]:
    """Units this one starts after: a gateway after the backends its routes use, an
    exporter after its Redis."""
    if isinstance(svc, RedisExporter):
        return [unit_name(svc.redis)] if svc.redis in inv.managed() else []
    if not isinstance(svc, LiteLLM):
        return []
    # An external backend is no unit of this manager: nothing to order against.
    managed = inv.managed()
    deps = dict.fromkeys(r.service for r in svc.routes if r.service is not None and r.service in managed)
    redis = inv.cache_redis(svc)
    if redis is not None and redis.enabled and svc.cache is not None:
        deps[svc.cache.service] = None
    return [unit_name(d) for d in deps]


def uses_gpu(inv: Inventory, svc: ServiceBase) -> bool:
    """Whether the service needs the GPU's device nodes (so no PrivateDevices=)."""
    if isinstance(svc, (LlamaServer, LlamaCppPython)):
        return offloads(svc)
    if isinstance(svc, Vllm):
        return svc.device == "cuda"
    if isinstance(svc, Ollama):
        return inv.host.gpu
    return False


def writable_sources(inv: Inventory, name: str, svc: ServiceBase,
                     layout: Layout) -> list[tuple[str, str, tuple[str | int, ...]]]:
    """What a hardened service may write, each as (path, what the inventory said, where it
    said it): its working directory (vLLM's caches live there), Ollama's key pair and model
    store, and the operator's read_write_paths."""
    out: list[tuple[str, str, tuple[str | int, ...]]] = [
        (layout.working_directory(name), inv.host.state_dir, ("host", "state_dir"))]
    if isinstance(svc, Ollama):
        # Its key pair lives in ~/.ollama whatever OLLAMA_MODELS says.
        out.append((inv.host.expand("~/.ollama"), "~/.ollama", ("host", "home")))
        said = svc.environment.get("OLLAMA_MODELS")
        out.append((ollama_models_dir(inv, svc), said or "~/.ollama",
                    ("services", name, "environment", "OLLAMA_MODELS") if said else ("host", "home")))
    out += [(inv.host.expand(p), p, ("services", name, "read_write_paths", i))
            for i, p in enumerate(svc.read_write_paths)]
    return out


def writable_paths(inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> list[str]:
    """The paths of :func:`writable_sources`, once each. labctl creates them."""
    return list(dict.fromkeys(path for path, _, _ in writable_sources(inv, name, svc, layout)))


def ollama_models_dir(inv: Inventory, svc: Ollama) -> str:
    """Ollama's model store: OLLAMA_MODELS read as any path field is (absolute or ~/,
    normalised by the schema's normaliser), since it becomes a ReadWritePaths= entry.
    labctl.inventory.checks refuses one that is no such path."""
    try:
        path = check_path(svc.environment.get("OLLAMA_MODELS", "~/.ollama"))
    except ValueError as exc:
        raise encode.EncodeError(f"OLLAMA_MODELS {exc}") from None
    return inv.host.expand(path)


# The sandboxing set every hardened unit gets. PrivateUsers= is what makes the rest take
# effect in a user unit (systemd before 253 ignores mount-namespace options there without
# it). Left out on purpose, because a booted machine showed them failing: ProtectKernelLogs=
# (it masks /proc/kmsg, which containers lack, and an unprivileged user cannot read it
# anyway) and ProcSubset=pid (it clashes with that mask). DevicePolicy=, IPAddressDeny= and
# the other cgroup-BPF options need privileges a user manager does not have.
HARDENING = (
    "NoNewPrivileges=yes", "PrivateUsers=yes", "PrivateTmp=yes", "PrivateIPC=yes", "ProtectSystem=strict",
    "ProtectHome=read-only", "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectControlGroups=yes",
    "ProtectClock=yes", "ProtectHostname=yes", "ProtectProc=invisible", "RestrictNamespaces=yes",
    "RestrictRealtime=yes", "RestrictSUIDSGID=yes", "LockPersonality=yes", "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service", "SystemCallFilter=~@privileged", "CapabilityBoundingSet=",
    "AmbientCapabilities=", "UMask=0077", "KeyringMode=private", "RemoveIPC=yes",
)


def hardening(inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> list[encode.Encoded]:
    if not inv.hardened(svc):
        return []
    lines = [encode.Encoded(line) for line in HARDENING]
    if not uses_gpu(inv, svc):
        lines.append(encode.Encoded("PrivateDevices=yes"))
    # JIT code needs writable+executable memory: oneDNN in PyTorch (vLLM), GPU drivers.
    if not isinstance(svc, Vllm) and not uses_gpu(inv, svc):
        lines.append(encode.Encoded("MemoryDenyWriteExecute=yes"))
    # Go's runtime and PyTorch read interfaces over netlink.
    families = "AF_UNIX AF_INET AF_INET6" + (" AF_NETLINK" if isinstance(svc, (Ollama, Vllm, RedisExporter)) else "")
    lines.append(encode.Encoded(f"RestrictAddressFamilies={families}"))
    lines += [encode.Encoded(f"ReadWritePaths={encode.sd_path_word(p)}") for p in writable_paths(inv, name, svc, layout)]
    return lines


def limits(inv: Inventory, svc: ServiceBase) -> list[encode.Encoded]:
    lim = inv.limits_of(svc)
    out = []
    if lim.memory_high:
        out.append(f"MemoryHigh={encode.sd_size(lim.memory_high)}")
    if lim.memory_max:
        out.append(f"MemoryMax={encode.sd_size(lim.memory_max)}")
    if lim.cpu_quota_percent:
        out.append(f"CPUQuota={lim.cpu_quota_percent}%")  # no specifiers in CPUQuota=
    if lim.io_weight:
        out.append(f"IOWeight={lim.io_weight}")
    if lim.tasks_max:
        out.append(f"TasksMax={lim.tasks_max}")
    if lim.nice is not None:
        out.append(f"Nice={lim.nice}")
    return [encode.Encoded(line) for line in out]


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
        environment_files=environment_files(inv, name, svc),
        exec_start=encode.sd_exec(argv(inv, name, svc, layout)),
        # Type=exec: start completes at exec, so this bounds only a hung exec; sized from the
        # readiness deadline so a future notify-style start is not cut short.
        timeout_start_sec=svc.ready_timeout_sec,
        unit_stem=unit_name(name).removesuffix(".service"),
        hardening=hardening(inv, name, svc, layout),
        limits=limits(inv, svc),
    )


def render_units(inv: Inventory, layout: Layout) -> dict[str, str]:
    return {layout.unit(name): render_unit(inv, name, svc, layout) for name, svc in inv.managed().items()}
