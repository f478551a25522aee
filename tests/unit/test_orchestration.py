"""`up`, `restart`, `rollback` and `model switch` orchestration, host-free: given these facts,
exactly these actions.

The operations run for real (lock, pre-flight, render, plan, files written under a
temporary home, generations, the model link, the drain gates) against the two fakes of
tests/harness/fakes.py: a user manager (unit states, and what a start, restart or stop
makes of them) and a prober (each service's readiness, scripted). Each test sets the facts,
runs one operation and compares the timeline, what the manager was told and what the
prober was asked, in order, with the one expected; a no-op expects no change at all.
The booted tiers (tests/system, tests/vm) run the same operations on a real systemd.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness.fakes import DIES, FAILS, LOADING, READY, FakeManager, FakeProber, StartScript, Timeline
from harness.helpers import free_port

from labctl.errors import HostNotReady, MultiLineFailure, OperationFailed
from labctl.host.gguf_writer import write_tiny_gguf
from labctl.host.systemd import exit_text
from labctl.load import Loaded, load_inventory
from labctl.ops import apply, switch

pytestmark = pytest.mark.unit

A, B, GW = "labctl-a.service", "labctl-b.service", "labctl-gateway.service"
SIGILL = exit_text(2, 4)  # "killed by SIGILL (status=4/ILL: ...)", as systemd records it (test_doctor)


def inventory_text(home: Path, ports: dict[str, int], *, b_ctx: int = 2048, with_b: bool = True) -> str:
    """Two llama-servers on current.gguf and a LiteLLM gateway whose route ``a`` falls back
    to ``b``; programs that exist (/bin/true) and no pip runtime, so the pre-flight passes
    here and provisioning installs nothing."""
    b = (f"  b:\n    kind: llama-server\n    binary: /bin/true\n    port: {ports['b']}\n    alias: b\n"
         f"    n_gpu_layers: 0\n    ctx_size: {b_ctx}\n") if with_b else ""
    routes = "      - {name: a, service: a}\n" + ("      - {name: b, service: b}\n" if with_b else "")
    return (f"version: 1\nhost:\n  user: {getpass.getuser()}\n  home: {home}\n  gpu: false\n"
            "services:\n"
            f"  a:\n    kind: llama-server\n    binary: /bin/true\n    port: {ports['a']}\n    alias: a\n"
            "    n_gpu_layers: 0\n    ctx_size: 2048\n"
            f"{b}"
            f"  gateway:\n    kind: litellm\n    runtime: {{python: /bin/true}}\n    port: {ports['gateway']}\n"
            f"    prometheus_metrics: false\n    routes:\n{routes}"
            + ("    fallbacks:\n      a: [b]\n" if with_b else "")
            + "monitoring:\n  enabled: false\n")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@dataclass
class World:
    """A temporary home with the models in place, the inventory file, and the fakes."""

    home: Path
    path: Path
    ports: dict[str, int]
    timeline: Timeline
    manager: FakeManager
    prober: FakeProber
    said: list[str] = field(default_factory=list)

    def write(self, **kwargs: object) -> None:
        self.path.write_text(inventory_text(self.home, self.ports, **kwargs))  # type: ignore[arg-type]

    def load(self) -> Loaded:
        return load_inventory(self.path)

    def up(self) -> apply.Report:
        return apply.up(self.load(), say=self.said.append, manager=self.manager, prober=self.prober,
                        with_monitoring=False)

    def switch(self, model: str) -> switch.SwitchResult:
        return switch.switch(self.load().inventory, model, manager=self.manager, prober=self.prober,
                             say=self.said.append, drain_sec=5.0)

    def closed_gates(self) -> str:
        """The services whose drain gate is closed now (the file the gateway reads)."""
        inv = self.load().inventory
        return " ".join(f"gate {n}" for n, svc in switch.llama_services(inv).items()
                        if switch.Gate.of(inv, svc, self.manager.env).path.exists())

    def link(self) -> str:
        return os.readlink(self.home / "models" / "current.gguf")


@pytest.fixture
def world(tmp_path: Path, tiny_gguf: Path) -> World:
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    for name in ("old.gguf", "new.gguf"):
        shutil.copy(tiny_gguf, home / "models" / name)
    (home / "models" / "current.gguf").symlink_to("old.gguf")
    timeline = Timeline()
    manager = FakeManager(home / ".config", tmp_path / "run", timeline)
    w = World(home, tmp_path / "inventory.yaml", {n: free_port() for n in ("a", "b", "gateway")}, timeline,
              manager, FakeProber(manager, timeline))
    w.write()
    return w


@pytest.fixture
def running(world: World) -> World:
    """The stack up: every file installed, every unit loaded, enabled and running."""
    world.up()
    world.timeline.take()
    world.manager.changes.clear()
    return world


# --- up -------------------------------------------------------------------------------------


def test_a_fresh_host_reloads_enables_then_starts_backends_before_the_gateway(world: World) -> None:
    report = world.up()
    assert world.timeline.take() == [
        "daemon-reload",
        f"enable {A} {B} {GW}",
        f"start {A}", "wait a on old.gguf",
        f"start {B}", "wait b on old.gguf",
        f"start {GW}", "wait gateway",
    ]
    assert report.changed and report.restarted == [A, B, GW]
    assert world.manager.active() == [A, B, GW]
    assert (world.home / ".config/systemd/user" / GW).is_file()
    # The pre-flight asked the manager first (linger, reachable), before any change.
    assert world.manager.calls.index(("lingers", getpass.getuser())) < world.manager.calls.index(("daemon-reload",))


def test_a_failed_pre_flight_changes_nothing(world: World) -> None:
    (world.home / "models" / "current.gguf").unlink()
    with pytest.raises(HostNotReady, match="pre-flight failed; nothing was changed"):
        world.up()
    assert world.timeline.events == [] and world.manager.changes == []
    assert not (world.home / ".config").exists()


def test_a_second_up_changes_nothing(running: World) -> None:
    """Everything installed, loaded, enabled and active: no call that changes anything,
    only the probes that report the stack."""
    report = running.up()
    assert running.manager.changes == []
    assert running.timeline.take() == ["probe a b gateway"]
    assert not report.changed and report.generation is None
    assert "no changes: nothing to install, nothing restarted" in running.said


def test_a_changed_backend_restarts_it_then_the_gateway_that_depends_on_it(running: World) -> None:
    running.write(b_ctx=1024)
    running.up()
    assert running.timeline.take() == [
        "daemon-reload",
        f"restart {B}", "wait b on old.gguf",
        f"restart {GW}", "wait gateway",
    ]


def test_unit_files_the_manager_has_not_loaded_get_a_daemon_reload_only(running: World) -> None:
    running.manager.given(B, loaded=False)  # NeedDaemonReload=yes: on disk is not what it loaded
    running.up()
    assert running.timeline.take() == ["daemon-reload"]
    running.up()
    assert running.timeline.take() == ["probe a b gateway"]


def test_a_stopped_unit_is_started_and_a_disabled_one_enabled(running: World) -> None:
    running.manager.given(B, active=False)
    running.manager.given(GW, enabled=False)
    running.up()
    assert running.timeline.take() == [f"enable {GW}", f"start {B}", "wait b on old.gguf"]


def test_a_removed_service_is_stopped_and_disabled_before_its_file_goes(running: World) -> None:
    running.write(with_b=False)
    running.up()
    assert running.timeline.take() == [
        f"stop {B}", f"disable {B}",
        "daemon-reload",
        f"restart {GW}", "wait gateway",  # its config lost the route
    ]
    assert not (running.home / ".config/systemd/user" / B).exists()
    unit = running.manager.units[B]
    assert (unit.unit_file_state, unit.load_state, unit.active_state) == ("disabled", "not-found", "inactive")


def test_a_crash_looping_backend_is_stopped_and_says_how_its_process_ended(world: World) -> None:
    world.prober.script("b", [LOADING, DIES])
    world.manager.journals[B] = ["llama-server: ggml_cpu: illegal instruction"]
    with pytest.raises(MultiLineFailure) as err:
        world.up()
    assert world.timeline.take() == [
        "daemon-reload", f"enable {A} {B} {GW}",
        f"start {A}", "wait a on old.gguf",
        f"start {B}", "wait b on old.gguf",
        f"stop {B}",  # between two tries, so it does not restart in a loop; the gateway never starts
    ]
    assert err.value.lines() == [
        f"labctl: {B} did not become ready: {B} keeps exiting (restarted 1 time(s)); its main process "
        f"{SIGILL}; stopped it so it does not restart in a loop",
        "  | llama-server: ggml_cpu: illegal instruction",
        "  see: labctl logs b",
    ]
    assert world.manager.active() == [A]


def test_a_start_job_that_fails_is_stopped_and_says_how_its_process_ended(world: World) -> None:
    world.manager.script(B, StartScript(fail=True, code=1, status=1))
    with pytest.raises(MultiLineFailure) as err:
        world.up()
    assert world.timeline.take()[-2:] == [f"start {B}", f"stop {B}"]  # no readiness wait
    assert err.value.lines()[0] == (
        f"labctl: {B} did not become ready: systemctl start failed (exit-code); its main process exited with "
        "status 1 (status=1/FAILURE); stopped it so it does not restart in a loop")
    assert err.value.lines()[1:] == ["  | (no journal lines)", "  see: labctl logs b"]


def test_a_unit_that_fails_while_loading_is_reported_failed(world: World) -> None:
    world.prober.script("b", [LOADING, FAILS])
    with pytest.raises(MultiLineFailure) as err:
        world.up()
    assert world.timeline.take()[-3:] == [f"start {B}", "wait b on old.gguf", f"stop {B}"]
    assert err.value.lines()[0] == (
        f"labctl: {B} did not become ready: {B} failed (exit-code); its main process exited with status 1 "
        "(status=1/FAILURE); stopped it so it does not restart in a loop")


def test_a_backend_that_never_answers_is_reported_and_left_running(world: World) -> None:
    """Not ready by its deadline, but neither failed nor restarting: it may still be loading
    a large model, so it is not stopped."""
    world.prober.script("b", [LOADING, LOADING, LOADING])
    with pytest.raises(MultiLineFailure) as err:
        world.up()
    assert world.timeline.take()[-2:] == [f"start {B}", "wait b on old.gguf"]
    assert err.value.lines()[0] == (f"labctl: {B} did not become ready: not ready within 120s "
                                    "(last probe: GET /health: loading model)")
    assert world.manager.active() == [A, B]


def test_loading_then_ready_is_waited_for(world: World) -> None:
    world.prober.script("a", [LOADING, LOADING, READY])
    report = world.up()
    assert report.ready["a"] == {"ready": True, "seconds": 3.0}
    assert world.manager.active() == [A, B, GW]


def test_the_fakes_catch_a_start_before_the_daemon_reload(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: without its daemon-reload, a fresh `up` starts units the manager has not
    loaded, and the fake manager refuses as systemd does (so the order above is checked)."""
    real = apply.make_plan

    def without_reload(*args, **kwargs):  # type: ignore[no-untyped-def]
        plan = real(*args, **kwargs)
        return apply.Plan(plan.files, [a for a in plan.actions if a.verb != "daemon-reload"], plan.unchanged)

    monkeypatch.setattr(apply, "make_plan", without_reload)
    with pytest.raises(OperationFailed, match=f"^{A} did not become ready: systemctl start failed"):
        world.up()
    assert "daemon-reload" not in world.timeline.events


