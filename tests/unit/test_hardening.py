"""Unit hardening and resource limits, as rendered.

Scored by systemd's own ``systemd-analyze security --offline=true --user``: at most 3.0
for every unit of the root inventory and the CPU demo (GPU units included: none scores
above 2.3 today; the issue allows 4.5). That each server still serves under the set is
proven on the booted machine: every system-tier stack runs hardened by default.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from harness.invtext import BASE, edit
from harness.tools import require_command

from labctl.cli import main
from labctl.load import load_inventory
from labctl.ops.doctor import delegated_controllers, limit_checks
from labctl.render import render_all
from labctl.render.units import HARDENING

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCORE = re.compile(r"Overall exposure level for (\S+): (\d+\.\d+)")


def exposure(tmp_path: Path, files: dict[str, str]) -> dict[str, float]:
    analyze = require_command("systemd-analyze", "apt-get install systemd")
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    scores = {}
    for rel, text in files.items():
        if not rel.endswith(".service"):
            continue
        unit = tmp_path / rel.rsplit("/", 1)[-1]
        unit.write_text(text)
        proc = subprocess.run([analyze, "security", "--offline=true", "--user", "--no-pager", str(unit)],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_COLORS": "0"})
        match = SCORE.search(proc.stdout)
        assert match, (proc.stdout[-500:], proc.stderr[-500:])
        scores[match.group(1)] = float(match.group(2))
    return scores


@pytest.mark.parametrize("inventory", ["inventory.yaml", "examples/cpu-demo/inventory.yaml"])
def test_every_rendered_unit_scores_at_most_3(tmp_path: Path, inventory: str) -> None:
    inv = load_inventory(str(ROOT / inventory), text=(ROOT / inventory).read_text()).inventory
    scores = exposure(tmp_path, render_all(inv))
    assert scores and all(score <= 3.0 for score in scores.values()), scores
    # What an unhardened unit scores, measured the same way: the floor this is judged against.
    off = inv.model_copy(update={"defaults": inv.defaults.model_copy(update={"hardening": False})})
    (tmp_path / "off").mkdir()
    unhardened = exposure(tmp_path / "off", render_all(off))
    assert all(score >= 9.0 for score in unhardened.values()), unhardened
    print({u: (scores[u], unhardened[u]) for u in scores})


def units(text: str) -> dict[str, str]:
    files = render_all(load_inventory("inventory.yaml", text=text).inventory)
    return {rel.rsplit("/", 1)[-1]: body for rel, body in files.items() if rel.endswith(".service")}


def directives(unit: str) -> list[str]:
    return [line for line in unit.splitlines() if line and not line.startswith(("#", "["))]


def test_hardening_is_on_by_default_and_off_per_service() -> None:
    text = edit(("    port: 4000\n", "    port: 4000\n    hardening: false\n"))
    rendered = units(text)
    native = directives(rendered["labctl-native.service"])
    assert set(HARDENING) <= set(native)
    assert "PrivateDevices=yes" in native and "MemoryDenyWriteExecute=yes" in native
    assert "ReadWritePaths=/home/labuser/.local/state/labctl/native" in native
    assert not set(HARDENING) & set(directives(rendered["labctl-gateway.service"]))
    off = units(edit(("  gpu: false\n", "  gpu: false\ndefaults:\n  hardening: false\n")))
    assert all(not set(HARDENING) & set(directives(u)) for u in off.values())


def test_a_gpu_service_keeps_its_devices() -> None:
    text = edit(("  gpu: false\n", "  gpu: true\n"), ("    n_gpu_layers: 0\n    ctx_size", "    n_gpu_layers: 40\n    ctx_size"),
                ("    alias: bindings\n    n_gpu_layers: 0\n", "    alias: bindings\n    n_gpu_layers: 10\n"))
    native = directives(units(text)["labctl-native.service"])
    assert "PrivateDevices=yes" not in native and "MemoryDenyWriteExecute=yes" not in native
    assert "NoNewPrivileges=yes" in native


def test_limits_render_with_service_fields_over_defaults() -> None:
    text = edit(("  gpu: false\n", "  gpu: false\ndefaults:\n  limits: {memory_max: 8G, nice: 5}\n"),
                ("    port: 8080\n", "    port: 8080\n    limits: {memory_max: 4G, memory_high: 3G, cpu_quota_percent: 200,"
                                   " io_weight: 50, tasks_max: 256}\n    read_write_paths: [~/scratch]\n"))
    rendered = units(text)
    native = directives(rendered["labctl-native.service"])
    for line in ("MemoryMax=4G", "MemoryHigh=3G", "CPUQuota=200%", "IOWeight=50", "TasksMax=256", "Nice=5",
                 "ReadWritePaths=/home/labuser/scratch"):
        assert line in native, line
    bindings = directives(rendered["labctl-bindings.service"])
    assert "MemoryMax=8G" in bindings and "Nice=5" in bindings and not any("CPUQuota" in d for d in bindings)


@pytest.mark.parametrize("pairs, line, message", [
    ((("    port: 8080\n", "    port: 8080\n    limits: {memory_max: 1G, memory_high: 2G}\n"),), 10,
     "memory_high 2G is above memory_max 1G"),
    ((("    port: 8080\n", "    port: 8080\n    read_write_paths: ['/srv/my models']\n"),), 10,
     "cannot list; rename it, or set hardening: false"),
    ((("  gpu: false\n", "  gpu: false\n  state_dir: '~/lab state'\n"),), 5, "/home/labuser/lab state/native holds"),
    ((("    port: 8080\n", "    port: 8080\n    limits: {nice: -5}\n"),), 10, "greater than or equal to 0"),
    ((("    port: 8080\n", "    port: 8080\n    limits: {memory_max: 8GB}\n"),), 10, "memory_max"),
])
def test_bad_limits_and_paths_are_refused(tmp_path: Path, capsys, pairs, line: int, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "inventory.yaml"
    path.write_text(edit(*pairs))
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "-i", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith(f"{path}:{line}:") and message in err, err


def test_a_path_with_a_space_is_fine_unhardened() -> None:
    text = edit(("  gpu: false\n", "  gpu: false\n  state_dir: '~/lab state'\ndefaults:\n  hardening: false\n"))
    assert load_inventory("inventory.yaml", text=text).inventory.host.state_dir == "~/lab state"


def test_doctor_says_when_limits_are_not_enforced(tmp_path: Path) -> None:
    inv = load_inventory("inventory.yaml", text=edit(
        ("    port: 8080\n", "    port: 8080\n    limits: {memory_max: 1G, cpu_quota_percent: 50}\n"))).inventory
    (checks,) = limit_checks(inv, None)
    assert checks.status == "warn" and "no cgroup v2 hierarchy" in checks.message
    (checks,) = limit_checks(inv, {"memory", "pids"})
    assert checks.status == "warn" and "no cpu controller" in checks.message
    (checks,) = limit_checks(inv, {"memory", "cpu", "io", "pids"})
    assert checks.status == "ok"
    # The reader: the user manager's own cgroup.controllers file.
    folder = tmp_path / "user.slice/user-1000.slice/user@1000.service"
    folder.mkdir(parents=True)
    (folder / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    assert delegated_controllers(1000, tmp_path) == {"cpuset", "cpu", "io", "memory", "pids"}
    assert delegated_controllers(1001, tmp_path) is None


def test_base_has_no_limits_and_no_limit_checks() -> None:
    assert limit_checks(load_inventory("inventory.yaml", text=BASE).inventory, None) == []


def test_edit_refuses_what_has_no_unit(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "inventory.yaml"
    path.write_text(BASE)
    with pytest.raises(SystemExit) as exit_info:
        main(["edit", "nope", "-i", str(path)])
    assert exit_info.value.code == 2 and "'nope' is no service" in capsys.readouterr().err
