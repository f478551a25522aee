"""Carry a fleet's slices to its hosts with ``ansible-playbook``, and read back what happened.

A run directory under the fleet's state dir (``run-up``, ``run-status``, ``run-down``) holds
what one run needs, all generated here:

- ``hosts.yml``: the Ansible inventory: every host with its connection (address, port, user)
  and the variables the playbooks read (the slice's paths on both ends, the keys to copy,
  the venv, how pip finds labctl). Every string goes in tagged ``!unsafe``: Ansible then
  never evaluates a ``{{`` inside an operator's path as a template. The connection's own
  three (an IP address, a port, a user name matching ``[a-z_][a-z0-9_-]*``) cannot hold one
  and stay plain, so that tools reading the inventory (testinfra's ``ansible://``) get
  strings; so do the strings Ansible would read back as another type (see :func:`unsafe`).
  What the playbooks decide on is a plain typed value (``labctl_ship_wheels``), never the
  length or truth of a string;
- ``slices/HOST.yaml``: each host's slice (labctl.fleet.slices);
- ``ansible.cfg``: empty, named by ``ANSIBLE_CONFIG``: otherwise Ansible reads an
  ``ansible.cfg`` from the current directory (a repository that ships the inventory could
  ship one, whose ``vault_password_file`` is a script Ansible runs) or the operator's own;
- ``report.json``: written by labctl's callback plugin when the run ends.

Ansible's settings reach it as environment variables (never in ``ansible.cfg``, whose parser
would read a ``%`` in a path as interpolation): the SSH key, labctl's own ``known_hosts`` (a
new host is accepted once, a changed host key refused), connection and keep-alive timeouts,
one fork per host, and the callback; only the YAML inventory plugin, and an inventory it
cannot parse is an error. Every path among them, and every path in ``hosts.yml``, goes
through labctl.handover, which refuses what Ansible or ssh would read as anything but that
one file. ``ansible-playbook`` runs through labctl.host.proc: argv only (the inventory as
``-i``), in the run directory, with a timeout that kills the whole process group.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from labctl import __version__, fsio
from labctl.errors import HostNotReady, OperationFailed
from labctl.handover import ANSIBLE, HOST, SSH, hand_over
from labctl.host.proc import CommandTimeout, last_lines, run_cmd
from labctl.load.fleet import KEY_DIR, FleetSplit
from labctl.inventory.schema import Inventory
from labctl.encode import EncodeError

PACKAGE = Path(__file__).resolve().parent
PLAYBOOKS = PACKAGE / "playbooks"
CALLBACKS = PACKAGE / "plugins" / "callback"
INSTALL_HINT = "install it beside labctl on the controller: pip install 'labctl[fleet]' (ansible-core)"


# Connection variables that validated types keep free of template syntax (FleetAddr, HostName, Port,
# UserName): left plain for the tools that read the inventory.
CONNECTION = ("ansible_host", "ansible_port", "ansible_user")


class Unsafe(str):
    """A string Ansible must take literally (its ``!unsafe`` tag)."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(Unsafe, lambda dumper, value: dumper.represent_scalar("!unsafe", str(value), style="'"))


# ansible-core 2.19 reads a ``!unsafe`` scalar by resolving its text again as if it were
# plain: ``!unsafe ''`` is null, ``!unsafe 'true'`` a bool, ``!unsafe '1:20'`` the int 80,
# and ``!unsafe '='`` fails the whole inventory. Such text holds no template syntax.
_RESOLVER = yaml.resolver.Resolver()
_STR = "tag:yaml.org,2002:str"


def unsafe(value: Any) -> Any:
    """``value`` with every string in it tagged ``!unsafe``, but those that Ansible would read
    back as another type (they stay plain quoted strings, which is what they are)."""
    if isinstance(value, str):
        if _RESOLVER.resolve(yaml.ScalarNode, value, (True, False)) != _STR:
            return value
        return Unsafe(value)
    if isinstance(value, list):
        return [unsafe(v) for v in value]
    if isinstance(value, dict):
        return {k: unsafe(v) for k, v in value.items()}
    return value


def controller_path(path: str) -> Path:
    """A fleet setting's path on the controller: ``~`` is the home of whoever runs labctl."""
    return Path(os.path.expanduser(path))


@contextmanager
def from_this_controller() -> Iterator[None]:
    """Hand-overs whose paths the inventory did not spell alone: the inventory passed
    validation, so a refusal here comes from this controller ($HOME under a ``~/``, $TMPDIR,
    where labctl is installed), and nothing has been written for Ansible yet."""
    try:
        yield
    except EncodeError as exc:
        raise HostNotReady(f"{exc} (this controller's $HOME, $TMPDIR or labctl's install directory)") from None


