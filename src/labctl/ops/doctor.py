"""``labctl doctor``: can this host run the inventory? One line per check, with the fix.

``labctl up`` runs the same checks as its pre-flight and refuses, changing nothing, when
any says ``fail``.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from labctl.host import secrets
from labctl.host.proc import CommandFailed, run_cmd
from labctl.host.provision import runtimes
from labctl.host.systemd import UserManager
from labctl.load import checks
from labctl.load import Loaded
from labctl.inventory.schema import Inventory, unit_name
from labctl.kinds import kind_of
from labctl.inventory.layout import Layout
from labctl.text import shown

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str
    fix: str = ""

    def __str__(self) -> str:
        fix = f" (fix: {self.fix})" if self.fix and self.status != "ok" else ""
        return f"{self.status:<4} {self.name}: {self.message}{fix}"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def listeners() -> dict[int, list[tuple[str, int]]]:
    """TCP port -> [(process name, pid)] for every listening socket (``ss -ltnpH``).
    A socket owned by another user shows no process: it then appears with pid 0."""
    try:
        res = run_cmd(["ss", "-ltnpH"], timeout=10)
    except CommandFailed:
        return {}
    out: dict[int, list[tuple[str, int]]] = {}
    for line in res.stdout.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        port_text = fields[3].rsplit(":", 1)[-1]
        if not port_text.isdigit():
            continue
        procs = [(m.group(1), int(m.group(2))) for m in re.finditer(r'\("([^"]*)",pid=(\d+)', line)]
        out.setdefault(int(port_text), []).extend(procs or [("?", 0)])
    return out


def _cgroup_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cgroup").read_text(errors="replace")
    except OSError:
        return ""


def cgroup_paths(text: str) -> list[str]:
    """The cgroup paths in /proc/PID/cgroup text (``hierarchy-ID:controllers:path`` per
    line): the unified hierarchy's (``0::``) when there is one, else the systemd named
    hierarchy's (``name=systemd``, cgroup v1), else every hierarchy's."""
    unified, systemd, every = [], [], []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        hierarchy, controllers, path = parts
        every.append(path)
        if hierarchy == "0" and controllers == "":
            unified.append(path)
        elif "name=systemd" in controllers.split(","):
            systemd.append(path)
    return unified or systemd or every


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


def in_unit(cgroup_text: str, unit: str) -> bool:
    """Whether the process whose /proc/PID/cgroup is ``cgroup_text`` runs in ``unit``: its
    cgroup path ends in a component that *is* the unit name (``.../labctl-native.service``),
    never one that merely contains it (``labctl-native.service-evil``)."""
    return bool(unit) and any(_components(path)[-1:] == [unit] for path in cgroup_paths(cgroup_text))


def in_docker(cgroup_text: str) -> bool:
    """Whether the process runs under Docker: a cgroup path component that is a container's
    scope (``docker-<id>.scope``, systemd driver), the cgroupfs driver's ``docker``, or the
    daemon's own ``docker.service`` (its docker-proxy holds published ports)."""
    for path in cgroup_paths(cgroup_text):
        for part in _components(path):
            if part in ("docker", "docker.service"):
                return True
            if part.startswith("docker-") and part.endswith(".scope") and len(part) > len("docker-.scope"):
                return True
    return False


_MONITORING_PROCS = ("prometheus", "grafana", "grafana-server", "node_exporter", "prometheus-node-exporter",
                    "nvidia_gpu_exporter")


