"""Every expression in labctl's playbooks evaluates, with the real ansible-core, against the
variables labctl writes for every way a fleet installs labctl.

ansible-core 2.19 reads a ``!unsafe`` scalar by resolving its text again as if it were plain:
``!unsafe ''`` is null (the audit's case: a fleet without ``fleet.pip.find_links`` failed
``labctl_wheels_tar | length > 0``), ``!unsafe 'true'`` a bool, ``!unsafe '='`` breaks the
whole inventory. So labctl writes such strings plain (labctl.fleet.ansible.unsafe), and the
playbooks decide on plain typed values it writes (``labctl_ship_wheels``).

The check: every task of every playbook (blocks included) becomes a debug task that
templates its conditions (``when``, ``changed_when``, ``failed_when``), its module
arguments, its ``timeout`` and its ``loop``; registered results are given as extra vars.
ansible-playbook runs that over the hosts.yml labctl's own prepare() wrote, connection
local, for a fleet with find_links, with index_url, and with neither. The controls show the
check fails on the old expression with an empty ``!unsafe`` value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_fleet_hostile import FLEET_FULL

from labctl import __version__
from labctl.fleet import ansible, keys
from labctl.load import load_inventory

# Task keys that are not the module.
KEYWORDS = {"name", "when", "changed_when", "failed_when", "register", "loop", "loop_control", "no_log", "timeout",
            "block", "rescue", "always", "tags", "ignore_errors", "become", "vars", "any_errors_fatal"}
CONDITIONS = ("when", "changed_when", "failed_when")
OLD_CONDITION = "labctl_wheels_tar | length > 0"


def tasks(node: Any) -> list[dict[str, Any]]:
    """Every task and block in a playbook or task file, depth first."""
    out = []
    for item in node or []:
        if "hosts" in item:  # a play
            out += tasks(item.get("tasks"))
            continue
        out.append(item)
        for part in ("block", "rescue", "always"):
            out += tasks(item.get(part))
    return out


def probes(edit: Any = None) -> tuple[list[dict[str, Any]], set[str]]:
    """One debug task per playbook task, templating everything it would template; and the
    names the tasks register."""
    out, registered = [], set()
    for book in sorted(ansible.PLAYBOOKS.glob("*.yml")):
        for i, task in enumerate(tasks(yaml.safe_load(book.read_text()))):
            if edit is not None:
                task = edit(task)
            module = [k for k in task if k not in KEYWORDS]
            if module == ["ansible.builtin.import_tasks"]:
                continue  # the imported file is walked itself
            if "register" in task:
                registered.add(task["register"])
            msg: dict[str, Any] = {}
            for key in CONDITIONS:
                if key in task:
                    conds = task[key] if isinstance(task[key], list) else [task[key]]
                    msg[key] = "{{ " + " and ".join(f"(({c}) | bool)" for c in conds) + " }}"
            if module:
                msg["args"] = task[module[0]]
            if "timeout" in task:
                msg["timeout"] = task["timeout"]
            probe: dict[str, Any] = {"name": f"{book.name}[{i}] {task.get('name', '')}",
                                     "ansible.builtin.debug": {"msg": msg}}
            if "loop" in task:
                probe["loop"] = task["loop"]
            out.append(probe)
    return out, registered


def prepared(tmp: Path, pip: dict[str, str] | None) -> ansible.RunDir:
    data = json.loads(json.dumps(FLEET_FULL))
    data["fleet"]["state_dir"] = str(tmp / "state")
    data["fleet"]["ssh_key"] = str(tmp / "key")
    if pip is None:
        del data["fleet"]["pip"]
    else:
        data["fleet"]["pip"] = pip
    wheels = tmp / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    (wheels / f"labctl-{__version__}-py3-none-any.whl").write_bytes(b"w")
    path = tmp / "inventory.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    loaded = load_inventory(path)
    state = tmp / "state"
    return ansible.prepare(loaded.inventory, loaded.fleet, state, keys.ensure_keys(state, loaded.fleet.keyed),
                           name="run-up")


def evaluate(tmp: Path, run: ansible.RunDir, edit: Any = None) -> dict[str, Any]:
    """Run the probes over every host; labctl's report callback says how each ended."""
    found, registered = probes(edit)
    play = tmp / "probe.yml"
    play.write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": False, "tasks": found}], sort_keys=False))
    extra = tmp / "registered.json"
    extra.write_text(json.dumps({name: {"rc": 0, "stdout": "", "stderr": ""} for name in registered}))
    tool = Path(sys.executable).with_name("ansible-playbook")
    if not tool.exists():
        from harness.tools import missing

        missing("ansible-playbook", "pip install 'labctl[fleet]' (ansible-core) into .venv")
    env = ansible.environment(run, str(tmp))
    proc = subprocess.run([str(tool), *ansible.inventory_args(run), "-c", "local", "-e", f"@{extra}", str(play)],
                          env={**env, "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default"}, cwd=run.path,
                          capture_output=True, text=True, timeout=120)
    report = json.loads(run.report_path.read_text())
    return {"rc": proc.returncode, "output": proc.stdout[-4000:] + proc.stderr[-2000:], "hosts": report["hosts"],
            "probes": len(found)}


PIP = {"find_links": {"find_links": "WHEELS"}, "index_url": {"index_url": "https://pypi.example.org/simple"},
       "neither": None}


