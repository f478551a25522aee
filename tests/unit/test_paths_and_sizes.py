"""Paths and sizes reach systemd and Redis as what the inventory says (issue 23).

- An ``EnvironmentFile=`` path is a wildcard pattern to systemd (glob(3), flags 0, in
  exec_context_load_environment), and a config path to Redis when it holds ``*``, ``?`` or
  ``[``: every field such a path is built from refuses them, with one line at that field, and
  the encoders refuse them again. glibc's glob(3), the function systemd calls, shows why
  (a control), and that what labctl accepts is taken literally.
  tests/integration/test_redis_server.py starts the real redis-server on such paths.
- OLLAMA_MODELS becomes a ``ReadWritePaths=`` entry: a path like any path field (absolute
  or ~/, normalised), refused at its own field otherwise; systemd-analyze shows what it does
  with one that is not (a control).
- A size is at most 2^64-2 bytes: systemd-analyze takes the largest accepted one without a
  word and ignores the smallest refused one (a control).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from harness import unitfile
from harness.invtext import edit
from harness.tools import require_command
from test_fleet_hostile import FLEET_FULL
from test_hostile_render import FULL, set_at

from labctl import encode, fields
from labctl.errors import InvalidInventory
from labctl.kinds import ollama as ollama_kind
from labctl.load import load_inventory
from labctl.render import render_all

pytestmark = pytest.mark.unit

GLOB_CHARS = ["*", "?", "[", "\\"]
# Characters that are no glob(3) metacharacters with systemd's flags (no GLOB_BRACE, GLOB_TILDE):
# a path may hold them and is opened as written.
LITERAL_CHARS = ["]", "{a,b}", "~", "!", "%", "$", "^", "@", "+", "=", ","]


# --- glob(3), as systemd calls it ----------------------------------------------------------


class _GlobT(ctypes.Structure):
    _fields_ = [("gl_pathc", ctypes.c_size_t), ("gl_pathv", ctypes.POINTER(ctypes.c_char_p)),
                ("gl_offs", ctypes.c_size_t), ("gl_flags", ctypes.c_int), ("_rest", ctypes.c_void_p * 16)]


def glob3(pattern: str) -> list[str]:
    """glibc's glob(pattern, 0, NULL, &g): what systemd's safe_glob does with an
    EnvironmentFile= path (and Redis with a config path holding *, ? or [)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    found = _GlobT()
    rc = libc.glob(pattern.encode(), 0, None, ctypes.byref(found))
    try:
        return sorted(found.gl_pathv[i].decode() for i in range(found.gl_pathc)) if rc == 0 else []
    finally:
        libc.globfree(ctypes.byref(found))


# (the directory labctl would have meant, another one beside it): each character makes
# glob(3) find the other one, alone or as well.
PATTERNS = {"*": ("sec*rets", "secrets"), "?": ("sec?rets", "sec.rets"), "[": ("sec[r]ets", "secrets"),
            "\\": ("sec\\rets", "secrets")}


@pytest.mark.parametrize("char", GLOB_CHARS)
def test_control_glob_reads_these_characters_as_a_pattern(tmp_path: Path, char: str) -> None:
    """systemd would load another file than the one named (or it too): its value wins."""
    meant, other = (tmp_path / name / "x.env" for name in PATTERNS[char])
    for path, value in ((meant, "meant"), (other, "other")):
        path.parent.mkdir()
        path.write_text(f"K={value}\n")
    found = glob3(str(meant))
    assert str(other) in found and found != [str(meant)], found


@pytest.mark.parametrize("chars", LITERAL_CHARS)
def test_what_labctl_accepts_is_opened_as_written(tmp_path: Path, chars: str) -> None:
    literal = tmp_path / f"a{chars}b" / "x.env"
    literal.parent.mkdir()
    literal.write_text("K=meant\n")
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "x.env").write_text("K=decoy\n")
    assert glob3(str(literal)) == [str(literal)]
    assert fields.SD_GLOB.isdisjoint(chars) and encode.sd_env_file(str(literal))


# --- every field a globbed path is built from -----------------------------------------------

# Where an EnvironmentFile= path, a derived key file, Redis's include or its config path
# comes from, and the value that puts the character there ({c}).
GLOB_FIELDS = [
    (("host", "home"), "/home/zq{c}labuser"),
    (("services", "native", "environment_files", 0), "~/.config/zq{c}/x.env"),
    (("services", "bindings", "environment_files", 0), "/etc/zq{c}/bindings.env"),
    (("services", "native", "api_key", "env_file"), "~/.config/zq{c}/native.env"),
    (("services", "gateway", "master_key", "env_file"), "~/.config/zq{c}/litellm.env"),
    (("services", "gateway", "endpoints", "cloud", "api_key", "env_file"), "~/.config/zq{c}/cloud.env"),
    (("services", "cache", "password", "env_file"), "~/.config/zq{c}/redis.env"),
    # A fleet host's home becomes host.home in its slice.
    (("hosts", "gpu-a", "home"), "/srv/zq{c}alice"),
]