def port_checks(inv: Inventory) -> list[Check]:
    taken = listeners()
    wanted: list[tuple[str, int, str | None]] = [(n, s.port, unit_name(n)) for n, s in inv.managed().items()]
    mon = inv.monitoring
    if mon.enabled:
        wanted += [("prometheus", mon.prometheus.port, None), ("grafana", mon.grafana.port, None)]
        if mon.node_exporter.enabled:
            wanted.append(("node-exporter", mon.node_exporter.port, None))
        if mon.gpu_exporter.enabled:
            wanted.append(("gpu-exporter", mon.gpu_exporter.port, None))
    out = []
    for name, port, unit in wanted:
        holders = taken.get(port, [])
        if not holders:
            out.append(Check(f"port {port}", "ok", f"free for {name}"))
        elif unit and all(pid and in_unit(_cgroup_of(pid), unit) for _, pid in holders):
            out.append(Check(f"port {port}", "ok", f"held by {unit} (ours)"))
        elif unit is None and all(pid and (in_docker(_cgroup_of(pid)) or proc in _MONITORING_PROCS)
                                  for proc, pid in holders):
            out.append(Check(f"port {port}", "ok", f"held by the monitoring stack ({shown(holders[0][0])})"))
        else:
            # A process name is whatever the process set (prctl): escaped, like any file text.
            who = ", ".join(f"{shown(p)} (pid {pid})" if pid else "a process of another user" for p, pid in holders)
            out.append(Check(f"port {port}", "fail", f"{name} needs it, but {who} listens there",
                             f"stop that process or change services.{name}.port"))
    for name, ext in inv.externals().items():
        # An external service's port is expected to be taken: by it.
        holders = taken.get(ext.port, [])
        if holders:
            who = ", ".join(shown(p) if pid else "a process of another user" for p, pid in holders)
            out.append(Check(f"port {ext.port}", "ok", f"held by {who}: {name} (external), as expected"))
        else:
            out.append(Check(f"port {ext.port}", "warn", f"nothing listens for {name} (external; labctl does not "
                             "start it): its routes fail over until it runs", kind_of(ext).start_hint(name, ext)))
    return out


# Which cgroup v2 controller enforces which limit.
LIMIT_CONTROLLERS = {"memory_max": "memory", "memory_high": "memory", "cpu_quota_percent": "cpu",
                     "io_weight": "io", "tasks_max": "pids"}


def delegated_controllers(uid: int, root: Path = Path("/sys/fs/cgroup")) -> set[str] | None:
    """The cgroup v2 controllers the user's manager may use, or None on a cgroup v1 (or
    hybrid without them) host, where a user manager enforces no limit."""
    path = root / "user.slice" / f"user-{uid}.slice" / f"user@{uid}.service" / "cgroup.controllers"
    try:
        return set(path.read_text().split())
    except OSError:
        return None


def limit_checks(inv: Inventory, controllers: set[str] | None) -> list[Check]:
    """Limits a user manager cannot enforce are silently ignored by systemd: say so."""
    out = []
    for name, svc in inv.managed().items():
        lim = inv.limits_of(svc)
        wanted = sorted({c for f, c in LIMIT_CONTROLLERS.items() if getattr(lim, f) is not None})
        if not wanted:
            continue
        missing = wanted if controllers is None else [c for c in wanted if c not in controllers]
        if missing:
            why = ("the user manager has no cgroup v2 hierarchy" if controllers is None else
                   f"the user manager has no {', '.join(missing)} controller")
            out.append(Check(f"{name} limits", "warn", f"not enforced here: {why}; the unit starts unlimited", "boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1) and "
                             "delegate controllers to user@.service (Delegate=)"))
        else:
            out.append(Check(f"{name} limits", "ok", f"enforced by the {', '.join(wanted)} controller(s)"))
    return out


def _promtool_argv(inv: Inventory, mounts: list[Path], cwd: Path | None) -> list[str] | None:
    """promtool from this host, or from the pinned Prometheus image (the one that will load
    the rules) through the docker CLI, run in ``cwd`` either way (a test file names its
    rule files relative to itself); None when neither is here."""
    local = shutil.which("promtool")
    if local:
        return [local]
    docker = shutil.which("docker")
    if docker is None:
        return None
    volumes = [arg for m in dict.fromkeys(mounts) for arg in ("-v", f"{m}:{m}:ro")]
    workdir = ["-w", str(cwd)] if cwd is not None else []
    return [docker, "run", "--rm", "--network=none", "--entrypoint", "promtool", *volumes, *workdir,
            inv.monitoring.prometheus.image]


