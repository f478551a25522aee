"""A sandbox outlives the process that booted it: ``up``, ``exec``, ``list`` and ``down`` run
as separate processes, as ``labctl sandbox ...`` invocations do.

The machine is booted by a child Python process that exits; exec runs both in this process
and in further child processes. Records go to a temporary registry, so ``list`` is exact and
nothing here touches an operator's real sandboxes. Every machine is brought down by a
finalizer, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labctl import sandbox
from labctl.sandbox import detached as sandbox_detached
from labctl.sandbox.procs import host_boot_id, proc_stat
from labctl.sandbox.registry import MachineRecord, record_path, write_record

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]

UP = """
import json, sys
from pathlib import Path
from labctl.sandbox.detached import sandbox_up
name, project, rootfs, registry = sys.argv[1:5]
facts = sandbox_up(name, Path(project), rootfs=Path(rootfs), registry=Path(registry),
                   say=lambda line: print(line, file=sys.stderr, flush=True))
print(json.dumps(facts))
"""

EXEC = """
import sys
from pathlib import Path
from labctl.sandbox.detached import sandbox_exec
sys.exit(sandbox_exec(sys.argv[1], sys.argv[3:], registry=Path(sys.argv[2])))
"""


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def _exec_child(name: str, registry: Path, *argv: str, **kw) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", EXEC, name, str(registry), *argv],
        env=_child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _down_quietly(name: str, registry: Path) -> None:
    with contextlib.suppress(sandbox.SandboxError):
        sandbox_detached.sandbox_down(name, registry=registry)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sandbox-registry")


@pytest.fixture(scope="module")
def detached(sandbox_rootfs: Path, registry: Path):
    """A sandbox booted (and the project installed) by a child process that has exited."""
    name = f"labctl-ops-test-{os.getpid()}"
    try:
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", UP, name, str(ROOT), str(sandbox_rootfs), str(registry)],
            env=_child_env(),
            capture_output=True,
            text=True,
            timeout=1500,
        )
        up_seconds = time.monotonic() - started
        assert proc.returncode == 0, f"sandbox up failed:\n{proc.stderr}"
        facts = json.loads(proc.stdout.strip().splitlines()[-1])
        facts["_up_seconds_with_interpreter"] = up_seconds
        yield facts
    finally:
        _down_quietly(name, registry)  # the child is gone: only the record knows the machine


def test_up_reports_facts_and_outlives_its_process(detached: dict, registry: Path) -> None:
    assert detached["ssh_port"] > 0
    assert detached["labctl"] == "/usr/local/bin/labctl"
    assert set(detached["timings"]) >= {"rootfs", "boot", "install", "setup", "total"}
    assert record_path(detached["name"], registry).is_file()
    # The process that booted it has exited; nspawn and the container's init still run.
    for pid in (detached["nspawn_pid"], detached["pid"]):
        st = proc_stat(pid)
        assert st is not None and not st.exited
    print(json.dumps(detached["timings"]))


def test_exec_runs_labctl_as_labuser(detached: dict, registry: Path, capfd) -> None:
    rc = sandbox_detached.sandbox_exec(detached["name"], ["labctl", "--help"], registry=registry)
    out = capfd.readouterr().out
    assert rc == 0
    assert "Usage" in out and "labctl" in out


def test_exec_user_manager_journal_and_environment(detached: dict, registry: Path, capfd) -> None:
    name = detached["name"]
    assert sandbox_detached.sandbox_exec(name, ["systemctl", "--user", "is-system-running"],
                                    registry=registry) == 0
    assert capfd.readouterr().out.strip() == "running"

    script = 'echo "$XDG_RUNTIME_DIR|$HOME|$PATH|$(id -un)|$(pwd)"; command -v labctl'
    assert sandbox_detached.sandbox_exec(name, ["sh", "-c", script], registry=registry) == 0
    first, which = capfd.readouterr().out.strip().splitlines()
    runtime, home, path, user, cwd = first.split("|")
    assert (runtime, home, user, cwd) == ("/run/user/1000", "/home/labuser", "labuser",
                                          "/home/labuser")
    assert path.split(":")[0] == f"{sandbox.VENV_DIR}/bin"
    assert which == f"{sandbox.VENV_DIR}/bin/labctl"

    # labuser reads its own journal (volatile storage would say "No journal files were found")
    rc = sandbox_detached.sandbox_exec(
        name, ["journalctl", "--user", "-n", "5", "--no-pager"], registry=registry
    )
    captured = capfd.readouterr()
    assert rc == 0
    assert "No journal files" not in captured.out + captured.err
    assert captured.out.strip()

    # the examples, owned by labuser
    rc = sandbox_detached.sandbox_exec(name, ["stat", "-c", "%U", "examples"], registry=registry)
    assert rc == 0 and capfd.readouterr().out.strip() == "labuser"


def test_exec_from_another_process_streams_live_and_passes_exit_code(
    detached: dict, registry: Path
) -> None:
    child = _exec_child(
        detached["name"], registry, "sh", "-c", "echo first; echo oops >&2; sleep 3; exit 7"
    )
    started = time.monotonic()
    assert child.stdout is not None
    first = child.stdout.readline()
    first_after = time.monotonic() - started
    out, err = child.communicate(timeout=60)
    assert first.strip() == "first"
    assert first_after < 2.5, "output was held back until the command ended"
    assert child.returncode == 7
    assert "oops" in err


def test_tools_from_the_host_run_inside(detached: dict) -> None:
    if not detached["tools_dir"]:
        from harness.tools import missing

        missing("/opt/labctl-tools", "scripts/bootstrap.sh makes it")
    assert detached["tools"], "no tool venvs found"
    assert {k: v for k, v in detached["tools"].items() if v != "ok"} == {}


def test_list_shows_it(detached: dict, registry: Path) -> None:
    rows = sandbox_detached.sandbox_list(registry)
    assert [r["name"] for r in rows] == [detached["name"]]
    assert rows[0]["nspawn_pid"] == detached["nspawn_pid"]
    assert rows[0]["ssh_port"] == detached["ssh_port"]


def test_second_up_with_the_same_name_is_refused(
    detached: dict, registry: Path, sandbox_rootfs: Path
) -> None:
    started = time.monotonic()
    with pytest.raises(sandbox.SandboxError, match="already running"):
        sandbox_detached.sandbox_up(
            detached["name"], ROOT, rootfs=sandbox_rootfs, registry=registry, say=lambda _: None
        )
    assert time.monotonic() - started < 5  # refused before building or booting anything
    # ...and the running one is untouched
    assert sandbox_detached.sandbox_exec(detached["name"], ["true"], registry=registry) == 0


def test_down_stops_it_and_forgets_it(detached: dict, registry: Path) -> None:
    name = detached["name"]
    # a separate process, like `labctl sandbox down`
    down = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from labctl.sandbox.detached import sandbox_down;"
            " sandbox_down(sys.argv[1], registry=Path(sys.argv[2]))",
            name,
            str(registry),
        ],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert down.returncode == 0, down.stderr
    assert sandbox_detached.sandbox_list(registry) == []
    assert not record_path(name, registry).exists()
    for pid in (detached["nspawn_pid"], detached["pid"]):
        st = proc_stat(pid)
        assert st is None or st.exited  # a zombie until the host's PID 1 reaps it
    assert not any(Path(d).name.startswith(f"labctl-sandbox-{name}-") for d in os.listdir("/tmp"))
    with pytest.raises(sandbox.SandboxError, match=f"no running sandbox named {name}"):
        sandbox_detached.sandbox_exec(name, ["true"], registry=registry)
    with pytest.raises(sandbox.SandboxError, match=f"no running sandbox named {name}"):
        sandbox_detached.sandbox_down(name, registry=registry)


def _fake_record(name: str, pid: int, start: int) -> MachineRecord:
    return MachineRecord(
        name=name,
        nspawn_pid=pid,
        nspawn_start=start,
        pid=pid,
        pid_start=start,
        boot_id=host_boot_id(),
        cgroups=[],
        ssh_port=None,
        state_dir=f"/tmp/labctl-sandbox-{name}-x",
        rootfs="/nonexistent",
        binds_ro=[],
        binds_rw=[],
        pip=None,
        created=time.time(),
    )


def test_attach_to_a_stale_record_fails_clearly_and_removes_it(
    sandbox_rootfs: Path, tmp_path: Path
) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    me = proc_stat(os.getpid())
    assert me is not None
    cases = {
        "stale-exited": (gone.pid, 12345, "has exited"),
        # a live PID with another start time: the PID was reused
        "stale-reused": (os.getpid(), me.start + 1, "another process"),
    }
    for name, (pid, start, why) in cases.items():
        path = write_record(_fake_record(name, pid, start), tmp_path)
        with pytest.raises(sandbox.SandboxError) as exc:
            sandbox.Machine.attach(name, tmp_path)
        assert str(exc.value).startswith(f"no running sandbox named {name} (stale record removed")
        assert why in str(exc.value)
        assert not path.exists()
    with pytest.raises(sandbox.SandboxError, match="^no running sandbox named nothing-here$"):
        sandbox.Machine.attach("nothing-here", tmp_path)
    assert sandbox.list_machines(tmp_path) == []


def test_attached_machine_forced_shutdown(sandbox_rootfs: Path, tmp_path: Path) -> None:
    """No Popen object: SIGTERM by PID, then (timeout 0) the forced path kills the container's
    init, nspawn reaps it and exits; cgroups, state dir and record go."""
    name = f"labctl-ops-force-{os.getpid()}"
    booted = sandbox.Machine.boot(name, sandbox_rootfs, None, inherit_pip=False)
    try:
        record = booted.detach(tmp_path)
        attached = sandbox.Machine.attach(name, tmp_path)
        assert attached.running and attached.pid == booted.pid
        assert attached.run(["hostname"]).stdout.strip() == name
        attached.shutdown(timeout=0)
        assert not attached.running
        assert not record.exists()
        assert not booted.state_dir.exists()
        assert all(not Path(cg).exists() for cg in booted._cgroups)
        assert proc_stat(booted.pid) is None or proc_stat(booted.pid).exited
        assert attached.timings["shutdown"] < 10
    finally:
        booted.shutdown()
