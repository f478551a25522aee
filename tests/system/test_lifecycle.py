"""labctl's lifecycle on a real systemd user manager (the CPU demo from tests/harness/stack.py).

Order matters: the module walks one stack through idempotence, a crash, a restart loop,
refusals at pre-flight, concurrency and interruption, converging it again after each.
"""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from harness.stack import HOME, INVENTORY, LABCTL, UNIT_DIR, Stack, gateway_load, json_out, load_summary

pytestmark = pytest.mark.system

UNITS = ("labctl-native.service", "labctl-bindings.service", "labctl-gateway.service")


def unit_hashes(stack: Stack) -> dict[str, str]:
    out = stack.run("sh", "-c", f"cd {UNIT_DIR} && sha256sum labctl-*.service", check=False).stdout
    return {line.split()[1]: line.split()[0] for line in out.splitlines()}


def identities(stack: Stack) -> dict[str, tuple[str, str]]:
    out = {}
    for unit in UNITS:
        props = stack.show(unit, "InvocationID", "ActiveEnterTimestamp")
        out[unit] = (props["InvocationID"], props["ActiveEnterTimestamp"])
    return out


def test_second_up_restarts_nothing(demo_stack: Stack) -> None:
    before = identities(demo_stack)
    res = demo_stack.labctl("up", "-i", INVENTORY)
    assert res.rc == 0, res.stderr
    assert "no changes, nothing restarted" in res.stdout
    assert identities(demo_stack) == before
    plan = json_out(demo_stack.labctl("plan", "-i", INVENTORY, "--json"))
    assert plan["changes"] is False and plan["actions"] == [] and plan["files"] == []


def test_status_json_shape(demo_stack: Stack) -> None:
    res = demo_stack.labctl("status", "-i", INVENTORY, "--json")
    assert res.rc == 0, res.stdout + res.stderr
    doc = json_out(res)
    assert doc["healthy"] is True
    by_name = {s["service"]: s for s in doc["services"]}
    assert set(by_name) == {"native", "bindings", "gateway"}
    native = by_name["native"]
    assert native["active_state"] == "active" and native["main_pid"] > 0
    assert native["probe"]["ok"] is True and native["drift"] == "none"
    assert native["model"] == "current.gguf -> tiny.gguf"
    assert native["bind"] == "127.0.0.1" and native["port"] == demo_stack.ports["native"]


def test_kill_9_llama_server_is_restarted_and_gateway_falls_back(demo_stack: Stack) -> None:
    unit = "labctl-native.service"
    pid = int(demo_stack.show(unit, "MainPID")["MainPID"])
    restarts = int(demo_stack.show(unit, "NRestarts")["NRestarts"])
    with gateway_load(demo_stack, "native") as results:
        time.sleep(2)
        demo_stack.run("kill", "-9", str(pid), user=None)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            props = demo_stack.show(unit, "MainPID", "ActiveState", "NRestarts")
            if props["ActiveState"] == "active" and int(props["MainPID"]) not in (0, pid):
                break
            time.sleep(0.5)
        # Keep the load running until the restarted server answers again.
        time.sleep(4)
    props = demo_stack.show(unit, "NRestarts", "ActiveState")
    assert props["ActiveState"] == "active"
    assert int(props["NRestarts"]) == restarts + 1
    failed, served = load_summary(results, ("native", "bindings"))
    print(f"\nduring the kill: {len(results)} requests, {len(failed)} failed, served by {served}")
    assert not failed, failed[:5]
    assert served["bindings"] >= 1, "no request was answered through the fallback"
    doc = json_out(demo_stack.labctl("status", "-i", INVENTORY, "--json"))
    native = next(s for s in doc["services"] if s["service"] == "native")
    assert native["n_restarts"] == restarts + 1


BROKEN = """\
  broken:
    kind: llama-server
    binary: {binary}
    port: {port}
    alias: broken
    n_gpu_layers: 0
    ctx_size: 2048
    ready_timeout_sec: 60
"""


# A program that exits 1, and one that dies of SIGILL as a build for a newer CPU does: the
# first line says how the process ended as systemd recorded it (not the status of the try
# that is running by the time labctl looks).
ENDINGS = {"/bin/false": "its main process exited with status 1 (status=1/FAILURE)",
           f"{HOME}/sigill.sh": "its main process killed by SIGILL (status=4/ILL: an instruction this CPU lacks"}


