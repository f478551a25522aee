"""Every file labctl writes that can hold a value from the inventory, or from a file the
inventory names, is owner-only (0600), or is proven to hold no secret (issue 23, class 5).

Two halves, so a new file is covered by itself:

- the rendered tree, which is world-readable (0644) and printed by `labctl plan`: a full
  inventory (every kind, the operator's rule files, rule tests and dashboards, LiteLLM
  settings; and a fleet) is rendered the way `labctl render --out` writes it, and each
  file written is either owner-only or every string in it, raw line and parsed value
  alike, passes the secret scanner (labctl.secretscan.value_problem): the proof. A control
  shows the proof catches a secret once a guard is taken away.
- every other place in src/labctl that creates a file: found in the source, each either
  passes an owner-only mode or is listed in :data:`AUDIT` with why what it writes holds no
  secret. A new writer fails the test until it is one or the other.
"""

from __future__ import annotations

import ast
import json
import os
import stat
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from harness import unitfile
from test_hostile_render import FULL
from test_operator_files import DASHBOARD, RULE_TEST, RULES, SECRET, put

from labctl import secretscan
from labctl.cli import main
from labctl.render import operator_files

pytestmark = pytest.mark.unit

SRC = Path(__file__).resolve().parents[2] / "src"
EXAMPLE_FLEET = Path(__file__).resolve().parents[2] / "examples" / "fleet" / "inventory.yaml"


# --- the proof over a written tree -------------------------------------------------------------


def _leaves(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _leaves(value)
    elif isinstance(node, list):
        for item in node:
            yield from _leaves(item)
    elif isinstance(node, str):
        yield node


def strings_of(rel: str, text: str) -> Iterator[str]:
    """Every string a reader of the file could take out of it: each raw line, and each
    value as its consumer decodes it (YAML and JSON escapes, systemd's quoting)."""
    yield from text.splitlines()
    if rel.endswith((".yaml", ".yml")):
        yield from _leaves(yaml.safe_load(text))
    elif rel.endswith(".json"):
        yield from _leaves(json.loads(text))
    elif rel.endswith(".service"):
        for d in unitfile.directives(text):
            if d.key.startswith("Exec"):
                yield from unitfile.exec_argv(d.value)
            elif d.key == "Environment":
                for key, value in unitfile.environment(d.value).items():
                    yield from (key, value)
            else:
                yield d.value


def unproven(root: Path) -> list[str]:
    """Files under ``root`` that others can read and that hold a secret-looking string."""
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if not stat.S_IMODE(path.stat().st_mode) & 0o077:
            continue  # owner-only
        reasons = {secretscan.value_problem(s) for s in strings_of(rel, path.read_text())} - {None}
        if reasons:
            out.append(f"{rel} (mode {stat.S_IMODE(path.stat().st_mode):04o}): {sorted(reasons)}")
    return out


def full_inventory(tmp_path: Path) -> Path:
    """FULL with every file the inventory can name for monitoring, and settings of every
    JSON type, so the operator's content travels too."""
    files = tmp_path / "files"
    files.mkdir()
    put(files / "rules.yml", RULES)
    put(files / "rules_test.yml", RULE_TEST)
    put(files / "gpu.json", DASHBOARD)
    data = json.loads(json.dumps(FULL))
    data["monitoring"].update(rule_files=[str(files / "rules.yml")], rule_tests=[str(files / "rules_test.yml")],
                              dashboards=[str(files / "gpu.json")])
    data["services"]["gateway"]["router_settings"] = {"routing_strategy": "simple-shuffle", "retry_after": 0.5}
    data["services"]["gateway"]["litellm_settings"] = {"request_timeout": 600, "set_verbose": False}
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def render_out(tmp_path: Path, capsys, inventory: Path) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["render", "-i", str(inventory), "--out", str(out)])
    assert exit_info.value.code == 0, capsys.readouterr().err
    return out


