"""testinfra checks of a fleet, reached through the Ansible inventory `labctl up` wrote.

Not collected on its own (no ``test_`` prefix): tests/system/test_fleet_apply.py runs it, inside the
lab's controller namespace, as CI would against real hosts::

    pytest tests/system/fleet_infra_checks.py --hosts 'ansible://all' \\
        --ansible-inventory <fleet state dir>/run-up/hosts.yml --ssh-identity-file KEY

with ANSIBLE_SSH_COMMON_ARGS naming the fleet's known_hosts. What each host should run comes
from the slice labctl left there (``~/.config/labctl/fleet/inventory.yaml``), read on the host.
"""

from __future__ import annotations

import json

import pytest

SLICE = ".config/labctl/fleet/inventory.yaml"
KEYS = ".config/labctl/secrets/api-keys"


@pytest.fixture
def slice_(host) -> dict:  # type: ignore[no-untyped-def]
    """The slice `labctl up` left on this host, as labctl's own venv reads it."""
    home = host.user().home
    code = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"
    return json.loads(host.check_output(f"{home}/.local/share/labctl/venv/bin/python -c '{code}' {home}/{SLICE}"))


@pytest.fixture
def services(slice_) -> dict:  # type: ignore[no-untyped-def]
    """The services this host runs (not the stand-ins for other hosts' backends)."""
    return {n: s for n, s in slice_["services"].items() if s["kind"] != "external"}


def test_labctl_is_installed_at_the_controllers_version(host) -> None:  # type: ignore[no-untyped-def]
    import labctl

    home = host.user().home
    assert host.check_output(f"{home}/.local/share/labctl/venv/bin/labctl version") == f"labctl {labctl.__version__}"


def test_the_user_lingers(host) -> None:  # type: ignore[no-untyped-def]
    assert host.file(f"/var/lib/systemd/linger/{host.user().name}").exists


def test_every_service_of_the_host_is_active_and_enabled(host, services) -> None:  # type: ignore[no-untyped-def]
    assert services
    for name in services:
        assert host.run(f"systemctl --user is-active labctl-{name}.service").stdout.strip() == "active", name
        assert host.run(f"systemctl --user is-enabled labctl-{name}.service").stdout.strip() == "enabled", name


def test_listeners_are_loopback_or_the_hosts_private_address(host, services) -> None:  # type: ignore[no-untyped-def]
    addresses = host.check_output("hostname -I").split()
    for name, svc in services.items():
        bind = svc.get("bind", "127.0.0.1")
        assert bind == "127.0.0.1" or bind in addresses, (name, bind, addresses)
        assert host.socket(f"tcp://{bind}:{svc['port']}").is_listening, name
        assert not host.socket(f"tcp://0.0.0.0:{svc['port']}").is_listening, name


def test_every_key_the_host_needs_is_there_and_private(host, slice_) -> None:  # type: ignore[no-untyped-def]
    home = host.user().home
    refs = [s["api_key"]["env_file"] for s in slice_["services"].values() if "api_key" in s]
    assert refs, "in this fleet every host holds a backend key (its own, or the ones its gateway sends)"
    for ref in refs:
        f = host.file(ref.replace("~/", f"{home}/", 1))
        assert f.exists and f.mode == 0o600 and f.user == host.user().name, ref
    assert host.file(f"{home}/{KEYS}").mode == 0o700
