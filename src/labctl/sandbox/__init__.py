"""A throwaway booted systemd machine, for hosts without a user systemd manager.

labctl renders systemd *user* units. Where the host cannot run them (CI, containers whose
PID 1 is not systemd) this package boots a small Debian bookworm tree under
``systemd-nspawn --boot`` and drives the lingering user ``labuser`` (uid 1000) inside it.

Pure library: no CLI imports. Every external command goes through :func:`run_cmd`
(argv lists only, logged), and every failure is a :class:`SandboxError` with a one-line message.

Layout and behaviour:

* :func:`build_rootfs` debootstraps the tree once into a cache directory (default
  ``~/.cache/labctl/sandbox/bookworm-rootfs``), atomically (temp dir, then rename). A stamp
  file inside (``etc/labctl-sandbox/stamp.json``) records suite, package list and format
  version; a change rebuilds. The tree inherits the host's CA trust (hosts behind an
  intercepting proxy need that for pip) and ``resolv.conf``; it holds an ed25519 key pair whose
  public half is authorised for root and labuser.
* :meth:`Machine.boot` starts ``systemd-nspawn --volatile=overlay``: every write inside goes to
  a tmpfs overlay and vanishes at shutdown, so the cached tree stays pristine.
* By default the container shares the host's network namespace: a port bound to 127.0.0.1
  inside is reachable from the host, and **ports clash** with the host and with other
  sandboxes. sshd inside listens only on ``127.0.0.1:<ssh_port>`` (and does not start at all
  without a port). ``Machine.boot(network_namespace=...)`` runs it in a network namespace
  made beforehand (``ip netns add``, interfaces and addresses set up by the caller) instead,
  with sshd on ``ssh_address:ssh_port`` there; tests/harness/fleetlab.py builds a private
  network of such machines.
* Commands run inside through ``nsenter -t <container PID 1> -a``: ``machinectl`` and
  ``systemd-run -M`` need a systemd host, which is exactly what is missing.
* Cgroups: nspawn is placed in its own cgroup directory, in each of the ``name=systemd`` v1
  and the v2 (``unified``) hierarchies that exist on the host; otherwise two containers
  collide. Resource limits (``MemoryMax=``...) are not reliably enforced in there.

* A machine can outlive the process that booted it: :meth:`Machine.detach` writes a record
  (``~/.cache/labctl/sandbox/machines/NAME.json``: nspawn's PID, the container's init, their
  start times, cgroups, ssh port, state dir, binds) and :meth:`Machine.attach` re-creates the
  machine from it in a later process, after checking in /proc that those PIDs are still the
  same processes. :func:`list_machines` lists the running ones. nspawn runs in its own
  session, so it survives its parent; :mod:`labctl.sandbox.detached` builds ``up``/``exec``/
  ``down`` on this.

Modules: :mod:`.base` (constants, errors), :mod:`.host` (host facts, pip settings),
:mod:`.rootfs` (the cached tree), :mod:`.procs` (/proc and cgroups), :mod:`.registry`
(records of running machines), :mod:`.machine` (boot, run, shutdown, attach).

Needs root and the host packages ``debootstrap`` and ``systemd-container``.
"""

from __future__ import annotations

from labctl.sandbox.base import (
    GUEST_PATH,
    HOST_PACKAGES_HINT,
    META_DIR,
    PACKAGES,
    ROOTFS_FORMAT,
    SRC_DIR,
    SSHD_LISTEN_CONF,
    SUITE,
    UID,
    USER,
    USER_HOME,
    USER_RUNTIME_DIR,
    VENV_DIR,
    SandboxError,
    SandboxTimeout,
    default_cache_dir,
    missing_host_tools,
)
from labctl.host.proc import free_port
from labctl.sandbox.host import (
    PipSettings,
    apt_mirror,
    host_has_user_manager,
    host_pip_settings,
)
from labctl.sandbox.machine import Machine, ProjectInstall, list_machines
from labctl.sandbox.registry import MachineRecord, machines_dir
from labctl.sandbox.rootfs import build_rootfs, rootfs_is_current, ssh_key_path

__all__ = [
    "GUEST_PATH",
    "HOST_PACKAGES_HINT",
    "META_DIR",
    "PACKAGES",
    "ROOTFS_FORMAT",
    "SRC_DIR",
    "SSHD_LISTEN_CONF",
    "SUITE",
    "UID",
    "USER",
    "USER_HOME",
    "USER_RUNTIME_DIR",
    "VENV_DIR",
    "Machine",
    "MachineRecord",
    "PipSettings",
    "ProjectInstall",
    "SandboxError",
    "SandboxTimeout",
    "apt_mirror",
    "build_rootfs",
    "default_cache_dir",
    "free_port",
    "host_has_user_manager",
    "host_pip_settings",
    "list_machines",
    "machines_dir",
    "missing_host_tools",
    "rootfs_is_current",
    "ssh_key_path",
]
