"""Small, generic helpers for tests that run real processes and talk HTTP on loopback.

Standard library only, so any test tier can import this without extra dependencies.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that was free a moment ago.

    Another process can still grab it before the caller binds; callers that start a
    server should treat "address in use" as a reason to retry with a new port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class HttpResult:
    status: int
    body: bytes
    headers: Mapping[str, str]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    url: str,
    *,
    method: str = "GET",
    json_body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> HttpResult:
    """Send one request; return status, body and headers, also for 4xx/5xx answers.

    Connection-level failures (refused, reset, timeout) propagate as OSError subclasses.
    """
    data = None
    all_headers = dict(headers or {})
    if json_body is not None:
        data = json.dumps(json_body).encode()
        all_headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    # An explicit empty ProxyHandler: a proxy from the environment must never see loopback
    # test traffic (and would break it).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return HttpResult(resp.status, resp.read(), dict(resp.headers))
    except urllib.error.HTTPError as err:
        return HttpResult(err.code, err.read(), dict(err.headers or {}))


def http_json(url: str, body: Any | None = None, *, timeout: float = 30.0) -> HttpResult:
    """GET ``url``, or POST ``body`` as JSON when given."""
    method = "GET" if body is None else "POST"
    return http_request(url, method=method, json_body=body, timeout=timeout)


def iter_sse_data(body: bytes) -> Iterator[str]:
    """Yield the payload of each ``data:`` line of a server-sent-events body."""
    for line in body.decode("utf-8").splitlines():
        if line.startswith("data:"):
            yield line[len("data:") :].strip()


def wait_http(
    url: str,
    *,
    timeout: float,
    status: int = 200,
    interval: float = 0.1,
    proc: subprocess.Popen[Any] | None = None,
) -> HttpResult:
    """Poll ``url`` with GET until it answers ``status``; return that answer.

    Raises TimeoutError after ``timeout`` seconds, or RuntimeError as soon as ``proc``
    (the server being waited for, if given) has exited, so a crash fails fast instead of
    waiting out the whole timeout.
    """
    deadline = time.monotonic() + timeout
    last: str = "no answer yet"
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process exited with code {proc.returncode} while waiting for {url}"
            )
        try:
            result = http_request(url, timeout=max(interval, 2.0))
            if result.status == status:
                return result
            last = f"HTTP {result.status}"
        except OSError as err:
            last = repr(err)
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{url} did not answer {status} within {timeout:.0f}s (last: {last})"
            )
        time.sleep(interval)


def start_process(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr appended to ``log_path``.

    The child gets its own session (process group), so :func:`stop_process` can also end
    any children it spawns.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        # The child keeps its own copy of the descriptor; ours can be closed right away.
        return subprocess.Popen(
            [os.fspath(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            cwd=cwd,
            start_new_session=True,
        )


def stop_process(proc: subprocess.Popen[Any], *, timeout: float = 10.0) -> int | None:
    """SIGTERM the process group of ``proc``, SIGKILL it after ``timeout``; return the exit code.

    Safe to call more than once and on processes that have already exited.
    """
    if proc.poll() is not None:
        return proc.returncode
    _signal_group(proc, signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        return proc.wait(timeout=timeout)


def wait_exit(proc: subprocess.Popen[Any], *, timeout: float) -> int | None:
    """Return the exit code of ``proc`` if it exits within ``timeout``, else None."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def tail(path: Path, lines: int = 40) -> str:
    """Last ``lines`` lines of a (log) file, for assertion messages; '' if it is missing."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _signal_group(proc: subprocess.Popen[Any], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


__all__ = [
    "LOOPBACK",
    "HttpResult",
    "free_port",
    "http_json",
    "http_request",
    "iter_sse_data",
    "start_process",
    "stop_process",
    "tail",
    "wait_exit",
    "wait_http",
]


def timed(fn: Callable[[], object], bound: float = 1.0) -> object:
    """fn() in a daemon thread, bounded: a regression that blocks (open() on a FIFO) fails
    the test instead of hanging the run. Exceptions (SystemExit included) are re-raised."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    start = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(bound + 5)
    elapsed = time.monotonic() - start
    assert not worker.is_alive(), f"still running after {elapsed:.1f}s (blocked?)"
    assert elapsed <= bound, f"took {elapsed:.2f}s"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")
