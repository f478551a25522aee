"""``labctl plan``: empty target -> everything created; same render -> nothing to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness.invtext import BASE, edit

from labctl.cli import main
from labctl.host.systemd import UnitState
from labctl.load import load_inventory
from labctl.ops.plan import make_plan
from labctl.render import render_all


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(BASE)
    return path


def test_empty_target_creates_everything(capsys, inventory: Path, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "plan", "-i", str(inventory), "--root", str(tmp_path / "empty"), "--json")
    doc = json.loads(out)
    assert code == 0
    rendered = render_all(load_inventory(inventory).inventory)
    assert [f["path"] for f in doc["files"]] == sorted(rendered)
    assert {f["change"] for f in doc["files"]} == {"create"}
    verbs = [(a["verb"], a["unit"]) for a in doc["actions"]]
    assert verbs == [
        ("daemon-reload", None),
        ("enable", "labctl-bindings.service"), ("start", "labctl-bindings.service"),
        ("enable", "labctl-native.service"), ("start", "labctl-native.service"),
        ("enable", "labctl-gateway.service"), ("start", "labctl-gateway.service"),
        ("monitoring-up", None),
    ]


def test_same_render_means_no_changes_and_no_actions(capsys, inventory: Path, tmp_path: Path) -> None:
    target = tmp_path / "target"
    assert run(capsys, "render", "-i", str(inventory), "--out", str(target))[0] == 0
    code, out, _ = run(capsys, "plan", "-i", str(inventory), "--root", str(target))
    assert code == 0
    # One sentence, folded between words to 80 columns (the tmp path is long).
    assert out.startswith("no changes:") and " ".join(out.split()).endswith("; no actions")
    code, out, _ = run(capsys, "plan", "-i", str(inventory), "--root", str(target), "--json")
    doc = json.loads(out)
    assert doc["changes"] is False and doc["files"] == [] and doc["actions"] == []


def test_changed_backend_restarts_it_and_the_gateway_only(inventory: Path, tmp_path: Path) -> None:
    old = render_all(load_inventory(inventory).inventory)
    inventory.write_text(edit(("ctx_size: 2048", "ctx_size: 1024")))
    inv = load_inventory(inventory).inventory
    result = make_plan(inv, render_all(inv), old)
    assert [(f.path, f.change) for f in result.files] == [("systemd/user/labctl-native.service", "update")]
    assert "-ExecStart=" in result.files[0].diff and "--ctx-size 1024" in result.files[0].diff
    assert [(a.verb, a.unit) for a in result.actions] == [
        ("daemon-reload", None),
        ("restart", "labctl-native.service"),
        ("restart", "labctl-gateway.service"),
    ]


def test_gateway_config_change_restarts_only_the_gateway(inventory: Path) -> None:
    old = render_all(load_inventory(inventory).inventory)
    inventory.write_text(edit(("bindings: [native]", "native: [bindings]")))
    inv = load_inventory(inventory).inventory
    result = make_plan(inv, render_all(inv), old)
    assert [f.path for f in result.files] == ["labctl/litellm/config.yaml"]
    assert [(a.verb, a.unit) for a in result.actions] == [("restart", "labctl-gateway.service")]


def test_removed_service_is_stopped_disabled_and_deleted(inventory: Path) -> None:
    old = render_all(load_inventory(inventory).inventory)
    inventory.write_text(edit(("    ctx_size: 2048\n", "    ctx_size: 2048\n    enabled: false\n"),
                              ("      - name: native\n        service: native\n", ""),
                              ("    fallbacks:\n      bindings: [native]\n", "")))
    inv = load_inventory(inventory).inventory
    result = make_plan(inv, render_all(inv), old)
    changes = {f.path: f.change for f in result.files}
    assert changes["systemd/user/labctl-native.service"] == "delete"
    verbs = [(a.verb, a.unit) for a in result.actions]
    assert verbs[:3] == [("stop", "labctl-native.service"), ("disable", "labctl-native.service"),
                         ("daemon-reload", None)]


def test_unit_states_drive_start_and_enable(inventory: Path) -> None:
    inv = load_inventory(inventory).inventory
    files = render_all(inv)
    running = UnitState("loaded", "active", "enabled")
    states = {u: running for u in ("labctl-native.service", "labctl-bindings.service", "labctl-gateway.service")}
    assert make_plan(inv, files, files, states).empty
    states["labctl-native.service"] = UnitState("loaded", "failed", "enabled")
    assert [(a.verb, a.unit) for a in make_plan(inv, files, files, states).actions] == [
        ("start", "labctl-native.service")]


def test_only_labctl_unit_files_are_managed(inventory: Path, tmp_path: Path) -> None:
    from labctl.ops.plan import read_installed

    root = tmp_path / "cfg"
    (root / "systemd/user").mkdir(parents=True)
    (root / "systemd/user/someone-else.service").write_text("[Service]\nExecStart=/bin/true\n")
    (root / "labctl/secrets").mkdir(parents=True)
    (root / "labctl/secrets/litellm.env").write_text("LITELLM_MASTER_KEY=x\n")
    (root / "systemd/user/.labctl-native.service.123.tmp").write_text("torn")
    # `systemctl enable` links units into default.target.wants/: the manager's, not ours.
    (root / "systemd/user/labctl-native.service").write_text("[Service]\n")
    (root / "systemd/user/default.target.wants").mkdir()
    (root / "systemd/user/default.target.wants/labctl-native.service").symlink_to(
        root / "systemd/user/labctl-native.service")
    assert read_installed(root) == {"systemd/user/labctl-native.service": "[Service]\n"}