def _promtool_problem(lines: list[str]) -> str | None:
    """promtool's reason: the text after its FAILED marker (on that line or the next)."""
    for i, line in enumerate(lines):
        if "FAILED" in line:
            rest = line.split("FAILED", 1)[1].strip(" :")
            if rest:
                return rest
            following = [x.strip() for x in lines[i + 1:] if x.strip()]
            if following:
                return following[0]
    errors = [x.strip() for x in lines if "error" in x.lower()]
    return errors[0] if errors else (lines[-1].strip() if lines else None)


def rule_checks(inv: Inventory) -> list[Check]:
    """The operator's rule files through promtool (check rules), and their unit tests (test
    rules): a broken expression is refused before Prometheus would skip the file."""
    mon = inv.monitoring
    if not mon.enabled or not (mon.rule_files or mon.rule_tests):
        return []
    rules = [Path(inv.host.expand(p)) for p in mon.rule_files]
    tests = [Path(inv.host.expand(p)) for p in mon.rule_tests]
    mounts = [p.parent for p in rules + tests]
    if _promtool_argv(inv, mounts, None) is None:
        return [Check("monitoring rule files", "warn", "not checked: no promtool here and no docker CLI",
                      "apt-get install prometheus (for promtool)")]
    out = []
    for what, args, cwd in ([("rules", ["check", "rules", *map(str, rules)], None)] if rules else []) + \
            [(f"test {t.name}", ["test", "rules", str(t)], t.parent) for t in tests]:
        argv = _promtool_argv(inv, mounts, cwd) or []
        try:
            res = run_cmd([*argv, *args], check=False, timeout=120, cwd=cwd)
        except CommandFailed as exc:
            out.append(Check(f"monitoring {what}", "warn", f"promtool did not run: {exc}"))
            continue
        text = (res.stdout + res.stderr).strip().splitlines()
        if res.rc == 0:
            out.append(Check(f"monitoring {what}", "ok", "promtool: " + (text[-1] if text else "SUCCESS")))
        else:
            problem = _promtool_problem(text) or f"exit status {res.rc}"
            out.append(Check(f"monitoring {what}", "fail", f"promtool refuses it: {shown(problem)[:300]}",
                             "fix the file named in monitoring.rule_files / rule_tests"))
    return out


def _needs_gpu(inv: Inventory) -> list[str]:
    return [name for name, svc in inv.enabled().items() if kind_of(svc).managed and kind_of(svc).uses_gpu(inv, svc)]


