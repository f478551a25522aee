"""GGUF models and the ``current.gguf`` symlink: list, current, switch, rollback, history.

A switch is a transaction: validate the file (header only), check the GPU budget, then for
the llama services that load ``current.gguf``: repoint the link atomically (a temporary
link renamed over it, so there is never a moment without one), and move them one at a
time. Each service is first taken out of the gateway's rotation (the drain gate,
labctl.kinds.litellm.gate: requests take their fallback chain, e.g. the other backend still on
the old model), drained (no request in flight or queued), stopped, started on the new
model and waited for (health **and** a token), then put back into rotation. llama-server
must be idle when it gets SIGTERM: with a request in flight it never finishes its stop and
systemd SIGKILLs it after TimeoutStopSec. A stop that did not end cleanly (``timeout``,
SIGKILL) makes the switch ``degraded``, never ``ok``. If a service does not come back, the
link goes back to the old model, the services are restarted on it, and the switch fails
naming the step and the journal.

Killed at any moment, the link is the old target or the new one; ``model current`` says
which, and flags any service still serving something else. A gate left by a killed switch
expires by itself (it holds a deadline).
"""

from __future__ import annotations

import errno
import json
import os

import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any


from labctl import fsio
from labctl.errors import MultiLineFailure, OperationFailed, UsageError
from labctl.host import gguf_header, secrets
from labctl.host.modelfiles import (
    _resolved,
    current_target,
    inside_models_dir,
    library_dir,
    link_path,
    models_dir,
    real_path,
    roots_text,
)
from labctl.inventory.schema import Inventory, unit_name
from labctl.kinds import kind_of
from labctl.kinds.base import Listener
from labctl.kinds.llama import layer_share
from labctl.kinds.litellm.gate import gate_dir, gate_name
from labctl.text import shown

if TYPE_CHECKING:
    from labctl.ops.apply import Prober

Say = Callable[[str], None]
HISTORY = "model-history.jsonl"


class SwitchRefused(UsageError):
    """The requested model is not acceptable; nothing was changed."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: str
    current: bool
    info: dict[str, object] | None
    problem: str | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def list_models(inv: Inventory) -> list[ModelEntry]:
    """Every ``*.gguf`` in the models dir, whatever it is (a FIFO, a device, a dangling or
    looping link, a directory): each is listed, with its problem if it is not a model."""
    directory, link = models_dir(inv), link_path(inv)
    current = current_target(inv)
    current_real = real_path(current) if current else None
    try:
        with os.scandir(directory) as entries:
            names = sorted(e.name for e in entries if e.name.endswith(".gguf") and not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise OperationFailed(shown(f"cannot list the models dir {directory}: "
                                    f"{os.strerror(exc.errno) if exc.errno else type(exc).__name__}")) from None
    link_abs = os.path.abspath(link)
    out = []
    for name in names:
        path = directory / name
        if os.path.abspath(path) == link_abs:
            continue
        out.append(_entry(inv, name, path, current_real))
    return out + _library_models(inv, current_real)


def _entry(inv: Inventory, name: str, path: Path, current_real: Path | None) -> ModelEntry:
    """One listed file: its header, or why it is not a model `switch` would take."""
    try:
        info: dict[str, object] | None = gguf_header.read(path).as_dict()
        problem = None
    except gguf_header.GGUFError as exc:
        info, problem = None, str(exc)
    if info is not None and not inside_models_dir(inv, path):
        problem = f"links outside {roots_text(inv)} (to {_resolved(path)}); model switch refuses it"
    return ModelEntry(name, str(path), current_real is not None and real_path(path) == current_real, info, problem)


def _library_models(inv: Inventory, current_real: Path | None, depth: int = 3) -> list[ModelEntry]:
    """The library's ``*.gguf`` files, named relative to it (``qwen/qwen-7b.gguf``, what
    `model switch` takes), at most ``depth`` directories down; links are not followed."""
    lib = library_dir(inv)
    if lib is None or not lib.is_dir():
        return []
    out = []
    for dirpath, dirnames, filenames in os.walk(lib):
        rel_dir = Path(dirpath).relative_to(lib)
        if len(rel_dir.parts) >= depth:
            dirnames.clear()
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(f for f in filenames if f.endswith(".gguf") and not f.startswith(".")):
            out.append(_entry(inv, str(rel_dir / fname), Path(dirpath) / fname, current_real))
    return out


def llama_services(inv: Inventory) -> dict[str, Listener]:
    """Enabled services that load current.gguf, in restart order: the ones that are a
    fallback chain's primary first, while their fallbacks still serve the old model."""
    found = {n: s for n, s in inv.enabled().items() if kind_of(s).model_file(inv, s) == inv.host.current_path}
    primaries: set[str] = set()
    for gw in inv.gateways().values():
        route_service = {r.name: r.service for r in gw.routes}
        primaries |= {route_service[p] for p in gw.fallbacks if p in route_service}
    return dict(sorted(found.items(), key=lambda item: (item[0] not in primaries, item[0])))


