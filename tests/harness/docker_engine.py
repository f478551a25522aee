"""A real Docker engine and locally built images, for the monitoring integration tests.

No registry is reachable here, so nothing is pulled:

* **Engine.** :func:`start_engine` runs Debian's ``dockerd`` (package ``docker.io``) on a
  private socket with its own ``--data-root``/``--exec-root``/``--pidfile``, with
  ``--bridge=none --iptables=false`` (the rendered stack uses ``network_mode: host``, so no
  bridge, NAT or iptables rule is needed and none is left behind). dockerd runs in its own
  mount namespace in which ``/`` is made ``rshared``: the rendered node exporter mounts
  ``/:/host:ro,rslave``, which Docker refuses when ``/`` is a private mount (true on hosts
  whose PID 1 is not systemd, such as CI). The host's own mount propagation is not touched,
  and every overlay mount dockerd makes disappears with that namespace.
  :meth:`DockerEngine.stop` removes all containers, stops dockerd, and deletes a
  ``docker0`` bridge if one appeared while it ran.
* **Images.** :func:`build_images` makes three images, each tagged and labelled with a key
  of its inputs so that a rerun skips what is current:

  - ``labctl-test/debian-base:bookworm``: ``docker import`` of the systemd sandbox's cached
    Debian rootfs (:func:`labctl.sandbox.build_rootfs`, ~300 MB, reused rather than a
    second debootstrap), minus the sandbox's ssh keys.
  - ``labctl-test/prometheus:2`` and ``labctl-test/node-exporter:1``: Debian's
    ``prometheus`` and ``prometheus-node-exporter`` plus ``busybox`` (the rendered
    healthchecks call ``wget``), fetched on the host with ``apt-get download`` and unpacked
    with ``dpkg -x`` into the build context (no apt or network inside the build).
  - ``labctl-test/grafana-standin:1``: **a stand-in, not Grafana**. Grafana cannot be had
    on these machines (no package, no registry). The stand-in checks what the rendered
    compose file hands Grafana (admin password file, provisioning) and answers
    ``/api/health``, so compose's ``depends_on``/healthcheck logic runs for real. See
    images/grafana-standin/grafana_standin.py.

* **Cache.** ``~/.cache/labctl/docker-test`` (``$XDG_CACHE_HOME`` or
  ``$LABCTL_DOCKER_TEST_CACHE`` move it) holds ``data/`` (the engine's data-root, so built
  images survive between runs), ``debs/`` (the downloaded packages) and a lock. A second
  concurrent session finds the lock held and uses a throwaway data-root (a cold build).
  Delete the directory to start over; the sandbox rootfs cache is
  ``~/.cache/labctl/sandbox`` (``$LABCTL_SANDBOX_CACHE``).

Outside CI a missing prerequisite skips the tests with the install hint; with CI=true it
fails them (harness.tools.missing).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from labctl.host.proc import CommandFailed, run_cmd
from harness import helpers, tools

IMAGES_DIR = Path(__file__).resolve().parents[1] / "integration" / "images"
ENGINE_PACKAGES_HINT = "apt-get install -y --no-install-recommends docker.io"
# The label that records what an image was built from; a mismatch rebuilds it.
KEY_LABEL = "org.labctl.test.inputs"
BASE_TAG = "labctl-test/debian-base:bookworm"
# labctl.sandbox writes this when a rootfs build completes (suite, packages, format).
SANDBOX_STAMP = "etc/labctl-sandbox/stamp.json"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0

# Never put these into an image: the sandbox's ssh key pair and host keys.
ROOTFS_EXCLUDES = (
    "./etc/labctl-sandbox",
    "./root/.ssh",
    "./home/*/.ssh",
    "./etc/ssh/ssh_host_*",
    "./dev/*",
    "./proc/*",
    "./sys/*",
    "./run/*",
    "./tmp/*",
)
# Parts of the unpacked packages a container never needs.
DEB_PRUNE = ("usr/share/doc", "usr/share/man", "lib/systemd", "etc/init.d", "etc/logrotate.d",
             "usr/bin/promtool")


@dataclass(frozen=True)
class ImageSpec:
    tag: str
    directory: str  # under tests/integration/images
    packages: tuple[str, ...]  # Debian packages unpacked into the build context's root/


IMAGE_SPECS = {
    "prometheus": ImageSpec("labctl-test/prometheus:2", "prometheus", ("prometheus", "busybox")),
    "node_exporter": ImageSpec("labctl-test/node-exporter:1", "node-exporter",
                               ("prometheus-node-exporter", "busybox")),
    "grafana": ImageSpec("labctl-test/grafana-standin:1", "grafana-standin", ("busybox",)),
}


def cache_root() -> Path:
    env = os.environ.get("LABCTL_DOCKER_TEST_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "labctl" / "docker-test"


def require_prerequisites() -> None:
    """Skip (or fail under CI) unless this host can run a Docker engine for the tests."""
    if os.geteuid() != 0:
        tools.missing("root", "the test Docker engine (dockerd) must run as root")
    for command in ("dockerd", "containerd", "runc"):
        tools.require_command(command, ENGINE_PACKAGES_HINT)
    for command in ("unshare", "mount", "tar", "dpkg", "apt-get"):
        tools.require_command(command, "a Debian host with util-linux, tar, dpkg and apt")


def _bridge_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


@dataclass
class DockerEngine:
    """A dockerd started for a test session. ``host`` is its DOCKER_HOST value."""

    proc: subprocess.Popen[bytes]
    run_dir: Path
    data_root: Path
    log_path: Path
    started_in: float
    bridge_existed: bool
    lock: Any = None
    throwaway_data_root: bool = False
    _clients: list[docker.DockerClient] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.run_dir / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def client(self, timeout: int = 120) -> docker.DockerClient:
        c = docker.DockerClient(base_url=self.host, timeout=timeout)
        self._clients.append(c)
        return c

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_HOST"] = self.host
        return env

    def log_tail(self, lines: int = 30) -> str:
        return helpers.tail(self.log_path, lines)

    def remove_all_containers(self) -> None:
        """This engine is the tests' own: nothing in it is anyone else's."""
        c = self.client()
        for container in c.containers.list(all=True):
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True, v=True)
        with contextlib.suppress(docker.errors.APIError):
            c.volumes.prune()
        with contextlib.suppress(docker.errors.APIError):
            c.networks.prune()

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(Exception):
                    self.remove_all_containers()
            for c in self._clients:
                with contextlib.suppress(Exception):
                    c.close()
            # SIGTERM to the group: dockerd, and the containerd it started.
            helpers.stop_process(self.proc, timeout=STOP_TIMEOUT)
        finally:
            if not self.bridge_existed and _bridge_exists("docker0"):
                run_cmd(["ip", "link", "delete", "docker0"], check=False, timeout=10)
            shutil.rmtree(self.run_dir, ignore_errors=True)
            if self.throwaway_data_root:
                shutil.rmtree(self.data_root, ignore_errors=True)
            if self.lock is not None:
                self.lock.close()


def _take_cache_lock(cache: Path) -> Any | None:
    cache.mkdir(parents=True, exist_ok=True)
    fh = open(cache / "engine.lock", "w")  # noqa: SIM115 - held for the engine's lifetime
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


def _stop_stale_engine(pid_file: Path, data_root: Path) -> None:
    """An earlier session killed hard leaves its dockerd running on the cached data-root
    (it runs in a session of its own). Only that process is ended: the pid it recorded,
    and only while that pid is still a dockerd on this data-root."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if not cmdline or not cmdline[0].endswith(b"dockerd") or str(data_root).encode() not in cmdline:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    args = [a.decode(errors="replace") for a in cmdline]
    if "--exec-root" in args[:-1]:
        run_dir = Path(args[args.index("--exec-root") + 1]).parent
        if run_dir.name.startswith("labctl-dkr-"):
            shutil.rmtree(run_dir, ignore_errors=True)


