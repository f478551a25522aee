"""Golden files for the repository's own inventory.yaml.

Regenerate after an intended change with:  LABCTL_UPDATE_GOLDEN=1 pytest tests/unit/test_golden.py
then review the diff. Golden files never freeze a mistake on their own: test_validators
runs every rendered file through its ecosystem's validator.

The render runs in two fresh interpreters with different ``PYTHONHASHSEED``s: str hashes,
and so the iteration order of a set of names, differ between them, where two renders in
one process iterate every set alike and cannot show an order that leaks into a file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import labctl

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "root-inventory"
SEEDS = ("0", "12345")
# The files in render order, as JSON: the bytes two interpreters must agree on.
RENDER = ("import json, sys\n"
          "from labctl.load import load_inventory\n"
          "from labctl.render import render_all\n"
          "files = render_all(load_inventory(sys.argv[1]).inventory)\n"
          "sys.stdout.write(json.dumps(list(files.items())))\n")


def in_interpreters(code: str, *args: str) -> dict[str, bytes]:
    """stdout of ``code`` run by one fresh interpreter per seed (side by side), importing
    the labctl this test imports."""
    env = {**os.environ, "PYTHONPATH": str(Path(labctl.__file__).resolve().parents[1])}
    procs = {seed: subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env={**env, "PYTHONHASHSEED": seed})
             for seed in SEEDS}
    out = {}
    for seed, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"PYTHONHASHSEED={seed}: {stderr.decode()[-2000:]}"
        out[seed] = stdout
    return out


@pytest.fixture(scope="module")
def renders() -> dict[str, bytes]:
    return in_interpreters(RENDER, str(ROOT / "inventory.yaml"))


def test_render_is_the_same_under_any_hash_seed(renders: dict[str, bytes]) -> None:
    first, second = (renders[s] for s in SEEDS)
    assert first == second, "the render depends on str hash order (PYTHONHASHSEED): a set's order reaches a file"


def test_root_inventory_matches_golden(renders: dict[str, bytes]) -> None:
    files = dict(json.loads(renders[SEEDS[0]]))
    if os.environ.get("LABCTL_UPDATE_GOLDEN"):
        shutil.rmtree(GOLDEN, ignore_errors=True)
        for rel, content in files.items():
            (GOLDEN / rel).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / rel).write_text(content)
    expected = {p.relative_to(GOLDEN).as_posix(): p.read_text() for p in GOLDEN.rglob("*") if p.is_file()}
    assert sorted(files) == sorted(expected), "rendered file set differs from golden (LABCTL_UPDATE_GOLDEN=1)"
    for rel, content in files.items():
        assert content == expected[rel], f"{rel} differs from golden (LABCTL_UPDATE_GOLDEN=1 to accept)"


def test_the_seeds_reveal_a_set_order_one_process_hides() -> None:
    """Control: output that iterates a set of names is the same twice in one process, and
    differs between the two seeds, so the check above can fail."""
    leak = "import sys; names = {f'svc-{i}' for i in range(16)}; sys.stdout.write(','.join(names))"
    built = [{f"svc-{i}" for i in range(16)} for _ in range(2)]  # as two renders in one process build it
    assert ",".join(built[0]) == ",".join(built[1])
    out = in_interpreters(leak)
    assert out[SEEDS[0]] != out[SEEDS[1]]
    assert sorted(out[SEEDS[0]].split(b",")) == sorted(out[SEEDS[1]].split(b","))
