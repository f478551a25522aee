"""`labctl status` from its snapshot (labctl.__main__, labctl.ops.status): the same answer
as the full CLI, made without importing typer, pydantic, yaml, jinja2, httpx or rich's
console (test_lazy_imports), and never from a stale, foreign or damaged plan (the
inventory's bytes, labctl's files, the environment, the file's owner and shape).

The services are stand-in HTTP servers and ``systemctl`` is a stand-in script on PATH
(answering ``show`` as a user manager with the units running does, failing as one with no
bus does, or missing): both paths spawn the same one. Real systemd and the real servers
are bench/startup.py --machine's, which compares the two outputs on a booted machine."""

from __future__ import annotations

import ast
import hashlib
import json
import marshal
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
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


# A stand-in for `systemctl --user show --property=... UNIT...`: one block per labctl unit,
# as a user manager with them running prints it (no ActiveEnterTimestampMonotonic: the
# uptime would differ between two runs).
SYSTEMCTL_ANSWERS = r"""#!/bin/sh
[ "$1 $2" = "--user show" ] || { echo "stand-in: only --user show" >&2; exit 64; }
for unit in "$@"; do
  case "$unit" in labctl-*)
    printf 'Id=%s\nLoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled\n' "$unit"
    printf 'NRestarts=2\nMainPID=4242\nMemoryCurrent=536870912\nResult=success\nExecMainStatus=0\n'
    printf 'NeedDaemonReload=no\nDropInPaths=/home/me/.config/systemd/user/%s.d/50-op.conf\n\n' "$unit"
  esac
done
"""
SYSTEMCTL_NO_BUS = """#!/bin/sh
echo "Failed to connect to bus: No medium found" >&2
exit 1
"""


def systemctl_path(tmp_path: Path, behaviour: str) -> str:
    """A PATH whose ``systemctl`` answers, fails (no bus) or is missing (``behaviour``; the
    stand-in's printf and echo are the shell's own)."""
    bindir = tmp_path / f"bin-{behaviour}"
    bindir.mkdir(exist_ok=True)
    if behaviour == "missing":
        return str(bindir)
    script = bindir / "systemctl"
    script.write_text(SYSTEMCTL_ANSWERS if behaviour == "answers" else SYSTEMCTL_NO_BUS)
    script.chmod(0o755)
    return f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"


def serve(kinds: dict[str, str]) -> dict[str, ThreadingHTTPServer]:
    """Stand-in servers, one per service name, answering as its kind's probe expects."""
    servers = {}
    for name, kind in kinds.items():
        handler = type(f"Stub_{name}", (Stub,), {"kind": kind})
        servers[name] = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        threading.Thread(target=servers[name].serve_forever, daemon=True).start()
    return servers


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Path]:
    """A CPU-demo-like inventory whose three services answer (stand-in HTTP servers)."""
    servers = serve({"native": "llama-server", "bindings": "llama-cpp-python", "gateway": "litellm"})
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


def labctl(inventory: Path, *args: str, snapshot: bool, env: dict[str, str],
           prelude: str = "") -> tuple[int, str, list[str]]:
    """``labctl status -i INV ARGS`` in a fresh interpreter: (exit code, stdout, modules it
    imported). The harness itself imports nothing but atexit (a builtin) and os (loaded at start),
    then ``prelude``."""
    code = ("import atexit, os, sys\n"
            "dump = lambda: sys.stderr.write('\\nMODULES ' + repr(sorted(sys.modules)) + '\\n')\n"
            "atexit.register(dump)\n"
            "exit_now = os._exit  # the fast path's exit skips atexit\n"
            "os._exit = lambda code: (dump(), sys.stderr.flush(), exit_now(code))\n"
            f"{prelude}\n"
            "sys.argv = ['labctl', *sys.argv[1:]]\n"
            "from labctl.__main__ import main\n"
            "main()\n")
    run_env = {**env, **({} if snapshot else {"LABCTL_NO_SNAPSHOT": "1"})}
    res = subprocess.run([sys.executable, "-c", code, "status", "-i", str(inventory), *args],
                         capture_output=True, text=True, timeout=60, check=False, env=run_env)
    assert "MODULES " in res.stderr, res.stderr[-2000:]
    modules = ast.literal_eval(res.stderr.rsplit("MODULES ", 1)[1].strip())
    return res.returncode, res.stdout, modules


