"""`labctl status` from its snapshot (labctl.__main__, labctl.ops.status): the same answer
as the full CLI, made without importing typer, pydantic, yaml, jinja2, httpx or rich, and
never from a stale plan (the inventory's bytes, labctl's files, the environment)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from labctl.ops import status

pytestmark = pytest.mark.unit

KEY = "sk-snapshot-test-master-key-1234567890"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stub(BaseHTTPRequestHandler):
    """Answers as each kind's probe expects: llama-server, llama-cpp-python, LiteLLM."""

    kind = ""

    def log_message(self, *args: object) -> None:
        pass

    def answer(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.kind == "llama-server" and self.path == "/health":
            return self.answer(200, {"status": "ok"})
        if self.kind == "llama-cpp-python" and self.path == "/v1/models":
            return self.answer(200, {"data": [{"id": "bindings"}]})
        if self.kind == "litellm" and self.path == "/health/liveliness":
            return self.answer(200, "I'm alive!")
        if self.kind == "litellm" and self.path == "/v1/models":
            if self.headers.get("Authorization") != f"Bearer {KEY}":
                return self.answer(401, {"error": "no key"})
            return self.answer(200, {"data": [{"id": "bindings"}, {"id": "native"}]})
        return self.answer(404, {"error": self.path})


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Path]:
    """A CPU-demo-like inventory whose three services answer (stand-in HTTP servers)."""
    servers = {}
    for name, kind in (("native", "llama-server"), ("bindings", "llama-cpp-python"), ("gateway", "litellm")):
        handler = type(f"Stub_{name}", (Stub,), {"kind": kind})
        servers[name] = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        threading.Thread(target=servers[name].serve_forever, daemon=True).start()
    home = tmp_path / "home"
    secrets = home / ".config" / "labctl" / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "litellm.env").write_text(f"LITELLM_MASTER_KEY={KEY}\n")
    (secrets / "litellm.env").chmod(0o600)
    port = {n: s.server_address[1] for n, s in servers.items()}
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(f"""version: 1
host: {{user: labuser, gpu: false, home: {home}, models_dir: {home}/models}}
services:
  native: {{kind: llama-server, binary: /bin/true, port: {port['native']}, alias: native, n_gpu_layers: 0}}
  bindings: {{kind: llama-cpp-python, runtime: {{python: {sys.executable}}}, port: {port['bindings']},
              alias: bindings, n_gpu_layers: 0}}
  gateway:
    kind: litellm
    runtime: {{python: {sys.executable}}}
    port: {port['gateway']}
    routes: [{{name: native, service: native}}, {{name: bindings, service: bindings}}]
    fallbacks: {{native: [bindings]}}
monitoring: {{enabled: false}}
""")
    yield inventory
    for s in servers.values():
        s.shutdown()


def labctl(inventory: Path, *args: str, snapshot: bool, env: dict[str, str]) -> tuple[int, str, list[str]]:
    """``labctl status -i INV ARGS`` in a fresh interpreter: (exit code, stdout, modules it imported)."""
    code = ("import atexit, json, sys\n"
            "atexit.register(lambda: sys.stderr.write('\\nMODULES ' + json.dumps(sorted(sys.modules)) + '\\n'))\n"
            "sys.argv = ['labctl', *json.loads(sys.argv[1])]\n"
            "from labctl.__main__ import main\n"
            "main()\n")
    run_env = {**env, **({} if snapshot else {"LABCTL_NO_SNAPSHOT": "1"})}
    res = subprocess.run([sys.executable, "-c", code, json.dumps(["status", "-i", str(inventory), *args])],
                         capture_output=True, text=True, timeout=60, check=False, env=run_env)
    modules = json.loads(res.stderr.rsplit("MODULES ", 1)[1])
    return res.returncode, res.stdout, modules


def same_report(text: str) -> dict:
    doc = json.loads(text)
    doc["seconds"] = 0
    for s in doc["services"]:
        s["probe"]["latency_ms"] = 0
    return doc


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path / "me"), "COLUMNS": "80"}


