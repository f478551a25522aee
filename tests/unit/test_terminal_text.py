"""What labctl prints from files is text, not terminal commands or rich markup; what it
resolves in the models dir never hangs or escapes the dir; doctor's "ours" is exact.

* shown(): control characters, line separators and bidi controls become visible escapes.
* `labctl model list/current/history/switch` on a models dir holding a FIFO, a symlink
  loop, a device link, links out of the dir and files whose names and metadata carry
  escape sequences and ``[markup]``: fast, no ESC byte out, markup printed literally.
* doctor: a port listener is ours only when its cgroup's last component is the unit.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from io import StringIO
from pathlib import Path

import pytest
from harness.helpers import timed
from harness.invtext import edit
from rich.console import Console

from labctl.cli import main
from labctl.cli.tables import plain, shown
from labctl.host.gguf_writer import write_tiny_gguf
from labctl.load import load_inventory
from labctl.ops import doctor
from labctl.ops import switch as models

ESC_NAME = "\x1b[2J[red]x[/red]"  # clears the screen, then rich markup
BOUND = 1.0


def run_cli(capsys, *args: str, bound: float = BOUND) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        timed(lambda: main(list(args)), bound)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def assert_printable(text: str) -> None:
    """Nothing a terminal would act on: only newlines among the control characters, no
    separators, bidi controls or lone surrogates."""
    for ch in text:
        if ch == "\n":
            continue
        assert unicodedata.category(ch) not in ("Cc", "Zl", "Zp", "Cs"), f"{ch!r} in output"
        assert not ("\u202a" <= ch <= "\u202e" or "\u2066" <= ch <= "\u2069"), f"{ch!r} in output"


# --- shown() -----------------------------------------------------------------------------


@pytest.mark.parametrize("raw,escaped", [
    ("\x1b[2J", "\\x1b[2J"),
    ("a\x00b\x07c\x08d\tE\nF\rG", "a\\x00b\\x07c\\x08d\\x09E\\x0aF\\x0dG"),
    ("\x7f", "\\x7f"),
    ("\x9b31m\x85\x80\x9f", "\\x9b31m\\x85\\x80\\x9f"),  # C1: CSI, NEL
    ("x\u2028y\u2029z", "x\\u2028y\\u2029z"),
    ("".join(map(chr, range(0x202A, 0x202F))), "\\u202a\\u202b\\u202c\\u202d\\u202e"),
    ("".join(map(chr, range(0x2066, 0x206A))), "\\u2066\\u2067\\u2068\\u2069"),
    ("\u200e\u200f\u061c", "\\u200e\\u200f\\u061c"),
    ("bad\udcffbyte", "bad\\udcffbyte"),  # an undecodable file-name byte (surrogateescape)
])
def test_shown_escapes(raw: str, escaped: str) -> None:
    assert shown(raw) == escaped
    assert shown(shown(raw)) == shown(raw)  # idempotent: escaping twice changes nothing
    assert_printable(shown(raw))


def test_shown_keeps_ordinary_text() -> None:
    text = "gemma-3 270m Q4_K_M — naïve 模型 🦙 [red]x[/red] :smile: \\x1b"
    assert shown(text) == text
    assert shown(42) == "42" and shown(None) == "None"


def test_every_control_character_is_escaped() -> None:
    every = "".join(map(chr, [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F),
                              *range(0x2066, 0x206A)]))
    out = shown(every)
    assert_printable(out)
    assert re.fullmatch(r"(\\x[0-9a-f]{2}|\\u[0-9a-f]{4})+", out)


def test_plain_prints_markup_and_emoji_literally() -> None:
    buf = StringIO()
    console = Console(file=buf, highlight=False, soft_wrap=True, width=200, color_system=None)
    console.print(plain(f"{ESC_NAME} :pile_of_poo: [/]"))
    assert buf.getvalue() == "\\x1b[2J[red]x[/red] :pile_of_poo: [/]\n"


# --- a hostile models dir ------------------------------------------------------------------


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Path]:
    models_dir, state, outside = tmp_path / "models", tmp_path / "state", tmp_path / "outside"
    for d in (models_dir, state, outside):
        d.mkdir()
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(edit(("  gpu: false\n", f"  gpu: false\n  models_dir: {models_dir}\n  state_dir: {state}\n")))
    return {"inventory": inventory, "models": models_dir, "state": state, "outside": outside}


@pytest.fixture
def hostile(host: dict[str, Path]) -> dict[str, Path]:
    m = host["models"]
    write_tiny_gguf(m / "good.gguf")
    write_tiny_gguf(m / "evil.gguf", name=ESC_NAME + "\u202e\u2028", arch="llama")
    write_tiny_gguf(m / "ctl-arch.gguf", arch="ll\x1b]0;pwned\x07ama")
    write_tiny_gguf(m / "\x1b[31mred[bold]b:pile_of_poo:.gguf")
    write_tiny_gguf(host["outside"] / "elsewhere.gguf")
    os.mkfifo(m / "fifo.gguf")
    (m / "loop.gguf").symlink_to("loop2.gguf")
    (m / "loop2.gguf").symlink_to("loop.gguf")
    (m / "zero.gguf").symlink_to("/dev/zero")
    (m / "dangling.gguf").symlink_to(m / "gone.gguf")
    (m / "linked-out.gguf").symlink_to(host["outside"] / "elsewhere.gguf")
    (m / "linked-in.gguf").symlink_to("good.gguf")
    (m / "alias.gguf").symlink_to("current.gguf")
    (m / "dir.gguf").mkdir()
    (m / "notes.gguf").write_text("root:$6$secret:19000::\n")
    fd = os.open(os.fsencode(m) + b"/undecodable-\xff.gguf", os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)
    (m / "current.gguf").symlink_to("evil.gguf")
    return host


@pytest.mark.parametrize("wide", [False, True], ids=["columns", "wide"])
def test_model_list_on_a_hostile_models_dir(capsys, hostile: dict[str, Path], wide: bool) -> None:
    inventory = str(hostile["inventory"])
    run_cli(capsys, "model", "list", "-i", inventory, "--json", bound=30)  # imports warmed up
    code, out, err = run_cli(capsys, "model", "list", "-i", inventory, *(["--wide"] if wide else []))
    assert code == 0, err
    assert err == ""
    assert "\x1b" not in out and "\x07" not in out
    assert_printable(out)
    if wide:  # the plain columns leave general.name out when it does not fit
        assert "\\x1b[2J[red]x[/red]\\u202e\\u2028" in out  # general.name, whole and literal
    assert "ll\\x1b]0;pwned\\x07ama" in out
    assert "\\x1b[31mred[bold]b:pile_of_poo:.gguf" in out
    assert "undecodable-\\udcff.gguf" in out
    for problem in ("is a FIFO, not a regular file", "is a character device, not a regular file",
                    "symbolic links", "does not exist (dangling symlink)", "is a directory, not a GGUF file",
                    "not a GGUF file (no GGUF magic)", "links outside the models dir"):
        assert problem in out, problem
    assert "secret" not in out and "root:" not in out


def test_model_list_json_keeps_raw_strings(capsys, hostile: dict[str, Path]) -> None:
    code, out, _ = run_cli(capsys, "model", "list", "-i", str(hostile["inventory"]), "--json", bound=30)
    assert code == 0
    assert "\x1b" not in out  # JSON escapes it ...
    entries = {e["name"]: e for e in json.loads(out)}
    assert entries["evil.gguf"]["info"]["name"] == ESC_NAME + "\u202e\u2028"  # ... and keeps it
    assert entries["evil.gguf"]["current"] is True
    assert entries["alias.gguf"]["current"] is True  # alias -> current.gguf -> evil.gguf
    assert entries["linked-in.gguf"]["problem"] is None
    assert entries["linked-out.gguf"]["problem"].startswith("links outside the models dir")
    assert entries["fifo.gguf"]["problem"] == "is a FIFO, not a regular file"
    assert "current.gguf" not in entries


def test_list_models_directly(hostile: dict[str, Path]) -> None:
    inv = load_inventory(hostile["inventory"]).inventory
    entries = {e.name: e for e in timed(lambda: models.list_models(inv))}  # type: ignore[union-attr]
    assert entries["good.gguf"].info and entries["good.gguf"].problem is None
    assert entries["loop.gguf"].info is None and "symbolic links" in entries["loop.gguf"].problem


def test_model_current_escapes_the_link_and_mapped_files(capsys, hostile: dict[str, Path], monkeypatch) -> None:
    m = hostile["models"]
    (m / "current.gguf").unlink()
    (m / "current.gguf").symlink_to(f"{ESC_NAME}.gguf")
    monkeypatch.setattr(models, "serving", lambda inv, manager, name: {
        "service": name, "active": "active", "pid": 4242, "mapped": [f"/x/{ESC_NAME}\u202e.gguf"]})
    code, out, err = run_cli(capsys, "model", "current", "-i", str(hostile["inventory"]), bound=30)
    assert code == 1  # documented: exit 1 on a mismatch (it serves another file)
    assert "\x1b" not in out and "\u202e" not in out
    assert f"-> {m}/\\x1b[2J[red]x[/red].gguf" in out
    assert "/x/\\x1b[2J[red]x[/red]\\u202e.gguf" in out


def test_model_history_escapes_and_survives_garbage(capsys, host: dict[str, Path]) -> None:
    lines = [
        json.dumps({"time": 1.7e9, "previous": "/m/\x1b[2J[red]x.gguf", "target": "/m/\u202eevil.gguf",
                    "outcome": "ok", "durations": {"total": 1.5}}),
        '{"time": 1.7e9, "target": "/m/torn.gg',  # torn by a crash
        "[1, 2]", '"a string"', "null",
        json.dumps({"time": "not a time", "target": ["a", "list"], "outcome": "\x1b[5mok"}),
        json.dumps({"time": 1e300, "durations": "x"}),
        "[" * 100000,  # deep nesting
    ]
    (host["state"] / "model-history.jsonl").write_text("\n".join(lines) + "\n")
    code, out, err = run_cli(capsys, "model", "history", "-i", str(host["inventory"]), bound=30)
    assert code == 0, err
    assert "\x1b" not in out and "\u202e" not in out
    assert "  \\x1b[2J[red]x.gguf -> \\u202eevil.gguf  ok  1.5s" in out
    assert "\\x1b[5mok" in out
    assert len(out.splitlines()) == 3


def test_model_history_that_is_a_fifo(capsys, host: dict[str, Path]) -> None:
    os.mkfifo(host["state"] / "model-history.jsonl")
    code, out, err = run_cli(capsys, "model", "history", "-i", str(host["inventory"]), bound=30)
    assert code == 4
    assert err.count("\n") == 1 and "is a FIFO, not a regular file" in err


@pytest.mark.parametrize("request_,message", [
    ("linked-out.gguf", "is outside the models dir"),
    ("fifo.gguf", "fifo.gguf: is a FIFO, not a regular file"),
    ("zero.gguf", "zero.gguf: is a character device, not a regular file"),
    ("loop.gguf", "loop.gguf: a symlink loop"),
    ("dangling.gguf", "dangling.gguf: dangling symlink to"),
    ("dir.gguf", "dir.gguf: is a directory, not a GGUF file"),
    ("notes.gguf", "notes.gguf: not a GGUF file (no GGUF magic)"),
    ("current.gguf", "that is the current.gguf link itself"),
    ("alias.gguf", "that is the current.gguf link itself"),  # current.gguf -> alias -> current.gguf
    ("missing.gguf", "missing.gguf: no such file"),
    ("../outside/elsewhere.gguf", "is outside the models dir"),
    ("\x1b[2J.gguf", "\\x1b[2J.gguf: no such file"),
])
def test_switch_refusals(capsys, hostile: dict[str, Path], request_: str, message: str) -> None:
    if request_.startswith("../"):
        request_ = str(hostile["models"] / request_)
    before = os.readlink(hostile["models"] / "current.gguf")
    code, out, err = run_cli(capsys, "model", "switch", request_, "-i", str(hostile["inventory"]), bound=30)
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert "\x1b" not in err and "Traceback" not in err
    assert os.readlink(hostile["models"] / "current.gguf") == before


def test_inside_models_dir(hostile: dict[str, Path], tmp_path: Path) -> None:
    inv = load_inventory(hostile["inventory"]).inventory
    m = hostile["models"]
    assert models.inside_models_dir(inv, m / "good.gguf")
    assert models.inside_models_dir(inv, m / "linked-in.gguf")
    assert models.inside_models_dir(inv, m / "current.gguf")  # -> evil.gguf, in the dir
    assert not models.inside_models_dir(inv, m / "linked-out.gguf")
    assert not models.inside_models_dir(inv, hostile["outside"] / "elsewhere.gguf")
    assert not models.inside_models_dir(inv, m / ".." / "outside" / "elsewhere.gguf")
    assert not models.inside_models_dir(inv, m)
    for broken in ("loop.gguf", "dangling.gguf", "missing.gguf"):
        assert not models.inside_models_dir(inv, m / broken)
    assert not models.inside_models_dir(inv, str(m) + "/nul\0.gguf")


def test_validate_accepts_a_link_within_the_dir(hostile: dict[str, Path]) -> None:
    inv = load_inventory(hostile["inventory"]).inventory
    path, info = models.validate(inv, "linked-in.gguf")
    assert path == hostile["models"] / "linked-in.gguf" and info.architecture == "llama"


def test_models_dir_behind_a_symlink(host: dict[str, Path], tmp_path: Path) -> None:
    """Both sides are resolved: a models dir that is itself a link still holds its files."""
    real = tmp_path / "real-models"
    real.mkdir()
    write_tiny_gguf(real / "m.gguf")
    host["models"].rmdir()
    host["models"].symlink_to(real)
    inv = load_inventory(host["inventory"]).inventory
    assert models.inside_models_dir(inv, host["models"] / "m.gguf")
    assert models.validate(inv, "m.gguf")[1].architecture == "llama"


def test_current_with_a_looping_link(hostile: dict[str, Path], monkeypatch) -> None:
    m = hostile["models"]
    (m / "current.gguf").unlink()
    (m / "current.gguf").symlink_to("loop.gguf")
    inv = load_inventory(hostile["inventory"]).inventory
    monkeypatch.setattr(models, "serving", lambda inv, manager, name: {
        "service": name, "active": "inactive", "pid": 0, "mapped": []})
    report = timed(lambda: models.current(inv, None))
    assert report["target"] == str(m / "loop.gguf")  # type: ignore[index]
    entries = timed(lambda: models.list_models(inv))
    assert not any(e.current for e in entries)  # type: ignore[union-attr]


# --- doctor: is a port listener ours? ---------------------------------------------------------

UNIT = "labctl-native.service"
USER_SLICE = "/user.slice/user-1000.slice/user@1000.service/app.slice"


@pytest.mark.parametrize("text,ours", [
    (f"0::{USER_SLICE}/{UNIT}\n", True),
    (f"0::{USER_SLICE}/{UNIT}/\n", True),
    (f"12:pids:/user.slice\n1:name=systemd:{USER_SLICE}/{UNIT}\n0::{USER_SLICE}/{UNIT}\n", True),  # hybrid
    (f"4:memory:/user.slice\n1:name=systemd:{USER_SLICE}/{UNIT}\n", True),  # v1
    (f"0::{USER_SLICE}/{UNIT}-evil\n", False),
    (f"0::{USER_SLICE}/x{UNIT}\n", False),
    (f"0::{USER_SLICE}/{UNIT}.d\n", False),
    (f"0::{USER_SLICE}/{UNIT}/payload\n", False),
    (f"0::{USER_SLICE}/evil-{UNIT}-scope.scope\n", False),
    (f"0::/{USER_SLICE}/labctl-native.service2\n", False),
    (f"0::{USER_SLICE}/labctl-bindings.service\n", False),
    (f"0::{USER_SLICE}/run-u12.scope\n1:name=systemd:{USER_SLICE}/{UNIT}\n", False),  # unified wins
    (f"5:cpu:{USER_SLICE}/{UNIT}-evil\n", False),
    (f"0::{USER_SLICE}/{UNIT} \n", False),
    ("", False),
    ("garbage\n\n:::\n", False),
    (f"0::{USER_SLICE}/{UNIT.upper()}\n", False),
])
def test_in_unit_is_exact(text: str, ours: bool) -> None:
    assert doctor.in_unit(text, UNIT) is ours


def test_in_unit_needs_a_unit() -> None:
    assert doctor.in_unit("0::/\n", "") is False


@pytest.mark.parametrize("text,docker", [
    ("0::/system.slice/docker-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope\n", True),
    ("12:memory:/docker/0123456789abcdef\n", True),
    ("0::/system.slice/docker.service\n", True),  # docker-proxy holds a published port
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/docker.service\n", True),  # rootless
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/not-docker.service\n", False),
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/mydocker-evil.scope\n", False),
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/dockerized.service\n", False),
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/docker-.scope\n", False),
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/docker-x.scope.evil\n", False),
    ("0::/user.slice/docker.slice.evil\n", False),
    ("", False),
])
def test_in_docker_matches_components(text: str, docker: bool) -> None:
    assert doctor.in_docker(text) is docker


def test_cgroup_paths_prefers_the_unified_hierarchy() -> None:
    text = "12:pids:/a\n1:name=systemd:/b\n0::/c\n"
    assert doctor.cgroup_paths(text) == ["/c"]
    assert doctor.cgroup_paths("12:pids:/a\n1:name=systemd:/b\n") == ["/b"]
    assert doctor.cgroup_paths("12:pids:/a\n3:cpu,cpuacct:/d\n") == ["/a", "/d"]
    assert doctor.cgroup_paths("0::/with:colons:in/it\n") == ["/with:colons:in/it"]


def test_port_checks_use_exact_units(monkeypatch, host: dict[str, Path]) -> None:
    inv = load_inventory(host["inventory"]).inventory
    native, bindings = inv.services["native"].port, inv.services["bindings"].port
    cgroups = {11: f"0::{USER_SLICE}/{UNIT}\n", 12: f"0::{USER_SLICE}/labctl-bindings.service-evil\n"}
    monkeypatch.setattr(doctor, "listeners", lambda: {native: [("llama-server", 11)],
                                                     bindings: [("\x1b[2Jevil", 12)]})
    monkeypatch.setattr(doctor, "_cgroup_of", lambda pid: cgroups.get(pid, ""))
    checks = {c.name: c for c in doctor.port_checks(inv)}
    assert checks[f"port {native}"].status == "ok" and "(ours)" in checks[f"port {native}"].message
    evil = checks[f"port {bindings}"]
    assert evil.status == "fail" and "\x1b" not in evil.message and "\\x1b[2Jevil (pid 12)" in evil.message