def start_engine(timeout: float = START_TIMEOUT) -> DockerEngine:
    """Start dockerd on a private socket; wait (bounded) until it answers a ping."""
    require_prerequisites()
    cache = cache_root()
    lock = _take_cache_lock(cache)
    throwaway = lock is None
    data_root = Path(tempfile.mkdtemp(prefix="data-", dir=cache)) if throwaway else cache / "data"
    data_root.mkdir(parents=True, exist_ok=True)
    pid_file = cache / "dockerd.pid"
    if not throwaway:
        _stop_stale_engine(pid_file, data_root)
    # Short path: containerd's sockets live under the exec-root (108-byte socket path limit).
    run_dir = Path(tempfile.mkdtemp(prefix="labctl-dkr-", dir="/tmp"))
    config = run_dir / "daemon.json"
    config.write_text("{}\n")  # never the host's /etc/docker/daemon.json
    log_path = cache / "dockerd.log" if not throwaway else run_dir / "dockerd.log"
    log_path.write_text("")
    bridge_existed = _bridge_exists("docker0")
    dockerd = [
        "dockerd",
        "--host", f"unix://{run_dir / 'docker.sock'}",
        "--data-root", str(data_root),
        "--exec-root", str(run_dir / "exec"),
        "--pidfile", str(run_dir / "docker.pid"),
        "--config-file", str(config),
        "--bridge=none",
        "--iptables=false",
        "--ip-masq=false",
    ]
    # A mount namespace of its own where / is rshared (see the module docstring). With
    # propagation "slave" nothing dockerd mounts travels back to the host.
    argv = ["unshare", "--mount", "--propagation", "slave", "--",
            "sh", "-c", 'mount --make-rshared / && exec "$@"', "sh", *dockerd]
    started = time.monotonic()
    proc = helpers.start_process(argv, log_path=log_path)
    engine = DockerEngine(proc, run_dir, data_root, log_path, 0.0, bridge_existed, lock, throwaway)
    deadline = started + timeout
    last = "no answer yet"
    while True:
        if proc.poll() is not None:
            engine.stop()
            raise RuntimeError(f"dockerd exited with code {proc.returncode}:\n{helpers.tail(log_path)}")
        if engine.socket.exists():
            try:
                probe = docker.DockerClient(base_url=engine.host, timeout=5)
                try:
                    probe.ping()
                    break
                finally:
                    probe.close()
            except docker.errors.DockerException as exc:
                last = str(exc)
        if time.monotonic() > deadline:
            engine.stop()
            raise TimeoutError(f"dockerd did not answer within {timeout:.0f}s ({last}):\n"
                               f"{helpers.tail(log_path)}")
        time.sleep(0.1)
    engine.started_in = time.monotonic() - started
    if not throwaway:
        pid_file.write_text(f"{proc.pid}\n")
    # Leftovers of an interrupted earlier run (restart: unless-stopped would revive them).
    engine.remove_all_containers()
    return engine


