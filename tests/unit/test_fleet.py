"""A fleet inventory (hosts:): each host's view, its slice, the refusals, and what Ansible is given.

Every view is an ordinary single-host inventory: its slice loads back through the same
loader to exactly the view, and what it renders passes systemd-analyze and LiteLLM's own
config model. A fleet that would put a backend on the network without a key, bind a backend
another host reaches to loopback, or route across hosts to Ollama unasked is refused with
one line naming the file, line and field. The Ansible inventory labctl writes is read back
by ansible-inventory, every string tagged ``!unsafe`` (Ansible never templates it), and the
playbooks pass ``ansible-playbook --syntax-check``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from harness.tools import litellm_python, require_command

from labctl.errors import InvalidInventory
from labctl.fleet import ansible, keys
from labctl.fleet.slices import slice_text
from labctl.load.fleet import key_variable
from labctl.load import load_inventory
from labctl.kinds.external import External
from labctl.kinds.llama_server import LlamaServer
from labctl.render import render_all

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fleet" / "inventory.yaml"
ERROR_LINE = re.compile(r"^(?P<file>[^\n]+):(?P<line>\d+): (?P<path>\S[^\n]*?): (?P<msg>[^\n]+)$")


def example(tmp_path: Path, edit=None) -> Path:  # type: ignore[no-untyped-def]
    data = yaml.safe_load(EXAMPLE.read_text())
    data["fleet"]["state_dir"] = str(tmp_path / "fleet-state")
    data["fleet"]["ssh_key"] = str(tmp_path / "id_ed25519")
    data["fleet"]["pip"] = {"find_links": str(tmp_path / "wheels")}
    if edit is not None:
        edit(data)
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_views_put_each_service_on_its_host(tmp_path: Path) -> None:
    loaded = load_inventory(example(tmp_path))
    plan = loaded.fleet
    assert plan is not None
    assert plan.host_of == {"llama-a": "gpu-a", "llama-b": "gpu-b", "gateway": "edge"}
    assert plan.order() == [["gpu-a", "gpu-b"], ["edge"]]
    assert plan.keyed == ["llama-a", "llama-b"]
    a = plan.views["gpu-a"]
    assert list(a.services) == ["llama-a"]
    llama = a.services["llama-a"]
    assert isinstance(llama, LlamaServer)
    # reached from edge: bound to its host's private address, never 0.0.0.0, and keyed
    assert llama.bind == "10.77.0.11"
    assert llama.api_key is not None and llama.api_key.variable == key_variable("llama-a")
    assert a.host.private_network == "10.77.0.0/24" and a.models  # a llama host gets the declared models
    edge = plan.views["edge"]
    assert list(edge.services) == ["llama-a", "llama-b", "gateway"]
    stand_in = edge.services["llama-a"]
    assert isinstance(stand_in, External)
    assert (stand_in.address, stand_in.port, stand_in.models) == ("10.77.0.11", 8080, ["llama-a"])
    assert stand_in.api_key == llama.api_key
    assert not edge.models and not edge.monitoring.enabled
    assert plan.key_holders("llama-a") == ["edge", "gpu-a"]


def test_each_slice_loads_back_to_its_view(tmp_path: Path) -> None:
    loaded = load_inventory(example(tmp_path))
    assert loaded.fleet is not None
    for host, view in loaded.fleet.views.items():
        path = tmp_path / f"{host}.yaml"
        path.write_text(slice_text(view, host=host))
        again = load_inventory(path)
        assert again.fleet is None, "a slice describes one host"
        assert again.inventory.model_dump() == view.model_dump(), host


def test_gateway_sends_each_backend_its_key_by_reference(tmp_path: Path) -> None:
    loaded = load_inventory(example(tmp_path))
    assert loaded.fleet is not None
    files = render_all(loaded.fleet.views["edge"])
    config = yaml.safe_load(files["labctl/litellm/config.yaml"])
    params = {m["model_name"]: m["litellm_params"] for m in config["model_list"]}
    assert params["chat-a"]["api_base"] == "http://10.77.0.11:8080/v1"
    assert params["chat-a"]["api_key"] == "os.environ/LABCTL_API_KEY_LLAMA_A"
    assert params["chat-b"]["api_key"] == "os.environ/LABCTL_API_KEY_LLAMA_B"
    unit = files["systemd/user/labctl-gateway.service"]
    assert "EnvironmentFile=/home/labuser/.config/labctl/secrets/api-keys/llama-a.env" in unit
    backend = render_all(loaded.fleet.views["gpu-a"])["systemd/user/labctl-llama-a.service"]
    assert "--host 10.77.0.11" in backend
    # The key reaches llama-server as LLAMA_API_KEY from a derived 0600 file, never in argv.
    assert "EnvironmentFile=/home/labuser/.config/labctl/secrets/api-keys/llama-a-server-key.env" in backend
    assert "api-key" not in backend.split("ExecStart=", 1)[1].split("\n", 1)[0]


def test_every_view_renders_what_systemd_and_litellm_accept(tmp_path: Path) -> None:
    loaded = load_inventory(example(tmp_path))
    assert loaded.fleet is not None
    systemd_analyze = require_command("systemd-analyze", "apt-get install systemd")
    units, configs = [], []
    for host, view in loaded.fleet.views.items():
        for rel, text in render_all(view).items():
            if rel.endswith(".service"):
                target = tmp_path / "units" / host / Path(rel).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
                units.append(target)
            elif rel.endswith("config.yaml"):
                configs.append(text)
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_COLOR": "0"}
    for unit in units:
        proc = subprocess.run([systemd_analyze, "--user", "verify", str(unit)], capture_output=True, text=True,
                              env=env, timeout=60)
        # verify looks for the program on this machine; the tools' paths are the test hosts'.
        noise = [line for line in proc.stderr.splitlines() if "is not executable" not in line]
        assert not noise, f"{unit}: {noise}"
    code = ("import sys, yaml\nfrom litellm.proxy._types import ConfigYAML\n"
            "ConfigYAML(**yaml.safe_load(sys.stdin.read()))\nprint('ok')\n")
    for text in configs:
        proc = subprocess.run([str(litellm_python()), "-c", code], input=text, capture_output=True, text=True,
                              timeout=300)
        assert proc.stdout.strip() == "ok", proc.stderr[-2000:]


# --- refusals: one line, file:line: field, exit 2 --------------------------------------------

def _drop_fleet(d):  # type: ignore[no-untyped-def]
    del d["fleet"]


def _drop_hosts(d):  # type: ignore[no-untyped-def]
    del d["hosts"]


def _outside(d):  # type: ignore[no-untyped-def]
    d["hosts"]["gpu-a"]["address"] = "10.78.0.11"


def _same_address(d):  # type: ignore[no-untyped-def]
    d["hosts"]["gpu-b"]["address"] = "10.77.0.11"


def _twice(d):  # type: ignore[no-untyped-def]
    d["hosts"]["gpu-b"]["services"].append("llama-a")


def _nowhere(d):  # type: ignore[no-untyped-def]
    d["hosts"]["gpu-b"]["services"] = ["gateway"]
    d["hosts"]["edge"]["services"] = ["llama-a"]
    d["hosts"]["gpu-a"]["services"] = ["llama-a"]


def _unknown(d):  # type: ignore[no-untyped-def]
    d["hosts"]["edge"]["services"].append("nope")


def _loopback(d):  # type: ignore[no-untyped-def]
    d["services"]["llama-a"]["bind"] = "127.0.0.1"


def _own_key(d):  # type: ignore[no-untyped-def]
    d["services"]["llama-a"]["api_key"] = {"env_file": "~/k.env", "var": "MY_KEY"}


def _ollama(d):  # type: ignore[no-untyped-def]
    d["services"]["llama-a"] = {"kind": "ollama", "port": 11434, "models": ["llama3.1:8b"]}
    d["services"]["gateway"]["routes"][0] = {"name": "chat-a", "service": "llama-a", "model": "llama3.1:8b"}


def _external(d):  # type: ignore[no-untyped-def]
    d["services"]["llama-a"] = {"kind": "external", "api": "openai", "port": 8080, "models": ["llama-a"]}


def _public(d):  # type: ignore[no-untyped-def]
    d["host"]["bind"] = "10.77.0.11"


def _monitoring(d):  # type: ignore[no-untyped-def]
    d["monitoring"] = {"enabled": True}
    d["services"]["gw2"] = {"kind": "litellm", "runtime": {"python": "/opt/x/bin/python"}, "port": 4001,
                            "routes": [{"name": "chat-b2", "service": "llama-b"}]}
    d["hosts"]["gpu-b"]["services"].append("gw2")


def _network(d):  # type: ignore[no-untyped-def]
    d["fleet"]["network"] = "8.8.8.0/24"


def _wildcard_gateway(d):  # type: ignore[no-untyped-def]
    d["services"]["gateway"]["bind"] = "0.0.0.0"


def _gateway_on_anothers_address(d):  # type: ignore[no-untyped-def]
    d["services"]["gateway"]["bind"] = "10.77.0.11"


def _backend_off_network(d):  # type: ignore[no-untyped-def]
    d["services"]["llama-a"]["bind"] = "192.168.1.5"


def _named(d):  # type: ignore[no-untyped-def]
    d["hosts"]["edge"]["address"] = "edge.lab.example"


def _bad_ssh_host(d):  # type: ignore[no-untyped-def]
    d["hosts"]["edge"]["ssh_host"] = "-oProxyCommand=touch /tmp/x"


CASES = [
    ("hosts without fleet", _drop_fleet, "hosts", "hosts need a fleet section"),
    ("fleet without hosts", _drop_hosts, "fleet", "a fleet section needs hosts"),
    ("address outside the network", _outside, "hosts.gpu-a.address", "is not a host address in fleet.network"),
    ("one address twice", _same_address, "hosts.gpu-b.address", "is already the address of hosts.gpu-a"),
    ("a service on two hosts", _twice, "hosts.gpu-b.services[1]", "a service runs on exactly one host"),
    ("a service on no host", _nowhere, "services.llama-b", "no host runs llama-b"),
    ("an unknown service", _unknown, "hosts.edge.services[1]", "no service named 'nope'"),
    ("a cross-host backend on loopback", _loopback, "services.llama-a.bind",
     "a backend bound to loopback cannot be reached from another host"),
    ("an operator's key on a cross-host backend", _own_key, "services.llama-a.api_key",
     "the fleet generates and ships this backend's key"),
    ("Ollama across hosts", _ollama, "services.gateway.routes[0].service", "Ollama has no authentication"),
    ("an external across hosts", _external, "services.gateway.routes[0].service",
     "an external service is reached from the host that lists it"),
    ("host.bind off loopback", _public, "host.bind", "in a fleet, host.bind stays loopback"),
    ("monitoring with two gateway hosts", _monitoring, "fleet.monitoring_host", "not exactly one gateway host"),
    ("a public network", _network, "fleet.network", "must be a private network"),
    # where a service listens: the hint names what works in a fleet (its host's address)
    ("a gateway on every network", _wildcard_gateway, "services.gateway.bind",
     "bind it to 10.77.0.13 (hosts.edge.address) to be reached from fleet.network 10.77.0.0/24, or to loopback"),
    ("a gateway on another host's address", _gateway_on_anothers_address, "services.gateway.bind",
     "10.77.0.11 is the address of hosts.gpu-a, and gateway runs on hosts.edge: bind it to 10.77.0.13"),
    ("a backend off the fleet's network", _backend_off_network, "services.llama-a.bind",
     "192.168.1.5 is not an address of hosts.gpu-a: bind it to 10.77.0.11"),
    # a name is for SSH; the address is what services bind and the other hosts reach
    ("a name as the address", _named, "hosts.edge.address", "set ssh_host"),
    ("an ssh option as the SSH name", _bad_ssh_host, "hosts.edge.ssh_host", "must be an IP address or a host name"),
]


@pytest.mark.parametrize(("case", "edit", "field", "message"), CASES, ids=[c[0] for c in CASES])
def test_refused_with_one_line_naming_the_field(tmp_path: Path, case: str, edit, field: str, message: str) -> None:  # type: ignore[no-untyped-def]
    path = example(tmp_path, edit)
    with pytest.raises(InvalidInventory) as info:
        load_inventory(path)
    assert info.value.exit_code == 2
    lines = info.value.lines()
    for line in lines:
        assert ERROR_LINE.match(line), line
    hits = [line for line in lines if f": {field}: " in line and message in line]
    assert hits, f"{case}: wanted {field}: ...{message}... in {lines}"
    text = path.read_text().splitlines()
    line_no = int(ERROR_LINE.match(hits[0]).group("line"))  # type: ignore[union-attr]
    assert 1 <= line_no <= len(text)


def test_ollama_across_hosts_when_allowed_is_a_warning(tmp_path: Path) -> None:
    def allowed(d):  # type: ignore[no-untyped-def]
        _ollama(d)
        d["services"]["llama-a"]["allow_unauthenticated_remote"] = True

    loaded = load_inventory(example(tmp_path, allowed))
    assert loaded.fleet is not None
    assert any("no authentication" in w for w in loaded.fleet.warnings)
    ollama = loaded.fleet.views["gpu-a"].services["llama-a"]
    assert ollama.bind == "10.77.0.11" and getattr(ollama, "api_key", None) is None


def test_a_private_bind_without_a_key_is_refused_on_one_host(tmp_path: Path) -> None:
    """The same rule without a fleet: inside host.private_network a llama server needs a key."""
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "host": {"user": "labuser", "gpu": False, "private_network": "10.9.0.0/24"},
        "monitoring": {"enabled": False},
        "services": {"native": {"kind": "llama-server", "binary": "/opt/llama-server", "alias": "native",
                                "n_gpu_layers": 0, "bind": "10.9.0.5"}}}))
    with pytest.raises(InvalidInventory) as info:
        load_inventory(path)
    assert any("services.native.bind: 10.9.0.5 is reachable from other hosts: set api_key" in line
               for line in info.value.lines())


# --- what Ansible is given -------------------------------------------------------------------

def _prepared(tmp_path: Path, edit=None):  # type: ignore[no-untyped-def]
    (tmp_path / "wheels").mkdir(exist_ok=True)
    (tmp_path / "wheels" / f"labctl-{ansible.__version__}-py3-none-any.whl").write_bytes(b"not really a wheel")
    loaded = load_inventory(example(tmp_path, edit))
    inv, plan = loaded.inventory, loaded.fleet
    state = tmp_path / "fleet-state"
    run = ansible.prepare(inv, plan, state, keys.ensure_keys(state, plan.keyed), name="run-up")
    return run, ansible.environment(run, str(tmp_path))


def _ansible(tool: str) -> str:
    path = Path(sys.executable).with_name(tool)
    if not path.exists():
        from harness.tools import missing

        missing(tool, "pip install 'labctl[fleet]' (ansible-core) into .venv")
    return str(path)


def test_keys_are_generated_once_mode_0600(tmp_path: Path) -> None:
    state = tmp_path / "s"
    first = keys.ensure_keys(state, ["llama-a"])
    text = first["llama-a"].read_text()
    assert re.fullmatch(r"LABCTL_API_KEY_LLAMA_A=sk-[A-Za-z0-9_-]{40,}\n", text)
    assert oct(first["llama-a"].stat().st_mode & 0o777) == "0o600"
    assert oct((state / "keys").stat().st_mode & 0o777) == "0o700"
    keys.ensure_keys(state, ["llama-a"])
    assert first["llama-a"].read_text() == text


def test_ansible_reads_the_inventory_labctl_writes(tmp_path: Path) -> None:
    run, env = _prepared(tmp_path)
    proc = subprocess.run([_ansible("ansible-inventory"), *ansible.inventory_args(run), "--list"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    assert listing["labctl_first"]["hosts"] == ["gpu-a", "gpu-b"]
    assert listing["labctl_last"]["hosts"] == ["edge"]
    edge = listing["_meta"]["hostvars"]["edge"]
    # every string is tagged unsafe (Ansible shows it wrapped and never templates it), but the
    # connection's address and user, which their types keep free of template syntax
    assert (edge["ansible_host"], edge["ansible_user"], edge["ansible_port"]) == ("10.77.0.13", "labuser", 22)
    assert edge["labctl_venv"] == {"__ansible_unsafe": "/home/labuser/.local/share/labctl/venv"}
    dests = [k["dest"]["__ansible_unsafe"] for k in edge["labctl_keys"]]
    assert dests == ["/home/labuser/.config/labctl/secrets/api-keys/llama-a.env",
                     "/home/labuser/.config/labctl/secrets/api-keys/llama-b.env"]
    # gpu-a holds its own key only
    assert [k["dest"]["__ansible_unsafe"] for k in listing["_meta"]["hostvars"]["gpu-a"]["labctl_keys"]] == \
        ["/home/labuser/.config/labctl/secrets/api-keys/llama-a.env"]
    assert oct((run.path / "hosts.yml").stat().st_mode & 0o777) == "0o600"


def test_a_gateway_bound_to_its_hosts_address_is_reached_from_the_network(tmp_path: Path) -> None:
    """What the refusals above point to is accepted: the gateway on edge's address (the other
    hosts and the operators reach it there), with its master key; every network at once with
    host.allow_public_bind."""
    def own_address(d):  # type: ignore[no-untyped-def]
        d["services"]["gateway"]["bind"] = "10.77.0.13"

    def wildcard_allowed(d):  # type: ignore[no-untyped-def]
        d["services"]["gateway"]["bind"] = "0.0.0.0"
        d["host"]["allow_public_bind"] = True

    for edit in (own_address, wildcard_allowed):
        loaded = load_inventory(example(tmp_path, edit))
        assert loaded.fleet.views["edge"].services["gateway"].bind == loaded.inventory.services["gateway"].bind


def test_ansible_connects_by_the_ssh_name_and_services_keep_the_address(tmp_path: Path) -> None:
    """hosts.NAME.ssh_host (a DNS name, an ~/.ssh/config alias) is what ssh connects to; the
    IP stays where the host's services bind and where the other hosts reach them."""
    def named(d):  # type: ignore[no-untyped-def]
        d["hosts"]["gpu-a"]["ssh_host"] = "gpu-a.lab"

    run, env = _prepared(tmp_path, named)
    proc = subprocess.run([_ansible("ansible-inventory"), *ansible.inventory_args(run), "--list"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    hostvars = json.loads(proc.stdout)["_meta"]["hostvars"]
    assert (hostvars["gpu-a"]["ansible_host"], hostvars["edge"]["ansible_host"]) == ("gpu-a.lab", "10.77.0.13")
    assert hostvars["gpu-a"]["labctl_address"] == {"__ansible_unsafe": "10.77.0.11"}
    views = run.plan.views
    assert views["gpu-a"].services["llama-a"].bind == "10.77.0.11"
    assert views["edge"].services["llama-a"].address == "10.77.0.11"


def test_each_host_says_what_it_is_doing_as_ansible_runs(tmp_path: Path) -> None:
    """A real ansible-playbook (connection local) over the inventory labctl writes: labctl's
    callback appends each task's start and end per host to the run's events file as they
    happen, and the controller turns them into per-host lines (piped or not, the say lines):
    a task still running after 2 s, one that changed something or failed, labctl's own
    command done; not a task that was skipped or found nothing to do."""
    import threading
    import time

    from labctl.fleet.apply import host_lines

    run, env = _prepared(tmp_path)
    play = tmp_path / "play.yml"
    play.write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": False, "tasks": [
        {"name": "read something", "ansible.builtin.command": {"argv": ["true"]}, "changed_when": False},
        {"name": "pip install labctl and what it needs", "ansible.builtin.command": {"argv": ["true"]},
         "when": "inventory_hostname == 'edge'"},
        {"name": "labctl up", "ansible.builtin.command": {"argv": ["sleep", "3"]}},
        {"name": "labctl check", "ansible.builtin.command": {"argv": ["false"]},
         "when": "inventory_hostname == 'gpu-b'"},
    ]}], sort_keys=False))
    said: list[tuple[float, str]] = []
    lock = threading.Lock()
    done = threading.Event()
    t0 = time.monotonic()

    def say(line: str) -> None:
        with lock:
            said.append((time.monotonic() - t0, line))

    run.events_path.unlink(missing_ok=True)
    follower = threading.Thread(target=ansible._follow, args=(run.events_path, host_lines(say, t0), done))
    follower.start()
    proc = subprocess.run([_ansible("ansible-playbook"), *ansible.inventory_args(run), "-c", "local",
                           "-e", f"ansible_python_interpreter={sys.executable}", str(play)],
                          env=env, cwd=run.path, capture_output=True, text=True, timeout=120)
    ended = time.monotonic() - t0
    done.set()
    follower.join()
    assert proc.returncode != 0, proc.stdout + proc.stderr  # gpu-b's labctl check failed, as meant
    lines = [line for _, line in said]
    assert "read something" not in "\n".join(lines), proc.stdout[-3000:] + proc.stderr[-2000:]
    for host in ("gpu-a", "gpu-b", "edge"):
        assert re.search(rf"^{host}: labctl up \.\.\. \(\d+s\)$", "\n".join(lines), re.M), lines
        assert any(re.fullmatch(rf"{host}: labctl up: done \(\d+s\)", line) for line in lines), lines
    assert any(re.fullmatch(r"edge: pip install labctl and what it needs: changed \(\d+s\)", line) for line in lines)
    assert any(re.fullmatch(r"gpu-b: labctl check: failed \(\d+s\)", line) for line in lines), lines
    assert not any("read something" in line or line.startswith("gpu-a: pip") for line in lines), lines
    # heard while the run went on, not after it: "labctl up ..." came while it slept
    first = min(t for t, line in said if ": labctl up ... (" in line)
    assert first < ended - 0.5, (said, ended)