def run_doctor(loaded: Loaded, *, manager: UserManager | None = None, docker: bool = True) -> list[Check]:
    inv, layout = loaded.inventory, Layout.of(loaded.inventory)
    manager = manager or UserManager()
    user = inv.host.user
    out: list[Check] = []

    me = getpass.getuser()
    out.append(Check("user", "ok", f"running as {me}") if me == user else
               Check("user", "fail", f"running as {me}, but the inventory's host.user is {user}",
                     f"run labctl as {user}, or set host.user"))
    out.append(Check("linger", "ok", f"enabled for {user}") if manager.lingers(user) else
               Check("linger", "fail", f"not enabled for {user}: the stack stops at logout and does not start "
                     "at boot", f"sudo loginctl enable-linger {user}"))
    reachable, detail = manager.reachable()
    runtime_dir = manager.env.get("XDG_RUNTIME_DIR", "")
    out.append(Check("user manager", "ok", detail) if reachable else
               Check("user manager", "fail", detail,
                     f"log in as {user} or enable linger; XDG_RUNTIME_DIR={runtime_dir or '(unset)'}"))

    out.extend(port_checks(inv))
    out.extend(limit_checks(inv, delegated_controllers(os.getuid())))
    out.extend(rule_checks(inv))

    provisioned = runtimes(inv)
    for problem in checks.file_problems(inv, loaded.source):
        out.append(Check(problem.path, "fail", problem.message, f"edit {problem.file}:{problem.line}"))
    for warning in loaded.warnings:  # accepted, likely not meant (file:line: path: message)
        where, _, message = warning.partition(": ")
        out.append(Check("inventory", "warn", warning, f"edit {where}"))
    for name in provisioned:
        out.append(Check(f"services.{name}.runtime", "ok", "provisioned by labctl up (pinned pip specs)"))
    if inv.models:
        from labctl.ops.model_pull import missing

        absent = set(missing(inv))
        for name, model in inv.models.items():
            path = inv.model_file(name)
            out.append(Check(f"models.{name}", "ok", f"not fetched yet: labctl up (or labctl model pull) fetches it "
                                                     f"({model.kind()}) to {path}") if name in absent else
                       Check(f"models.{name}", "ok", f"{path} is in place"))

    for name in inv.managed():
        wd = Path(layout.working_directory(name))
        out.append(Check(f"{name} working directory", "ok", f"{wd} exists") if wd.is_dir() else
                   Check(f"{name} working directory", "warn", f"{wd} does not exist yet",
                         "labctl up creates it before the unit starts"))

    # Every name a service's program looks up at start (labctl.kinds: Kind.resolves).
    names = {host: why for svc in inv.enabled().values() for host, why in kind_of(svc).resolves.items()}
    out.extend(resolves_check(host, why) for host, why in names.items())
    for name, svc in inv.gateways().items():
        python = Path(svc.runtime.interpreter(inv.host))
        if svc.prometheus_metrics and python.exists():
            from labctl.ops.gateway_check import litellm_supports_prometheus

            # The operators enabled a callback their LiteLLM could not load: ask this one.
            supported = _cached(Path(layout.state_dir) / "litellm-prometheus.json", python,
                                lambda: litellm_supports_prometheus(python))
            out.append(Check(f"{name} metrics", "ok", "the installed LiteLLM has its Prometheus callback")
                       if supported else
                       Check(f"{name} metrics", "fail", "the installed LiteLLM cannot load its Prometheus callback",
                             f"install prometheus_client into {python.parent.parent}, or set "
                             f"services.{name}.prometheus_metrics: false"))

    # Every secret a kind keeps: a file labctl makes (0600, or made at up), or one the
    # operator gives (0600, defining its variable); a variable of the manager's environment.
    for name, svc in inv.managed().items():
        env_refs = []
        for secret in kind_of(svc).secrets(inv, name, svc):
            ref = secret.ref
            if ref.env is not None:
                env_refs.append(ref.variable)
            elif ref.env_file:
                path = Path(inv.host.expand(ref.env_file))
                out.append(_secret_file_check(secret.label, path, True) if secret.generate else
                           _env_var_check(secret.label, path, ref.variable))
        if env_refs and reachable:
            out.extend(manager_env_checks(name, env_refs, manager.environment_names()))

    gpu_users = _needs_gpu(inv)
    if gpu_users:
        smi = shutil.which("nvidia-smi")
        ok = smi is not None and run_cmd([smi, "-L"], check=False, timeout=20).rc == 0
        out.append(Check("gpu", "ok", "nvidia-smi lists a GPU") if ok else
                   Check("gpu", "fail", f"{', '.join(gpu_users)} ask for GPU offload, but nvidia-smi finds no GPU",
                         "install the NVIDIA driver, or set n_gpu_layers: 0 / device: cpu and host.gpu: false"))

    if inv.monitoring.enabled and docker:
        from labctl.ops.monitoring import engine_status

        engine = engine_status()
        out.append(Check("docker", "ok", engine.detail) if engine.reachable else
                   Check("docker", "warn", f"{engine.detail}; the monitoring stack will be skipped",
                         "start Docker, or set monitoring.enabled: false"))
        if inv.monitoring.node_exporter.enabled and not root_is_shared():
            out.append(Check("node exporter", "warn", "/ is a private mount here: Docker refuses the node "
                             "exporter's /:/host:ro,rslave bind", "mount --make-rshared /, or set "
                             "monitoring.node_exporter.enabled: false"))
    return out