def dotted(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


@pytest.mark.parametrize("char", GLOB_CHARS)
@pytest.mark.parametrize("loc, value", GLOB_FIELDS, ids=[dotted(f[0]) for f in GLOB_FIELDS])
def test_a_glob_character_is_refused_at_the_field_that_brings_it(tmp_path: Path, loc: tuple, value: str,
                                                                char: str) -> None:
    path = tmp_path / "inventory.yaml"
    text = yaml.safe_dump(set_at(FLEET_FULL if loc[0] == "hosts" else FULL, loc, value.format(c=char)),
                          sort_keys=False)
    path.write_text(text)
    with pytest.raises(InvalidInventory) as info:
        load_inventory(path)
    (line,) = info.value.lines()
    number = next(i for i, row in enumerate(text.splitlines(), 1) if "zq" in row)
    assert line.startswith(f"{path}:{number}: {dotted(loc)}: must not hold *, ?, [ or \\: "), line
    assert "wildcard pattern" in line


@pytest.mark.parametrize("char", GLOB_CHARS)
def test_the_encoders_refuse_a_glob_too(char: str) -> None:
    with pytest.raises(encode.EncodeError):
        encode.sd_env_file(f"/home/u/sec{char}rets/x.env")
    if char != "\\":  # Redis globs only on *, ? and [; a backslash it opens as written
        with pytest.raises(encode.EncodeError):
            encode.redis_path(f"/home/u/sec{char}rets/x.conf")
    else:
        assert encode.redis_path("/home/u/a\\b.conf") == "/home/u/a\\b.conf"


@pytest.mark.parametrize("chars", LITERAL_CHARS)
def test_environment_files_read_back_as_written(tmp_path: Path, chars: str) -> None:
    """A path with characters glob(3) takes literally: the unit says exactly that path, and
    systemd-analyze verify reads the unit without a word about it."""
    wanted = f"/srv/a{chars}b/x.env"
    inv = load_inventory("inventory.yaml", text=edit(("    ctx_size: 2048\n", "    ctx_size: 2048\n    "
                                                       f"environment_files: [{json.dumps(wanted)}]\n"))).inventory
    unit = render_all(inv)["systemd/user/labctl-native.service"]
    (said,) = [unitfile.plain(d.value) for d in unitfile.directives(unit) if d.key == "EnvironmentFile"]
    assert said == wanted
    assert verify_warnings(tmp_path, unit) == []


# --- ReadWritePaths=: OLLAMA_MODELS and the rest ---------------------------------------------

OLLAMA = "  ol:\n    kind: ollama\n    port: 11434\n    models: [a]\n    environment: {{OLLAMA_MODELS: {v}}}\n  gateway:\n"


def with_ollama_models(value: str) -> str:
    return edit(("  gateway:\n", OLLAMA.format(v=json.dumps(value))))


@pytest.mark.parametrize("value, message", [
    ("models", "must be an absolute path or start with ~/"),
    ("", "must be an absolute path or start with ~/"),
    ("./models", "must be an absolute path or start with ~/"),
    ("~", "must be an absolute path or start with ~/"),
    ("~/", "must name a path below the home directory"),
    ("/", "must name a path below /"),
    ("/srv/../models", "must not contain '..'"),
    ("~/models/..", "must not contain '..'"),
    ("/srv/models ", "must not start or end with whitespace"),
])
def test_ollama_models_is_a_path_like_any_path_field(tmp_path: Path, value: str, message: str) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(with_ollama_models(value))
    with pytest.raises(InvalidInventory) as info:
        load_inventory(path)
    (line,) = info.value.lines()
    number = next(i for i, row in enumerate(path.read_text().splitlines(), 1) if "OLLAMA_MODELS" in row)
    assert line.startswith(f"{path}:{number}: services.ol.environment.OLLAMA_MODELS: {message}"), line


@pytest.mark.parametrize("value, normal", [
    ("/srv//models/./x/", "/srv/models/x"),
    ("~/models", "/home/labuser/models"),
    ("~//models/", "/home/labuser/models"),
])
def test_ollama_models_reaches_the_unit_normalised(tmp_path: Path, value: str, normal: str) -> None:
    """The model store Ollama is told and the one the hardened unit may write are the same
    path, normalised (Ollama expands no ~/); systemd-analyze takes it without a word."""
    unit = render_all(load_inventory("inventory.yaml", text=with_ollama_models(value)).inventory)[
        "systemd/user/labctl-ol.service"]
    found = unitfile.directives(unit)
    env = {k: v for d in found if d.key == "Environment" for k, v in unitfile.environment(d.value).items()}
    writable = [unitfile.plain(d.value) for d in found if d.key == "ReadWritePaths"]
    assert env["OLLAMA_MODELS"] == normal and normal in writable
    assert verify_warnings(tmp_path, unit) == []


def test_control_without_the_check_validate_says_ok_and_the_render_fails(monkeypatch) -> None:
    """The audit's report: a relative OLLAMA_MODELS passed validate and failed at render
    (EncodeError). The check restores the one-line refusal; without it, this is what happens."""
    monkeypatch.setattr(ollama_kind, "check_path", lambda value: value)
    inv = load_inventory("inventory.yaml", text=with_ollama_models("models")).inventory
    with pytest.raises(encode.EncodeError):
        render_all(inv)


@pytest.mark.parametrize("value", ["/srv/../models", "models"])
def test_control_systemd_drops_a_path_that_is_not_normalised(tmp_path: Path, monkeypatch, value: str) -> None:
    """With every guard removed, the unit carries the path and systemd ignores it: the
    service would run without the write access the inventory asked for."""
    monkeypatch.setattr(ollama_kind, "check_path", lambda v: v)
    monkeypatch.setattr(encode, "path_problem", lambda v: None)
    unit = render_all(load_inventory("inventory.yaml", text=with_ollama_models(value)).inventory)[
        "systemd/user/labctl-ol.service"]
    warnings = verify_warnings(tmp_path, unit)
    assert any(f"ReadWritePaths= path is not {'normalized' if '..' in value else 'absolute'}, ignoring" in w
               for w in warnings), warnings


@pytest.mark.parametrize("value", ["/srv/a//b", "/srv/./b", "/srv/b/", "/srv/../b", "srv/b", "/srv/b/.."])
def test_unit_path_encoders_write_only_normalised_paths(value: str) -> None:
    for encoder in (encode.sd_path, encode.sd_path_word, encode.sd_env_file):
        with pytest.raises(encode.EncodeError):
            encoder(value)


# --- sizes --------------------------------------------------------------------------------

ACCEPTED_SIZES = ["17179869183G", "16777215T", "9999999999999M", "9999999999999K", "9999999999999", "1"]
REFUSED_SIZES = ["17179869184G", "16777216T", "9999999999999T", "9999999999999G"]


def with_limits(size: str) -> str:
    return edit(("    ctx_size: 2048\n", f"    ctx_size: 2048\n    limits: {{memory_max: '{size}', memory_high: '{size}'}}\n"))


@pytest.mark.parametrize("size", ACCEPTED_SIZES)
def test_the_largest_sizes_accepted_are_taken_by_systemd(tmp_path: Path, size: str) -> None:
    unit = render_all(load_inventory("inventory.yaml", text=with_limits(size)).inventory)[
        "systemd/user/labctl-native.service"]
    assert f"MemoryMax={size}" in unit and f"MemoryHigh={size}" in unit
    assert verify_warnings(tmp_path, unit) == []


@pytest.mark.parametrize("size", REFUSED_SIZES)
def test_a_size_systemd_cannot_hold_is_refused_in_one_line(tmp_path: Path, size: str) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(with_limits(size))
    with pytest.raises(InvalidInventory) as info:
        load_inventory(path)
    assert sorted(re.sub(r":\d+:", ":N:", line) for line in info.value.lines()) == [
        f"{path}:N: services.native.limits.{key}: is more than systemd can hold: at most 18446744073709551614 "
        "bytes (2^64-2, e.g. 17179869183G or 16777215T)" for key in ("memory_high", "memory_max")]
    with pytest.raises(encode.EncodeError):
        encode.sd_size(size)
    with pytest.raises(encode.EncodeError):
        encode.redis_size(size)


@pytest.mark.parametrize("size", REFUSED_SIZES[:2])
def test_control_systemd_ignores_the_smallest_sizes_refused(tmp_path: Path, monkeypatch, size: str) -> None:
    monkeypatch.setattr(fields, "SIZE_MAX", 2**70)
    monkeypatch.setattr(encode, "SIZE_MAX", 2**70)
    unit = render_all(load_inventory("inventory.yaml", text=with_limits(size)).inventory)[
        "systemd/user/labctl-native.service"]
    warnings = verify_warnings(tmp_path, unit)
    assert len([w for w in warnings if f"Invalid memory limit '{size}', ignoring" in w]) == 2, warnings


def test_redis_maxmemory_is_written_in_bytes() -> None:
    text = edit(("  gateway:\n", "  cache:\n    kind: redis\n    port: 6390\n    maxmemory: 16777215T\n  gateway:\n"))
    conf = render_all(load_inventory("inventory.yaml", text=text).inventory)["labctl/redis/cache.conf"]
    assert f"maxmemory {16777215 * 2**40}" in conf.splitlines()


# --- systemd-analyze ----------------------------------------------------------------------

# verify checks the executable on this machine (absent here); anything else is about the unit.
NOT_EXECUTABLE = re.compile(r": Command \S+ is not executable: ")


def verify_warnings(tmp_path: Path, unit_text: str) -> list[str]:
    analyze = require_command("systemd-analyze", "apt-get install systemd")
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    unit = tmp_path / "labctl-x.service"
    unit.write_text(unit_text)
    res = subprocess.run([analyze, "--user", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_COLOR": "0"})
    return [line for line in res.stderr.splitlines() if line.strip() and not NOT_EXECUTABLE.search(line)]