def test_a_template_in_an_operators_path_stays_literal(tmp_path: Path) -> None:
    """A path holding Jinja is handed to Ansible as text: the debug module prints it as written."""
    def hostile(d):  # type: ignore[no-untyped-def]
        d["fleet"]["venv"] = "~/venv-{{ lookup('env','HOME') }}"

    run, env = _prepared(tmp_path, hostile)
    proc = subprocess.run([_ansible("ansible"), "gpu-a", *ansible.inventory_args(run), "-m", "ansible.builtin.debug",
                           "-a", "var=labctl_venv",
                           "-e", "ansible_connection=local"], env={**env, "ANSIBLE_STDOUT_CALLBACK": "default"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "/home/labuser/venv-{{ lookup('env','HOME') }}" in proc.stdout, proc.stdout


@pytest.mark.parametrize("playbook", ["up.yml", "status.yml", "down.yml"])
def test_playbooks_pass_ansibles_syntax_check(tmp_path: Path, playbook: str) -> None:
    run, env = _prepared(tmp_path)
    proc = subprocess.run([_ansible("ansible-playbook"), *ansible.inventory_args(run), "--syntax-check",
                           str(ansible.PLAYBOOKS / playbook)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_wheels_travel_as_one_tarball_named_by_content(tmp_path: Path) -> None:
    run, _ = _prepared(tmp_path)
    tars = list((tmp_path / "fleet-state" / "wheels").glob("wheels-*.tar"))
    assert len(tars) == 1
    (tmp_path / "wheels" / "extra-1.0-py3-none-any.whl").write_bytes(b"x")
    _prepared(tmp_path)
    again = list((tmp_path / "fleet-state" / "wheels").glob("wheels-*.tar"))
    assert len(again) == 1 and again != tars, "a changed wheel directory is a new tarball (and install id)"


def test_a_wheel_directory_without_this_labctl_is_refused(tmp_path: Path) -> None:
    from labctl.errors import OperationFailed

    (tmp_path / "wheels").mkdir()
    loaded = load_inventory(example(tmp_path))
    with pytest.raises(OperationFailed, match="holds no labctl"):
        ansible.prepare(loaded.inventory, loaded.fleet, tmp_path / "s", {}, name="run-up")


# --- the command line ------------------------------------------------------------------------

@pytest.mark.parametrize(("command", "name"), [(["plan"], "plan"), (["doctor"], "doctor"),
                                             (["model", "list"], "model list"), (["restart"], "restart"),
                                             (["logs", "gateway"], "logs"), (["gateway", "check"], "gateway check")])
def test_one_host_commands_refuse_a_fleet(tmp_path: Path, capsys, command: list[str], name: str) -> None:  # type: ignore[no-untyped-def]
    from labctl.cli import main

    path = example(tmp_path)
    with pytest.raises(SystemExit) as info:
        main([*command, "-i", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"describes a fleet (hosts: gpu-a, gpu-b, edge): `labctl {name}` acts on one host" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("command", "named"), [
    (["up", "--force"], "--force is"), (["up", "--no-monitoring", "--force"], "--no-monitoring, --force are"),
    (["down", "--purge"], "--purge is"), (["status", "--wide"], "--wide is"),
    (["status", "--endpoints", "--probe-timeout", "9"], "--endpoints, --probe-timeout are")])
def test_a_fleet_refuses_one_hosts_options_before_anything_runs(tmp_path: Path, capsys, command: list[str],  # type: ignore[no-untyped-def]
                                                                 named: str) -> None:
    """An option that means something for one host only is refused on a fleet, in one line
    naming it (a fleet's `up` ignored --force and --no-monitoring before), before Ansible or
    the fleet's state directory is touched."""
    from labctl.cli import main

    path = example(tmp_path)
    with pytest.raises(SystemExit) as info:
        main([*command, "-i", str(path)])
    assert info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (f"labctl: {named} for one host's `labctl {command[0]}`: run it on that host, where "
                    "`labctl up` left its slice (no -i needed)"), line
    assert not (tmp_path / "fleet-state").exists()


def test_host_is_refused_for_one_host(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from labctl.cli import main

    single = tmp_path / "one.yaml"
    single.write_text((Path(__file__).parents[2] / "examples" / "cpu-demo" / "inventory.yaml").read_text())
    for command in (["up"], ["down"], ["status"]):
        with pytest.raises(SystemExit) as info:
            main([*command, "-i", str(single), "--host", "gpu-a"])
        assert info.value.code == 2
        assert capsys.readouterr().err == ("labctl: --host is for a fleet inventory (hosts:); this one describes "
                                           "one host\n")


def test_validate_and_render_a_fleet(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from labctl.cli import main

    path = example(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["validate", "-i", str(path), "--json"])
    assert info.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["keyed"] == ["llama-a", "llama-b"]
    assert report["hosts"]["edge"]["services"] == {"llama-a": "external", "llama-b": "external", "gateway": "litellm"}
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["render", "-i", str(path), "--out", str(out)])
    assert info.value.code == 0
    assert (out / "gpu-a" / "inventory.yaml").is_file()
    assert (out / "gpu-a" / "systemd/user/labctl-llama-a.service").is_file()
    assert (out / "edge" / "labctl/litellm/config.yaml").is_file()
    assert not (out / "edge" / "systemd/user/labctl-llama-a.service").exists()


def test_a_run_on_some_hosts_gives_ansible_only_those(tmp_path: Path) -> None:
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / f"labctl-{ansible.__version__}-py3-none-any.whl").write_bytes(b"w")
    loaded = load_inventory(example(tmp_path))
    state = tmp_path / "fleet-state"
    run = ansible.prepare(loaded.inventory, loaded.fleet, state, keys.ensure_keys(state, loaded.fleet.keyed),
                          hosts=["edge"], name="run-up")
    document = yaml.safe_load((run.path / "hosts.yml").read_text().replace("!unsafe ", ""))
    assert list(document["all"]["hosts"]) == ["edge"] and run.hosts == ["edge"]
    assert document["all"]["children"]["labctl_first"]["hosts"] == {}
    assert list(document["all"]["children"]["labctl_last"]["hosts"]) == ["edge"]


def test_an_unknown_host_is_a_usage_error(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from labctl.cli import main

    with pytest.raises(SystemExit) as info:
        main(["status", "-i", str(example(tmp_path)), "--host", "gpu-z"])
    assert info.value.code == 2
    assert "no host named gpu-z" in capsys.readouterr().err