def resolves_check(host: str, why: str, resolve=None) -> Check:  # type: ignore[no-untyped-def]
    """A name a program looks up at start (``why``: what it does when it cannot), resolved
    as the program will (a minimal container may have no /etc/hosts line for localhost)."""
    import socket

    resolve = resolve or socket.getaddrinfo
    try:
        resolve(host, None, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        fix = ("add the line '127.0.0.1 localhost' to /etc/hosts" if host == "localhost" else
               f"make {host} resolve on this host (DNS or /etc/hosts)")
        return Check(host, "fail", f"the name {host} does not resolve here ({exc}); {why}", fix)
    return Check(host, "ok", f"the name {host} resolves")


def root_is_shared(mountinfo: str | None = None) -> bool:
    """Whether / propagates mounts (``shared:N`` in /proc/self/mountinfo's optional fields)."""
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 6 and fields[4] == "/":
            optional = fields[6:fields.index("-")] if "-" in fields else []
            return any(f.startswith("shared:") for f in optional)
    return False


def _env_var_check(name: str, path: Path, var: str) -> Check:
    """The file exists, is private, and defines ``var``: LiteLLM would otherwise fail only
    on the first request that needs the key."""
    check = _secret_file_check(name, path, False)
    if check.status != "ok":
        return check
    try:
        defined = var in secrets.read_env_file(path)
    except (OSError, UnicodeError) as exc:
        return Check(name, "fail", f"{path} cannot be read: {type(exc).__name__}")
    if not defined:
        return Check(name, "fail", f"{path} does not define {var}", f"add a line {var}=<key> to it")
    return Check(name, "ok", f"{path} is mode 0600 and defines {var}")


def manager_env_checks(name: str, variables: list[str], present: set[str] | None) -> list[Check]:
    """Secrets given as {env: VAR} come from the user manager's environment; LiteLLM would
    fail only on the first request that needs a missing one."""
    if present is None:
        return [Check(f"{name} environment", "warn", "the user manager did not list its environment; "
                      f"cannot tell whether {', '.join(variables)} will be set")]
    return [Check(f"{name} {var}", "ok", f"{var} is in the user manager's environment") if var in present else
            Check(f"{name} {var}", "fail", f"{var} is not in the user manager's environment; the gateway would "
                  "start without it", f"systemctl --user set-environment {var}=… (or use an env_file reference)")
            for var in dict.fromkeys(variables)]


def _secret_file_check(name: str, path: Path, generate: bool) -> Check:
    if not path.exists():
        if generate:
            return Check(name, "ok", f"{path} will be generated (mode 0600)")
        return Check(name, "fail", f"{path} does not exist", "create it with mode 0600, or set generate: true")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return Check(name, "fail", f"{path} is mode {mode:o}, readable by others", f"chmod 600 {path}")
    if not os.access(path, os.R_OK):
        return Check(name, "fail", f"{path} is not readable", "chown it to the inventory's host.user")
    return Check(name, "ok", f"{path} is mode 0600")


def _cached(path: Path, python: Path, compute) -> bool:  # type: ignore[no-untyped-def]
    """``compute()`` imports LiteLLM (seconds); its answer only changes when the venv's
    packages do, so it is kept next to the state, keyed on the interpreter and its
    site-packages' modification time."""
    import json

    site = sorted(python.parent.parent.glob("lib/python3*/site-packages"))
    key = {"python": str(python), "mtime": site[0].stat().st_mtime if site else 0}
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return bool(cached["answer"])
    except (OSError, ValueError, KeyError):
        pass
    answer = bool(compute())
    try:
        from labctl import fsio

        fsio.atomic_write(path, json.dumps({"key": key, "answer": answer}))
    except OSError:
        pass  # an unwritable state dir costs the next run some seconds, nothing more
    return answer


def failures(results: list[Check]) -> list[Check]:
    return [c for c in results if c.status == "fail"]
