"""doctor's host checks that can be exercised without a host: mount propagation, secret
file modes, listener parsing."""

from __future__ import annotations

from pathlib import Path

from harness.invtext import edit

from labctl.host.proc import CommandResult
from labctl.host.systemd import UserManager
from labctl.load import load_inventory
from labctl.ops.doctor import (
    _env_var_check,
    _secret_file_check,
    manager_env_checks,
    root_is_shared,
)


def test_root_is_shared_reads_mountinfo() -> None:
    shared = "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    private = "22 1 0:21 / / rw,relatime - ext4 /dev/vda rw\n"
    assert root_is_shared(shared) is True
    assert root_is_shared(private) is False


def test_secret_file_checks(tmp_path: Path) -> None:
    path = tmp_path / "litellm.env"
    assert _secret_file_check("key", path, generate=True).status == "ok"
    assert _secret_file_check("key", path, generate=False).status == "fail"
    path.write_text("LITELLM_MASTER_KEY=x\n")
    path.chmod(0o644)
    check = _secret_file_check("key", path, generate=True)
    assert check.status == "fail" and check.fix == f"chmod 600 {path}"
    path.chmod(0o600)
    assert _secret_file_check("key", path, generate=True).status == "ok"


def test_an_endpoint_key_file_must_define_its_variable(tmp_path: Path) -> None:
    path = tmp_path / "cloud.env"
    assert _env_var_check("cloud key", path, "CLOUD_KEY").status == "fail"  # missing
    path.write_text("OTHER=x\n")
    path.chmod(0o600)
    check = _env_var_check("cloud key", path, "CLOUD_KEY")
    assert check.status == "fail" and check.message == f"{path} does not define CLOUD_KEY"
    assert "x" not in check.message.replace(str(path), "")  # never a value
    path.write_text("CLOUD_KEY=sk-123\n")
    check = _env_var_check("cloud key", path, "CLOUD_KEY")
    assert check.status == "ok" and "sk-123" not in str(check)


def test_a_chain_with_no_local_hop_is_warned_of() -> None:
    """A warning of the inventory's (validate, plan, up print it; doctor lists it as warn)."""
    text = edit(("    routes:\n", "    endpoints:\n      cloud:\n        provider: openai\n"
                                  "        api_base: https://api.example.com/v1\n    routes:\n"
                                  "      - {name: c1, endpoint: cloud, model: a}\n"
                                  "      - {name: c2, endpoint: cloud, model: b}\n"),
                ("      bindings: [native]\n", "      bindings: [native]\n      c1: [c2]\n      \"*\": [c1]\n"))
    loaded = load_inventory("inventory.yaml", text=text)
    assert [w.split(": ")[1] for w in loaded.warnings] == ["services.gateway.fallbacks.c1",
                                                            'services.gateway.fallbacks["*"]']
    assert all("nothing on this host answers" in w for w in loaded.warnings)


def test_env_references_are_checked_against_the_manager_environment() -> None:
    checks = manager_env_checks("gateway", ["CLOUD_KEY", "REDIS_PW", "CLOUD_KEY"], {"REDIS_PW", "PATH"})
    assert [(c.name, c.status) for c in checks] == [("gateway CLOUD_KEY", "fail"), ("gateway REDIS_PW", "ok")]
    assert "set-environment CLOUD_KEY=" in checks[0].fix
    (unknown,) = manager_env_checks("gateway", ["CLOUD_KEY"], None)
    assert unknown.status == "warn"


def test_manager_environment_names_never_keeps_values() -> None:
    class Fake(UserManager):
        def systemctl(self, *args: str, check: bool = True, timeout: float = 90) -> CommandResult:
            assert args == ("show-environment",)
            return CommandResult(0, "PATH=/usr/bin\nCLOUD_KEY=sk-secret\n", "")

    assert Fake(env={}).environment_names() == {"PATH", "CLOUD_KEY"}


def test_localhost_that_does_not_resolve_fails_with_the_fix(tmp_path: Path) -> None:
    """A host without a localhost entry (a minimal container with an empty /etc/hosts), for
    real: the resolver of this machine, in a mount namespace where /etc/hosts is empty."""
    import os
    import shutil
    import subprocess
    import sys

    from labctl.ops.doctor import resolves_check

    assert resolves_check("localhost", "why").status == "ok"  # this machine's /etc/hosts has it
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        import pytest

        pytest.skip("an empty /etc/hosts needs a mount namespace (root, unshare)")
    empty = tmp_path / "hosts"
    empty.write_text("")
    code = ("from labctl.ops.doctor import resolves_check; c = resolves_check('localhost', 'it exits'); "
            "print(c.status, '|', c.fix)")
    done = subprocess.run(["unshare", "--mount", "sh", "-c", f'mount --bind "$1" /etc/hosts && exec "$2" -c "$3"',
                           "sh", str(empty), sys.executable, code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "fail | add the line '127.0.0.1 localhost' to /etc/hosts"


def test_a_process_end_is_told_in_systemds_words() -> None:
    """How a unit's main process ended, as `systemctl show` records it (ExecMainCode and
    ExecMainStatus): up's message for a crash loop says it, not the running try's 0."""
    from labctl.host.systemd import UnitFacts, exit_text

    assert exit_text(1, 1) == "exited with status 1 (status=1/FAILURE)"
    assert exit_text(1, 42) == "exited with status 42"
    assert exit_text(2, 4).startswith("killed by SIGILL (status=4/ILL: an instruction this CPU lacks")
    assert exit_text(3, 11) == "killed by SIGSEGV (status=11/SEGV, core dumped: a crash in the program)"
    assert exit_text(2, 9) == "killed by SIGKILL (status=9/KILL)"
    assert exit_text(0, 0) == ""  # running, or never ran: nothing to tell
    facts = UnitFacts.parse("x.service", {"ExecMainCode": "2", "ExecMainStatus": "4", "ActiveState": "activating"})
    assert facts.last_exit.startswith("killed by SIGILL (status=4/ILL")
