"""The gateway's launcher (labctl.kinds.litellm.launch): rendered beside the config, named
by the unit's ExecStart with proxy_cli's own arguments after it, and a change to it alone
restarts the gateway."""

from __future__ import annotations

import shlex
from pathlib import Path

from harness.invtext import BASE

from labctl.load import load_inventory
from labctl.ops.plan import make_plan
from labctl.render import render_all
from labctl.kinds.litellm import launch as litellm_launch


def test_the_unit_starts_the_launcher_rendered_beside_the_config(tmp_path: Path) -> None:
    inv = load_inventory("inventory.yaml", text=BASE).inventory
    files = render_all(inv)
    assert files["labctl/litellm/labctl_litellm.py"] == litellm_launch.MODULE
    compile(litellm_launch.MODULE, "labctl_litellm.py", "exec")
    exec_start = next(line for line in files["systemd/user/labctl-gateway.service"].splitlines()
                      if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    config_dir = Path(argv[argv.index("--config") + 1]).parent
    assert argv[1] == str(config_dir / "labctl_litellm.py")
    assert argv[2:] == ["--config", str(config_dir / "config.yaml"), "--host", "127.0.0.1", "--port",
                        str(inv.services["gateway"].port)]


def test_a_changed_launcher_alone_restarts_the_gateway() -> None:
    inv = load_inventory("inventory.yaml", text=BASE).inventory
    files = render_all(inv)
    old = {**files, "labctl/litellm/labctl_litellm.py": "# an older launcher\n"}
    plan = make_plan(inv, files, old)
    assert [f.path for f in plan.files] == ["labctl/litellm/labctl_litellm.py"]
    assert [(a.verb, a.unit, a.reason) for a in plan.actions] == [
        ("restart", "labctl-gateway.service", "labctl_litellm.py changed")]
