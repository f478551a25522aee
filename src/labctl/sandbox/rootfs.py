"""The cached, debootstrapped bookworm tree that every machine boots from."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from labctl.host.proc import run_cmd
from labctl.sandbox.base import (
    META_DIR,
    PACKAGES,
    ROOTFS_FORMAT,
    SSHD_LISTEN_CONF,
    SUITE,
    UID,
    USER,
    USER_HOME,
    _require_root,
    _require_tools,
    default_cache_dir,
)
from labctl.sandbox.host import apt_mirror

log = logging.getLogger(__name__)


def _stamp(packages: Sequence[str]) -> dict[str, object]:
    return {"format": ROOTFS_FORMAT, "suite": SUITE, "packages": sorted(packages)}


def ssh_key_path(rootfs: Path) -> Path:
    """Private key authorised for root@ and labuser@ inside machines booted from ``rootfs``."""
    return Path(rootfs) / META_DIR / "id_ed25519"


def rootfs_is_current(rootfs: Path, packages: Sequence[str] = PACKAGES) -> bool:
    stamp = Path(rootfs) / META_DIR / "stamp.json"
    try:
        return bool(json.loads(stamp.read_text()) == _stamp(packages))
    except (OSError, ValueError):
        return False


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def build_rootfs(
    cache_dir: Path | None = None,
    *,
    packages: Sequence[str] = PACKAGES,
    mirror: str | None = None,
    force: bool = False,
    timeout: float = 1800,
) -> Path:
    """Return a ready bookworm tree in ``cache_dir``, debootstrapping it first when needed.

    The build happens in a sibling temp dir that is renamed into place when complete, under an
    flock so concurrent callers build once. Takes 1-2 minutes and ~300 MB the first time.
    """
    _require_root()
    rootfs = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not force and rootfs_is_current(rootfs, packages):
        log.info("sandbox rootfs %s is current", rootfs)
        return rootfs
    _require_tools("debootstrap", "chroot")
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    lock_path = rootfs.parent / f".{rootfs.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and rootfs_is_current(rootfs, packages):  # built while we waited
            return rootfs
        for stale in rootfs.parent.glob(f".{rootfs.name}.tmp-*"):
            log.info("removing stale partial build %s", stale)
            shutil.rmtree(stale, ignore_errors=True)
        retired = sorted(rootfs.parent.glob(f".{rootfs.name}.retired-*"))
        if retired and not _nspawn_users(rootfs):
            for tree in retired:
                log.info("removing retired tree %s", tree)
                shutil.rmtree(tree, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{rootfs.name}.tmp-", dir=rootfs.parent))
        started = time.monotonic()
        try:
            url = mirror or apt_mirror()
            log.info("debootstrap %s into %s from %s", SUITE, tmp, url)
            run_cmd(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(packages)}",
                    SUITE,
                    tmp,
                    url,
                ],
                timeout=timeout,
            )
            _configure_rootfs(tmp)
            (tmp / META_DIR / "stamp.json").write_text(
                json.dumps(_stamp(packages), indent=1) + "\n"
            )
            old = None
            if rootfs.exists() or rootfs.is_symlink():
                old = rootfs.parent / f".{rootfs.name}.tmp-old-{os.getpid()}"
                os.rename(rootfs, old)
            os.rename(tmp, rootfs)
            if old is not None:
                users = _nspawn_users(rootfs)
                if users:
                    # Their overlays still read the old tree: deleting it would break them.
                    keep = rootfs.parent / f".{rootfs.name}.retired-{int(time.time())}"
                    os.rename(old, keep)
                    log.warning(
                        "kept the previous tree as %s: machines booted from it still run"
                        " (systemd-nspawn PIDs %s); a later build removes it",
                        keep,
                        " ".join(map(str, users)),
                    )
                else:
                    shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info(
            "sandbox rootfs built in %.1fs, %d MB",
            time.monotonic() - started,
            _dir_size(rootfs) // 2**20,
        )
    return rootfs


def _nspawn_users(rootfs: Path) -> list[int]:
    """PIDs of the systemd-nspawn processes booted from the tree at ``rootfs`` (by their
    ``-D``/``--directory`` argument: a renamed tree still counts under its old path)."""
    target = os.path.abspath(rootfs)
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in raw.split(b"\0")]
        if not args or os.path.basename(args[0]) != "systemd-nspawn":
            continue
        for i, arg in enumerate(args):
            value = None
            if arg in ("-D", "--directory") and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith("--directory="):
                value = arg.partition("=")[2]
            elif arg.startswith("-D") and len(arg) > 2:
                value = arg[2:]
            if value and os.path.abspath(value) == target:
                pids.append(int(entry.name))
                break
    return pids


def _write(path: Path, text: str, mode: int = 0o644, uid: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    path.write_text(text)
    os.chmod(path, mode)
    os.chown(path, uid, uid)


def _install_host_trust(root: Path) -> None:
    """Make the guest trust what the host trusts (intercepting proxies, corporate CAs)."""
    local = Path("/usr/local/share/ca-certificates")
    if local.is_dir():
        dest = root / "usr/local/share/ca-certificates"
        dest.mkdir(parents=True, exist_ok=True)
        for crt in local.rglob("*.crt"):
            target = dest / crt.relative_to(local)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(crt, target)
        run_cmd(["chroot", root, "update-ca-certificates"], check=False, timeout=120)
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.is_file():  # certificates added to the bundle by other means too
        target = root / "etc/ssl/certs/ca-certificates.crt"
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        shutil.copyfile(bundle, target)


def _configure_rootfs(root: Path) -> None:
    meta = root / META_DIR
    meta.mkdir(parents=True, exist_ok=True)
    os.chmod(meta, 0o700)

    _install_host_trust(root)
    resolv = Path("/etc/resolv.conf")
    if resolv.exists():
        _write(root / "etc/resolv.conf", resolv.read_text())

    # The lingering user: user@1000.service starts at boot with no login.
    # In systemd-journal: "journalctl --user" reads the per-user file user-1000.journal, which
    # journald only splits off on persistent storage (/var/log/journal, here on the overlay).
    # Whenever it logs to /run/log/journal instead (no /var/log/journal, before the flush at
    # boot, Storage=volatile) there is one system file and the user would find nothing.
    run_cmd(
        [
            "chroot",
            root,
            "useradd",
            "-m",
            "-u",
            str(UID),
            "-U",
            "-G",
            "systemd-journal",
            "-s",
            "/bin/bash",
            USER,
        ]
    )
    linger = root / "var/lib/systemd/linger"
    linger.mkdir(parents=True, exist_ok=True)
    (linger / USER).touch()

    # ssh: a key pair for test tools, authorised for root and the user.
    key = meta / "id_ed25519"
    run_cmd(
        [
            "chroot",
            root,
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "labctl-sandbox",
            "-f",
            f"/{META_DIR}/id_ed25519",
        ]
    )
    pub = (meta / "id_ed25519.pub").read_text()
    run_cmd(["chroot", root, "ssh-keygen", "-A"])
    for home, uid in (("root", 0), (USER_HOME.lstrip("/"), UID)):
        ssh_dir = root / home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(ssh_dir, uid, uid)
        _write(ssh_dir / "authorized_keys", pub, 0o600, uid)
    os.chmod(key, 0o600)
    _write(
        root / "etc/ssh/sshd_config.d/00-labctl.conf",
        "# labctl sandbox: key auth only; the listen address comes per boot in\n"
        f"# {SSHD_LISTEN_CONF}.\n"
        "PermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UseDNS no\n",
    )
    # Shared network namespace: never let sshd take the host's port 22.
    _write(
        root / "etc/systemd/system/ssh.service.d/labctl.conf",
        f"[Unit]\nConditionPathExists={SSHD_LISTEN_CONF}\n",
    )
    # Units that have nothing to do in a throwaway container and only slow the boot.
    for unit in (
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "e2scrub_all.timer",
        "fstrim.timer",
        "systemd-timesyncd.service",
    ):
        link = root / "etc/systemd/system" / unit
        if not link.exists() and not link.is_symlink():
            link.symlink_to("/dev/null")
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)

