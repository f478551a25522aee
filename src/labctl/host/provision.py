"""Managed Python runtimes: a venv per service whose inventory lists pinned pip specs.

Idempotent: the venv holds a stamp of the specs and pip environment it was built from,
and is left alone while they match. A failed install leaves no stamp, so the next run
tries again instead of trusting a half-built venv.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from labctl import fsio, progress
from labctl.errors import MultiLineFailure, OperationFailed
from labctl.host.proc import CommandFailed, last_lines, run_cmd
from labctl.fields import BinaryRuntime, Runtime
from labctl.inventory.schema import Inventory
from labctl.kinds import kind_of

STAMP = ".labctl-provisioned.json"


@dataclass(frozen=True)
class Provisioned:
    service: str
    venv: str
    changed: bool
    seconds: float


def runtimes(inv: Inventory) -> dict[str, Runtime]:
    out = {}
    for name, svc in inv.enabled().items():
        runtime = getattr(svc, "runtime", None)
        if isinstance(runtime, Runtime) and runtime.pip:
            out[name] = runtime
    return out


def _wanted(runtime: Runtime) -> dict[str, object]:
    # pip_env values are kept out of the stamp (a digest decides "changed"), so the stamp
    # holds nothing an operator would not print.
    digest = hashlib.sha256(json.dumps(sorted(runtime.pip_env.items())).encode()).hexdigest()
    return {"pip": list(runtime.pip), "pip_env": {"names": sorted(runtime.pip_env), "sha256": digest}}


def is_current(inv: Inventory, runtime: Runtime) -> bool:
    venv = Path(inv.host.expand(runtime.venv or ""))
    stamp = venv / STAMP
    if not stamp.is_file() or not (venv / "bin" / "python").exists():
        return False
    try:
        return json.loads(stamp.read_text()) == _wanted(runtime)
    except ValueError:  # a torn or foreign stamp: provision again
        return False


def provision(inv: Inventory, *, say: Callable[[str], None]) -> list[Provisioned]:
    results = []
    base_python = shutil.which("python3") or sys.executable
    for name, runtime in runtimes(inv).items():
        venv = Path(inv.host.expand(runtime.venv or ""))
        if is_current(inv, runtime):
            results.append(Provisioned(name, str(venv), False, 0.0))
            continue
        start = time.monotonic()
        specs = " ".join(runtime.pip)
        say(f"{name}: installing {specs} into {venv} (this can take minutes)")
        (venv / STAMP).unlink(missing_ok=True)
        env = {**os.environ, **runtime.pip_env}
        quiet = [] if progress.verbose() else ["-q"]
        with progress.step(f"{name}: pip install {specs}") as detail:
            try:
                if not (venv / "bin" / "python").exists():
                    detail("creating the venv")
                    run_cmd([base_python, "-m", "venv", str(venv)], timeout=300, echo=progress.echo())
                detail("")
                run_cmd([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                         *quiet, *runtime.pip], env=env, timeout=3600, echo=progress.echo())
            except CommandFailed as exc:
                # The real error is in pip's last lines, not in its final "exited 1".
                tail = last_lines(getattr(exc, "output", "") or "")
                raise MultiLineFailure([f"{name}: installing {specs} failed: {exc}",
                                        *(f"  | {line}" for line in tail)]) from None
        if isinstance(runtime, BinaryRuntime):
            program = Path(runtime.executable(inv.host))
            if not (program.is_file() and os.access(program, os.X_OK)):
                raise OperationFailed(f"{name}: {specs} installed no executable bin/{runtime.command} in {venv} "
                                      "(check runtime.command against the package's console scripts)")
            recipe = kind_of(inv.services[name]).program_test
            if recipe is not None:
                _check_runs_here(name, specs, program, recipe)
        fsio.atomic_write(venv / STAMP, json.dumps(_wanted(runtime)), mode=0o600)
        seconds = round(time.monotonic() - start, 1)
        say(f"{name}: runtime ready in {seconds}s")
        results.append(Provisioned(name, str(venv), True, seconds))
    return results


def _check_runs_here(name: str, specs: str, program: Path, recipe: str) -> None:
    """A native program from a wheel must run on this CPU before labctl trusts it (its kind
    names the test: labctl.host.selftest); if not, ``up`` stops here, with no stamp, before
    any unit."""
    from labctl.host.selftest import RECIPES

    with progress.step(f"{name}: trying bin/{program.name} on this CPU (a tiny model, one token)"):
        verdict = RECIPES[recipe](program)
    if not verdict.ok:
        raise MultiLineFailure([f"{name}: bin/{program.name} from {specs} cannot run on this machine: "
                                f"{verdict.why}; nothing was started",
                                *(f"  | {line}" for line in verdict.log_tail)])
