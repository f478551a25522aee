"""``labctl sandbox up|exec|down|list`` as a library: a sandbox machine that outlives the
process that booted it.

``up`` boots a :class:`labctl.sandbox.Machine`, installs this project into it, and detaches it
(a record in the sandbox registry); later invocations ``exec`` commands in it and bring it
``down`` by name. Pure library (no typer, no printing except through ``say``); every failure
is a :class:`labctl.sandbox.SandboxError` with a one-line message.

Inside a machine made by :func:`sandbox_up`:

* the project is installed in labuser's venv (:data:`labctl.sandbox.VENV_DIR`) and ``labctl``
  is on every user's PATH (``/usr/local/bin/labctl``, a symlink into that venv);
* the project's ``examples/`` is copied to ``/home/labuser/examples`` (owned by labuser);
* the host's tool venvs (``/opt/labctl-tools``, or ``$LABCTL_TOOLS``: llama-server,
  llama-cpp-python, LiteLLM... made by scripts/bootstrap.sh) are bound read-only at the same
  path, together with the base Python installations those venvs point at, so units inside can
  run the real servers;
* labuser can read the journal (``journalctl --user``).
"""

from __future__ import annotations

import configparser
import contextlib
import os
import sys
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from labctl.host.proc import one_line
from labctl.sandbox import (
    GUEST_PATH,
    USER,
    USER_HOME,
    VENV_DIR,
    Machine,
    SandboxError,
    build_rootfs,
    free_port,
    list_machines,
)
from labctl.sandbox.registry import name_lock, read_record, remove_record, stale_reason

DEFAULT_NAME = "labctl-sandbox"
DEFAULT_TOOLS_DIR = Path("/opt/labctl-tools")
#: ``labctl`` for every user and every unit inside (a symlink into labuser's venv).
LABCTL_BIN = "/usr/local/bin/labctl"
EXAMPLES_DIR = f"{USER_HOME}/examples"

Say = Callable[[str], object]


def default_tools_dir() -> Path | None:
    """$LABCTL_TOOLS or /opt/labctl-tools (as scripts/bootstrap.sh), if that directory exists."""
    path = Path(os.environ.get("LABCTL_TOOLS") or DEFAULT_TOOLS_DIR)
    return path if path.is_dir() else None


def _project_name(project_dir: Path) -> str | None:
    try:
        with open(project_dir / "pyproject.toml", "rb") as fh:
            name = tomllib.load(fh).get("project", {}).get("name")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return name if isinstance(name, str) else None


