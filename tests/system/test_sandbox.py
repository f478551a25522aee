"""The sandbox boots a real systemd whose lingering user runs labctl-style user units."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from labctl import sandbox

pytestmark = pytest.mark.system

UNIT = "labctl-sandbox-http.service"


def _get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    with opener.open(url, timeout=timeout) as resp:
        return resp.status, resp.read().decode()


def _show(machine: sandbox.Machine, unit: str, *props: str) -> dict[str, str]:
    out = machine.user_systemctl("show", "-p", ",".join(props), unit).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.fixture(scope="module")
def http_unit(machine: sandbox.Machine):
    """A user unit serving a directory over HTTP on a free 127.0.0.1 port, enabled and started."""
    port = sandbox.free_port()
    machine.write_text(
        "/home/labuser/www/index.html", "hello from the sandbox\n", owner=sandbox.USER
    )
    machine.write_text(
        f"/home/labuser/.config/systemd/user/{UNIT}",
        "[Unit]\n"
        "Description=labctl sandbox test HTTP server\n"
        "[Service]\n"
        f"ExecStart=/usr/bin/python3 -m http.server --bind 127.0.0.1 --directory %h/www {port}\n"
        "Restart=on-failure\n"
        "[Install]\n"
        "WantedBy=default.target\n",
        owner=sandbox.USER,
    )
    machine.user_systemctl("daemon-reload")
    machine.user_systemctl("enable", "--now", UNIT)
    try:
        yield UNIT, port
    finally:
        if machine.running:
            machine.user_systemctl("disable", "--now", UNIT, check=False)


def test_user_manager_reachable_as_labuser(machine: sandbox.Machine) -> None:
    assert machine.run(["id", "-u"], user=sandbox.USER).stdout.strip() == "1000"
    state = machine.user_systemctl("is-system-running").stdout.strip()
    assert state in {"running", "degraded"}
    linger = machine.run(["loginctl", "show-user", sandbox.USER, "-p", "Linger", "--value"])
    assert linger.stdout.strip() == "yes"
    # root reaches the same manager without any environment
    assert machine.run(
        ["systemctl", "--user", "-M", "labuser@", "is-system-running"]
    ).stdout.strip() in {
        "running",
        "degraded",
    }


def test_copy_in_sets_owner(machine: sandbox.Machine, tmp_path) -> None:
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "f.txt").write_text("x")
    (tmp_path / "tree" / "__pycache__").mkdir()
    machine.copy_in(
        tmp_path / "tree", "/home/labuser/copied", owner=sandbox.USER, exclude=["__pycache__"]
    )
    out = machine.run(
        ["stat", "-c", "%U %n", "/home/labuser/copied", "/home/labuser/copied/sub/f.txt"]
    )
    assert [line.split()[0] for line in out.stdout.splitlines()] == ["labuser", "labuser"]
    assert machine.run(["test", "-e", "/home/labuser/copied/__pycache__"], check=False).rc == 1


def test_user_unit_serves_http_to_the_host(machine: sandbox.Machine, http_unit) -> None:
    unit, port = http_unit
    deadline = time.monotonic() + 15
    while True:
        try:
            status, body = _get(f"http://127.0.0.1:{port}/index.html")
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert status == 200
    assert body == "hello from the sandbox\n"

    props = _show(machine, unit, "ActiveState", "SubState", "NRestarts", "MainPID")
    assert props["ActiveState"] == "active"
    assert props["SubState"] == "running"
    assert props["NRestarts"] == "0"
    main_pid = int(props["MainPID"])
    assert main_pid > 0
    cmdline = machine.run(["cat", f"/proc/{main_pid}/cmdline"]).stdout.split("\0")
    assert "http.server" in cmdline
    assert machine.user_systemctl("is-enabled", unit).stdout.strip() == "enabled"


def test_testinfra_over_ssh(machine: sandbox.Machine, http_unit) -> None:
    import testinfra  # a test dependency: its absence is an install error, never a skip
    unit, port = http_unit
    host = testinfra.get_host(f"paramiko://{machine.name}", ssh_config=str(machine.ssh_config()))
    assert host.run("id -un").stdout.strip() == "root"
    # host.service() asks the system manager only: user units go through -M labuser@.
    assert host.run(f"systemctl --user -M labuser@ is-active {unit}").stdout.strip() == "active"
    assert host.user("labuser").uid == 1000
    assert host.file("/var/lib/systemd/linger/labuser").exists
    assert host.socket(f"tcp://127.0.0.1:{port}").is_listening
    assert host.service("ssh").is_running


def test_timings_are_recorded(machine: sandbox.Machine) -> None:
    t = machine.timings
    assert 0 < t["pid1"] <= t["system_running"] <= t["user_manager"]
    print(json.dumps(t))


def test_install_python_project_uses_host_pip_settings(machine: sandbox.Machine, tmp_path) -> None:
    """pip inside trusts the host's CAs and uses its indexes: a project with a dependency."""
    proj = tmp_path / "sbhello"
    (proj / "src" / "sbhello").mkdir(parents=True)
    (proj / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "sbhello"\nversion = "0.1"\ndependencies = ["pyyaml"]\n'
        '[project.scripts]\nsbhello = "sbhello:main"\n'
    )
    (proj / "src" / "sbhello" / "__init__.py").write_text(
        "def main():\n    import yaml\n    print(yaml.safe_dump({'hello': 'sandbox'}).strip())\n"
    )
    venv = "/home/labuser/.local/share/sbhello/venv"
    done = machine.install_python_project(proj, venv=venv)
    assert done.src == "/home/labuser/src/sbhello"
    assert done.seconds > 0
    out = machine.run([f"{venv}/bin/sbhello"], user=sandbox.USER)
    assert out.stdout.strip() == "hello: sandbox"
    owner = machine.run(["stat", "-c", "%U", venv, done.src]).stdout.split()
    assert owner == ["labuser", "labuser"]
