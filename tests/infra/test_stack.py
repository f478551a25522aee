"""testinfra checks of a host after `labctl up` of the CPU demo (tests/harness/stack.py).

The machine is a booted systemd (systemd-nspawn) reached over SSH with paramiko, as an
operator's CI would reach a real host. testinfra's host.service() asks only the *system*
manager, so user units are queried with `systemctl --user -M labuser@`.

The VM tier runs this same suite against a qemu VM: tests/vm/test_vm_infra.py collects every
test here and the ``host`` fixture, and there ``demo_stack`` is the VM's stack (anything with
``name`` and ``ssh_config()`` as its machine works). Keep the checks free of nspawn specifics.
"""

from __future__ import annotations

import pytest
import testinfra

from harness.stack import HOME, SECRET, UNIT_DIR, Stack

SERVICES = ("native", "bindings", "gateway")


@pytest.fixture(scope="module")
def host(demo_stack: Stack):
    machine = demo_stack.machine
    return testinfra.get_host(f"paramiko://{machine.name}", ssh_config=str(machine.ssh_config()))


def user_systemctl(host, *args: str) -> str:
    return host.run("systemctl --user -M labuser@ " + " ".join(args)).stdout.strip()


@pytest.mark.parametrize("service", SERVICES)
def test_unit_file_owned_enabled_active(host, service: str) -> None:
    unit = f"labctl-{service}.service"
    f = host.file(f"{UNIT_DIR}/{unit}")
    assert f.exists and f.is_file
    assert f.user == "labuser"
    assert user_systemctl(host, "is-enabled", unit) == "enabled"
    assert user_systemctl(host, "is-active", unit) == "active"


@pytest.mark.parametrize("service", SERVICES)
def test_port_listens_on_loopback_only(host, demo_stack: Stack, service: str) -> None:
    port = demo_stack.ports[service]
    assert host.socket(f"tcp://127.0.0.1:{port}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening
    assert not host.socket(f"tcp://:::{port}").is_listening
    listeners = host.run(f"ss -ltnH 'sport = :{port}'").stdout.split()
    assert listeners and all(addr.startswith("127.0.0.1:") for addr in listeners if addr.endswith(f":{port}"))


def test_current_gguf_points_at_the_model(host) -> None:
    link = host.file(f"{HOME}/models/current.gguf")
    assert link.is_symlink
    assert link.linked_to == f"{HOME}/models/tiny.gguf"


@pytest.mark.parametrize("route", ["native", "bindings"])
def test_gateway_answers_each_route(demo_stack: Stack, route: str) -> None:
    resp = demo_stack.chat(route)
    assert resp.status_code == 200, resp.text[:300]
    assert resp.json()["choices"][0]["message"]["content"] is not None
    assert resp.headers["x-litellm-model-group"] == route


def test_secret_is_0600_and_in_no_unit(host, demo_stack: Stack) -> None:
    secret = host.file(SECRET)
    assert secret.mode == 0o600 and secret.user == "labuser"
    key = demo_stack.key()
    assert len(key) > 20
    for service in SERVICES:
        assert key not in host.file(f"{UNIT_DIR}/labctl-{service}.service").content_string
    assert key not in host.file(f"{HOME}/.config/labctl/litellm/config.yaml").content_string
    # Nor in what `up` printed, nor in the user journal.
    assert key not in demo_stack.up_output
    journal = host.run("journalctl --user -M labuser@ --no-pager -o cat").stdout
    assert key not in journal


def test_working_directories_exist(host) -> None:
    for service in SERVICES:
        d = host.file(f"{HOME}/.local/state/labctl/{service}")
        assert d.is_directory and d.user == "labuser"