def find_project_dir(start: Path | None = None) -> Path:
    """The labctl checkout to install: the one this module runs from (src layout), else the
    nearest directory at or above ``start`` (default: the working directory) with a
    pyproject.toml."""
    checkout = Path(__file__).resolve().parents[3]
    if _project_name(checkout) == "labctl":
        return checkout
    here = Path(start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").is_file():
            return candidate
    raise SandboxError(f"no pyproject.toml at or above {here}: pass the project directory")


# --------------------------------------------------------------------------- up


def _venv_base_prefix(venv: Path) -> Path | None:
    """The Python installation a venv's interpreter links to (``home`` in pyvenv.cfg)."""
    parser = configparser.RawConfigParser()
    try:
        parser.read_string("[venv]\n" + (venv / "pyvenv.cfg").read_text())
    except (OSError, configparser.Error):
        return None
    home = parser.get("venv", "home", fallback="").strip()
    if not home.startswith("/"):
        return None
    bin_dir = Path(home)
    return bin_dir.parent if bin_dir.name == "bin" else bin_dir


def tool_binds(tools_dir: Path) -> list[tuple[Path, Path]]:
    """Read-only binds (host, guest) that make the venvs under ``tools_dir`` run inside:
    ``tools_dir`` itself and, at their own paths, the base Pythons the venvs link to
    (e.g. /root/.pyenv/versions/3.11.7). The guest's /usr, /usr/local and / are never shadowed:
    venvs made from the system Python use the guest's (bookworm: the same 3.11)."""
    tools_dir = Path(tools_dir).absolute()
    binds: list[tuple[Path, Path]] = [(tools_dir.resolve(), tools_dir)]
    seen: list[Path] = [tools_dir]
    for cfg in sorted(tools_dir.glob("*/pyvenv.cfg")):
        prefix = _venv_base_prefix(cfg.parent)
        if prefix is None or os.fspath(prefix) in ("/", "/usr", "/usr/local"):
            continue
        if not prefix.is_dir():
            continue
        if any(prefix == s or s in prefix.parents or prefix in s.parents for s in seen):
            continue
        seen.append(prefix)
        binds.append((prefix.resolve(), prefix))
    return binds


def _make_traversable(machine: Machine, guest_paths: Sequence[Path]) -> None:
    """Let labuser reach bind mounts below root-only directories (the guest's /root is 0700).

    Only the ancestors of the mount points change (o+x, no listing), and only in this boot's
    overlay: the cached tree stays as it was."""
    ancestors: list[str] = []
    for path in guest_paths:
        for parent in reversed(Path(path).parents):
            if os.fspath(parent) != "/" and os.fspath(parent) not in ancestors:
                ancestors.append(os.fspath(parent))
    if ancestors:
        machine.run(["chmod", "o+x", *ancestors])


def _check_tools(machine: Machine, tools_dir: Path) -> dict[str, str]:
    """Per tool venv: "ok" when its interpreter (and llama-server, if any) starts as labuser
    inside, else the one-line reason."""
    report: dict[str, str] = {}
    for venv in sorted(p.parent for p in tools_dir.glob("*/pyvenv.cfg")):
        probes = [[f"{venv}/bin/python", "-c", "import sys"]]
        if (venv / "bin" / "llama-server").exists():
            probes.append([f"{venv}/bin/llama-server", "--version"])
        status = "ok"
        for argv in probes:
            res = machine.run(argv, user=USER, check=False, timeout=60)
            if res.rc != 0:
                why = one_line(res.stderr) or one_line(res.stdout) or "no output"
                status = f"{Path(argv[0]).name} exited {res.rc}: {why}"
                break
        report[venv.name] = status
    return report


def _refuse_if_running(name: str, registry: Path | None) -> None:
    record = read_record(name, registry)
    if record is None:
        return
    if stale_reason(record) is None:
        raise SandboxError(
            f"sandbox {name} is already running (systemd-nspawn PID {record.nspawn_pid});"
            " bring it down first"
        )
    remove_record(name, registry, if_nspawn=(record.nspawn_pid, record.nspawn_start))


def sandbox_up(
    name: str = DEFAULT_NAME,
    project_dir: Path | None = None,
    *,
    ssh_port: int | None = None,
    tools_dir: Path | None | Literal["auto"] = "auto",
    rootfs: Path | None = None,
    registry: Path | None = None,
    extras: Sequence[str] = (),
    boot_timeout: float = 90,
    install_timeout: float = 1200,
    say: Say = print,
) -> dict[str, object]:
    """Boot sandbox ``name``, install ``project_dir`` (default: :func:`find_project_dir`) into
    it, and leave it running after this process exits. Returns facts about it.

    ``ssh_port``: sshd inside listens on 127.0.0.1:PORT (default: a free port).
    ``tools_dir``: bound read-only at the same path ("auto": :func:`default_tools_dir`;
    None: nothing). ``rootfs``: the cached tree's directory (default: build_rootfs's).
    ``registry``: where machine records live (default: labctl.sandbox.machines_dir()).
    Refuses (SandboxError) when a sandbox of that name is already running.
    """
    t0 = time.monotonic()
    project = Path(project_dir).resolve() if project_dir is not None else find_project_dir()
    if tools_dir == "auto":
        tools = default_tools_dir()
    elif tools_dir is None:
        tools = None
    else:
        tools = Path(tools_dir)
        if not tools.is_dir():
            raise SandboxError(f"tools directory {tools} does not exist")
    if not (project / "pyproject.toml").is_file():
        raise SandboxError(f"{project} has no pyproject.toml")
    project_name = _project_name(project) or project.name
    timings: dict[str, float] = {}

    with name_lock(name, registry):
        _refuse_if_running(name, registry)

        say(f"sandbox {name}: preparing the Debian rootfs (the first time takes 1-2 minutes)")
        t = time.monotonic()
        tree = build_rootfs(rootfs)
        timings["rootfs"] = time.monotonic() - t

        binds = tool_binds(tools) if tools is not None else []
        port = ssh_port if ssh_port is not None else free_port()
        say(f"sandbox {name}: booting")
        t = time.monotonic()
        machine = Machine.boot(name, tree, port, bind_ro=binds, timeout=boot_timeout)
        timings["boot"] = time.monotonic() - t
        try:
            # A record at once: if this process dies during the install, `down` still finds it.
            machine.save(registry)

            say(f"sandbox {name}: installing {project_name} from {project} into {VENV_DIR}")
            install = machine.install_python_project(
                project, extras=extras, timeout=install_timeout
            )
            timings["install"] = install.seconds

            t = time.monotonic()
            labctl = f"{install.venv}/bin/labctl"
            if machine.run(["test", "-x", labctl], check=False).rc == 0:
                machine.run(["ln", "-sfn", labctl, LABCTL_BIN])
            else:
                say(f"sandbox {name}: warning: {project_name} installed no labctl command")
                labctl = ""
            examples = None
            if (project / "examples").is_dir():
                machine.copy_in(project / "examples", EXAMPLES_DIR, owner=USER)
                examples = EXAMPLES_DIR
            tool_report: dict[str, str] = {}
            if tools is not None:
                _make_traversable(machine, [guest for _host, guest in binds])
                tool_report = _check_tools(machine, tools)
                for tool, status in tool_report.items():
                    if status != "ok":
                        say(f"sandbox {name}: warning: tool {tool} does not run inside: {status}")
            ssh_config = machine.ssh_config()
            timings["setup"] = time.monotonic() - t

            machine.labels = {
                "project": project_name,
                "project_dir": os.fspath(project),
                "venv": install.venv,
                "labctl": LABCTL_BIN if labctl else "",
                "tools_dir": os.fspath(tools) if tools is not None else "",
            }
            timings["total"] = time.monotonic() - t0
            machine.timings.update({f"up_{k}": v for k, v in timings.items()})
            record = machine.detach(registry)
        except BaseException:
            machine.shutdown()
            raise

    say(f"sandbox {name}: up in {timings['total']:.1f}s (ssh on 127.0.0.1:{port})")
    return {
        "name": name,
        "ssh_port": port,
        "ssh_config": os.fspath(ssh_config),
        "nspawn_pid": machine.nspawn_pid,
        "pid": machine.pid,
        "rootfs": os.fspath(tree),
        "state_dir": os.fspath(machine.state_dir),
        "record": os.fspath(record),
        "system_state": machine.system_state,
        "venv": install.venv,
        "labctl": machine.labels["labctl"],
        "examples": examples,
        "tools_dir": os.fspath(tools) if tools is not None else None,
        "tool_binds": [[os.fspath(h), os.fspath(g)] for h, g in binds],
        "tools": tool_report,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


# --------------------------------------------------------------------------- exec, down, list


def sandbox_exec(
    name: str,
    argv: Sequence[str],
    *,
    user: str = USER,
    cwd: str | None = USER_HOME,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    registry: Path | None = None,
) -> int:
    """Run ``argv`` inside the running sandbox ``name`` as ``user``; its stdout and stderr go
    straight to this process's (live, not captured). Returns the exit status (128+N for a
    signal).

    The environment is clean: HOME, USER, LANG, PATH (labctl's venv first), for labuser
    XDG_RUNTIME_DIR=/run/user/1000 and the session bus, TERM if set here, plus ``env``.
    """
    if not argv:
        raise SandboxError("sandbox exec: no command given")
    machine = Machine.attach(name, registry)
    venv = machine.labels.get("venv") or VENV_DIR
    home = "/root" if user == "root" else USER_HOME if user == USER else f"/home/{user}"
    full_env = {"PATH": f"{venv}/bin:{home}/.local/bin:{GUEST_PATH}"}
    if os.environ.get("TERM"):
        full_env["TERM"] = os.environ["TERM"]
    full_env.update(env or {})
    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stdout.flush()  # our own earlier output first
        sys.stderr.flush()
    return machine.call(argv, user=user, env=full_env, timeout=timeout, cwd=cwd)


def sandbox_down(
    name: str = DEFAULT_NAME, *, registry: Path | None = None, timeout: float = 20
) -> None:
    """Power the running sandbox ``name`` off and forget it (SandboxError if none runs)."""
    with name_lock(name, registry):
        machine = Machine.attach(name, registry)
        machine.shutdown(timeout)


def sandbox_list(registry: Path | None = None) -> list[dict[str, object]]:
    """The running sandboxes, by name (stale records are dropped on the way)."""
    now = time.time()
    rows: list[dict[str, object]] = []
    for rec in list_machines(registry):
        rows.append(
            {
                "name": rec.name,
                "ssh_port": rec.ssh_port,
                "nspawn_pid": rec.nspawn_pid,
                "pid": rec.pid,
                "started": datetime.fromtimestamp(rec.created, timezone.utc).isoformat(
                    timespec="seconds"
                ),
                "uptime_s": round(max(now - rec.created, 0.0), 1),
                "project": rec.labels.get("project", ""),
                "tools_dir": rec.labels.get("tools_dir", ""),
                "rootfs": rec.rootfs,
                "state_dir": rec.state_dir,
            }
        )
    return rows


def sandbox_copy(name: str, src: Path, dst: str, *, owner: str = USER, registry: Path | None = None) -> None:
    """Copy a host file or directory into a running sandbox, owned by ``owner``."""
    machine = Machine.attach(name, registry)
    machine.copy_in(Path(src), dst, owner=owner)