# --- what each service is really serving ---------------------------------------------


def mapped_ggufs(pid: int) -> list[str]:
    """GGUF files a process has memory-mapped: llama.cpp mmaps the model it loaded, and the
    kernel names the real file, not the symlink it was opened through."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return []
    found = {line.split(None, 5)[5].removesuffix(" (deleted)") for line in maps.splitlines()
             if line.rstrip().endswith((".gguf", ".gguf (deleted)")) and len(line.split(None, 5)) == 6}
    return sorted(found)


def serving(inv: Inventory, manager, name: str, timeout: float = 3.0) -> dict[str, object]:  # type: ignore[no-untyped-def]
    svc = inv.services[name]
    facts = manager.show([unit_name(name)])[unit_name(name)]
    files = mapped_ggufs(facts.main_pid) if facts.main_pid else []
    report: dict[str, object] = {"service": name, "active": facts.active_state, "pid": facts.main_pid,
                                 "mapped": files}
    if kind_of(svc).reports_loaded_model:
        report["props_model_path"] = kind_of(svc).loaded_model(inv, svc, secrets.auth_headers(inv, svc), timeout)
    return report


def current(inv: Inventory, manager) -> dict[str, object]:  # type: ignore[no-untyped-def]
    target = current_target(inv)
    real = _resolved(target) if target else None
    services = []
    for name in llama_services(inv):
        report = serving(inv, manager, name)
        mapped = report["mapped"]
        if not report["pid"]:
            report["state"] = "not running"
        elif not mapped:
            report["state"] = "unknown (no mapped GGUF; started with --no-mmap?)"
        elif real in mapped:  # type: ignore[operator]
            report["state"] = "serves the current target"
        else:
            report["state"] = "MISMATCH: serves another model; restart it or switch again"
        services.append(report)
    return {"link": str(link_path(inv)), "target": str(target) if target else None, "resolved": real,
            "mismatch": any(str(s["state"]).startswith("MISMATCH") for s in services), "services": services}


# --- validation and budget ----------------------------------------------------------------


def resolve_request(inv: Inventory, requested: str) -> Path:
    """The file a ``switch`` argument names: a bare name is looked up in the models dir,
    then in the library; a relative path of several parts (``qwen/qwen-7b.gguf``) in the
    library when there is one."""
    path = Path(requested)
    lib = library_dir(inv)
    if not path.is_absolute() and len(path.parts) == 1:
        first = models_dir(inv) / path
        path = lib / path if lib is not None and not os.path.lexists(first) and os.path.lexists(lib / path) else first
    elif not path.is_absolute() and lib is not None:
        path = lib / path
    return Path(os.path.abspath(path))


def _refused(message: str) -> SwitchRefused:
    """One line, printable: the names in it may come from the models dir."""
    return SwitchRefused(shown(message))


def _reaches(path: Path, link: Path) -> bool:
    """Whether ``path`` is ``link`` or its chain of symlinks passes through it: current.gguf
    pointed at such a path would point at itself. Compared by name and by inode (the same
    link reached through another spelling of its directory)."""
    link_abs = os.path.abspath(link)
    try:
        link_st: os.stat_result | None = os.lstat(link)
    except (OSError, ValueError):
        link_st = None
    hop = Path(os.path.abspath(path))
    for _ in range(40):  # the kernel's own limit on links followed
        try:
            hop_st = os.lstat(hop)
        except (OSError, ValueError):
            return str(hop) == link_abs
        if str(hop) == link_abs or (link_st is not None and os.path.samestat(hop_st, link_st)):
            return True
        if not stat.S_ISLNK(hop_st.st_mode):
            return False
        try:
            hop = Path(os.path.abspath(hop.parent / os.readlink(hop)))
        except (OSError, ValueError):
            return False
    return False


def validate(inv: Inventory, requested: str) -> tuple[Path, gguf_header.GGUFInfo]:
    """The file ``requested`` names, and its header, if current.gguf may point at it; else
    SwitchRefused (exit 2) in one line. Nothing here blocks on a FIFO or device, or raises
    on a symlink loop."""
    path = resolve_request(inv, requested)
    if _reaches(path, link_path(inv)):
        raise _refused(f"{requested}: that is the current.gguf link itself; name the model file")
    try:
        st = os.stat(path)
    except ValueError:
        raise _refused(f"{requested}: not a valid path") from None
    except OSError as exc:
        if exc.errno == errno.ENOENT and os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            raise _refused(f"{requested}: dangling symlink to {target}") from None
        if exc.errno == errno.ENOENT:
            raise _refused(f"{requested}: no such file") from None
        if exc.errno == errno.ELOOP:
            raise _refused(f"{requested}: a symlink loop (too many levels of symbolic links)") from None
        raise _refused(f"{requested}: {os.strerror(exc.errno) if exc.errno else type(exc).__name__}") from None
    reason = gguf_header.not_regular(st.st_mode)
    if reason:
        raise _refused(f"{requested}: {reason}")
    if not inside_models_dir(inv, path):
        raise _refused(f"{requested}: {_resolved(path)} is outside {roots_text(inv)}; copy or move it "
                       "there (a link in the models dir must point inside them too)")
    if not os.access(path, os.R_OK):
        raise _refused(f"{requested}: not readable by {inv.host.user}")
    try:
        info = gguf_header.read(path)
    except gguf_header.GGUFError as exc:
        raise _refused(f"{requested}: {exc}") from None
    return path, info


def budget(inv: Inventory, info: gguf_header.GGUFInfo) -> tuple[bool, str]:
    """(fits, explanation). The estimate is the file's size times the share of its layers
    each service offloads, summed over the services that load current.gguf; KV cache and
    compute buffers come on top and are not counted."""
    limit = inv.host.gpu_memory_gib
    if not inv.host.gpu or limit is None:
        return True, "no GPU memory budget configured (host.gpu_memory_gib); not checked"
    blocks = info.block_count
    parts, total = [], 0.0
    for name, svc in llama_services(inv).items():
        share = layer_share(svc, blocks)
        need = info.size * share
        total += need
        parts.append(f"{name}: {svc.n_gpu_layers}/{blocks or '?'} layers x {info.size / 2**30:.2f} GiB "
                     f"= {need / 2**30:.2f} GiB")
    fits = total <= limit * 2**30
    verdict = "fits" if fits else "EXCEEDS"
    return fits, (f"{total / 2**30:.2f} GiB {verdict} the {limit:g} GiB budget ({'; '.join(parts)}; "
                  "weights only, KV cache not counted)")


# --- drain ------------------------------------------------------------------------------------


GATE_GRACE = 0.25  # seconds for requests the gateway sent before the gate to reach the server
IDLE_READS = 2     # consecutive idle answers, 0.1 s apart, that make a server drained


def drain(inv: Inventory, name: str, svc: Listener, deadline_sec: float, say: Say, prober: Prober) -> float:
    """Seconds until ``svc`` has nothing in flight (after its gate closed, nothing new comes),
    as ``prober`` hears it."""
    start = time.monotonic()
    kind = kind_of(svc)
    if not kind.reports_in_flight:
        # It reports no in-flight count (llama-cpp-python: its uvicorn finishes open requests
        # on SIGTERM; KillMode=mixed sends SIGTERM to the main process first).
        return 0.0
    idle = 0
    while True:
        busy = prober.in_flight(inv, svc)
        idle = idle + 1 if busy == 0 else 0
        if idle >= IDLE_READS:
            return round(time.monotonic() - start, 2)
        if time.monotonic() - start > deadline_sec:
            say(f"{name}: still {'some' if busy is None else busy} request(s) in flight after {deadline_sec:g}s; "
                "stopping anyway")
            return round(time.monotonic() - start, 2)
        time.sleep(0.1)


def gateable(inv: Inventory, name: str) -> bool:
    """Whether the gateway can route around ``name``: it serves at least one route and
    every route it serves has a fallback chain (a route without one would only fail)."""
    from labctl.kinds.litellm.fallbacks import CATCH_ALL

    served = [(gw, r) for gw in inv.gateways().values() for r in gw.routes if r.service == name]
    return bool(served) and all(r.name in gw.fallbacks or CATCH_ALL in gw.fallbacks for gw, r in served)


@dataclass
class Gate:
    """The drain gate of one backend (labctl.kinds.litellm.gate): a file holding a deadline."""

    path: Path

    @classmethod
    def of(cls, inv: Inventory, svc: Listener, env: dict[str, str]) -> Gate:
        return cls(gate_dir(env) / gate_name(kind_of(svc).base_url(inv, svc)))

    def close(self, seconds: float) -> None:
        fsio.ensure_dir(self.path.parent, 0o700)
        fsio.atomic_write(self.path, f"{time.time() + seconds:.3f}\n", mode=0o600)

    def open(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass  # it expires by itself

    def closed(self) -> bool:
        """Whether it keeps its backend out of rotation now (a deadline still ahead), as the
        gateway's gate module reads it."""
        try:
            with open(self.path, encoding="ascii") as fh:
                return float(fh.read(64).strip() or 0) > time.time()
        except (OSError, ValueError):
            return False