# --- restart and rollback -------------------------------------------------------------------


def test_restart_restarts_the_named_services_in_start_order(running: World) -> None:
    apply.restart(running.load(), ["gateway", "a"], say=running.said.append, manager=running.manager,
                  prober=running.prober)
    assert running.timeline.take() == [f"restart {A}", "wait a on old.gguf", f"restart {GW}", "wait gateway"]


def test_rollback_puts_the_previous_files_back_and_restarts_what_they_change(running: World) -> None:
    before = (running.home / ".config/systemd/user" / B).read_text()
    running.write(b_ctx=1024)
    running.up()
    running.timeline.take()
    apply.rollback(running.load(), say=running.said.append, manager=running.manager, prober=running.prober)
    assert running.timeline.take() == [
        "daemon-reload",
        f"restart {B}", "wait b on old.gguf",
        f"restart {GW}", "wait gateway",
    ]
    assert (running.home / ".config/systemd/user" / B).read_text() == before


# --- model switch ---------------------------------------------------------------------------


def test_a_switch_gates_drains_restarts_and_reopens_each_backend_in_turn(running: World) -> None:
    """``a`` is route ``a``'s primary, with ``b`` its fallback: it moves first, out of the
    gateway's rotation (its gate closed) from before its drain until it answers on the new
    model. ``b``'s route has no fallback, so it is drained with no gate: it moves after
    ``a`` serves again."""
    running.timeline.context = running.closed_gates
    running.prober.in_flight_answers("a", 2, 1, 0, 0)
    result = running.switch("new.gguf")
    assert running.timeline.take() == [
        "in-flight a [gate a]", "in-flight a [gate a]", "in-flight a [gate a]", "in-flight a [gate a]",
        f"stop {A} [gate a]", f"start {A} [gate a]", "wait a on new.gguf [gate a]",
        "in-flight b", "in-flight b",
        f"stop {B}", f"start {B}", "wait b on new.gguf",
    ]
    assert (result.outcome, result.previous, result.stops) == ("ok", str(running.home / "models/old.gguf"),
                                                                {"a": "success", "b": "success"})
    assert running.link() == "new.gguf"
    assert running.closed_gates() == ""
    assert [e["outcome"] for e in switch.history(running.home / ".local/state/labctl")] == ["ok"]