def ansible_playbook() -> str:
    """The controller's ansible-playbook: beside this Python (labctl[fleet] installs it there), or on PATH."""
    beside = Path(sys.executable).with_name("ansible-playbook")
    if beside.exists():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if found is None:
        raise HostNotReady(f"the fleet is applied with Ansible and ansible-playbook is not here; {INSTALL_HINT}")
    return found


@dataclass(frozen=True)
class HostResult:
    """How one host's part of a run ended."""

    host: str
    address: str
    # ok | failed | unreachable | not run (no result: the run ended before reaching it)
    status: str
    error: str | None = None
    # The JSON document labctl printed there (up/status/down --json), when it printed one.
    report: dict[str, Any] | None = None
    rc: int | None = None
    stderr_tail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "address": self.address, "status": self.status, "error": self.error,
                "rc": self.rc, "report": self.report}


@dataclass
class RunDir:
    """The files of one run, under ``<fleet state dir>/run``."""

    inv: Inventory
    plan: FleetSplit
    state_dir: Path
    path: Path
    slices: dict[str, Path] = field(default_factory=dict)
    # The hosts this run acts on (all, or those named on the command line).
    hosts: list[str] = field(default_factory=list)

    @property
    def report_path(self) -> Path:
        return self.path / "report.json"

    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"