@pytest.mark.parametrize("binary", list(ENDINGS))
def test_restart_loop_is_stopped_and_reported(demo_stack: Stack, binary: str) -> None:
    from labctl.sandbox import free_port

    demo_stack.machine.write_text(f"{HOME}/sigill.sh", "#!/bin/sh\nkill -ILL $$\n", owner="labuser")  # type: ignore[attr-defined]
    demo_stack.run("chmod", "755", f"{HOME}/sigill.sh")
    text = demo_stack.inventory_text.replace(
        "\nmonitoring:", "\n" + BROKEN.format(port=free_port(), binary=binary) + "\nmonitoring:")
    demo_stack.write_inventory(text, f"{HOME}/broken.yaml")
    res = demo_stack.labctl("up", "-i", f"{HOME}/broken.yaml")
    assert res.rc == 4
    first = res.stderr.splitlines()[0]
    assert first.startswith("labctl: labctl-broken.service did not become ready:")
    assert "stopped it so it does not restart in a loop" in first
    assert ENDINGS[binary] in first, first
    assert "  | " in res.stderr
    # Not left looping: the restart counter stands still.
    n1 = demo_stack.show("labctl-broken.service", "NRestarts", "ActiveState")
    time.sleep(5)
    n2 = demo_stack.show("labctl-broken.service", "NRestarts", "ActiveState")
    assert n1 == n2 and n2["ActiveState"] in ("inactive", "failed")
    doc = json_out(demo_stack.labctl("status", "-i", f"{HOME}/broken.yaml", "--json"))
    broken = next(s for s in doc["services"] if s["service"] == "broken")
    assert broken["healthy"] is False and broken["result"] in ("exit-code", "signal", "core-dump", "start-limit-hit")
    # The good services were untouched, and the original inventory converges again.
    res = demo_stack.labctl("up", "-i", INVENTORY)
    assert res.rc == 0, res.stderr
    assert "labctl-broken.service" not in unit_hashes(demo_stack)


@pytest.mark.parametrize("case", ["missing-model", "port-taken", "linger-disabled"])
def test_bad_host_state_refused_at_preflight(demo_stack: Stack, case: str) -> None:
    from labctl.sandbox import free_port

    text, cleanup = demo_stack.inventory_text, []
    if case == "missing-model":
        text = text.replace("    model: current\n    alias: native", "    model: ~/models/missing.gguf\n    alias: native")
        expect = "missing.gguf does not exist"
    elif case == "port-taken":
        port = free_port()
        # The same user's process, outside labctl's units: visible to ss, so it is named.
        demo_stack.run("sh", "-c", f"nohup python3 -m http.server --bind 127.0.0.1 {port} >/dev/null 2>&1 & "
                       "echo $! > /tmp/foreign.pid")
        cleanup.append(lambda: demo_stack.run("sh", "-c", "kill $(cat /tmp/foreign.pid)", check=False))
        time.sleep(1)
        text = text.replace(f"    port: {demo_stack.ports['gateway']}\n", f"    port: {port}\n")
        expect = f"port {port}: gateway needs it, but python3"
    else:
        demo_stack.run("rm", "/var/lib/systemd/linger/labuser", user=None)
        cleanup.append(lambda: demo_stack.run("touch", "/var/lib/systemd/linger/labuser", user=None))
        expect = "linger: not enabled for labuser"
    try:
        demo_stack.write_inventory(text, f"{HOME}/bad.yaml")
        before = unit_hashes(demo_stack)
        res = demo_stack.labctl("up", "-i", f"{HOME}/bad.yaml")
        assert res.rc == 3, res.stdout + res.stderr
        assert res.stderr.startswith("labctl: pre-flight failed; nothing was changed:")
        assert expect in res.stderr
        assert unit_hashes(demo_stack) == before
        doctor = demo_stack.labctl("doctor", "-i", f"{HOME}/bad.yaml")
        assert doctor.rc == 1 and expect in " ".join(doctor.stdout.split())  # wrapped to the width
    finally:
        for undo in cleanup:
            undo()


def _changed_inventory(stack: Stack, ctx: int) -> str:
    return stack.inventory_text.replace("    n_ctx: 2048\n", f"    n_ctx: {ctx}\n")


