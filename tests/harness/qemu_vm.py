"""A qemu VM (TCG: its own Debian kernel, pure cgroup v2) for the VM tier, reached over SSH.

Two cached disk images under ~/.cache/labctl/vm ($LABCTL_VM_CACHE):

* ``disk.img``: the sandbox's debootstrapped bookworm tree (labctl.sandbox.build_rootfs, with
  a kernel added to its package list) plus the VM's own files (fstab, network, sshd, masked
  units), made into ext4 by ``mkfs.ext4 -d``. Each boot writes to a qcow2 overlay over it: a
  guest reboot keeps what the session wrote, and the cached image stays pristine.
* ``tools.img``: the tool venvs the stack runs (llama-server, llama-cpp-python, LiteLLM, and
  what their symlinks point to under the tools dir), attached read-only and mounted at the same
  path as on the host. A local disk, not a 9p share: under TCG, LiteLLM's proxy imports
  4000-odd modules, and every file access over virtio-9p costs a round trip to qemu.

Each image has a stamp (what it was built from); a difference rebuilds it.

KVM here is paravirtual (kvm_pvm) and cannot run stock kernels: TCG only (ENVIRONMENT.md).
The guest's services listen on its loopback, which qemu's user-mode hostfwd cannot reach
(it delivers to the guest's 10.0.2.15), so only SSH is forwarded by qemu and the stack's
ports come through an SSH tunnel, to the same port numbers on the host's 127.0.0.1.

Teardown: qemu, the ssh master connection and the tunnel are children of this process that
the kernel kills when it dies (PR_SET_PDEATHSIG), whatever ends it; ``VM.shutdown`` (also run
at exit) stops them first and deletes the session's overlay.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from labctl.host.proc import CommandFailed, CommandResult, one_line, run_cmd, short
from labctl.sandbox import (
    GUEST_PATH,
    META_DIR,
    PACKAGES,
    SSHD_LISTEN_CONF,
    UID,
    USER,
    USER_HOME,
    USER_RUNTIME_DIR,
    Machine,
    SandboxError,
    build_rootfs,
    free_port,
    ssh_key_path,
)

#: What the VM's tree adds to the sandbox's packages: a kernel and what boots it.
VM_PACKAGES: tuple[str, ...] = (*PACKAGES, "linux-image-amd64", "initramfs-tools", "udev", "kmod")
#: Bump when the VM files or the disk image's recipe change.
VM_FORMAT = 3
#: Bump when the tools image's recipe changes (its content is stamped by a listing).
TOOLS_FORMAT = 1
#: The tool venvs the VM's stack runs (examples/cpu-demo/inventory-tools.yaml), and the
#: AVX2 build of llama-server: the host's may need instructions qemu's CPU lacks (conftest
#: tries both in the guest and runs the first that serves there).
TOOLS_NEEDED = ("llama-server", "llama-server-avx2", "llama-cpp-python", "litellm")
TOOLS_LABEL = "labctl-tools"
HOST_TOOLS = "qemu-system-x86_64", "qemu-img", "mkfs.ext4", "ssh", "debootstrap"
QEMU_HINT = "apt-get install -y --no-install-recommends qemu-system-x86 qemu-utils (scripts/bootstrap.sh does)"
QEMU_CPU = "max"
#: tsc=reliable: TCG's TSCs look unsynchronised to the kernel, and the fallback clocksource
#: (the HPET) is an emulated device read on every clock call. mitigations=off: no retpolines
#: in a throwaway guest. With both, LiteLLM's proxy imported in 51-61 s, against 78-97 s.
KERNEL_CMDLINE = ("root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.unified_cgroup_hierarchy=1 "
                  "tsc=reliable mitigations=off")

#: The tier's timings and notes, printed in pytest's terminal summary (tests/vm/conftest.py).
TIMINGS: dict[str, float] = {}
NOTES: list[str] = []


def record(key: str, seconds: float) -> None:
    TIMINGS[key] = seconds


def note(line: str) -> None:
    NOTES.append(line)


def status_json(stack) -> dict:  # type: ignore[no-untyped-def]
    """`labctl status --json` in the guest; probes get time: everything there is emulated."""
    from harness.stack import INVENTORY, json_out

    return json_out(stack.labctl("status", "-i", INVENTORY, "--json", "--probe-timeout", "30", timeout=300))


def cache_dir() -> Path:
    env = os.environ.get("LABCTL_VM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "labctl" / "vm"


# ---------------------------------------------------------------- images


def _vm_files(tools_dir: Path) -> dict[str, str]:
    """Files written into the tree (path relative to its root: text)."""
    return {
        "etc/fstab": (
            "/dev/vda / ext4 rw,noatime 0 0\n"
            # nofail: a missing tools disk is reported by VM.wait_ready, not an emergency shell.
            f"LABEL={TOOLS_LABEL} {tools_dir} ext4 ro,noatime,nofail 0 0\n"
        ),
        "etc/hostname": "labctl-vm\n",
        "etc/hosts": "127.0.0.1\tlocalhost\n127.0.1.1\tlabctl-vm\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "etc/resolv.conf": "nameserver 10.0.2.3\n",
        # qemu's user-mode network: the guest is 10.0.2.15, the host 10.0.2.2.
        "etc/systemd/network/10-qemu.network": (
            "[Match]\nName=eth0\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\nDNS=10.0.2.3\n"
        ),
        # The sandbox's sshd only starts with a listen file (nspawn shares the host's network).
        SSHD_LISTEN_CONF.lstrip("/"): "ListenAddress 0.0.0.0:22\n",
    }


_NETWORKD = "/lib/systemd/system/systemd-networkd"
_VM_LINKS = {
    "etc/systemd/system/multi-user.target.wants/systemd-networkd.service": f"{_NETWORKD}.service",
    "etc/systemd/system/sockets.target.wants/systemd-networkd.socket": f"{_NETWORKD}.socket",
    # The packages' own system services: the stack runs its own Redis as labuser, and under
    # emulation every service started at boot costs seconds.
    "etc/systemd/system/redis-server.service": "/dev/null",
    "etc/systemd/system/prometheus-redis-exporter.service": "/dev/null",
    "etc/systemd/system/getty@tty1.service": "/dev/null",  # no display
}


def _configure_tree(tree: Path, tools_dir: Path) -> None:
    """Write the VM's files into ``tree``: a hard-linked copy of the cached rootfs, so every
    file is unlinked before it is written (the rootfs's inode stays as it was)."""
    for rel, text in _vm_files(tools_dir).items():
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            path.unlink()
        path.write_text(text)
    for rel, target in _VM_LINKS.items():
        link = tree / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(target)
    (tree / str(tools_dir).lstrip("/")).mkdir(parents=True, exist_ok=True)


def _copy_tree(src: Path, dst: Path) -> None:
    """``cp -a`` as hard links where src and dst share a file system (seconds, no space)."""
    done = subprocess.run(["cp", "-a", "--link", os.fspath(src), os.fspath(dst)], capture_output=True,
                          stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        shutil.rmtree(dst, ignore_errors=True)
        run_cmd(["cp", "-a", src, dst], timeout=900)


def _mkfs(source: Path, image: Path, label: str, *extra: str, room_mb: int = 512) -> None:
    """An ext4 image of ``source``'s tree (owners, modes and times kept), sized to fit with
    ``room_mb`` to spare (the file is sparse: free blocks take no space)."""
    used = sum(os.lstat(os.path.join(root, n)).st_size for root, dirs, files in os.walk(source)
               for n in (*dirs, *files))
    size_mb = int(used * 1.3 / 2**20) + room_mb
    tmp = image.with_name(image.name + ".tmp")
    tmp.unlink(missing_ok=True)
    run_cmd(["mkfs.ext4", "-q", "-F", "-L", label, *extra, "-d", source, tmp, f"{size_mb}M"], timeout=900)
    os.rename(tmp, image)


def tools_trees(tools_dir: Path) -> list[str]:
    """The top-level directories of ``tools_dir`` the stack needs: TOOLS_NEEDED and whatever
    their symlinks point into (llama-server's binary may be a build in llama-server-src)."""
    trees, todo = set(), list(TOOLS_NEEDED)
    while todo:
        name = todo.pop()
        if name in trees:
            continue
        if not (tools_dir / name).is_dir():
            raise SandboxError(f"{tools_dir / name} does not exist (run scripts/bootstrap.sh)")
        trees.add(name)
        for root, dirs, files in os.walk(tools_dir / name):
            for entry in (*dirs, *files):
                path = os.path.join(root, entry)
                if os.path.islink(path):
                    target = os.path.normpath(os.path.join(root, os.readlink(path)))
                    rel = os.path.relpath(target, tools_dir)
                    if not rel.startswith(".."):
                        todo.append(rel.split(os.sep, 1)[0])
    return sorted(trees)


def _listing_hash(base: Path, trees: Sequence[str]) -> str:
    """What the tools image was made of: every path with its size, mtime and link target."""
    digest = hashlib.sha256()
    for name in trees:
        for root, dirs, files in os.walk(base / name):
            dirs.sort()
            for entry in sorted(files) + dirs:
                path = os.path.join(root, entry)
                st = os.lstat(path)
                link = os.readlink(path) if os.path.islink(path) else ""
                digest.update(f"{os.path.relpath(path, base)}\0{st.st_size}\0{st.st_mtime_ns}\0{link}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class VmImage:
    disk: Path  # raw ext4, never written by a VM
    kernel: Path
    initrd: Path
    key: Path  # ssh private key authorised for root and labuser
    tools: Path  # raw ext4 of the tool venvs, attached read-only
    tools_dir: Path


def _current(stamp_path: Path, stamp: dict, files: Iterable[Path]) -> bool:
    try:
        return json.loads(stamp_path.read_text()) == stamp and all(p.exists() for p in files)
    except (OSError, ValueError):
        return False


def build_image(tools_dir: Path, cache: Path | None = None) -> tuple[VmImage, dict[str, float]]:
    """The cached VM images, (re)built when a stamp differs; returns them and the timings."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    tree = build_rootfs(cache / "bookworm-rootfs", packages=VM_PACKAGES)
    timings["vm rootfs (build or cache hit)"] = time.monotonic() - t0
    rootfs_stamp = json.loads((tree / META_DIR / "stamp.json").read_text())
    config = json.dumps([_vm_files(tools_dir), _VM_LINKS], sort_keys=True)
    stamp = {"format": VM_FORMAT, "rootfs": rootfs_stamp, "config": hashlib.sha256(config.encode()).hexdigest()}
    image = VmImage(cache / "disk.img", cache / "vmlinuz", cache / "initrd.img", cache / "id_ed25519",
                    cache / "tools.img", tools_dir)

    with open(cache / ".image.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        t0 = time.monotonic()
        stamp_path = cache / "image.json"
        if not _current(stamp_path, stamp, (image.disk, image.kernel, image.initrd, image.key)):
            stamp_path.unlink(missing_ok=True)
            kernels = sorted((tree / "boot").glob("vmlinuz-*"))
            initrds = sorted((tree / "boot").glob("initrd.img-*"))
            if not kernels or not initrds:
                raise SandboxError(f"no kernel or initrd in {tree}/boot")
            shutil.copyfile(kernels[-1], image.kernel)
            shutil.copyfile(initrds[-1], image.initrd)
            shutil.copyfile(ssh_key_path(tree), image.key)
            os.chmod(image.key, 0o600)
            stage = cache / "disk-stage"
            shutil.rmtree(stage, ignore_errors=True)
            try:
                _copy_tree(tree, stage)
                _configure_tree(stage, tools_dir)
                _mkfs(stage, image.disk, "labctl-root", room_mb=2048)  # the session writes here
            finally:
                shutil.rmtree(stage, ignore_errors=True)
            stamp_path.write_text(json.dumps(stamp, indent=1) + "\n")
            timings["vm disk image build"] = time.monotonic() - t0

        t0 = time.monotonic()
        trees = tools_trees(tools_dir)
        tools_stamp = {"format": TOOLS_FORMAT, "dir": os.fspath(tools_dir), "trees": trees,
                       "listing": _listing_hash(tools_dir, trees)}
        timings["tools image stamp"] = time.monotonic() - t0
        stamp_path = cache / "tools.json"
        if not _current(stamp_path, tools_stamp, (image.tools,)):
            stamp_path.unlink(missing_ok=True)
            stage = cache / "tools-stage"
            shutil.rmtree(stage, ignore_errors=True)
            try:
                stage.mkdir()
                for name in trees:
                    _copy_tree(tools_dir / name, stage / name)
                _mkfs(stage, image.tools, TOOLS_LABEL, "-O", "^has_journal")
            finally:
                shutil.rmtree(stage, ignore_errors=True)
            stamp_path.write_text(json.dumps(tools_stamp, indent=1) + "\n")
            timings["tools image build"] = time.monotonic() - t0
    return image, timings


# ---------------------------------------------------------------- the VM


_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _spawn(argv: Sequence[str | os.PathLike[str]], stderr=subprocess.DEVNULL) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    """A helper process (qemu, ssh) that the kernel kills if this process dies, whatever ends
    it, and that a Ctrl-C at the terminal does not reach (its own session): we stop it."""
    return subprocess.Popen([os.fspath(a) for a in argv], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=stderr, start_new_session=True,
                            preexec_fn=_die_with_parent)  # noqa: PLW1509 (one prctl call, no locks)


def _stop(proc: subprocess.Popen[bytes] | None, grace: float = 5) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


_live: set[VM] = set()
STATE_PREFIX = "labctl-vm-"


def _sweep_state_dirs() -> None:
    """Delete the state dirs (overlay, console) of sessions whose process is gone: a killed
    session's qemu died with it (PR_SET_PDEATHSIG), but nothing deleted its overlay."""
    for state in Path(tempfile.gettempdir()).glob(f"{STATE_PREFIX}*"):
        try:
            pid = int((state / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(state, ignore_errors=True)
        except PermissionError:
            pass


@atexit.register
def _shutdown_leftovers() -> None:
    for vm in list(_live):
        vm.shutdown()


class VM:
    """A booted qemu guest. ``run``/``write_text``/``copy_in``/``ssh_config`` behave like
    labctl.sandbox.Machine's, so harness.stack's Stack and the testinfra suite work on it."""

    def __init__(self, name: str, image: VmImage, state_dir: Path, ssh_port: int) -> None:
        self.name = name
        self.image = image
        self.state_dir = state_dir
        self.ssh_port = ssh_port
        self.console = state_dir / "console.log"
        self.timings: dict[str, float] = {}
        self._argv: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._master: subprocess.Popen[bytes] | None = None
        self._tunnel: subprocess.Popen[bytes] | None = None
        self._forwards: list[int] = []

    @classmethod
    def boot(cls, name: str, image: VmImage, *, memory_mb: int = 3072, timeout: float = 300) -> VM:
        _sweep_state_dirs()
        state = Path(tempfile.mkdtemp(prefix=f"{STATE_PREFIX}{name}-"))
        (state / "owner.pid").write_text(f"{os.getpid()}\n")
        vm = cls(name, image, state, free_port())
        overlay = state / "overlay.qcow2"
        run_cmd(["qemu-img", "create", "-q", "-f", "qcow2", "-b", image.disk, "-F", "raw", overlay])
        vm._argv = [
            "qemu-system-x86_64", "-name", name, "-nodefaults", "-display", "none",
            "-accel", "tcg,thread=multi", "-cpu", QEMU_CPU, "-smp", "2", "-m", str(memory_mb),
            "-kernel", os.fspath(image.kernel), "-initrd", os.fspath(image.initrd),
            "-append", KERNEL_CMDLINE,
            "-drive", f"file={overlay},format=qcow2,if=virtio,cache=unsafe",
            "-drive", f"file={image.tools},format=raw,if=virtio,readonly=on",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{vm.ssh_port}-:22",
            "-device", "virtio-net-pci,netdev=n0",
            "-chardev", f"file,id=console,path={vm.console},append=on", "-serial", "chardev:console",
            "-monitor", "none",
            # The guest's reset (the end of its reboot) ends qemu; VM.reboot starts a new one on
            # the same overlay, as a machine's power comes back (a reset in place boots 2-3
            # times slower under TCG here: measured 60-75 s against 25-45 s).
            "-no-reboot",
        ]
        (state / "qemu.argv").write_text(shlex.join(vm._argv) + "\n")
        started = time.monotonic()
        _live.add(vm)
        try:
            vm._launch()
            vm.wait_ready(started, timeout)
        except BaseException:
            vm.shutdown()
            raise
        return vm

    def _launch(self) -> None:
        with open(self.state_dir / "qemu.err", "ab") as err:
            self._proc = _spawn(self._argv, stderr=err)

    # ------------------------------------------------------------- boot and reboot

    def _alive(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            err = (self.state_dir / "qemu.err").read_text(errors="replace") if self.state_dir.exists() else ""
            raise SandboxError(f"qemu for {self.name} is not running: {one_line(err)}; console: "
                               f"{self.console_tail()}")

    def console_tail(self, chars: int = 1500) -> str:
        with contextlib.suppress(OSError):
            return self.console.read_text(errors="replace")[-chars:]
        return ""

    def wait_ready(self, started: float, timeout: float) -> None:
        """Wait for sshd, the system manager and labuser's manager (linger); then open the
        ssh master connection, check the tools disk, and re-make the port tunnel."""
        deadline = started + timeout
        while True:
            self._alive()
            if time.monotonic() > deadline:
                raise SandboxError(f"{self.name}: no ssh after {timeout:g}s; console: {self.console_tail()}")
            res = self._ssh("true", timeout=30, check_transport=False)
            if res is not None and res.rc == 0:
                break
            time.sleep(1)
        self.timings["ssh"] = time.monotonic() - started
        self._start_master()
        left = max(deadline - time.monotonic(), 10)
        state = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=left).stdout.strip()
        self.timings["system running"] = time.monotonic() - started
        if state not in ("running", "degraded"):
            raise SandboxError(f"{self.name}: system is {state!r}")
        tools = os.fspath(self.image.tools_dir)
        if self.run(["findmnt", "-n", "-o", "OPTIONS", tools], check=False).rc != 0:
            raise SandboxError(f"{self.name}: the tools disk is not mounted on {tools}")
        while True:
            res = self.run(["systemctl", "is-active", f"user@{UID}.service"], check=False)
            if res.stdout.strip() == "active":
                user = self.run(["systemctl", "--user", "is-system-running", "--wait"], user=USER, check=False,
                                timeout=max(deadline - time.monotonic(), 10))
                if user.stdout.strip() in ("running", "degraded"):
                    break
            if time.monotonic() > deadline:
                raise SandboxError(f"{self.name}: user@{UID}.service not running after {timeout:g}s")
            time.sleep(0.5)
        self.timings["user manager"] = time.monotonic() - started
        if self._forwards:
            self.forward(self._forwards)

    def boot_id(self) -> str:
        return self.run(["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip()

    def reboot(self, timeout: float = 300) -> float:
        """``systemctl reboot`` in the guest: its manager stops every unit and the user
        manager, unmounts, and resets the machine, which ends qemu (``-no-reboot``); a new
        qemu boots the same overlay. Waits until labuser's manager runs again; returns the
        seconds from the reboot command."""
        boot_id = self.boot_id()
        self._close_tunnel()
        self._stop_master()
        started = time.monotonic()
        self._ssh("systemctl reboot", timeout=30, check_transport=False)
        assert self._proc is not None
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise SandboxError(f"{self.name}: still running {timeout:g}s after systemctl reboot; console: "
                               f"{self.console_tail()}") from None
        self.timings["guest reset"] = time.monotonic() - started
        self._launch()
        self.wait_ready(started, timeout)
        if self.boot_id() == boot_id:
            raise SandboxError(f"{self.name}: the same boot id after reboot")
        return time.monotonic() - started

    def shutdown(self) -> None:
        """Stop the tunnel, the ssh master and qemu (the guest's state is thrown away with its
        overlay, so there is nothing to shut down cleanly in it)."""
        started = time.monotonic()
        self._close_tunnel()
        self._stop_master()
        _stop(self._proc, grace=10)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        _live.discard(self)
        self.timings["shutdown"] = time.monotonic() - started

    # ------------------------------------------------------------- ssh

    def ssh_config(self) -> Path:
        """An ssh_config (OpenSSH and paramiko/testinfra) naming this VM as ``Host NAME``."""
        path = self.state_dir / "ssh_config"
        path.write_text(
            f"Host {self.name}\n  HostName 127.0.0.1\n  Port {self.ssh_port}\n  User root\n"
            f"  IdentityFile {self.image.key}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
            "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  ConnectTimeout 10\n  ServerAliveInterval 5\n"
        )
        return path

    @property
    def _control_path(self) -> str:
        return os.fspath(self.state_dir / "cm")

    def _start_master(self) -> None:
        """One master connection that every command shares (an ssh handshake under emulation
        takes a second or more). Without it (before it is up, or if it died) commands
        connect directly."""
        self._stop_master()
        self._master = _spawn(["ssh", "-F", self.ssh_config(), "-M", "-N", "-o", f"ControlPath={self._control_path}",
                               "-o", "ControlPersist=no", self.name])
        deadline = time.monotonic() + 30
        while not os.path.exists(self._control_path) and self._master.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)

    def _stop_master(self) -> None:
        _stop(self._master)
        self._master = None
        with contextlib.suppress(OSError):
            os.unlink(self._control_path)

    def _ssh(self, command: str, *, timeout: float | None, input: bytes | str | None = None,
             check_transport: bool = True) -> CommandResult | None:
        argv = ["ssh", "-F", os.fspath(self.ssh_config()), "-o", f"ControlPath={self._control_path}",
                "-o", "ControlMaster=no", self.name, "--", command]
        try:
            res = run_cmd(argv, check=False, timeout=timeout, input=input)
        except CommandFailed:
            if check_transport:
                raise
            return None
        if res.rc == 255 and not check_transport:
            return None
        return res

    def run(self, argv: Sequence[str], user: str | None = None, env: Mapping[str, str] | None = None,
            timeout: float | None = 120, *, check: bool = True, cwd: str | None = None,
            input: bytes | str | None = None) -> CommandResult:
        """Run ``argv`` in the guest as root or (``user="labuser"``) as the lingering user,
        with a clean environment like Machine.run."""
        self._alive()
        base = ["env", "-i", *(["-C", cwd] if cwd else []), f"PATH={GUEST_PATH}", "LANG=C.UTF-8"]
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        if user in (None, "root"):
            cmd = [*base, "HOME=/root", "USER=root", *extra, *argv]
        else:
            cmd = ["runuser", "-u", user, "--", *base, f"HOME={USER_HOME}", f"USER={user}", f"LOGNAME={user}",
                   f"XDG_RUNTIME_DIR={USER_RUNTIME_DIR}", f"DBUS_SESSION_BUS_ADDRESS=unix:path={USER_RUNTIME_DIR}/bus",
                   *extra, *argv]
        res = self._ssh(shlex.join(cmd), timeout=timeout, input=input)
        assert res is not None
        if check and res.rc != 0:
            why = one_line(res.stderr) or one_line(res.stdout) or "no output"
            raise SandboxError(f"{self.name}: {short(argv)} exited {res.rc}: {why}")
        return res

    # The nspawn Machine's file helpers work on anything with its ``run``: reused as they are.
    copy_in = Machine.copy_in
    write_text = Machine.write_text
    mkdir = Machine.mkdir

    # ------------------------------------------------------------- ports

    def forward(self, ports: Iterable[int]) -> None:
        """Tunnel host 127.0.0.1:P to the guest's 127.0.0.1:P for each port (re-made after a reboot)."""
        self._close_tunnel()
        self._forwards = list(ports)
        specs = [a for p in self._forwards for a in ("-L", f"127.0.0.1:{p}:127.0.0.1:{p}")]
        self._tunnel = _spawn(["ssh", "-F", self.ssh_config(), "-N", "-o", "ExitOnForwardFailure=yes",
                               "-o", "ControlMaster=no", "-o", "ControlPath=none", *specs, self.name])
        deadline = time.monotonic() + 60
        while self._forwards:
            if self._tunnel.poll() is not None:
                raise SandboxError(f"{self.name}: ssh tunnel exited {self._tunnel.returncode}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self._forwards[0])) == 0:
                    break
            if time.monotonic() > deadline:
                raise SandboxError(f"{self.name}: ssh tunnel not listening after 60s")
            time.sleep(0.2)

    def _close_tunnel(self) -> None:
        _stop(self._tunnel)
        self._tunnel = None
