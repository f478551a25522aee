"""The probes' HTTP/1.1 over a socket (labctl.ops.probes, written and read by h11): what it
sends, what it reads, and how it fails: refused, hung, torn, cut short, chunked."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from labctl.ops import probes
from labctl.ops.probes import ProbeSpec

pytestmark = pytest.mark.unit


@pytest.fixture
def server() -> Iterator[Callable[[Callable[[socket.socket, bytes], None]], int]]:
    """A one-shot TCP server: ``serve(answer)`` gives its port; ``answer(conn, request)`` replies."""
    socks: list[socket.socket] = []

    def serve(answer: Callable[[socket.socket, bytes], None]) -> int:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        socks.append(listener)

        def loop() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    request += chunk
                head, _, body = request.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    body += conn.recv(65536)
                answer(conn, head + b"\r\n\r\n" + body)
                conn.close()

        threading.Thread(target=loop, daemon=True).start()
        return listener.getsockname()[1]

    yield serve
    for s in socks:
        s.close()


def llama(port: int) -> ProbeSpec:
    return ProbeSpec("native", "health:/health", f"http://127.0.0.1:{port}", models=["native"])


def test_a_plain_answer_and_what_was_sent(server) -> None:
    seen: list[bytes] = []

    def answer(conn: socket.socket, request: bytes) -> None:
        seen.append(request)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}trailing junk")

    result = probes.run(llama(server(answer)), timeout=2)
    assert (result.ok, result.check, result.status, result.detail) == (True, "GET /health", 200, "ready")
    assert seen[0].startswith(b"GET /health HTTP/1.1\r\n")
    assert b"\r\nConnection: close\r\n" in seen[0]


def test_deep_probe_posts_json_for_one_token(server) -> None:
    seen: list[bytes] = []

    def answer(conn: socket.socket, request: bytes) -> None:
        seen.append(request)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    assert probes.run(llama(server(answer)), timeout=2, deep=True).ok
    post = seen[1]
    assert post.startswith(b"POST /v1/completions HTTP/1.1\r\n") and b"Content-Type: application/json" in post
    assert post.endswith(b'"max_tokens": 1, "temperature": 0}')


def test_chunked_answer_is_decoded(server) -> None:
    def answer(conn: socket.socket, request: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"b\r\n{\"data\": [{\r\n10\r\n\"id\": \"bindings\"\r\n3\r\n}]}\r\n0\r\n\r\n")

    spec = ProbeSpec("bindings", "openai-models", f"http://127.0.0.1:{server(answer)}", models=["bindings"])
    result = probes.run(spec, timeout=2)
    assert result.ok, result


def test_refused_hung_and_garbled(server) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = probes.run(llama(port), timeout=2)
    assert (refused.ok, refused.detail) == (False, "connection refused")

    hung = probes.run(llama(server(lambda conn, request: time.sleep(3))), timeout=0.5)
    assert (hung.ok, hung.detail) == (False, "no answer within 0.5s")
    assert hung.latency_ms < 1500

    garbled = probes.run(llama(server(lambda conn, request: conn.sendall(b"SSH-2.0-OpenSSH\r\n"))), timeout=2)
    assert not garbled.ok and garbled.detail.startswith("ValueError: not an HTTP answer")

    torn = probes.run(llama(server(lambda conn, request: None)), timeout=2)  # closed without a word
    assert (torn.ok, torn.detail) == (False, "ValueError: not an HTTP answer: the connection closed without one")


def test_a_503_while_loading(server) -> None:
    def answer(conn: socket.socket, request: bytes) -> None:
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")

    result = probes.run(llama(server(answer)), timeout=2)
    assert (result.ok, result.status, result.detail) == (False, 503, "loading model")


def test_the_request_line_and_the_host(server) -> None:
    seen: list[bytes] = []

    def answer(conn: socket.socket, request: bytes) -> None:
        seen.append(request)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    port = server(answer)
    probe = probes._Probe("x", 2)
    assert probe.get(f"http://127.0.0.1:{port}/v1/models?x=1").json() == {}
    assert probe.check == "GET /v1/models" and probe.status == 200
    assert seen[0].startswith(b"GET /v1/models?x=1 HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{port}\r\n".encode() in seen[0]
    probes._Probe("x", 2).get(f"http://127.0.0.1:{port}")
    assert seen[1].startswith(b"GET / HTTP/1.1\r\n")


def test_only_plain_http() -> None:
    with pytest.raises(ValueError, match="not a plain http"):
        probes._Probe("x", 1).get("https://example.com/")


def test_an_answer_cut_short_is_no_answer(server) -> None:
    """A body shorter than its Content-Length, the connection closed: a failed probe."""
    def answer(conn: socket.socket, request: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n{\"data\": [")

    spec = ProbeSpec("bindings", "openai-models", f"http://127.0.0.1:{server(answer)}", models=["bindings"])
    result = probes.run(spec, timeout=2)
    assert not result.ok and result.detail.startswith("ValueError: not an HTTP answer: peer closed connection"), result


def test_redis_auth_and_ping_on_one_connection(tmp_path) -> None:
    seen: list[bytes] = []
    env = tmp_path / "redis.env"
    env.write_text("REDIS_PASSWORD=s3cret\n")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def once() -> None:
        conn, _ = listener.accept()
        data = b""
        while data.count(b"\r\n") < 8:  # AUTH (5 lines) and PING (3 lines)
            data += conn.recv(4096)
        seen.append(data)
        conn.sendall(b"+OK\r\n+PONG\r\n")
        conn.close()

    threading.Thread(target=once, daemon=True).start()
    spec = ProbeSpec("cache", "redis", host="127.0.0.1", port=listener.getsockname()[1],
                     key=probes.Secret(str(env), "REDIS_PASSWORD"))
    result = probes.run(spec, timeout=2)
    listener.close()
    assert (result.ok, result.check, result.detail) == (True, "AUTH + PING", "ready")
    assert seen == [b"*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\n*1\r\n$4\r\nPING\r\n"]


def test_probes_run_at_once_each_bounded(server) -> None:
    """Three hung backends cost one timeout, not three."""
    hung = [server(lambda conn, request: time.sleep(3)) for _ in range(3)]
    started = time.monotonic()
    results = probes.run_all([ProbeSpec(f"s{i}", "health:/health", f"http://127.0.0.1:{p}") for i, p in enumerate(hung)],
                             timeout=0.5)
    assert time.monotonic() - started < 1.5
    assert list(results) == ["s0", "s1", "s2"]
    assert all(r.detail == "no answer within 0.5s" for r in results.values())


def test_a_thread_hands_back_its_result_or_its_exception() -> None:
    assert probes.in_thread(lambda: 42)() == 42

    def boom() -> None:
        raise KeyError("in the thread")

    wait = probes.in_thread(boom)
    with pytest.raises(KeyError, match="in the thread"):
        wait()


@pytest.mark.parametrize("key", ["sk-secret\x00tail", "sk-secr\u00e9t"])
def test_a_key_http_cannot_carry_fails_the_probe_without_showing_it(server, tmp_path, key: str) -> None:
    """A key read from its env file with a NUL or a non-ASCII character: a failed probe whose
    detail does not quote it (h11's own message does: the control)."""
    import h11

    env = tmp_path / "keys.env"
    env.write_text(f"API_KEY={key}\n", encoding="utf-8")
    seen: list[bytes] = []
    spec = ProbeSpec("native", "health:/health", f"http://127.0.0.1:{server(lambda c, r: seen.append(r))}",
                     models=["native"], key=probes.Secret(str(env), "API_KEY"))
    result = probes.run(spec, timeout=2)
    assert (result.ok, seen) == (False, [])
    assert result.detail == ("ValueError: the request cannot be written: a header holds a character HTTP/1.1 does "
                             "not carry")
    assert "secr" not in str(result.as_dict())
    try:  # control: what h11 says of the same header
        h11.Connection(h11.CLIENT).send(h11.Request(method="GET", target="/", headers=[
            ("Host", "x"), ("Authorization", f"Bearer {key}")]))
    except (h11.LocalProtocolError, UnicodeError) as exc:
        assert "secr" in str(exc) or "\\xe9" in str(exc) or "\xe9" in str(exc)
    else:
        raise AssertionError("h11 took the header")