def fleet_inventory(tmp_path: Path) -> Path:
    data = yaml.safe_load(EXAMPLE_FLEET.read_text())
    data["fleet"].update(state_dir=str(tmp_path / "fleet-state"), ssh_key=str(tmp_path / "id_ed25519"),
                         pip={"find_links": str(tmp_path / "wheels")})
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("make", [full_inventory, fleet_inventory], ids=["full", "fleet"])
def test_every_file_render_writes_is_owner_only_or_proven_to_hold_no_secret(tmp_path: Path, capsys, make) -> None:  # type: ignore[no-untyped-def]
    out = render_out(tmp_path, capsys, make(tmp_path))
    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(written) > 5
    assert unproven(out) == []
    if make is full_inventory:
        # The operator's files are among them, written world-readable: proven, not private.
        names = {p.name for p in written}
        assert {"operator-0-rules.yml", "operator-0-gpu.json"} <= names
    else:
        # A host's inventory slice is the inventory itself: owner only.
        slices = sorted(out.glob("*/inventory.yaml"))
        assert slices and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in slices)


def test_control_the_proof_catches_a_secret_a_missing_guard_lets_through(tmp_path: Path, capsys,  # type: ignore[no-untyped-def]
                                                                          monkeypatch) -> None:
    inventory = full_inventory(tmp_path)
    put(tmp_path / "files" / "rules.yml", RULES.replace("https://runbooks.example.com/gpu-hot", SECRET))
    monkeypatch.setattr(operator_files, "_scan", lambda data, refuse: None)
    (problem,) = unproven(render_out(tmp_path, capsys, inventory))
    assert problem.startswith("labctl/monitoring/prometheus/rules/operator-0-rules.yml (mode 0644)"), problem
    assert SECRET not in problem


def test_a_generation_keeps_its_copies_owner_only(tmp_path: Path) -> None:
    from labctl.host import generations

    gen = generations.snapshot(tmp_path, {"labctl/monitoring/prometheus/rules/operator-0-x.yml": "groups: []\n"},
                               "version: 1\n", "test")
    files = [p for p in gen.path.rglob("*") if p.is_file() and p.name != "meta.json"]
    assert len(files) == 2 and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert stat.S_IMODE((tmp_path / "generations").stat().st_mode) == 0o700


@pytest.mark.parametrize("source_mode,expected", [(0o600, 0o600), (0o640, 0o640), (0o644, 0o644)])
def test_a_models_path_copy_is_no_wider_than_its_source(tmp_path: Path, source_mode: int, expected: int) -> None:
    from harness.invtext import edit

    from labctl.host.gguf_writer import write_tiny_gguf
    from labctl.load import load_inventory
    from labctl.ops.model_pull import pull

    source = write_tiny_gguf(tmp_path / "mine.gguf")
    os.chmod(source, source_mode)
    text = edit(("  gpu: false\n", f"  gpu: false\n  home: {tmp_path}\n"),
                ("monitoring:\n", f"models:\n  local: {{path: {source}}}\nmonitoring:\n"))
    pull(load_inventory("inventory.yaml", text=text).inventory, say=lambda _: None)
    copy = tmp_path / "models" / "local.gguf"
    assert copy.read_bytes() == Path(source).read_bytes()
    assert stat.S_IMODE(copy.stat().st_mode) == expected & ~_umask()


def _umask() -> int:
    from labctl import fsio

    return fsio.umask()


# --- every other writer, audited -----------------------------------------------------------------

# Where src/labctl creates a file without an owner-only mode, and why that holds no secret.
# Keys are "module:function" (or a module prefix for a whole package).
AUDIT = {
    "labctl.cli.__init__:render": "`labctl render --out`: render_all's files (the proof above), and a fleet "
                                  "host's inventory slice at 0600",
    "labctl.ops.monitoring:install_and_up": "render_all's monitoring files (the proof above)",
    "labctl.ops.apply:execute": "render_all's files, installed 0644 (the proof above), or a generation's copy "
                                "of what was installed (rollback)",
    "labctl.fleet.ansible:_wheels": "a tar of labctl's own wheels, in a mkstemp file (0600); no inventory value",
    "labctl.fleet.plugins.callback.labctl_report:v2_playbook_on_stats": "Ansible's per-host results, in a "
                                                                       "mkstemp file (0600)",
    "labctl.fsio:atomic_write": "the writer itself: each caller's mode is audited here",
    "labctl.host.fetch:_stamp": "the models directory's hash stamps: names the directory lists anyway, sizes, "
                                "times, sha256s",
    "labctl.host.fetch:_download": "a model downloaded (url, Hugging Face): public content; a token travels "
                                   "only in a request header",
    "labctl.host.fetch:_copy_hashing": "a model (a GGUF, checked): downloaded, or an operator's file copied no "
                                       "wider than its own mode (test above)",
    "labctl.host.generations:snapshot": "meta.json: a time and labctl's own reason; the files and inventory are "
                                        "0600 (test above) in a 0700 directory",
    "labctl.host.gguf_writer:_atomic_target": "a model labctl generates itself (random weights)",
    "labctl.host.proc:serve": "a server's output, in the self-test's own mkdtemp directory (0700)",
    "labctl.ops.doctor:_cached": "an interpreter's path (in the 0644 units too: the proof above), a time and a "
                                 "boolean",
    "labctl.ops.litellm_validate:validate": "labctl's own drain-gate module, beside the 0600 scratch config",
    "labctl.ops.switch:_record": "the switch history: service and model file names, systemd results, durations",
    "labctl.sandbox": "the sandbox's throwaway test machines: their own configuration; Machine.write_text "
                      "stages a caller's text in a private temporary directory at the caller's mode",
}
OWNER_ONLY = {"0o600", "384", "SECRET_MODE", "0o700", "448"}


