"""GGUF models and the ``current.gguf`` symlink: list, current, switch, rollback, history.

A switch is a transaction: validate the file (header only), check the GPU budget, then for
the llama services that load ``current.gguf``: repoint the link atomically (a temporary
link renamed over it, so there is never a moment without one), and restart them one at a
time — draining llama-server first, waiting for real readiness (health **and** a token)
after each — so the gateway always has a live backend through its fallback chain. If a
service does not come back, the link goes back to the old model, the services are
restarted on it, and the switch fails naming the step and the journal.

Killed at any moment, the link is the old target or the new one; ``model current`` says
which, and flags any service still serving something else.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from labctl import fsio, gguf_header
from labctl.errors import MultiLineFailure, OperationFailed, UsageError
from labctl.inventory import Inventory, LlamaCppPython, LlamaServer, unit_name
from labctl.render.gateway import base_url

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


def models_dir(inv: Inventory) -> Path:
    return Path(inv.host.expand(inv.host.models_dir))


def link_path(inv: Inventory) -> Path:
    return Path(inv.host.current_path)


def current_target(inv: Inventory) -> Path | None:
    link = link_path(inv)
    if not link.is_symlink():
        return None
    target = Path(os.readlink(link))
    return target if target.is_absolute() else link.parent / target


def list_models(inv: Inventory) -> list[ModelEntry]:
    directory, link = models_dir(inv), link_path(inv)
    current = current_target(inv)
    current_real = current.resolve() if current else None
    out = []
    for path in sorted(directory.glob("*.gguf")) if directory.is_dir() else []:
        if path == link or path.name.startswith("."):
            continue
        try:
            info: dict[str, object] | None = gguf_header.read(path).as_dict()
            problem = None
        except gguf_header.GGUFError as exc:
            info, problem = None, str(exc)
        out.append(ModelEntry(path.name, str(path), current_real is not None and path.resolve() == current_real,
                              info, problem))
    return out


def llama_services(inv: Inventory) -> dict[str, LlamaServer | LlamaCppPython]:
    """Enabled llama services that load current.gguf, in restart order: the ones that are
    a fallback chain's primary first, while their fallbacks still serve the old model."""
    found = {n: s for n, s in inv.enabled().items()
             if isinstance(s, (LlamaServer, LlamaCppPython)) and s.model == "current"}
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
    if isinstance(svc, LlamaServer):
        try:
            props = httpx.get(f"{base_url(inv, svc)}/props", timeout=timeout, trust_env=False).json()
            report["props_model_path"] = props.get("model_path")
        except (httpx.HTTPError, ValueError):
            report["props_model_path"] = None
    return report


def current(inv: Inventory, manager) -> dict[str, object]:  # type: ignore[no-untyped-def]
    target = current_target(inv)
    real = str(target.resolve()) if target else None
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
    """The file a ``switch`` argument names: a bare name is looked up in the models dir."""
    path = Path(requested)
    if not path.is_absolute() and len(path.parts) == 1:
        path = models_dir(inv) / path
    return Path(os.path.abspath(path))


def validate(inv: Inventory, requested: str) -> tuple[Path, gguf_header.GGUFInfo]:
    directory = models_dir(inv).resolve()
    path = resolve_request(inv, requested)
    if path == link_path(inv):
        raise SwitchRefused(f"{requested}: that is the current.gguf link itself; name the model file")
    if path.is_symlink() and not path.exists():
        raise SwitchRefused(f"{requested}: dangling symlink to {os.readlink(path)}")
    if not path.exists():
        raise SwitchRefused(f"{requested}: no such file")
    if path.is_dir():
        raise SwitchRefused(f"{requested}: is a directory, not a GGUF file")
    inside = path.resolve().is_relative_to(directory)
    linked_in = path.parent.resolve() == directory and path.is_symlink()
    if not (inside or linked_in):
        raise SwitchRefused(f"{requested}: {path.resolve()} is outside the models dir {directory}; "
                            "copy it there or link it in")
    if not os.access(path, os.R_OK):
        raise SwitchRefused(f"{requested}: not readable by {inv.host.user}")
    try:
        info = gguf_header.read(path)
    except gguf_header.GGUFError as exc:
        raise SwitchRefused(f"{requested}: {exc}") from None
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
        share = 1.0 if not blocks else min(1.0, svc.n_gpu_layers / blocks)
        need = info.size * share
        total += need
        parts.append(f"{name}: {svc.n_gpu_layers}/{blocks or '?'} layers x {info.size / 2**30:.2f} GiB "
                     f"= {need / 2**30:.2f} GiB")
    fits = total <= limit * 2**30
    verdict = "fits" if fits else "EXCEEDS"
    return fits, (f"{total / 2**30:.2f} GiB {verdict} the {limit:g} GiB budget ({'; '.join(parts)}; "
                  "weights only, KV cache not counted)")


# --- drain ------------------------------------------------------------------------------------