def same_report(text: str) -> dict:
    doc = json.loads(text)
    doc["seconds"] = 0
    for s in doc["services"]:
        s["probe"]["latency_ms"] = 0
    return doc


def timeless(text: str) -> list[str]:
    return [re.sub(r"\(\d+\.\d+s\)|\d+ms", "T", line) for line in text.splitlines()]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": systemctl_path(tmp_path, "answers"), "HOME": str(tmp_path / "me"), "COLUMNS": "80"}


HEAVY = ("typer", "pydantic", "yaml", "jinja2", "httpx", "httpcore", "rich.console", "rich.text")


@pytest.mark.parametrize("systemctl", ["answers", "fails", "missing"])
def test_the_snapshot_answers_as_the_full_cli_without_the_heavy_imports(
        stack: Path, env: dict[str, str], tmp_path: Path, systemctl: str) -> None:
    env = {**env, "PATH": systemctl_path(tmp_path, systemctl)}
    rc_full, full, full_modules = labctl(stack, "--json", snapshot=False, env=env)
    assert "typer" in full_modules and "pydantic" in full_modules  # the full CLI: it parsed the inventory
    rc_fast, fast, fast_modules = labctl(stack, "--json", snapshot=True, env=env)
    assert "labctl.ops.status" in fast_modules and "labctl.cli" not in fast_modules  # it took the fast path
    assert rc_fast == rc_full
    assert same_report(fast) == same_report(full)
    doc = json.loads(fast)
    probes = {s["service"]: s["probe"] for s in doc["services"]}
    assert all(p["ok"] for p in probes.values()), probes  # the stand-ins answered every probe
    assert probes["gateway"]["check"] == "GET /v1/models"
    native = next(s for s in doc["services"] if s["service"] == "native")
    if systemctl == "answers":  # the facts came through: state, PID, memory, restarts, drop-ins
        assert (rc_fast, doc["note"], native["active_state"], native["main_pid"], native["memory_bytes"]) == (
            0, "", "active", 4242, 512 * 2**20)
        assert native["n_restarts"] == 2 and native["drop_ins"] == [
            "/home/me/.config/systemd/user/labctl-native.service.d/50-op.conf"]
    else:  # the same note, made the same way
        assert rc_fast == 1 and native["active_state"] == "unknown"
        assert doc["note"] == ("unit states unavailable: cannot run systemctl: No such file or directory"
                               if systemctl == "missing" else "unit states unavailable: systemctl --user show "
                               "--property=Id,LoadState,ActiveState,SubState,UnitFileState,NRestarts,MainPID,"
                               "MemoryCurrent,ActiveEnterTimestamp,ActiveEnterTimestampMon... exited 1: "
                               "Failed to connect to bus: No medium found")
    heavy = [m for m in fast_modules if m.split(".")[0] in HEAVY or m in HEAVY
             or m in ("labctl.cli", "labctl.inventory.schema", "labctl.load")]
    assert heavy == []
    # The text form, too.
    _, full_text, _ = labctl(stack, snapshot=False, env=env)
    _, fast_text, fast_text_modules = labctl(stack, snapshot=True, env=env)
    assert "labctl.cli" not in fast_text_modules and "labctl.ops.status" in fast_text_modules
    assert timeless(fast_text) == timeless(full_text)
    assert "ok  native (llama-server) " in fast_text if systemctl == "answers" else "BAD native" in fast_text


def test_the_snapshot_keeps_no_secret(stack: Path, env: dict[str, str]) -> None:
    labctl(stack, snapshot=False, env=env)
    (snapshot,) = (Path(env["HOME"]) / ".cache" / "labctl" / "status").iterdir()
    data = snapshot.read_bytes()
    assert data.startswith(status.SNAPSHOT_MAGIC)
    assert KEY.encode() not in data and KEY.encode("utf-16-le") not in data
    assert oct(snapshot.stat().st_mode & 0o777) == "0o600"