def _wheels(inv: Inventory, state_dir: Path) -> tuple[str, str, list[str]]:
    """(wheels tarball on the controller or "", install id, pip arguments) for the hosts."""
    assert inv.fleet is not None
    pip = inv.fleet.pip
    if pip.find_links is None:
        args = ["--index-url", pip.index_url] if pip.index_url else []
        return "", f"labctl=={__version__} index:{pip.index_url or 'default'}", args
    source = controller_path(pip.find_links)
    wheels = sorted(source.glob("*.whl")) if source.is_dir() else []
    if not any(w.name.startswith(f"labctl-{__version__}-") for w in wheels):
        raise OperationFailed(f"fleet.pip.find_links: {source} holds no labctl {__version__} wheel (the "
                              "controller's version, which every host gets); build it with: pip wheel -w "
                              f"{source} <labctl checkout>")
    digest = hashlib.sha256()
    for wheel in wheels:
        digest.update(wheel.name.encode() + b"\0")
        with open(wheel, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    tag = digest.hexdigest()[:16]
    tar = state_dir / "wheels" / f"wheels-{tag}.tar"
    if not tar.exists():
        fsio.ensure_dir(tar.parent, 0o700)
        for old in tar.parent.glob("wheels-*.tar"):
            old.unlink()
        fd, tmp = tempfile.mkstemp(dir=tar.parent, prefix=".wheels-")
        os.close(fd)
        with tarfile.open(tmp, "w") as out:
            for wheel in wheels:
                out.add(wheel, arcname=wheel.name, recursive=False)
        os.replace(tmp, tar)
    return str(tar), f"labctl=={__version__} wheels:{tag}", []


def host_vars(run: RunDir, host: str, key_files: dict[str, Path], wheels: tuple[str, str, list[str]]) -> dict[str, Any]:
    inv, fleet_host = run.inv, run.inv.hosts[host]
    assert inv.fleet is not None
    view = run.plan.views[host]
    remote = view.host  # paths on the host: its user's home

    def on_host(path: str) -> str:
        return hand_over(remote.expand(path), HOST)

    wheels_tar, install_id, pip_args = wheels
    wheels_dir = on_host("~/.cache/labctl/fleet/wheels")
    if wheels_tar:
        pip_args = ["--no-index", "--find-links", wheels_dir]
    keys = [{"src": hand_over(key_files[b], ANSIBLE), "dest": on_host(f"{KEY_DIR}/{b}.env")}
            for b in run.plan.keyed if host in run.plan.key_holders(b)]
    return {
        "ansible_host": fleet_host.ssh_host or fleet_host.address,
        "ansible_port": fleet_host.ssh_port,
        "ansible_user": remote.user,
        "labctl_address": fleet_host.address,
        "labctl_venv": on_host(inv.fleet.venv),
        # argv[0] only: the playbooks' command tasks take argv literally (expand_argument_vars: false)
        "labctl_python": inv.fleet.python,
        "labctl_spec": f"labctl=={__version__}",
        "labctl_install_id": install_id,
        "labctl_pip_args": pip_args,
        "labctl_ship_wheels": bool(wheels_tar),
        "labctl_wheels_tar": hand_over(wheels_tar, ANSIBLE) if wheels_tar else "",
        "labctl_wheels_dir": wheels_dir,
        "labctl_slice_src": hand_over(run.slices[host], ANSIBLE),
        "labctl_slice": on_host("~/.config/labctl/fleet/inventory.yaml"),
        "labctl_dirs": [on_host("~/.config/labctl/fleet"), on_host(KEY_DIR)],
        "labctl_keys": keys,
        "labctl_up_timeout": inv.fleet.up_timeout_sec,
        "labctl_status_timeout": inv.fleet.status_timeout_sec,
    }


def prepare(inv: Inventory, plan: FleetSplit, state_dir: Path, key_files: dict[str, Path],
            hosts: list[str] | None = None, name: str = "run") -> RunDir:
    """Write the run directory ``state_dir/name``: slices and the Ansible inventory (only
    ``hosts``, if given)."""
    from labctl.fleet.slices import slice_text

    # Before anything is written there: every file of the run is handed to Ansible or ssh.
    path = Path(hand_over(state_dir / name, ANSIBLE, SSH))
    fsio.ensure_dir(path / "slices", 0o700)
    chosen = [h for h in inv.hosts if hosts is None or h in hosts]
    run = RunDir(inv, plan, state_dir, path, hosts=chosen)
    for host in inv.hosts:
        run.slices[host] = path / "slices" / f"{host}.yaml"
        fsio.atomic_write(run.slices[host], slice_text(plan.views[host], host=host), mode=0o600)
    wheels = _wheels(inv, state_dir)
    first, last = [], []
    for group in plan.order():
        (last if set(group) <= set(plan.gateway_hosts) else first).extend(h for h in group if h in chosen)
    hosts_vars = {}
    for h in chosen:
        values = host_vars(run, h, key_files, wheels)
        hosts_vars[h] = {k: v if k in CONNECTION else unsafe(v) for k, v in values.items()}
    document = {"all": {
        "hosts": hosts_vars,
        "children": {"labctl_first": {"hosts": {h: None for h in first}},
                     "labctl_last": {"hosts": {h: None for h in last}}},
    }}
    text = "# Generated by labctl for one fleet run; do not edit.\n" + yaml.dump(document, Dumper=_Dumper, sort_keys=False)
    fsio.atomic_write(path / "hosts.yml", text, mode=0o600)
    fsio.atomic_write(path / "ansible.cfg", "", mode=0o600)
    run.report_path.unlink(missing_ok=True)
    return run


def inventory_args(run: RunDir) -> list[str]:
    """The run's inventory for an Ansible command line: ``-i`` names one source, read as
    that one file (``ANSIBLE_INVENTORY`` is a list, split at commas)."""
    return ["-i", hand_over(run.path / "hosts.yml", ANSIBLE)]


def environment(run: RunDir, control_dir: str) -> dict[str, str]:
    """ansible-playbook's environment: its settings as ANSIBLE_* variables, nothing inherited
    but PATH and HOME (an operator's own ANSIBLE_* or ansible.cfg must not change what labctl
    runs). The inventory is not among them: see :func:`inventory_args`."""
    inv = run.inv
    assert inv.fleet is not None
    known_hosts = hand_over(run.state_dir / "known_hosts", SSH)
    timeout = inv.fleet.connect_timeout_sec
    ssh_args = ["-o", "ControlMaster=auto", "-o", "ControlPersist=60s", "-o", f"UserKnownHostsFile={known_hosts}",
                "-o", "StrictHostKeyChecking=accept-new", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", f"ConnectTimeout={timeout}", "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(Path.home())),
        "LC_ALL": "C.UTF-8",
        "PYTHONWARNINGS": "ignore",  # the controller's libraries' deprecation notes are not the operator's news
        "LANG": "C.UTF-8",
        "ANSIBLE_CONFIG": hand_over(run.path / "ansible.cfg", ANSIBLE),
        "ANSIBLE_HOME": hand_over(run.state_dir / "ansible", ANSIBLE),
        "ANSIBLE_LOCAL_TEMP": hand_over(run.state_dir / "ansible" / "tmp", ANSIBLE),
        "ANSIBLE_INVENTORY_ENABLED": "yaml",
        "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "True",
        # Ansible reads it as a path setting and writes it into ssh's IdentityFile="..."
        "ANSIBLE_PRIVATE_KEY_FILE": hand_over(controller_path(inv.fleet.ssh_key), ANSIBLE, SSH),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_SSH_ARGS": shlex.join(ssh_args),
        # ssh's ControlPath is written beneath it
        "ANSIBLE_SSH_CONTROL_PATH_DIR": hand_over(control_dir, ANSIBLE, SSH),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_TIMEOUT": str(timeout),
        "ANSIBLE_FORKS": str(max(1, min(50, len(inv.hosts)))),
        "ANSIBLE_CALLBACK_PLUGINS": hand_over(CALLBACKS, ANSIBLE),
        "ANSIBLE_CALLBACKS_ENABLED": "labctl_report",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "True",
        "ANSIBLE_NOCOWS": "True",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_INTERPRETER_PYTHON": "auto_silent",
        "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        "LABCTL_ANSIBLE_REPORT": str(run.report_path),
        "LABCTL_ANSIBLE_EVENTS": str(run.events_path),
    }


