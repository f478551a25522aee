"""Every path labctl hands to Ansible or ssh means exactly that one file (labctl.handover).

The refusals: for every field whose value reaches Ansible or ssh (REACHES; a walker below
keeps it complete), each hostile text that field's consumer would read as something else
(HOSTILE, written from ansible-core's code and ssh_config(5), not from labctl.handover) is
refused with one ``file:line: field: message`` line and exit 2, before anything runs; and
the hand-over itself refuses it again (EncodeError) when a model skips validation.

The real consumers, with labctl's own environment and argv, from a directory holding decoys
(a repository that ships the inventory can ship an ``ansible.cfg`` and second inventories):

- ``ansible-inventory`` lists exactly labctl's hosts, ``ansible-config dump`` resolves every
  path setting to exactly the path labctl meant, and no decoy is read or run;
- Ansible's ssh command line, read back by ``ssh -G``, names exactly labctl's key and
  ``known_hosts``;
- Ansible's modules on a host (connection local) create and read exactly the paths meant.

And the controls: with the guard (or ANSIBLE_CONFIG, or ``-i``) taken away, the same checks
fail: a decoy inventory is read, a decoy ``ansible.cfg`` runs its script, ssh expands a
token, a module expands ``$HOME``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_fleet_hostile import ARGV, CONTROLLER, FLEET_FULL, HARMLESS, HOST, HOSTILE, REACHES
from test_hostile_render import set_at, string_leaves

from labctl import __version__, handover
from labctl.cli import main
from labctl.errors import InputError, InvalidInventory
from labctl.fleet import ansible, keys
from labctl.load import load_inventory
from labctl.encode import EncodeError

ERROR_LINE = re.compile(r"^(?P<file>[^\n]+):(?P<line>\d+): (?P<path>\S[^\n]*?): (?P<msg>[^\n]+)$")


def hostile_value(loc: tuple[str, ...], text: str) -> str:
    base = FLEET_FULL
    for part in loc:
        base = base[part]
    assert isinstance(base, str)
    return f"{base}/a{text}b"


def write(tmp: Path, data: dict[str, Any]) -> Path:
    path = tmp / "inventory.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    return path


# --- the refusals ---------------------------------------------------------------------------

CASES = [(loc, text, who) for loc in REACHES for text, who in HOSTILE]


@pytest.mark.parametrize(("loc", "text", "who"), CASES, ids=[f"{'.'.join(c[0])}={c[1]!r}" for c in CASES])
def test_a_path_its_consumer_would_misread_is_refused_at_its_field(tmp_path: Path, loc: tuple[str, ...], text: str,
                                                                    who: set[str]) -> None:
    path = write(tmp_path, set_at(FLEET_FULL, loc, hostile_value(loc, text)))
    if REACHES[loc] not in who:
        # Not refused for a consumer that does not misread it (other rules may refuse it: a
        # home with a space cannot be a hardened unit's ReadWritePaths=).
        try:
            load_inventory(path)
        except (InvalidInventory, InputError) as exc:
            # Another consumer's rule may refuse it (a home with '\\' is a wildcard to systemd's
            # EnvironmentFile=), never the rule of one that reads it as written.
            assert not [line for line in exc.lines() if ": must not hold " in line
                        and any(why in line for _, why in handover.READS[REACHES[loc]])], exc.lines()
        return
    with pytest.raises((InvalidInventory, InputError)) as info:
        load_inventory(path)
    assert info.value.exit_code == 2
    lines = info.value.lines()
    assert len(lines) == 1, lines
    m = ERROR_LINE.match(lines[0])
    assert m, lines[0]
    assert (m.group("file"), m.group("path")) == (str(path), ".".join(loc)), lines[0]
    assert f"{loc[-1]}:" in path.read_text().splitlines()[int(m.group("line")) - 1], lines[0]


@pytest.mark.parametrize("loc", list(REACHES), ids=[".".join(loc) for loc in REACHES])
def test_a_harmless_path_is_accepted(tmp_path: Path, loc: tuple[str, ...]) -> None:
    load_inventory(write(tmp_path, set_at(FLEET_FULL, loc, hostile_value(loc, HARMLESS))))


@pytest.mark.parametrize("loc", [loc for loc, who in REACHES.items() if who != ARGV], ids=lambda loc: ".".join(loc))
def test_validate_says_so_in_one_line_and_exits_2(tmp_path: Path, capsys, loc: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, set_at(FLEET_FULL, loc, hostile_value(loc, "${HOME}")))
    with pytest.raises(SystemExit) as info:
        main(["validate", "-i", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(rf"^{re.escape(str(path))}:\d+: {re.escape('.'.join(loc))}: must not hold '\$'",
                                      err[0]), err


def test_every_field_that_reaches_ansible_or_ssh_is_in_the_table(tmp_path: Path) -> None:
    """Mark each path in FLEET_FULL and look for the mark in everything labctl hands to Ansible:
    the fields found are exactly REACHES (fleet.pip.find_links is read by labctl alone)."""
    leaves = [loc for loc in string_leaves(FLEET_FULL) if _value(loc).startswith(("/", "~/"))]
    found = set()
    for loc in leaves:
        if loc in (("fleet", "state_dir"), ("fleet", "pip", "find_links")):
            marked = str(tmp_path / f"m-{len(found)}" / "zq7mark")
        else:
            marked = _value(loc) + "/zq7mark"
        run, env, argv = _handed(tmp_path / f"case-{len(found)}-{loc[-1]}", set_at(FLEET_FULL, loc, marked))
        text = (run.path / "hosts.yml").read_text() + json.dumps(env) + json.dumps(argv)
        if "zq7mark" in text:
            found.add(loc)
    assert found == set(REACHES), f"reaches Ansible or ssh but not in REACHES: {sorted(found - set(REACHES))}; " \
                                  f"in REACHES but never handed over: {sorted(set(REACHES) - found)}"


def _value(loc: tuple) -> str:
    node: Any = FLEET_FULL
    for part in loc:
        node = node[part]
    return node


def _handed(tmp: Path, data: dict[str, Any]) -> tuple[ansible.RunDir, dict[str, str], list[str]]:
    """What labctl hands to Ansible for ``data``: the run directory, the environment, the argv's inventory."""
    tmp.mkdir(parents=True, exist_ok=True)
    data = json.loads(json.dumps(data))
    fleet = data["fleet"]
    # The controller's paths under tmp, unless the case names its own: nothing is written in ~.
    if fleet["state_dir"].startswith("~/"):
        fleet["state_dir"] = str(tmp / "state")
    if fleet["pip"]["find_links"].startswith("~/"):
        fleet["pip"]["find_links"] = str(tmp / "wheels")
    wheels = Path(fleet["pip"]["find_links"])
    wheels.mkdir(parents=True, exist_ok=True)
    (wheels / f"labctl-{__version__}-py3-none-any.whl").write_bytes(b"w")
    loaded = load_inventory(write(tmp, data))
    state = Path(loaded.inventory.fleet.state_dir)
    run = ansible.prepare(loaded.inventory, loaded.fleet, state, keys.ensure_keys(state, loaded.fleet.keyed),
                          name="run-up")
    return run, ansible.environment(run, str(tmp / "cp")), ansible.inventory_args(run)