def test_two_ups_at_once_one_waits_or_refuses(demo_stack: Stack) -> None:
    demo_stack.write_inventory(_changed_inventory(demo_stack, 1024), f"{HOME}/changed.yaml")
    results: dict[str, object] = {}

    def first() -> None:
        results["first"] = demo_stack.labctl("up", "-i", f"{HOME}/changed.yaml")

    thread = threading.Thread(target=first)
    thread.start()
    time.sleep(1.0)  # the first holds the lock while it restarts and probes
    refused = demo_stack.labctl("up", "-i", f"{HOME}/changed.yaml", "--no-wait")
    waited = demo_stack.labctl("up", "-i", INVENTORY)
    thread.join(timeout=600)
    assert results["first"].rc == 0, results["first"].stderr  # type: ignore[attr-defined]
    assert refused.rc == 5 and "another labctl run" in refused.stderr
    assert waited.rc == 0 and "waiting" in waited.stdout + waited.stderr
    # Both left consistent units: the last one to run (the original inventory) is installed.
    plan = json_out(demo_stack.labctl("plan", "-i", INVENTORY, "--json"))
    assert plan["changes"] is False


def test_sigkill_during_up_leaves_old_or_new_files_and_rerun_converges(demo_stack: Stack) -> None:
    from labctl.load import load_inventory
    from labctl.render import render_all

    old = {k: v for k, v in unit_hashes(demo_stack).items()}
    new_text = _changed_inventory(demo_stack, 1536).replace("    threads: 1\n", "    threads: 2\n")
    rendered = render_all(load_inventory("changed.yaml", text=new_text).inventory)
    new = {p.rsplit("/", 1)[-1]: hashlib.sha256(c.encode()).hexdigest() for p, c in rendered.items()
           if p.startswith("systemd/user/")}
    demo_stack.write_inventory(new_text, f"{HOME}/changed.yaml")
    for delay in (0.3, 0.8, 1.5, 3.0):
        demo_stack.run("sh", "-c", f"{LABCTL} up -i {HOME}/changed.yaml >/dev/null 2>&1 & pid=$!; "
                       f"sleep {delay}; kill -9 $pid; wait $pid || true")
        now = unit_hashes(demo_stack)
        for unit, digest in now.items():
            assert digest in (old.get(unit), new.get(unit)), f"{unit} is neither old nor new after kill at {delay}s"
        leftovers = demo_stack.run("sh", "-c", f"ls -a {UNIT_DIR}").stdout.split()
        assert not [f for f in leftovers if f.endswith(".service") and not f.startswith("labctl-")]
    res = demo_stack.labctl("up", "-i", f"{HOME}/changed.yaml")
    assert res.rc == 0, res.stderr
    assert unit_hashes(demo_stack) == new
    # And back to the demo inventory, converged, for whatever runs next.
    assert demo_stack.labctl("up", "-i", INVENTORY).rc == 0
    assert json_out(demo_stack.labctl("plan", "-i", INVENTORY, "--json"))["changes"] is False


def test_rollback_restores_previous_generation(demo_stack: Stack) -> None:
    demo_stack.write_inventory(_changed_inventory(demo_stack, 1024), f"{HOME}/changed.yaml")
    assert demo_stack.labctl("up", "-i", f"{HOME}/changed.yaml").rc == 0
    assert "--n_ctx 1024" in demo_stack.run("cat", f"{UNIT_DIR}/labctl-bindings.service").stdout
    res = demo_stack.labctl("rollback", "-i", INVENTORY)
    assert res.rc == 0, res.stderr
    assert "--n_ctx 2048" in demo_stack.run("cat", f"{UNIT_DIR}/labctl-bindings.service").stdout
    assert json_out(demo_stack.labctl("status", "-i", INVENTORY, "--json"))["healthy"] is True
    assert json_out(demo_stack.labctl("plan", "-i", INVENTORY, "--json"))["changes"] is False


def test_logs_shows_the_journal(demo_stack: Stack) -> None:
    res = demo_stack.labctl("logs", "native", "-i", INVENTORY, "-n", "5")
    assert res.rc == 0 and res.stdout.strip(), res.stderr


def test_down_purge_then_up_again(demo_stack: Stack) -> None:
    res = demo_stack.labctl("down", "-i", INVENTORY, "--purge")
    assert res.rc == 0, res.stderr
    assert unit_hashes(demo_stack) == {}
    for unit in UNITS:
        assert demo_stack.show(unit, "ActiveState")["ActiveState"] in ("inactive", "failed")
    res = demo_stack.labctl("up", "-i", INVENTORY)
    assert res.rc == 0, res.stderr
    assert json_out(demo_stack.labctl("status", "-i", INVENTORY, "--json"))["healthy"] is True