@contextlib.contextmanager
def running_engine() -> Iterator[DockerEngine]:
    engine = start_engine()
    try:
        yield engine
    finally:
        engine.stop()


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class BuiltImages:
    base: str
    prometheus: str
    node_exporter: str
    grafana: str  # a stand-in, not Grafana
    timings: dict[str, float]
    built: tuple[str, ...]  # tags (re)built by this call; empty when all were cached


def _image_key(client: docker.DockerClient, tag: str) -> str | None:
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    return (image.labels or {}).get(KEY_LABEL)


def _sha(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:32]


def sandbox_rootfs() -> Path:
    """The systemd sandbox's Debian tree, built (debootstrap, 1-2 min) only when missing."""
    from labctl import sandbox  # only here: images are the one part that needs it

    configured = os.environ.get("LABCTL_SANDBOX_CACHE")
    cache = Path(configured) if configured else None
    if not sandbox.rootfs_is_current(cache or sandbox.default_cache_dir()):
        missing = [t for t in ("debootstrap", "chroot") if shutil.which(t) is None]
        if missing:
            tools.missing(", ".join(missing), sandbox.HOST_PACKAGES_HINT)
    return sandbox.build_rootfs(cache)


def _base_image(client: docker.DockerClient) -> tuple[str, bool]:
    rootfs = sandbox_rootfs()
    stamp = rootfs / SANDBOX_STAMP
    key = _sha("base-1", stamp.read_bytes(), str(stamp.stat().st_mtime_ns), *ROOTFS_EXCLUDES)
    if _image_key(client, BASE_TAG) == key:
        return BASE_TAG, False
    argv = ["tar", "-C", str(rootfs), "--numeric-owner"]
    argv += [f"--exclude={pattern}" for pattern in ROOTFS_EXCLUDES]
    argv += ["-c", "."]
    tar = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        repository, tag = BASE_TAG.rsplit(":", 1)
        answer = client.api.import_image_from_stream(
            tar.stdout, repository=repository, tag=tag, changes=[f"LABEL {KEY_LABEL}={key}"])
    finally:
        assert tar.stdout is not None
        tar.stdout.close()
        err = tar.stderr.read().decode(errors="replace") if tar.stderr else ""
        rc = tar.wait()
    if rc != 0:  # a truncated import must not pass for a current base next time
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(BASE_TAG, force=True)
        raise RuntimeError(f"tar of {rootfs} exited {rc}: {err.strip()}")
    if _image_key(client, BASE_TAG) != key:
        raise RuntimeError(f"docker import did not produce {BASE_TAG}: {answer!r:.300}")
    return BASE_TAG, True