@pytest.mark.parametrize(("text", "who"), HOSTILE, ids=[repr(t) for t, _ in HOSTILE])
def test_the_hand_over_refuses_it_too(tmp_path: Path, text: str, who: set[str]) -> None:
    """Defence in depth: a model that skipped validation (model_copy) still cannot hand a
    hostile path to Ansible or ssh; nothing is written where it points."""
    run, _, _ = _handed(tmp_path, FLEET_FULL)
    inv, plan = run.inv, run.plan
    if CONTROLLER in who:
        weird = tmp_path / f"st{text}ate"
        with pytest.raises(EncodeError):
            ansible.environment(ansible.RunDir(inv, plan, weird, weird / "run-up"), "/tmp")
        with pytest.raises(EncodeError):
            ansible.prepare(inv, plan, weird, {}, name="run-up")
        assert not weird.exists()
        key = inv.model_copy(update={"fleet": inv.fleet.model_copy(update={"ssh_key": str(weird)})})
        with pytest.raises(EncodeError):
            ansible.environment(ansible.RunDir(key, plan, run.state_dir, run.path), "/tmp")
    if HOST in who:
        venv = inv.model_copy(update={"fleet": inv.fleet.model_copy(update={"venv": f"/srv/v{text}v"})})
        with pytest.raises(EncodeError):
            ansible.prepare(venv, plan, run.state_dir, keys.ensure_keys(run.state_dir, plan.keyed), name="run-x")


# --- the real consumers ----------------------------------------------------------------------