@pytest.mark.parametrize("source", list(PIP))
def test_every_playbook_expression_evaluates_for_every_pip_source(tmp_path: Path, source: str) -> None:
    pip = PIP[source]
    if pip is not None and pip.get("find_links") == "WHEELS":
        pip = {"find_links": str(tmp_path / "wheels")}
    run = prepared(tmp_path, pip)
    hosts = yaml.load((run.path / "hosts.yml").read_text(), Loader=yaml.BaseLoader)["all"]["hosts"]
    for values in hosts.values():
        assert values["labctl_ship_wheels"] == ("true" if source == "find_links" else "false")
    result = evaluate(tmp_path, run)
    assert result["rc"] == 0, result["output"]
    assert set(result["hosts"]) == set(run.hosts)
    for host, entry in result["hosts"].items():
        assert entry["status"] == "ok", (host, entry)
        assert len(entry["tasks"]) == result["probes"], (host, entry["tasks"])


def test_control_the_old_length_test_fails_on_an_empty_unsafe_string(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The audit's case: every string tagged !unsafe (the empty one too), and the playbook
    testing the tarball path's length: ansible-core 2.19 fails every host."""
    monkeypatch.setattr(ansible, "unsafe", lambda value: ansible.Unsafe(value) if isinstance(value, str) else
                        [ansible.unsafe(v) for v in value] if isinstance(value, list) else
                        {k: ansible.unsafe(v) for k, v in value.items()} if isinstance(value, dict) else value)
    run = prepared(tmp_path, None)
    assert "labctl_wheels_tar: !unsafe ''" in (run.path / "hosts.yml").read_text()

    def old(task: dict[str, Any]) -> dict[str, Any]:
        return {**task, "when": OLD_CONDITION} if task.get("when") == "labctl_ship_wheels" else task

    result = evaluate(tmp_path, run, old)
    assert result["rc"] != 0
    assert all(entry["status"] == "failed" for entry in result["hosts"].values()), result["hosts"]
    assert "NoneType" in result["output"], result["output"]
    # The walker reaches that condition: without the edit the same inventory evaluates.
    assert any("labctl_ship_wheels" in json.dumps(p) for p in probes()[0])


# Text that YAML's implicit resolution reads as another type, and text it leaves a string.
TEXTS = ["", "true", "yes", "off", "null", "~", "123", "0x1f", "1:20", ".5", ".inf", "2024-01-01", "=", "<<",
         "{{ x }}", "/a/b", "10.77.0.11", "labctl==1.0 index:default"]


def test_every_string_reads_back_as_itself(tmp_path: Path) -> None:
    """Each string labctl writes into hosts.yml reads back, in ansible-core, as that string:
    tagged !unsafe where Ansible keeps it a string, plain where it would not (no template
    syntax fits such text)."""
    document = {"all": {"hosts": {"h": {f"v{i}": ansible.unsafe(text) for i, text in enumerate(TEXTS)}
                                  | {"w": ansible.unsafe(TEXTS)}}}}
    hosts = tmp_path / "hosts.yml"
    hosts.write_text(yaml.dump(document, Dumper=ansible._Dumper))
    shown = _read_back(tmp_path, hosts)
    for i, text in enumerate(TEXTS):
        for got in (shown[f"v{i}"], shown["w"][i]):
            assert got in (text, {"__ansible_unsafe": text}), (text, got)
        if "{{" in text:
            assert shown[f"v{i}"] == {"__ansible_unsafe": text}


def test_control_tagging_every_string_unsafe_changes_its_type(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts.yml"
    hosts.write_text("all:\n  hosts:\n    h:\n      a: !unsafe ''\n      b: !unsafe 'true'\n      c: !unsafe '1:20'\n")
    assert _read_back(tmp_path, hosts) == {"a": None, "b": True, "c": 80}


def _read_back(tmp: Path, hosts: Path) -> dict[str, Any]:
    tool = Path(sys.executable).with_name("ansible-inventory")
    proc = subprocess.run([str(tool), "-i", str(hosts), "--list"], capture_output=True, text=True, timeout=120,
                          env={"PATH": os.environ["PATH"], "HOME": str(tmp), "LC_ALL": "C.UTF-8",
                               "PYTHONWARNINGS": "ignore", "ANSIBLE_HOME": str(tmp / "ansible"),
                               "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "True"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)["_meta"]["hostvars"]["h"]


def test_every_command_takes_its_argv_literally() -> None:
    """ansible.builtin.command expands $VAR and ~ in each argv word unless told not to
    (expand_argument_vars, default true): every command task of the playbooks says false
    and gives argv, never a command line."""
    commands = [(book.name, task) for book in sorted(ansible.PLAYBOOKS.glob("*.yml"))
                for task in tasks(yaml.safe_load(book.read_text())) if "ansible.builtin.command" in task]
    assert commands
    for book, task in commands:
        args = task["ansible.builtin.command"]
        assert args.get("expand_argument_vars") is False and "argv" in args and "cmd" not in args, (book, task)
    assert not [(book.name, task) for book in ansible.PLAYBOOKS.glob("*.yml")
                for task in tasks(yaml.safe_load(book.read_text()))
                if {"command", "shell", "ansible.builtin.shell", "ansible.builtin.raw", "raw"} & set(task)]