def download_debs(packages: tuple[str, ...] | list[str], dest: Path) -> dict[str, Path]:
    """``{package: .deb}`` in ``dest``; ``apt-get download`` only what is not there yet.

    The host's apt configuration says where from (its mirror and proxy settings)."""
    dest.mkdir(parents=True, exist_ok=True)

    def found() -> dict[str, Path]:
        out: dict[str, Path] = {}
        for pkg in packages:
            debs = sorted(dest.glob(f"{pkg}_*.deb"), key=lambda p: p.stat().st_mtime)
            if debs:
                out[pkg] = debs[-1]
        return out

    # apt leaves NAME.deb.FAILED behind when a download is interrupted; it is never a package.
    for partial in dest.glob("*.FAILED"):
        partial.unlink()
    have = found()
    todo = [p for p in packages if p not in have]
    if todo:
        try:
            # --allow-unauthenticated is not used: apt verifies what it downloads.
            run_cmd(["apt-get", "download", "-q", *todo], cwd=dest, timeout=300)
        except CommandFailed as exc:
            tools.missing(f"Debian packages {', '.join(todo)}",
                          f"apt-get download failed ({exc}); run apt-get update")
        have = found()
        still = [p for p in packages if p not in have]
        if still:
            tools.missing(f"Debian packages {', '.join(still)}", "apt-get download left no .deb; run apt-get update")
    return have


def _merge_usr(root: Path) -> None:
    """Debian bookworm trees are merged-/usr (/bin -> usr/bin). A package's top-level bin/
    copied over that symlink would replace it; move such files under usr/ instead."""
    for top in ("bin", "sbin", "lib", "lib64"):
        src = root / top
        if src.is_dir() and not src.is_symlink():
            dst = root / "usr" / top
            dst.mkdir(parents=True, exist_ok=True)
            for item in src.iterdir():
                target = dst / item.name
                if target.is_dir() and item.is_dir():
                    shutil.copytree(item, target, dirs_exist_ok=True, symlinks=True)
                    shutil.rmtree(item)
                else:
                    os.replace(item, target)
            src.rmdir()


def _context_files(spec: ImageSpec) -> list[Path]:
    directory = IMAGES_DIR / spec.directory
    return sorted(p for p in directory.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def _build(client: docker.DockerClient, spec: ImageSpec, base: str, base_id: str,
           debs: dict[str, Path]) -> bool:
    files = _context_files(spec)
    directory = IMAGES_DIR / spec.directory
    key = _sha(
        "image-1", base_id,
        *(f"{p.relative_to(directory)}:{_sha(p.read_bytes())}" for p in files),
        *(f"{debs[pkg].name}:{debs[pkg].stat().st_size}" for pkg in spec.packages),
        *DEB_PRUNE,
    )
    if _image_key(client, spec.tag) == key:
        return False
    with tempfile.TemporaryDirectory(prefix="labctl-image-") as tmp:
        ctx = Path(tmp)
        for p in files:
            target = ctx / p.relative_to(directory)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
        root = ctx / "root"
        root.mkdir()
        for pkg in spec.packages:
            run_cmd(["dpkg-deb", "-x", debs[pkg], root], timeout=120)
        for rel in DEB_PRUNE:
            path = root / rel
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        _merge_usr(root)
        try:
            client.images.build(path=str(ctx), tag=spec.tag, buildargs={"BASE": base},
                                labels={KEY_LABEL: key}, rm=True, forcerm=True, network_mode="none")
        except docker.errors.BuildError as exc:
            log = "".join(str(chunk.get("stream") or chunk.get("error") or "") for chunk in exc.build_log)
            raise RuntimeError(f"building {spec.tag} failed: {exc.msg}\n{log[-2000:]}") from None
    return True


def build_images(client: docker.DockerClient) -> BuiltImages:
    """The three test images (and the base), built only where their inputs changed."""
    timings: dict[str, float] = {}
    built: list[str] = []
    t0 = time.monotonic()
    base, fresh = _base_image(client)
    timings["base import" if fresh else "base (cached)"] = time.monotonic() - t0
    if fresh:
        built.append(base)
    base_id = client.images.get(base).id
    t1 = time.monotonic()
    packages = sorted({pkg for spec in IMAGE_SPECS.values() for pkg in spec.packages})
    debs = download_debs(packages, cache_root() / "debs")
    timings["debs"] = time.monotonic() - t1
    tags: dict[str, str] = {}
    for name, spec in IMAGE_SPECS.items():
        t = time.monotonic()
        if _build(client, spec, base, base_id, debs):
            built.append(spec.tag)
        timings[f"{name} image"] = time.monotonic() - t
        tags[name] = spec.tag
    if built:  # the images these replaced, so the cached data-root does not grow
        with contextlib.suppress(docker.errors.APIError):
            client.images.prune(filters={"dangling": True})
    timings["images total"] = time.monotonic() - t0
    return BuiltImages(base=base, prometheus=tags["prometheus"], node_exporter=tags["node_exporter"],
                      grafana=tags["grafana"], timings=timings, built=tuple(built))