def test_the_snapshot_answers_as_the_full_cli_without_the_heavy_imports(stack: Path, env: dict[str, str]) -> None:
    rc_full, full, full_modules = labctl(stack, "--json", snapshot=False, env=env)
    assert "typer" in full_modules and "pydantic" in full_modules  # the full CLI: it parsed the inventory
    rc_fast, fast, fast_modules = labctl(stack, "--json", snapshot=True, env=env)
    assert rc_fast == rc_full
    assert same_report(fast) == same_report(full)
    probes = {s["service"]: s["probe"] for s in json.loads(fast)["services"]}
    assert all(p["ok"] for p in probes.values()), probes  # the stand-ins answered every probe
    assert probes["gateway"]["check"] == "GET /v1/models"
    heavy = [m for m in fast_modules if m.split(".")[0] in ("typer", "pydantic", "yaml", "jinja2", "httpx", "rich")
             or m in ("labctl.cli", "labctl.inventory.schema", "labctl.inventory.load")]
    assert heavy == []
    # The text form, too.
    _, full_text, _ = labctl(stack, snapshot=False, env=env)
    _, fast_text, fast_text_modules = labctl(stack, snapshot=True, env=env)
    assert "labctl.cli" not in fast_text_modules

    def timeless(text: str) -> list[str]:
        import re

        return [re.sub(r"\(\d+\.\d+s\)|\d+ms", "T", line) for line in text.splitlines()]

    assert timeless(fast_text) == timeless(full_text)


def test_the_snapshot_keeps_no_secret(stack: Path, env: dict[str, str]) -> None:
    labctl(stack, snapshot=False, env=env)
    (snapshot,) = (Path(env["HOME"]) / ".cache" / "labctl" / "status").iterdir()
    assert KEY not in snapshot.read_text()
    assert oct(snapshot.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("change", ["inventory", "code", "environment", "torn"])
def test_a_stale_or_torn_snapshot_is_never_used(stack: Path, change: str, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    from labctl.inventory.load import load_inventory

    status.save_snapshot(stack, status.plan_of(load_inventory(stack).inventory))
    assert status.load_snapshot(stack) is not None
    if change == "inventory":
        stack.write_text(stack.read_text() + "# a comment changes the bytes\n")
    elif change == "code":
        monkeypatch.setattr(status, "_code_stamp", lambda: "another labctl")
    elif change == "environment":
        monkeypatch.setenv("LABCTL_SOMETHING", "new")
    else:
        path = next((tmp_path / "me" / ".cache" / "labctl" / "status").iterdir())
        path.write_text(path.read_text()[:100])
    assert status.load_snapshot(stack) is None


def test_an_edited_labctl_file_changes_the_code_stamp(tmp_path: Path, monkeypatch) -> None:
    import labctl

    fake = tmp_path / "src" / "labctl"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("x = 1\n")
    monkeypatch.setattr(labctl, "__file__", str(fake / "__init__.py"))
    before = status._code_stamp()
    (fake / "__init__.py").write_text("x = 22\n")
    assert status._code_stamp() != before


def test_monitoring_or_vllm_plans_are_not_kept() -> None:
    plan = {"services": [{"vllm": False}], "monitoring": False}
    assert status.snapshot_fits(plan)
    assert not status.snapshot_fits({**plan, "monitoring": True})
    assert not status.snapshot_fits({**plan, "services": [{"vllm": True}]})


def test_options_the_fast_path_does_not_know_go_to_the_full_cli() -> None:
    from labctl.__main__ import _status_args

    assert _status_args(["-i", "x.yaml", "--json", "--probe-timeout", "2"]) == {
        "inventory": "x.yaml", "timeout": 2.0, "json": True}
    assert _status_args(["--inventory=x.yaml"])["inventory"] == "x.yaml"  # type: ignore[index]
    for args in (["--wide"], ["--endpoints"], ["--host", "a"], ["--probe-timeout", "soon"], ["-i"], ["--help"]):
        assert _status_args(args) is None


@pytest.mark.parametrize("environ", [{"COLUMNS": "123"}, {"TERM": "dumb"}, {}])
def test_width_is_the_one_rich_gives_the_full_cli(environ: dict[str, str], monkeypatch) -> None:
    from rich.console import Console

    from labctl.__main__ import width

    for var in ("COLUMNS", "TERM"):
        monkeypatch.delenv(var, raising=False)
    for var, value in environ.items():
        monkeypatch.setenv(var, value)
    assert width() == Console(highlight=False, soft_wrap=True).width