def in_flight(inv: Inventory, svc: LlamaServer, timeout: float = 3.0) -> int | None:
    """Requests llama-server is processing now, from /slots; None if it cannot say."""
    try:
        resp = httpx.get(f"{base_url(inv, svc)}/slots", timeout=timeout, trust_env=False)
        if resp.status_code == 200:
            return sum(1 for slot in resp.json() if slot.get("is_processing"))
        text = httpx.get(f"{base_url(inv, svc)}/metrics", timeout=timeout, trust_env=False).text
    except (httpx.HTTPError, ValueError):
        return None
    match = re.search(r"^llamacpp:requests_processing\s+([0-9.]+)", text, re.M)
    return int(float(match.group(1))) if match else None


def drain(inv: Inventory, name: str, svc: LlamaServer | LlamaCppPython, deadline_sec: float, say: Say) -> float:
    start = time.monotonic()
    if not isinstance(svc, LlamaServer):
        # llama-cpp-python reports no in-flight count; its uvicorn finishes open requests
        # on SIGTERM (KillMode=mixed sends SIGTERM to the main process first).
        return 0.0
    while True:
        busy = in_flight(inv, svc)
        if not busy:
            return round(time.monotonic() - start, 2)
        if time.monotonic() - start > deadline_sec:
            say(f"{name}: still {busy} request(s) in flight after {deadline_sec:g}s; restarting anyway")
            return round(time.monotonic() - start, 2)
        time.sleep(0.2)


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

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _record(state_dir: Path, result: SwitchResult) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": result.started, **result.as_dict()}, sort_keys=True)
    with open(state_dir / HISTORY, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def history(state_dir: Path) -> list[dict[str, object]]:
    path = Path(state_dir) / HISTORY
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a crash mid-append: skip it, keep the rest
    return out


def _link_text(inv: Inventory, path: Path) -> str:
    """Relative when the file is in the models dir, so the tree can move as one."""
    link_dir = link_path(inv).parent
    return path.name if path.parent == link_dir else str(path)


def switch(inv: Inventory, requested: str, *, manager, say: Say, strict: bool = False,  # type: ignore[no-untyped-def]
           drain_sec: float = 30.0) -> SwitchResult:
    from labctl.apply import Host

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
    if old is not None and old.resolve() == path.resolve():
        say(f"{link.name} already points at {path.name}; nothing to do")
        result.outcome = "unchanged"
        return result
    for stale in link.parent.glob(f".{link.name}.*.tmp"):
        stale.unlink(missing_ok=True)  # a temporary link left by a switch killed mid-swap
    txn = _Switch(inv, Host.of(inv, manager), link, old, path, result, say, drain_sec)
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
    host: Any  # labctl.apply.Host
    link: Path
    old: Path | None
    new: Path
    result: SwitchResult
    say: Say
    drain_sec: float
    restarted: list[str] = field(default_factory=list)

    def run(self) -> None:
        from labctl.apply import bring_up

        step = "swap"
        try:
            self.say(f"step swap: {self.link.name} -> {self.new.name} (was {self.old.name if self.old else 'missing'})")
            t = time.monotonic()
            fsio.atomic_symlink(_link_text(self.inv, self.new), self.link)
            self.result.durations["swap"] = round(time.monotonic() - t, 4)
            for name, svc in llama_services(self.inv).items():
                step = f"drain {name}"
                self.say(f"step drain: {name}")
                self.result.durations[f"drain {name}"] = drain(self.inv, name, svc, self.drain_sec, self.say)
                step = f"restart {name}"
                self.say(f"step restart: {name}")
                self.restarted.append(name)
                ready = bring_up(self.host, name, "restart", self.say)
                self.result.durations[f"restart+ready {name}"] = ready.seconds
        except OperationFailed as exc:
            self.result.outcome, self.result.failed_step = "rolled back", step
            self.say(f"step rollback: {step} failed; pointing {self.link.name} back at "
                     f"{self.old.name if self.old else 'nothing'} and restarting {', '.join(self.restarted)}")
            self.restore()
            _record(self.host.state_dir, self.result)
            detail = [line.removeprefix("labctl: ") for line in exc.lines()]
            raise MultiLineFailure([f"model switch failed at step '{step}' and was rolled back to "
                                    f"{self.old.name if self.old else 'no model'}: {detail[0]}", *detail[1:]]) from None

    def restore(self) -> None:
        from labctl.apply import bring_up

        if self.old is None:
            self.link.unlink(missing_ok=True)
            return
        fsio.atomic_symlink(_link_text(self.inv, self.old), self.link)
        for name in self.restarted:
            try:
                bring_up(self.host, name, "restart", self.say)
            except OperationFailed as exc:
                self.say(f"rollback: {name} did not come back on the old model either: {exc.lines()[0]}")


def rollback_target(state_dir: Path) -> str:
    for entry in reversed(history(state_dir)):
        if entry.get("outcome") == "ok" and entry.get("previous"):
            return str(entry["previous"])
    raise OperationFailed(f"no successful switch in {Path(state_dir) / HISTORY} to roll back")