@pytest.fixture
def saved(stack: Path, monkeypatch, tmp_path: Path) -> Path:
    """The snapshot of ``stack``, as the full CLI keeps it; its path."""
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    from labctl.load import load_inventory

    status.save_snapshot(stack, status.status_inputs(load_inventory(stack).inventory))
    assert status.load_snapshot(stack) is not None
    (path,) = (tmp_path / "me" / ".cache" / "labctl" / "status").iterdir()
    return path


@pytest.mark.parametrize("change", ["inventory", "code", "environment", "torn", "group-writable", "json"])
def test_a_stale_or_torn_snapshot_is_never_used(stack: Path, saved: Path, change: str, monkeypatch) -> None:
    if change == "inventory":
        stack.write_text(stack.read_text() + "# a comment changes the bytes\n")
    elif change == "code":
        monkeypatch.setattr(status, "_code_stamp", lambda: "another labctl")
    elif change == "environment":
        monkeypatch.setenv("LABCTL_SOMETHING", "new")
    elif change == "torn":
        saved.write_bytes(saved.read_bytes()[:100])
    elif change == "group-writable":
        saved.chmod(0o620)
    else:  # the JSON snapshot of an earlier labctl, under the new name
        saved.write_text(json.dumps({"key": status.snapshot_key(stack), "plan": {}}))
    assert status.load_snapshot(stack) is None
    assert status.status_from_snapshot(stack, probe_timeout=1) is None  # (systemctl may have run: read-only)