@dataclass(frozen=True)
class TaskEvent:
    """A task started (``event`` "start") or ended ("ok", "failed", "unreachable",
    "skipped") on one host, as labctl's callback wrote it."""

    host: str
    task: str
    event: str
    changed: bool


def _follow(path: Path, on_event: Callable[[TaskEvent | None], None], done: threading.Event) -> None:
    """Hand each line the callback appends to ``path`` to ``on_event``, until ``done`` (then
    the rest of the file); ``on_event(None)`` after each look, four times a second."""
    offset, pending = 0, b""
    while True:
        finished = done.wait(0.25)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        offset += len(chunk)
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            try:
                data = json.loads(line)
                event = TaskEvent(str(data["host"]), str(data["task"]), str(data["event"]), bool(data["changed"]))
            except (ValueError, KeyError, TypeError):
                continue  # not one of the callback's lines
            on_event(event)
        on_event(None)
        if finished:
            return


def run_playbook(run: RunDir, playbook: str, *, timeout: float, echo: Any = None,
                 on_event: Callable[[TaskEvent | None], None] | None = None) -> dict[str, HostResult]:
    """Run one of labctl's playbooks over the run's hosts; every host's result, by name.
    ``on_event`` hears each task start and end on each host as it happens (and None, a tick,
    four times a second)."""
    control_dir = tempfile.mkdtemp(prefix="labctl-ssh-")  # short: ssh's socket paths are limited
    done = threading.Event()
    follower = None
    try:
        with from_this_controller():
            argv = [ansible_playbook(), *inventory_args(run), hand_over(PLAYBOOKS / playbook, ANSIBLE)]
            env = environment(run, control_dir)
        fsio.ensure_dir(run.state_dir / "ansible" / "tmp", 0o700)
        run.events_path.unlink(missing_ok=True)
        if on_event is not None:
            follower = threading.Thread(target=_follow, args=(run.events_path, on_event, done), daemon=True)
            follower.start()
        # In the run directory: nothing Ansible resolves against the current directory is
        # the operator's (a repository's ansible.cfg, a relative path).
        result = run_cmd(argv, check=False, timeout=timeout, env=env, cwd=run.path, echo=echo)
    except CommandTimeout:
        raise OperationFailed(f"ansible-playbook {playbook} did not finish within {timeout:.0f}s; "
                              f"the hosts' last state is in {run.path}") from None
    finally:
        done.set()
        if follower is not None:
            follower.join()
        shutil.rmtree(control_dir, ignore_errors=True)
    return read_report(run, result.rc, result.stdout + "\n" + result.stderr)


def read_report(run: RunDir, rc: int, output: str) -> dict[str, HostResult]:
    try:
        document = json.loads(run.report_path.read_text())
    except (OSError, ValueError):
        # No report at all: Ansible stopped before any host (a bad playbook, a missing module).
        raise OperationFailed(f"ansible-playbook exited {rc} without a report:\n"
                              + "\n".join(f"  {line}" for line in last_lines(output, 12))) from None
    out: dict[str, HostResult] = {}
    for host in run.hosts:
        address = run.inv.hosts[host].address
        entry = document.get("hosts", {}).get(host)
        if entry is None:
            out[host] = HostResult(host, address, "not run", "Ansible reached no task on it")
            continue
        labctl = entry.get("labctl") or {}
        report = None
        if labctl.get("stdout"):
            try:
                report = json.loads(labctl["stdout"])
            except ValueError:
                report = None
        status = entry.get("status", "failed")
        error = entry.get("error")
        if labctl and labctl.get("rc") not in (0, None) and isinstance(report, dict) and report.get("errors"):
            error = "; ".join(str(e.get("message", e)) for e in report["errors"])
        out[host] = HostResult(host, address, status, error if status != "ok" else None, report, labctl.get("rc"),
                               labctl.get("stderr", ""))
    return out
