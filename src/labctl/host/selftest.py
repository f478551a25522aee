"""Does a llama-server program labctl installed from a wheel run on this machine's CPU?

A wheel's native code is compiled for some instruction set. One built with ``-march=native``
on an AVX-512/AMX machine installs everywhere, and then dies with SIGILL on a CPU without
those instructions, at its first model load. ``up`` would then start the rest of the stack,
stop the crash-looping unit and report an exit status (4) that says nothing of the cause, the
journal's ``status=4/ILL`` beneath it unexplained. So ``up`` tries a newly installed
program once, before trusting it: a generated tiny model (F32, half a megabyte), loaded on
the CPU, asked for one token, within a bound. A program that dies of a signal is refused
with a line that says which signal and what it usually means.

The tiny model exercises the CPU backend's start-up and F32 kernels. It does not exercise
every quantised kernel: a build whose fault is only there is caught later, by the
service's own readiness probe, or by ``model switch``, which rolls back.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from labctl.host.proc import SIGNAL_MEANING, CommandFailed, free_port, last_lines, serve

@dataclass(frozen=True)
class Verdict:
    ok: bool
    seconds: float
    why: str = ""
    log_tail: tuple[str, ...] = ()


def _request(port: int, method: str, path: str, body: dict[str, object] | None, timeout: float) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


#: Shared libraries the programs labctl installs link against from the system, and the
#: Debian package that has each (the pinned llama-server wheel needs the OpenMP runtime).
LIBRARY_PACKAGE = {"libgomp.so.1": "libgomp1", "libnuma.so.1": "libnuma1", "libvulkan.so.1": "libvulkan1",
                   "libstdc++.so.6": "libstdc++6"}

_MISSING_LIBRARY = re.compile(r"error while loading shared libraries: ([^:\s]+): cannot open shared object file")


def missing_library(log: str) -> str | None:
    """What the dynamic loader said it could not find (it exits 127 before main runs), as a
    line naming the library and, where known, the package that has it."""
    found = _MISSING_LIBRARY.search(log)
    if found is None:
        return None
    lib = found.group(1)
    package = LIBRARY_PACKAGE.get(lib)
    where = f"install {package} (Debian's package for it)" if package else "install the package that has it"
    return f"it cannot start: the shared library {lib} is missing on this host; {where}"


def _died(returncode: int) -> str:
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode)
        except ValueError:
            return f"it was killed by signal {-returncode}"
        meaning = SIGNAL_MEANING.get(sig)
        return f"it died of {sig.name}" + (f" ({meaning})" if meaning else "")
    return f"it exited {returncode}"


def llama_server_runs(program: str | Path, *, timeout: float = 120.0) -> Verdict:
    """Start ``program`` on a generated tiny model on loopback and ask it for one token."""
    from labctl.host.gguf_writer import write_tiny_gguf

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="labctl-selftest-") as tmp:
        model = write_tiny_gguf(Path(tmp) / "selftest.gguf", name="labctl-selftest")
        output = Path(tmp) / "server.log"
        port = free_port()
        argv = [str(program), "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
                "--ctx-size", "256", "--threads", "1", "--parallel", "1", "--n-gpu-layers", "0"]
        try:
            with serve(argv, output=output) as proc:
                deadline, loaded = start + timeout, False

                def failed(why: str) -> Verdict:
                    tail = tuple(last_lines(output.read_text(errors="replace"), 6))
                    return Verdict(False, time.monotonic() - start, why, tail)

                while time.monotonic() < deadline:
                    if proc.poll() is not None:
                        if proc.returncode == 127 and (why := missing_library(output.read_text(errors="replace"))):
                            return failed(why)
                        during = "answering its first request" if loaded else "while loading a model"
                        return failed(f"{_died(proc.returncode)} {during}")
                    try:
                        if not loaded:
                            loaded = _request(port, "GET", "/health", None, 2.0) == 200
                        if loaded:
                            remaining = max(1.0, deadline - time.monotonic())
                            status = _request(port, "POST", "/completion", {"prompt": "Hello", "n_predict": 1},
                                              remaining)
                            if status == 200:
                                return Verdict(True, time.monotonic() - start)
                            time.sleep(0.2)  # the request may have killed it: say that, if so
                            if proc.poll() is None:
                                return failed(f"its first request got HTTP {status}")
                            continue
                    except (OSError, http.client.HTTPException):
                        pass  # not listening yet, or it died mid-request: the next poll says
                    time.sleep(0.1)
                return failed(f"it did not answer one token of a tiny model within {timeout:g}s")
        except CommandFailed as exc:
            return Verdict(False, time.monotonic() - start, str(exc))


#: The tests a kind may name for a program labctl installs (labctl.kinds.base.Kind.program_test).
RECIPES = {"llama-server": llama_server_runs}