def test_status_from_a_fresh_snapshot(stack: Path, saved: Path, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", systemctl_path(tmp_path, "answers"))
    report = status.status_from_snapshot(stack, probe_timeout=2)
    assert report is not None and report.healthy and report.note == ""
    assert [s.service for s in report.services] == ["native", "bindings", "gateway"]


def test_a_damaged_snapshot_is_never_used(stack: Path, saved: Path) -> None:
    """Any byte changed, or the file cut anywhere: the checksum says so; nothing raises."""
    good = saved.read_bytes()
    rng = random.Random(13)
    positions = sorted(set(rng.sample(range(len(good)), 60)) | {0, len(status.SNAPSHOT_MAGIC) + 3, len(good) - 1})
    for pos in positions:
        saved.write_bytes(good[:pos] + bytes([good[pos] ^ (1 << rng.randrange(8))]) + good[pos + 1:])
        assert status.load_snapshot(stack) is None, pos
        saved.write_bytes(good[:pos])
        assert status.load_snapshot(stack) is None, pos
    saved.write_bytes(good)
    assert status.load_snapshot(stack) is not None  # control: the intact file is used


def reseal(path: Path, doc: object) -> None:
    """``doc`` written as a snapshot with a valid checksum: only its shape can refuse it."""
    payload = marshal.dumps(doc, 2)
    path.write_bytes(status.SNAPSHOT_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def test_a_snapshot_of_another_shape_is_never_used(stack: Path, saved: Path) -> None:
    payload = saved.read_bytes().partition(b"\n")[2]
    doc = marshal.loads(payload)
    reseal(saved, doc)
    assert status.load_snapshot(stack) == doc["plan"]  # control: resealing keeps a good one good

    def changed(edit) -> object:  # type: ignore[no-untyped-def]
        copy = marshal.loads(payload)
        edit(copy["plan"])
        return copy

    native = next(i for i, r in enumerate(doc["plan"]["services"]) if r["name"] == "native")
    bad = {
        "a code object": lambda p: p.update(services=[compile("1", "x", "eval")]),
        "a tuple": lambda p: p.update(managed=tuple(p["managed"])),
        "bytes": lambda p: p["services"][native].update(unit=b"labctl-native.service"),
        "no probe": lambda p: p["services"][native].pop("probe"),
        "a probe of another name": lambda p: p["services"][native]["probe"].update(service="other"),
        "a probe field too many": lambda p: p["services"][native]["probe"].update(shell="rm -rf ~"),
        "a unit not managed": lambda p: p.update(managed=[]),
        "a unit like an option": lambda p: p["managed"].append("--host=elsewhere"),
        "a port as text": lambda p: p["services"][native].update(port="8080"),
        "a model as a number": lambda p: p["services"][native].update(model_link=7),
        "an endpoint without routes": lambda p: p["endpoints"].append({"name": "x", "provider": "y", "api_base": "z"}),
        "not a dict": lambda p: p.clear() or p.update(services=None),
    }
    for why, edit in bad.items():
        reseal(saved, changed(edit))
        assert status.load_snapshot(stack) is None, why
    reseal(saved, [doc])
    assert status.load_snapshot(stack) is None


def test_a_snapshot_of_another_owner_is_never_used(stack: Path, saved: Path, monkeypatch) -> None:
    uid = os.getuid()
    assert status.read_snapshot(stack) is not None  # control: the owner reads it
    monkeypatch.setattr(os, "getuid", lambda: uid + 1)  # another user reading this file
    assert status.read_snapshot(stack) is None


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
    from labctl.cmdline import STATUS, parse

    def fast(args: list[str]) -> dict[str, object] | None:
        return parse([o for o in STATUS if o.snapshot], args)

    assert fast(["-i", "x.yaml", "--json", "--probe-timeout", "2"]) == {
        "inventory": "x.yaml", "probe_timeout": 2.0, "as_json": True}
    assert fast(["--inventory=x.yaml"])["inventory"] == "x.yaml"  # type: ignore[index]
    for args in (["--wide"], ["--endpoints"], ["--host", "a"], ["--probe-timeout", "soon"], ["-i"], ["--help"],
                 ["--inv", "x.yaml"], ["--json=yes"], ["x.yaml"]):
        assert fast(args) is None, args


@pytest.mark.parametrize("environ", [{"COLUMNS": "123"}, {"TERM": "dumb"}, {}])
def test_both_paths_lay_lines_out_for_one_width(environ: dict[str, str]) -> None:
    """The full CLI's Console is given labctl.text.terminal_width, the fast path's width."""
    code = ("from labctl.cli import out\nfrom labctl.text import terminal_width\n"
            "print(out.width, terminal_width())\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PATH": os.environ["PATH"], **environ})
    full, fast = res.stdout.split()
    assert full == fast == environ.get("COLUMNS", "80")


def test_a_stale_snapshot_starts_nothing(stack: Path, saved: Path, monkeypatch, tmp_path: Path) -> None:
    """No systemctl and no probe (they send keys) for a plan not made from what is here."""
    bindir = tmp_path / "bin-records"
    bindir.mkdir()
    (bindir / "systemctl").write_text(f"#!/bin/sh\necho ran >> {tmp_path}/systemctl-ran\n")
    (bindir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    stack.write_text(stack.read_text() + "# changed\n")
    started = []
    monkeypatch.setattr(status, "start_all", lambda *a, **k: started.append(a))
    assert status.status_from_snapshot(stack, probe_timeout=1) is None
    assert not (tmp_path / "systemctl-ran").exists() and started == []


def test_a_hung_systemctl_is_killed_with_its_session(stack: Path, saved: Path, tmp_path: Path, monkeypatch) -> None:
    """status's systemctl goes through host.proc.run_cmd: its timeout kills the session."""
    from labctl.host import systemd

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "systemctl").write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {tmp_path}/child\nsleep 60\n")
    (bindir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setattr(systemd, "SHOW_TIMEOUT", 0.5)
    started = time.monotonic()
    report = status.status_from_snapshot(stack, probe_timeout=2)
    assert report is not None and time.monotonic() - started < 5
    assert report.note.startswith("unit states unavailable: systemctl --user show --property=Id,")
    assert report.note.endswith(": timed out after 0.5s")
    assert {s.active_state for s in report.services} == {"unknown"}
    assert_killed(int((tmp_path / "child").read_text()))


def assert_killed(child: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # killed with the session (a zombie until its new parent reaps it)
        try:
            with open(f"/proc/{child}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"systemctl's child {child} still runs")
