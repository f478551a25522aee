"""doctor's host checks that can be exercised without a host: mount propagation, secret
file modes, listener parsing."""

from __future__ import annotations

from pathlib import Path

from labctl.doctor import _secret_file_check, root_is_shared


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
