"""The one way labctl runs a command: argv lists only (never a shell), logged, with a
timeout that kills the whole process group, and a one-line error on failure."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple

from labctl.errors import OperationFailed

#: What a death by each signal usually means for a native program (a server that was just
#: installed, or one systemd restarts).
SIGNAL_MEANING = {
    signal.SIGILL: "an instruction this CPU lacks: the build targets a newer CPU (AVX-512, AMX); "
                   "pin a build for this CPU",
    signal.SIGSEGV: "a crash in the program",
    signal.SIGBUS: "a crash in the program (a bad memory access)",
    signal.SIGABRT: "the program aborted",
}



def _debug(message: str, *args: object) -> None:
    """A debug record of what runs. Only a process that has imported logging can have a
    handler that shows one; `labctl status` from its snapshot, which runs systemctl here,
    has not, and does not pay logging's import for a record nobody reads."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger(__name__).debug(message, *args)


class CommandFailed(OperationFailed):
    """A command exited non-zero (with check=True) or could not be started. ``output`` holds
    what it printed (stderr, then stdout) for callers that show its last lines."""

    output: str = ""


class CommandTimeout(CommandFailed):
    """A command did not finish in time; its process group was killed."""


class CommandResult(NamedTuple):
    rc: int
    stdout: str
    stderr: str


def last_lines(text: str, count: int = 12) -> list[str]:
    """The last ``count`` non-empty lines of a tool's output: what a failed step shows."""
    return [ln.rstrip() for ln in text.splitlines() if ln.strip()][-count:]


def one_line(text: str, limit: int = 300) -> str:
    """The last non-empty line of ``text``, shortened: the line that usually says why."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    tail = lines[-1] if lines else ""
    return tail if len(tail) <= limit else tail[: limit - 3] + "..."


def short(argv: Sequence[str | os.PathLike[str]], limit: int = 160) -> str:
    text = shlex.join(os.fspath(a) for a in argv)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_cmd(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    echo: Callable[[str], None] | None = None,
) -> CommandResult:
    """Run ``argv``, log it, return (rc, stdout, stderr).

    With ``check`` a non-zero exit raises :class:`CommandFailed`. On timeout the whole
    process group is killed (``nsenter`` and ``runuser`` fork; their children would
    otherwise live on) and CommandTimeout is raised whatever ``check`` says.

    With ``echo`` (``-v``), the command's stderr is merged into its stdout and every line is
    passed to ``echo`` as it arrives; the result's stderr then holds the merged output.
    """
    args = [os.fspath(a) for a in argv]
    _debug("run: %s", shlex.join(args))
    data = input.encode() if isinstance(input, str) else input
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if echo else subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        raise CommandFailed(f"cannot run {args[0]}: {exc.strerror or exc}") from exc
    try:
        if echo is not None:
            out, err = b"", _stream(proc, data, echo, timeout)
        else:
            out, err = proc.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait() if echo is not None else proc.communicate()
        raise CommandTimeout(f"{short(args)}: timed out after {timeout:g}s") from None
    result = CommandResult(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
    if result.rc != 0:
        _debug("rc=%d stderr=%s", result.rc, one_line(result.stderr))
    if check and result.rc != 0:
        why = one_line(result.stderr) or one_line(result.stdout) or "no output"
        failed = CommandFailed(f"{short(args)} exited {result.rc}: {why}")
        failed.output = result.stderr + ("\n" + result.stdout if result.stdout else "")
        raise failed
    return result


def _stream(proc: subprocess.Popen[bytes], data: bytes | None, echo: Callable[[str], None],
            timeout: float | None) -> bytes:
    """Read ``proc``'s merged output line by line into ``echo``; the whole output back."""
    chunks: list[bytes] = []

    def pump() -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            chunks.append(raw)
            echo(raw.decode(errors="replace"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    if data is not None and proc.stdin is not None:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(data)
        proc.stdin.close()
    proc.wait(timeout=timeout)
    reader.join(timeout=5)
    return b"".join(chunks)


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now, for a server about to be started on it."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(argv: Sequence[str | os.PathLike[str]], *, output: str | os.PathLike[str],
          env: Mapping[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run a program that keeps running (a server) for the duration of the ``with``: argv
    only, its own session, stdin ``/dev/null``, stdout and stderr into the file ``output``.
    On leaving, its whole process group gets SIGTERM, then SIGKILL after 5 s, and is reaped."""
    args = [os.fspath(a) for a in argv]
    _debug("serve: %s", shlex.join(args))
    with open(output, "wb") as sink:
        try:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                    env=dict(env) if env is not None else None, start_new_session=True)
        except OSError as exc:
            raise CommandFailed(f"cannot run {args[0]}: {exc.strerror or exc}") from exc
    try:
        yield proc
    finally:
        _end_group(proc)


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to ``proc``'s group, SIGKILL after 5 s, then reap. The leader is only reaped
    after the group's SIGKILL (waitid WNOWAIT until then), so its PID, the group's id, cannot
    have been given to another process when the group is signalled."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