def test_a_model_that_fails_its_probe_rolls_the_switch_back(running: World) -> None:
    """The new model kills ``a`` (SIGILL): it is stopped, the link points at the old model
    again and ``a`` restarts on it while still out of rotation; ``b`` is never touched."""
    running.timeline.context = running.closed_gates
    running.prober.script("a", [LOADING, DIES])
    with pytest.raises(MultiLineFailure) as err:
        running.switch("new.gguf")
    assert running.timeline.take() == [
        "in-flight a [gate a]", "in-flight a [gate a]",
        f"stop {A} [gate a]", f"start {A} [gate a]", "wait a on new.gguf [gate a]",
        f"stop {A} [gate a]",
        f"restart {A} [gate a]", "wait a on old.gguf [gate a]",
    ]
    assert err.value.lines()[0] == (
        "labctl: model switch failed at step 'restart a' and was rolled back to old.gguf: "
        f"{A} did not become ready: {A} keeps exiting (restarted 1 time(s)); its main process {SIGILL}; "
        "stopped it so it does not restart in a loop")
    assert running.link() == "old.gguf"
    assert running.closed_gates() == ""
    assert running.manager.active() == [A, B, GW]
    (entry,) = switch.history(running.home / ".local/state/labctl")
    assert (entry["outcome"], entry["failed_step"]) == ("rolled back", "restart a")


def test_a_stop_that_was_not_clean_makes_the_switch_degraded(running: World) -> None:
    running.manager.stop_results[A] = ("timeout", 2, 9)  # SIGKILLed after TimeoutStopSec
    result = running.switch("new.gguf")
    assert result.outcome == "degraded" and result.stops == {"a": "timeout", "b": "success"}
    assert result.notes[0].startswith("a: its stop ended with result 'timeout', its main process killed by SIGKILL")
    assert json.loads(json.dumps(result.as_dict()))["outcome"] == "degraded"