def _mode_arg(call: ast.Call, name: str) -> str | None:
    for kw in call.keywords:
        if kw.arg == "mode":
            return ast.unparse(kw.value)
    if name == "os.open" and len(call.args) >= 3:
        return ast.unparse(call.args[2])
    return None


def writers(src: Path = SRC) -> dict[str, list[str]]:
    """``module:function`` -> the calls in it that create or write a file, except those that
    pass an owner-only mode."""
    found: dict[str, list[str]] = {}
    for path in sorted((src / "labctl").rglob("*.py")):
        module = ".".join(path.relative_to(src).with_suffix("").parts)
        functions: list[str] = []

        class Visit(ast.NodeVisitor):
            def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
                functions.append(node.name)
                self.generic_visit(node)
                functions.pop()

            visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

            def visit_Call(self, node: ast.Call) -> None:
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if isinstance(func, ast.Attribute) and ast.unparse(func.value) == "os" and name == "open":
                    name = "os.open" if "O_CREAT" in ast.unparse(node) else None
                elif name == "open":
                    mode = node.args[1] if len(node.args) > 1 else next(
                        (k.value for k in node.keywords if k.arg == "mode"), None)
                    # A mode only known at run time counts as writing.
                    reads = mode is None or (isinstance(mode, ast.Constant) and not set(str(mode.value)) & set("wax+"))
                    name = None if reads else "open"
                elif name == "dump" and len(node.args) < 2:
                    name = None  # yaml.dump(document): a string, not a file
                if name in ("atomic_write", "write_text", "write_bytes", "mkstemp", "dump", "open", "os.open") \
                        and _mode_arg(node, name) not in OWNER_ONLY:
                    key = f"{module}:{functions[0] if functions else '<module>'}"
                    found.setdefault(key, []).append(ast.unparse(node)[:80])
                self.generic_visit(node)

        Visit().visit(ast.parse(path.read_text()))
    return found


def _audited(key: str) -> bool:
    return key in AUDIT or any(key.startswith(prefix + ".") for prefix in AUDIT if ":" not in prefix)


def test_every_place_labctl_writes_a_file_is_owner_only_or_audited() -> None:
    found = writers()
    missing = {key: calls for key, calls in found.items() if not _audited(key)}
    assert not missing, ("write owner-only (mode=0o600), or add each to AUDIT with why what it writes holds no "
                         f"secret: {missing}")
    stale = [key for key in AUDIT if not any(k == key or k.startswith(key + ".") for k in found)]
    assert not stale, f"AUDIT names writers that no longer exist: {stale}"


def test_control_the_audit_sees_a_new_writer(tmp_path: Path) -> None:
    fake = tmp_path / "src" / "labctl" / "ops"
    fake.mkdir(parents=True)
    (fake / "leak.py").write_text("def keep(path, inv):\n    path.write_text(inv.text)\n"
                                  "def keep_private(path, inv):\n    fsio.atomic_write(path, inv.text, mode=0o600)\n")
    assert writers(tmp_path / "src") == {"labctl.ops.leak:keep": ["path.write_text(inv.text)"]}