def _tool(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        from harness.tools import missing

        missing(name, "pip install 'labctl[fleet]' (ansible-core) into .venv")
    return str(path)


def _repo(tmp: Path) -> Path:
    """A directory an inventory could come from, holding what Ansible reads from the current
    directory: an ansible.cfg whose vault password 'file' is a script, and inventories."""
    repo = tmp / "repo"
    repo.mkdir()
    marker = tmp / "DECOY-RAN"
    script = repo / "pw.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\necho pw\n")
    script.chmod(0o755)
    (repo / "ansible.cfg").write_text("[defaults]\nvault_password_file = ./pw.sh\ninventory = ./decoy.yml\n")
    _decoy(repo / "decoy.yml")
    return repo


def _decoy(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("all:\n  hosts:\n    decoy:\n      ansible_ssh_common_args: -o ProxyCommand=false\n")


def _listing(run: ansible.RunDir, env: dict[str, str], cwd: Path, argv: list[str] | None = None) -> set[str]:
    proc = subprocess.run([_tool("ansible-inventory"), *(ansible.inventory_args(run) if argv is None else argv),
                           "--list"], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(json.loads(proc.stdout)["_meta"]["hostvars"])


def _config(env: dict[str, str], cwd: Path) -> dict[str, Any]:
    proc = subprocess.run([_tool("ansible-config"), "dump", "-f", "json"], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {item["name"]: item["value"] for item in json.loads(proc.stdout) if "name" in item}


def _strange(tmp: Path) -> dict[str, Any]:
    """FLEET_FULL with its controller paths under ``tmp``, spelled with every harmless character."""
    data = json.loads(json.dumps(FLEET_FULL))
    data["fleet"]["state_dir"] = str(tmp / f"st{HARMLESS}ate")
    data["fleet"]["ssh_key"] = str(tmp / f"k{HARMLESS}ey")
    return data


def test_ansible_reads_exactly_labctls_inventory_and_settings(tmp_path: Path) -> None:
    run, env, argv = _handed(tmp_path, _strange(tmp_path))
    repo = _repo(tmp_path)
    assert _listing(run, env, repo) == set(run.inv.hosts)
    config = _config(env, repo)
    state = run.state_dir
    assert config["CONFIG_FILE"] == str(run.path / "ansible.cfg")
    assert config["ANSIBLE_HOME"] == str(state / "ansible")
    assert config["DEFAULT_PRIVATE_KEY_FILE"] == env["ANSIBLE_PRIVATE_KEY_FILE"] == str(tmp_path / f"k{HARMLESS}ey")
    assert config["DEFAULT_CALLBACK_PLUGIN_PATH"] == [str(ansible.CALLBACKS)]
    assert config["DEFAULT_LOCAL_TMP"].startswith(str(state / "ansible" / "tmp") + "/")
    assert config["INVENTORY_ENABLED"] == ["yaml"]
    _only_meant_paths(config, tmp_path, [state, Path(env["ANSIBLE_PRIVATE_KEY_FILE"])])
    assert not (tmp_path / "DECOY-RAN").exists(), "Ansible ran the decoy ansible.cfg's script"


def _only_meant_paths(config: dict[str, Any], tmp: Path, meant: list[Path]) -> None:
    """Every path Ansible resolved under ``tmp`` (plugin paths derived from ANSIBLE_HOME
    included) is one labctl meant or lies inside one: none is a fragment of one, none the
    current directory's."""
    for name, value in config.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item.startswith(str(tmp)):
                assert any(item == str(m) or item.startswith(f"{m}/") for m in meant), f"{name}: {item}"


def test_control_without_ansible_config_the_repositorys_ansible_cfg_runs(tmp_path: Path) -> None:
    run, env, _ = _handed(tmp_path, _strange(tmp_path))
    repo = _repo(tmp_path)
    del env["ANSIBLE_CONFIG"]
    _listing(run, env, repo)
    assert (tmp_path / "DECOY-RAN").exists(), "the control did not reach the decoy: the test above proves nothing"


def _unguarded(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for consumer in handover.READS:
        monkeypatch.setitem(handover.READS, consumer, ())


def test_control_without_the_guard_ansible_expands_a_state_dir(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``${HOME}`` in the state dir: Ansible reads the inventory (and ANSIBLE_HOME) elsewhere."""
    _unguarded(monkeypatch)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    data = _strange(tmp_path)
    data["fleet"]["state_dir"] = str(tmp_path) + "/s${HOME}"
    run, env, _ = _handed(tmp_path, data)
    _decoy(Path(str(tmp_path) + "/s" + str(home)) / "run-up" / "hosts.yml")
    assert _listing(run, env, tmp_path) == {"decoy"}


def test_control_without_the_guard_a_colon_puts_the_current_directory_on_the_plugin_paths(
        tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _unguarded(monkeypatch)
    data = _strange(tmp_path)
    data["fleet"]["state_dir"] = str(tmp_path / "a:rel")
    run, env, _ = _handed(tmp_path, data)
    repo = _repo(tmp_path)
    config = _config(env, repo)
    assert str(repo / "rel" / "ansible" / "plugins" / "modules") in config["DEFAULT_MODULE_PATH"]
    with pytest.raises(AssertionError):
        _only_meant_paths(config, tmp_path, [run.state_dir, Path(env["ANSIBLE_PRIVATE_KEY_FILE"])])


def test_a_comma_in_ansible_inventory_reads_a_second_inventory_and_dash_i_does_not(
        tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The audit's case, with the guard taken away: ANSIBLE_INVENTORY (what labctl used to set)
    is split at the comma and its relative half read from the current directory; ``-i``
    (what labctl passes now) reads the one file that exists."""
    _unguarded(monkeypatch)
    data = _strange(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "some.yml").write_text("all:\n  vars: {x: 1}\n")  # what the first half names
    data["fleet"]["state_dir"] = str(tmp_path / "a,decoy")
    run, env, argv = _handed(tmp_path, data)
    repo = _repo(tmp_path)
    _decoy(repo / "decoy" / "run-up" / "hosts.yml")
    assert _listing(run, env, repo) == set(run.inv.hosts)
    old = {**env, "ANSIBLE_INVENTORY": str(run.path / "hosts.yml")}
    assert "decoy" in _listing(run, old, repo, argv=[])


FAKE_SSH = """#!{python}
import json, os, sys
with open(os.path.join(os.path.dirname(sys.argv[0]), "ssh-argv.jsonl"), "a") as out:
    out.write(json.dumps(sys.argv[1:]) + "\\n")
sys.exit(255)
"""


def _fake_ssh(tmp: Path) -> Path:
    """A stand-in ssh that records its argv (in ``tmp/bin/ssh-argv.jsonl``) and fails as an
    unreachable host does; the directory to put first on PATH."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "ssh").write_text(FAKE_SSH.format(python=sys.executable))
    (bin_dir / "ssh").chmod(0o755)
    return bin_dir


def _ssh_config(tmp: Path, run: ansible.RunDir, env: dict[str, str]) -> dict[str, list[str]]:
    """Ansible's ssh command line for gpu-a (recorded by a stand-in ssh), read back by the real ``ssh -G``."""
    ssh = require_ssh()
    bin_dir = _fake_ssh(tmp)
    record = bin_dir / "ssh-argv.jsonl"
    env = {**env, "PATH": f"{bin_dir}:{env['PATH']}"}
    subprocess.run([_tool("ansible"), "gpu-a", *ansible.inventory_args(run), "-m", "ansible.builtin.ping"], env=env,
                   cwd=run.path, capture_output=True, text=True, timeout=120)
    argv = json.loads(record.read_text().splitlines()[0])
    # options and destination, without the remote command
    proc = subprocess.run([ssh, "-G", *argv[:-1]], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "HOME": env["HOME"]})
    assert proc.returncode == 0, proc.stderr
    out: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        out.setdefault(key, []).append(value)
    return out


def require_ssh() -> str:
    from harness.tools import require_command

    return require_command("ssh", "apt-get install openssh-client")


def test_ssh_reads_exactly_labctls_key_and_known_hosts(tmp_path: Path) -> None:
    run, env, _ = _handed(tmp_path, _strange(tmp_path))
    config = _ssh_config(tmp_path, run, env)
    assert config["identityfile"] == [str(tmp_path / f"k{HARMLESS}ey")]
    assert config["userknownhostsfile"] == [str(run.state_dir / "known_hosts")]


def test_labctls_own_run_reaches_every_host_through_its_own_files(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """run_playbook itself (argv, -i, environment, working directory), started from a
    directory holding decoys: every host is tried over ssh with labctl's key (the stand-in
    ssh refuses: unreachable), no decoy host appears, the decoy's script never runs."""
    run, env, _ = _handed(tmp_path, _strange(tmp_path))
    monkeypatch.chdir(_repo(tmp_path))
    bin_dir = _fake_ssh(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    results = ansible.run_playbook(run, "status.yml", timeout=120)
    assert {h: r.status for h, r in results.items()} == {h: "unreachable" for h in run.inv.hosts}
    report = json.loads(run.report_path.read_text())
    assert set(report["hosts"]) == set(run.inv.hosts)
    tried = [json.loads(line) for line in (bin_dir / "ssh-argv.jsonl").read_text().splitlines()]
    # each host at its SSH name where it has one (edge.lan), else at its address
    assert {argv[-2] for argv in tried} == {h.ssh_host or h.address for h in run.inv.hosts.values()}
    assert "edge.lan" in {argv[-2] for argv in tried}
    assert all(f'IdentityFile="{tmp_path}/k{HARMLESS}ey"' in argv for argv in tried)
    assert not (tmp_path / "DECOY-RAN").exists()


def test_control_without_the_guard_ssh_expands_a_token_and_ansible_a_variable(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _unguarded(monkeypatch)
    data = _strange(tmp_path)
    data["fleet"]["state_dir"] = str(tmp_path / "s%date")
    data["fleet"]["ssh_key"] = str(tmp_path) + "/k${HOME}"
    run, env, _ = _handed(tmp_path, data)
    config = _ssh_config(tmp_path, run, env)
    assert config["userknownhostsfile"] != [str(run.state_dir / "known_hosts")]
    assert config["identityfile"] != [str(tmp_path) + "/k${HOME}"]


HOST_PLAY = """
- hosts: gpu-a
  gather_facts: false
  tasks:
    - ansible.builtin.file: {path: "{{ item }}", state: directory, mode: "0700"}
      loop: "{{ labctl_dirs }}"
    - ansible.builtin.copy: {src: "{{ labctl_slice_src }}", dest: "{{ labctl_slice }}", mode: "0600"}
    - ansible.builtin.command:
        expand_argument_vars: false
        argv: ["{{ labctl_python }}", -c, "import sys; print(sys.argv[1])", "{{ labctl_venv }}"]
      register: said
    - ansible.builtin.copy: {content: "{{ said.stdout }}", dest: "{{ labctl_dirs[0] }}/venv-said", mode: "0600"}
"""


def _on_host(tmp: Path, home: str) -> None:
    data = _strange(tmp)
    data["hosts"]["gpu-a"]["home"] = home
    # argv[0] only, taken literally (expand_argument_vars: false): a $HOME in it stays itself
    python = Path(f"{tmp}/bin$HOME%d/python")
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    data["fleet"]["python"] = str(python)
    run, env, argv = _handed(tmp, data)
    play = tmp / "play.yml"
    play.write_text(HOST_PLAY)
    proc = subprocess.run([_tool("ansible-playbook"), *argv, "-c", "local", "-e",
                           f"ansible_python_interpreter={sys.executable}", str(play)],
                          env={**env, "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default"}, cwd=run.path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_the_hosts_modules_use_exactly_the_paths_labctl_means(tmp_path: Path) -> None:
    """What only the controller's consumers misread is carried to a host's modules as it is
    (a space or a quote too, but a hardened unit's ReadWritePaths= refuses them in a home),
    and fleet.python, argv[0] only, even with a $HOME in it."""
    home = f"{tmp_path}/ho,:%d%%#x{{{{x}}}}{HARMLESS}me"
    _on_host(tmp_path, home)
    config = Path(home) / ".config" / "labctl" / "fleet"
    assert (config / "inventory.yaml").is_file()
    assert (Path(home) / ".config" / "labctl" / "secrets" / "api-keys").is_dir()
    assert (config / "venv-said").read_text() == f"{home}/.local/share/labctl/venv"


def test_control_without_the_guard_a_module_expands_home(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _unguarded(monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    home = f"{tmp_path}/ho$HOME"
    _on_host(tmp_path, home)
    assert not (Path(home) / ".config" / "labctl" / "fleet" / "inventory.yaml").exists()
    assert (Path(f"{tmp_path}/ho{tmp_path}/h") / ".config" / "labctl" / "fleet" / "inventory.yaml").is_file()


def test_a_home_that_ansible_would_misread_is_named_before_anything_is_written(tmp_path: Path, capsys,
                                                                               monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The inventory's ``~/`` passed validation; this controller's $HOME holds a comma: exit 3,
    one line, and no state dir is made there."""
    home = tmp_path / "ho,me"
    monkeypatch.setenv("HOME", str(home))
    path = write(tmp_path, FLEET_FULL)
    with pytest.raises(SystemExit) as info:
        main(["status", "-i", str(path)])
    assert info.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be handed to Ansible and ssh" in err[0] and "$HOME" in err[0], err
    assert not home.exists()
