"""A fleet test bed: several booted systemd machines on a private network the test creates.

Everything lives in network namespaces made for one run, so every packet stays on networks
the test itself created (nothing in the host's namespace, no route to the outside world)::

    switch namespace:   br0 (a Linux bridge, STP off) + one veth end per member below
    controller:         eth0 10.77.0.1/24              (the test runs the controller here)
    machine 1, 2, 3...: eth0 10.77.0.11/24, .12, .13   (a booted nspawn machine each)

Each machine is :meth:`labctl.sandbox.Machine.boot` of the cached sandbox rootfs (bookworm,
the lingering ``labuser`` uid 1000) with ``network_namespace=`` its namespace, host name =
its fleet name, sshd on ``ADDRESS:22``, ``/opt/labctl-tools`` (``$LABCTL_TOOLS``) bound
read-only at the same path (with the base Pythons its venvs link to), no pip settings (the
machines have no index: install from :func:`build_wheelhouse`'s directory). Only the
addresses in the CIDR exist: no default route anywhere, so no DNS and no package index.

API::

    with FleetLab(["gpu-a", "gpu-b", "edge"], cidr="10.77.0.0/24") as lab:
        lab.address["gpu-a"]            # "10.77.0.11" (members in order: .11, .12, .13, ...)
        lab.controller_address          # "10.77.0.1"
        lab.dns_name["gpu-a"]           # "gpu-a.fleet.lab": resolves in the controller only
                                        #   (its /etc/hosts: /etc/netns/NS/hosts, which
                                        #   `ip netns exec` mounts over /etc/hosts)
        lab.network, lab.prefixlen      # IPv4Network("10.77.0.0/24"), 24
        lab.names                       # ["gpu-a", "gpu-b", "edge"]
        lab.machines["gpu-a"]           # labctl.sandbox.Machine: .run(argv, user="labuser"),
                                        #   .user_systemctl(...), .copy_in(...) (via nsenter)
        lab.namespace["gpu-a"]          # its netns name (/run/netns/NAME); .controller_namespace
        lab.ssh_key                     # Path: private key authorised for root@ and labuser@
        lab.host_keys                   # ["ssh-ed25519 AAAA...", ...]: every machine's host keys
        lab.known_hosts                 # Path: a known_hosts file naming each address
        lab.ssh_config                  # Path: "Host gpu-a" -> 10.77.0.11, User labuser, the key,
                                        #   known_hosts above, StrictHostKeyChecking yes
        lab.ssh_options                 # ["-F", ssh_config]: for ssh/scp in the controller
        lab.controller(argv, env=None, timeout=60, *, check=False, input=None, cwd=None)
                                        # argv in the controller namespace: CompletedProcess[str]
                                        #   (env is added to this process's environment)
        lab.controller_argv(argv)       # ["ip", "netns", "exec", NS, *argv], for Popen
        lab.ssh("gpu-a", "cmd", user="labuser", timeout=30)
                                        # ssh from the controller: CompletedProcess[str]
        lab.tcp_probe("10.77.0.11", 22, timeout=3.0, source=None)
                                        # connect from the controller (or from inside machine
                                        #   ``source``): "open", "refused", "timeout",
                                        #   "unreachable" or "error: ..."
        lab.power_off("gpu-a", timeout=20)  # clean poweroff (SIGTERM to nspawn; 0.3 s); its
                                        #   namespace and address stay, nothing listens
        lab.power_on("gpu-a")           # boot it again in the same namespace: a NEW overlay,
                                        #   so everything written inside is gone, as after a
                                        #   reinstall; lab.machines["gpu-a"] is the new Machine
        lab.timings                     # {"network": s, "boot gpu-a": s, ...}
        lab.dir                         # this run's temp dir (ssh files); deleted at close

The known-hosts file is optional: code under test may manage known_hosts itself (the machines
share one set of host keys, the rootfs's: ``lab.host_keys``; ``ssh-keyscan ADDRESS`` in the
controller reads them too), or use ``-o StrictHostKeyChecking=accept-new`` with a known_hosts
file of its own.

Names are unique per run: ``lfleet<PID>x<N>-...`` for namespaces, nspawn machines, and temp
dirs. :meth:`FleetLab.close` (``__exit__``, and an atexit hook) powers everything off and
deletes the namespaces; :func:`cleanup_leftovers` (called at every start) removes what a
crashed run left (namespaces, cgroups and processes, temp dirs of PIDs that no longer run).

:func:`build_wheelhouse` builds labctl and its runtime dependencies as wheels for the machines'
Python (bookworm's 3.11) into ``~/.cache/labctl/fleet/wheels`` (``$LABCTL_FLEET_CACHE``),
rebuilt only when the checkout's packaged files change; install with
``pip install --no-index --find-links DIR labctl==VERSION``.

Needs root, iproute2, systemd-container, debootstrap (the rootfs), openssh-client.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from labctl import sandbox
from labctl.sandbox.detached import tool_binds
from labctl.sandbox.procs import _cgroup_roots, _remove_cgroup

REPO = Path(__file__).resolve().parents[2]
TOOLS_DIR = Path(os.environ.get("LABCTL_TOOLS", "/opt/labctl-tools"))
HOST_TOOLS = ("ip", "ssh", "systemd-nspawn", "nsenter", "debootstrap")
HOST_HINT = "apt-get install iproute2 openssh-client systemd-container debootstrap"

PREFIX = "lfleet"
_RUN_RE = re.compile(rf"^{PREFIX}(\d+)x(\d+)-")
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
IFACE = "eth0"  # the member's side of its veth pair
BRIDGE = "br0"
DOMAIN = "fleet.lab"  # the machines' names in the controller's /etc/hosts
FIRST_HOST = 11  # members get .11, .12, ...; the controller .1
SSH_PORT = 22

_counter = 0
_live: set[FleetLab] = set()


class FleetLabError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise FleetLabError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dead_run(name: str) -> bool:
    m = _RUN_RE.match(name)
    return m is not None and not _pid_alive(int(m.group(1)))


def cleanup_leftovers() -> list[str]:
    """Remove what crashed runs left: their machines (cgroups and every process in them),
    network namespaces (and any process still in them) and temp dirs. Runs whose PID is still
    alive are left alone. Returns what was removed."""
    removed: list[str] = []
    for root in _cgroup_roots():
        for cg in sorted(root.glob(f"labctl-sandbox-{PREFIX}*")):
            if _dead_run(cg.name[len("labctl-sandbox-"):]):
                _remove_cgroup(cg)  # SIGKILLs nspawn and the container, then rmdirs
                removed.append(str(cg))
    netns_dir = Path("/run/netns")
    for ns in sorted(netns_dir.glob(f"{PREFIX}*")) if netns_dir.is_dir() else []:
        if not _dead_run(ns.name):
            continue
        pids = _ip("netns", "pids", ns.name, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _ip("netns", "del", ns.name, check=False)
        shutil.rmtree(f"/etc/netns/{ns.name}", ignore_errors=True)
        removed.append(f"netns {ns.name}")
    tmp = tempfile.gettempdir()
    for path in glob.glob(f"{tmp}/labctl-sandbox-{PREFIX}*") + glob.glob(f"{tmp}/{PREFIX}*"):
        base = os.path.basename(path)
        if _dead_run(base.removeprefix("labctl-sandbox-")):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class FleetLab:
    """Machines ``names`` booted on a private bridge network in ``cidr``, plus a controller
    namespace on the same bridge. See the module docstring for the whole API."""

    def __init__(
        self,
        names: Sequence[str],
        cidr: str = "10.77.0.0/24",
        *,
        rootfs: Path | None = None,
        tools_dir: Path | None = TOOLS_DIR,
        boot_timeout: float = 90,
    ) -> None:
        global _counter
        self.names = list(names)
        bad = [n for n in self.names if not _NAME_RE.match(n)]
        if bad or not self.names or len(set(self.names)) != len(self.names):
            raise FleetLabError(f"machine names must be distinct host names (a-z0-9-): {names}")
        self.network = ipaddress.ip_network(cidr)
        if self.network.version != 4:
            raise FleetLabError(f"{cidr}: only IPv4 networks")
        if self.network.num_addresses < FIRST_HOST + len(self.names) + 1:
            raise FleetLabError(f"{cidr} is too small for {len(self.names)} machines")
        self.prefixlen = self.network.prefixlen
        base = self.network.network_address
        self.controller_address = str(base + 1)
        self.address = {n: str(base + FIRST_HOST + i) for i, n in enumerate(self.names)}
        self.dns_name = {n: f"{n}.{DOMAIN}" for n in self.names}
        _counter += 1
        self.run_id = f"{PREFIX}{os.getpid()}x{_counter}"
        self.switch_namespace = f"{self.run_id}-sw"
        self.controller_namespace = f"{self.run_id}-ctl"
        self.namespace = {n: f"{self.run_id}-m{i}" for i, n in enumerate(self.names)}
        self.machines: dict[str, sandbox.Machine] = {}
        self.timings: dict[str, float] = {}
        self._rootfs_arg = rootfs
        self._tools_dir = tools_dir if tools_dir is not None and Path(tools_dir).is_dir() else None
        self._boot_timeout = boot_timeout
        self._namespaces: list[str] = []
        self._started = False
        self.dir = Path()  # this run's files (known_hosts, ssh_config), set by start()
        self.rootfs = Path()
        self.ssh_key = Path()
        self.host_keys: list[str] = []
        self.known_hosts = Path()
        self.ssh_config = Path()
        self.ssh_options: list[str] = []

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> FleetLab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Clean up crashed runs, make the network, boot every machine (in order)."""
        if os.geteuid() != 0:
            raise FleetLabError("the fleet lab needs root")
        missing = [t for t in HOST_TOOLS if shutil.which(t) is None]
        if missing:
            raise FleetLabError(f"missing {', '.join(missing)}: {HOST_HINT}")
        self._started = True
        _live.add(self)
        try:
            cleanup_leftovers()
            t0 = time.monotonic()
            self.rootfs = sandbox.build_rootfs(self._rootfs_arg)
            self.timings["rootfs"] = time.monotonic() - t0
            self.dir = Path(tempfile.mkdtemp(prefix=f"{self.run_id}-"))
            t0 = time.monotonic()
            self._make_network()
            self.timings["network"] = time.monotonic() - t0
            self._write_ssh_files()
            t0 = time.monotonic()
            for name in self.names:
                self.power_on(name)
            self.timings["boot all"] = time.monotonic() - t0
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Power every machine off and delete the namespaces and files. Idempotent."""
        if not self._started:
            return
        self._started = False
        errors: list[str] = []
        for name, machine in self.machines.items():
            try:
                machine.shutdown()
            except Exception as exc:  # keep tearing down the rest
                errors.append(f"{name}: {exc}")
        for ns in reversed(self._namespaces):
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
            done = _ip("netns", "del", ns, check=False)
            if done.returncode != 0 and os.path.exists(f"/run/netns/{ns}"):
                errors.append(f"netns {ns}: {done.stderr.strip()}")
        self._namespaces.clear()
        if self.dir != Path() and self.dir.is_dir():
            shutil.rmtree(self.dir, ignore_errors=True)
        _live.discard(self)
        if errors:
            raise FleetLabError("fleet lab teardown: " + "; ".join(errors))

    def _add_namespace(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def _make_network(self) -> None:
        sw = self.switch_namespace
        self._add_namespace(sw)
        _ip("-n", sw, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0")
        _ip("-n", sw, "link", "set", BRIDGE, "up")
        members = [(self.controller_namespace, self.controller_address)]
        members += [(self.namespace[n], self.address[n]) for n in self.names]
        for i, (ns, addr) in enumerate(members):
            self._add_namespace(ns)
            port = f"p{i}"
            # Both ends are created inside the lab's namespaces: nothing in the host's.
            _ip("-n", sw, "link", "add", port, "type", "veth", "peer", "name", IFACE, "netns", ns)
            _ip("-n", sw, "link", "set", port, "master", BRIDGE)
            _ip("-n", sw, "link", "set", port, "up")
            _ip("-n", ns, "addr", "add", f"{addr}/{self.prefixlen}", "dev", IFACE)
            _ip("-n", ns, "link", "set", IFACE, "up")
        # The controller resolves the machines by name, as an operator's DNS or /etc/hosts
        # would: `ip netns exec` bind-mounts /etc/netns/NS/hosts over /etc/hosts.
        etc = Path("/etc/netns") / self.controller_namespace
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n"
                                   + "".join(f"{self.address[n]} {self.dns_name[n]}\n" for n in self.names))

    def _write_ssh_files(self) -> None:
        self.ssh_key = sandbox.ssh_key_path(self.rootfs)
        self.host_keys = [
            " ".join(p.read_text().split()[:2])
            for p in sorted((self.rootfs / "etc/ssh").glob("ssh_host_*_key.pub"))
        ]
        if not self.host_keys:
            raise FleetLabError(f"{self.rootfs}/etc/ssh has no host keys")
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.write_text(
            "".join(f"{self.address[n]} {key}\n" for n in self.names for key in self.host_keys)
        )
        self.ssh_config = self.dir / "ssh_config"
        self.ssh_config.write_text(
            "".join(
                f"Host {n}\n  HostName {self.address[n]}\n"
                for n in self.names
            )
            + "Host *\n"
            f"  User {sandbox.USER}\n"
            f"  Port {SSH_PORT}\n"
            f"  IdentityFile {self.ssh_key}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n"
            "  BatchMode yes\n"
            "  ConnectTimeout 5\n"
            "  LogLevel ERROR\n"
        )
        self.ssh_options = ["-F", str(self.ssh_config)]

    # ------------------------------------------------------------------ machines

    def _machine_name(self, name: str) -> str:
        return f"{self.run_id}-{name}"

    def power_on(self, name: str) -> sandbox.Machine:
        """Boot ``name`` in its namespace; a fresh overlay each time (earlier state is gone)."""
        old = self.machines.get(name)
        if old is not None and old.running:
            raise FleetLabError(f"{name} is already running")
        binds = tool_binds(self._tools_dir) if self._tools_dir is not None else []
        t0 = time.monotonic()
        machine = sandbox.Machine.boot(
            self._machine_name(name),
            self.rootfs,
            SSH_PORT,
            bind_ro=binds,
            inherit_pip=False,
            timeout=self._boot_timeout,
            ssh_address=self.address[name],
            network_namespace=self.namespace[name],
            hostname=name,
        )
        self.machines[name] = machine
        if binds:  # let labuser reach the binds below root-only directories (as sandbox up)
            from labctl.sandbox.detached import _make_traversable

            _make_traversable(machine, [guest for _host, guest in binds])
        key = "boot " + name if "boot " + name not in self.timings else "power_on " + name
        self.timings[key] = time.monotonic() - t0
        return machine

    def power_off(self, name: str, timeout: float = 20) -> None:
        """Power ``name`` off cleanly; its namespace and address stay (nothing listens)."""
        t0 = time.monotonic()
        self.machines[name].shutdown(timeout)
        self.timings["power_off " + name] = time.monotonic() - t0

    # ------------------------------------------------------------------ the controller

    def controller_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.controller_namespace, *argv]

    def controller(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        timeout: float | None = 60,
        *,
        check: bool = False,
        input: str | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the controller namespace (the host's files, users and processes;
        only the network is the lab's). ``env`` is added to this process's environment. On
        ``timeout`` the command's whole process group is killed and TimeoutExpired raised."""
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.Popen(
            self.controller_argv(argv), env=full_env, cwd=cwd, text=True,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except BaseException:  # timeout or Ctrl-C: nothing of it may outlive the call
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        done = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
        if check and done.returncode != 0:
            raise FleetLabError(
                f"controller: {' '.join(argv)} exited {done.returncode}: {err.strip()[-500:]}"
            )
        return done

    def ssh(
        self, name: str, command: str, *, user: str = sandbox.USER, timeout: float = 30,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """``ssh USER@ADDRESS COMMAND`` from the controller, with the lab's key and host keys."""
        return self.controller(
            ["ssh", *self.ssh_options, "-l", user, name, command], timeout=timeout, check=check
        )

    def tcp_probe(
        self, address: str, port: int, timeout: float = 3.0, *, source: str | None = None
    ) -> str:
        """Connect to ``address:port`` from the controller (or from inside machine ``source``):
        "open", "refused", "timeout", "unreachable" or "error: ..."."""
        code = (
            "import socket\n"
            "s = socket.socket()\n"
            f"s.settimeout({float(timeout)!r})\n"
            "try:\n"
            f"    s.connect(({str(address)!r}, {int(port)}))\n"
            "    print('open')\n"
            "except ConnectionRefusedError:\n"
            "    print('refused')\n"
            "except TimeoutError:\n"
            "    print('timeout')\n"
            "except OSError as e:\n"
            "    print('unreachable' if e.errno in (101, 113) else f'error: {e}')\n"
        )
        argv = ["python3", "-c", code]
        if source is None:
            return self.controller(argv, timeout=timeout + 10, check=True).stdout.strip()
        return self.machines[source].run(argv, timeout=timeout + 10).stdout.strip()

    def __repr__(self) -> str:
        return f"FleetLab({self.names}, {self.network}, run_id={self.run_id!r})"


@atexit.register
def _close_leftover_labs() -> None:
    for lab in list(_live):
        with contextlib.suppress(Exception):
            lab.close()


# ---------------------------------------------------------------------- wheelhouse


@dataclasses.dataclass(frozen=True)
class Wheelhouse:
    path: Path  # the directory for pip's --find-links
    version: str  # labctl's version in it
    built: bool  # False: the cached one was current
    seconds: float


#: What goes into labctl's wheel (pyproject.toml's hatch settings): a change rebuilds.
PACKAGED = ("pyproject.toml", "README.md", "src", "units", "compose")


def default_fleet_cache() -> Path:
    env = os.environ.get("LABCTL_FLEET_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "labctl" / "fleet"


def wheelhouse_python() -> Path:
    """A Python of the machines' version (bookworm's 3.11) with pip: the LiteLLM tool venv."""
    return Path(os.environ.get("LABCTL_WHEEL_PYTHON", str(TOOLS_DIR / "litellm/bin/python")))


def _source_digest(repo: Path, python: Path) -> str:
    h = hashlib.sha256()
    version = subprocess.run([str(python), "-c", "import sys; print(sys.version)"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    h.update(f"python {version}\n".encode())
    for top in PACKAGED:
        root = repo / top
        files: Iterable[Path] = [root] if root.is_file() else sorted(root.rglob("*"))
        for path in files:
            if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            h.update(f"{path.relative_to(repo)}\0".encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _labctl_version(wheels: Path) -> str | None:
    found = sorted(wheels.glob("labctl-*.whl"))
    return found[0].name.split("-")[1] if len(found) == 1 else None


def build_wheelhouse(
    cache_dir: Path | None = None,
    *,
    repo: Path = REPO,
    python: Path | None = None,
    timeout: float = 900,
) -> Wheelhouse:
    """labctl (from ``repo``) and all its runtime dependencies as wheels for ``python``'s
    version, in ``cache_dir/wheels`` (default ~/.cache/labctl/fleet). Reused as it is when
    the packaged files (:data:`PACKAGED`) and the Python are those it was built from; else
    rebuilt beside it (the previous wheels serve as a local source) and swapped in."""
    cache = Path(cache_dir) if cache_dir is not None else default_fleet_cache()
    python = Path(python) if python is not None else wheelhouse_python()
    if not python.exists():
        raise FleetLabError(f"{python} does not exist: run scripts/bootstrap.sh")
    cache.mkdir(parents=True, exist_ok=True)
    wheels, stamp = cache / "wheels", cache / "wheels.stamp"
    t0 = time.monotonic()
    with open(cache / ".wheels.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        digest = _source_digest(repo, python)
        version = _labctl_version(wheels) if wheels.is_dir() else None
        with contextlib.suppress(OSError, ValueError):
            if version and json.loads(stamp.read_text()).get("digest") == digest:
                return Wheelhouse(wheels, version, False, time.monotonic() - t0)
        tmp = Path(tempfile.mkdtemp(prefix=".wheels.tmp-", dir=cache))
        try:
            argv = [str(python), "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
                    "-w", str(tmp)]
            if wheels.is_dir():
                argv += ["--find-links", str(wheels)]
            done = subprocess.run([*argv, str(repo)], check=False, capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
            if done.returncode != 0:
                raise FleetLabError(f"pip wheel {repo} failed: {done.stderr.strip()[-2000:]}")
            version = _labctl_version(tmp)
            if version is None:
                raise FleetLabError(f"pip wheel {repo} made no single labctl wheel")
            stamp.unlink(missing_ok=True)
            if wheels.exists():
                old = cache / f".wheels.old-{os.getpid()}"
                os.rename(wheels, old)
                shutil.rmtree(old, ignore_errors=True)
            os.rename(tmp, wheels)
            stamp.write_text(json.dumps({"digest": digest, "version": version}) + "\n")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return Wheelhouse(wheels, version, True, time.monotonic() - t0)