def gate_installed(inv: Inventory) -> bool:
    """Whether the installed gateway config loads the drain gate (a config installed by an
    older labctl does not, until the next ``labctl up``)."""
    from labctl.kinds.litellm.gate import CALLBACK
    from labctl.inventory.layout import Layout

    layout = Layout.of(inv)
    try:
        return CALLBACK in (Path(layout.config_root) / layout.litellm_config).read_text()
    except (OSError, UnicodeError):
        return False


# --- the switch ---------------------------------------------------------------------------------


@dataclass
class SwitchResult:
    previous: str | None
    target: str
    outcome: str = "ok"
    failed_step: str | None = None
    budget: str = ""
    durations: dict[str, object] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    stops: dict[str, str] = field(default_factory=dict)  # service: systemd's Result= after its stop
    notes: list[str] = field(default_factory=list)       # why the outcome is "degraded"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _record(state_dir: Path, result: SwitchResult) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": result.started, **result.as_dict()}, sort_keys=True)
    # O_NONBLOCK: a FIFO in the history's place fails at once (ENXIO) instead of waiting for
    # a reader; anything but a regular file is refused.
    path = state_dir / HISTORY
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise OperationFailed(shown(f"cannot record the switch in {path}: {os.strerror(exc.errno or 0)}")) from None
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OperationFailed(shown(f"cannot record the switch in {path}: not a regular file"))
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _read_history(path: Path) -> str | None:
    """The history file's text; None if there is none. Never blocks on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OperationFailed(shown(f"cannot read {path}: {os.strerror(exc.errno or 0)}")) from None
    with os.fdopen(fd, "rb") as fh:
        reason = gguf_header.not_regular(os.fstat(fd).st_mode)
        if reason:
            raise OperationFailed(shown(f"cannot read {path}: it {reason}"))
        return fh.read().decode("utf-8", errors="replace")


def history(state_dir: Path) -> list[dict[str, object]]:
    text = _read_history(Path(state_dir) / HISTORY)
    if text is None:
        return []
    out = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue  # a line torn by a crash mid-append: skip it, keep the rest
        if isinstance(entry, dict):
            out.append(entry)
    return out


def _link_text(inv: Inventory, path: Path) -> str:
    """Relative when the file is in the models dir, so the tree can move as one."""
    link_dir = link_path(inv).parent
    return path.name if path.parent == link_dir else str(path)


def switch(inv: Inventory, requested: str, *, manager, say: Say,  # type: ignore[no-untyped-def]
           prober: Prober | None = None, strict: bool = False, drain_sec: float = 30.0) -> SwitchResult:
    from labctl.ops.apply import HostContext

    link = link_path(inv)
    old = current_target(inv)
    t0 = time.monotonic()
    say("step validate: checking the file (GGUF header only)")
    path, info = validate(inv, requested)
    result = SwitchResult(previous=str(old) if old else None, target=str(path))
    result.durations["validate"] = round(time.monotonic() - t0, 3)
    fits, result.budget = budget(inv, info)
    say(f"step budget: {result.budget}")
    if not fits and strict:
        raise SwitchRefused(f"{requested}: over the GPU memory budget (--strict): {result.budget}")
    if old is not None and _resolved(old) == _resolved(path):
        say(shown(f"{link.name} already points at {path.name}; nothing to do"))
        result.outcome = "unchanged"
        return result
    for stale in link.parent.glob(f".{link.name}.*.tmp"):
        stale.unlink(missing_ok=True)  # a temporary link left by a switch killed mid-swap
    txn = _Switch(inv, HostContext.of(inv, manager, prober), link, old, path, result, say, drain_sec)
    with txn.host.lock(True, say):
        txn.run()
    result.durations["total"] = round(time.monotonic() - t0, 2)
    _record(txn.host.state_dir, result)
    return result


@dataclass
class _Switch:
    """The part of a switch that changes the host: swap, then drain and restart each llama
    service in turn; on a failure, swap back and restart what was restarted."""

    inv: Inventory
    host: Any  # labctl.ops.apply.HostContext
    link: Path
    old: Path | None
    new: Path
    result: SwitchResult
    say: Say
    drain_sec: float
    restarted: list[str] = field(default_factory=list)
    gates: dict[str, Gate] = field(default_factory=dict)

    def run(self) -> None:
        step = "swap"
        for name, svc in llama_services(self.inv).items():
            Gate.of(self.inv, svc, self.host.manager.env).open()  # left by a switch killed mid-way
        try:
            self.say(shown(f"step swap: {self.link.name} -> {self.new.name} "
                           f"(was {self.old.name if self.old else 'missing'})"))
            t = time.monotonic()
            fsio.atomic_symlink(_link_text(self.inv, self.new), self.link)
            self.result.durations["swap"] = round(time.monotonic() - t, 4)
            for name, svc in llama_services(self.inv).items():
                step = f"drain {name}"
                self.move(name, svc)
                step = f"restart {name}"
                self.restart(name, svc)
            if self.result.notes:
                self.result.outcome = "degraded"
        except OperationFailed as exc:
            self.result.outcome, self.result.failed_step = "rolled back", step
            self.say(shown(f"step rollback: {step} failed; pointing {self.link.name} back at "
                           f"{self.old.name if self.old else 'nothing'} and restarting {', '.join(self.restarted)}"))
            self.restore()
            _record(self.host.state_dir, self.result)
            # The evidence includes journal lines: what the service printed is escaped here.
            detail = [shown(line.removeprefix("labctl: ")) for line in exc.lines()] or [""]
            raise MultiLineFailure([shown(f"model switch failed at step '{step}' and was rolled back to "
                                          f"{self.old.name if self.old else 'no model'}: ") + detail[0],
                                    *detail[1:]]) from None
        finally:
            self.open_gates()

    def move(self, name: str, svc: Listener) -> None:
        """Gate (when the gateway can route around it) and drain one service."""
        if gateable(self.inv, name) and not gate_installed(self.inv):
            self.say(f"warning: the installed gateway config has no drain gate (labctl up installs it); "
                     f"draining {name} with the gateway still sending")
        elif gateable(self.inv, name):
            gate = Gate.of(self.inv, svc, self.host.manager.env)
            self.say(f"step gate: {name} out of the gateway's rotation ({gate.path.name})")
            try:
                # Long enough for this service's drain, stop and readiness; a killed
                # switch's gate then expires by itself.
                gate.close(self.drain_sec + GATE_GRACE + 120 + svc.ready_timeout_sec)
                self.gates[name] = gate
                time.sleep(GATE_GRACE)
            except OSError as exc:  # the stop's result still tells whether it was clean
                self.say(shown(f"warning: cannot close the gate {gate.path}: {os.strerror(exc.errno or 0)}; "
                               "draining with the gateway still sending"))
        self.say(f"step drain: {name}")
        self.result.durations[f"drain {name}"] = drain(self.inv, name, svc, self.drain_sec, self.say,
                                                       self.host.prober)

    def restart(self, name: str, svc: Listener) -> None:
        """Stop (drained), check that the stop was clean, start on the new model, wait for
        a token, open the gate."""
        from labctl.ops.apply import bring_up

        unit = unit_name(name)
        self.say(f"step restart: {name}")
        self.restarted.append(name)
        t = time.monotonic()
        self.host.manager.stop(unit)
        self.result.durations[f"stop {name}"] = round(time.monotonic() - t, 2)
        facts = self.host.manager.show([unit])[unit]
        self.result.stops[name] = facts.result or "?"
        if facts.result not in ("success", ""):
            ended = f", its main process {facts.last_exit}" if facts.last_exit else ""
            self.result.notes.append(f"{name}: its stop ended with result '{facts.result}'{ended} after "
                                     f"{self.result.durations[f'stop {name}']}s, not a clean exit: in-flight "
                                     "requests were cut")
            self.say(f"warning: {self.result.notes[-1]}")
        ready = bring_up(self.host, name, "start", self.say)
        self.result.durations[f"start+ready {name}"] = ready.seconds
        gate = self.gates.pop(name, None)
        if gate is not None:
            gate.open()
            self.say(f"step gate: {name} back in rotation")

    def open_gates(self) -> None:
        for gate in self.gates.values():
            gate.open()
        self.gates.clear()

    def restore(self) -> None:
        from labctl.ops.apply import bring_up

        if self.old is None:
            self.link.unlink(missing_ok=True)
            return
        fsio.atomic_symlink(_link_text(self.inv, self.old), self.link)
        for name in self.restarted:
            try:
                bring_up(self.host, name, "restart", self.say)
            except OperationFailed as exc:
                self.say(shown(f"rollback: {name} did not come back on the old model either: {exc.lines()[0]}"))


def rollback_target(state_dir: Path) -> str:
    for entry in reversed(history(state_dir)):
        if entry.get("outcome") in ("ok", "degraded") and entry.get("previous"):
            return str(entry["previous"])
    raise OperationFailed(f"no successful switch in {Path(state_dir) / HISTORY} to roll back")
