"""Regression tests, one per class of hostile input an outside audit found (issue 9).

The property test (test_hostile_render.py) and the fuzzer (test_fuzz_inventory.py) search
for new cases; these pin the known ones, with the exact behaviour an operator sees: exit
code, one line naming file, line and field, nothing echoed that looks like a secret, and a
time bound where the audit found a hang.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
import yaml
from harness import unitfile
from harness.invtext import BASE, edit, with_service

from labctl import fsio
from labctl.cli import main
from labctl.host import generations, provision, secrets
from labctl.load import load_inventory
from labctl.fields import Runtime
from labctl.render import render_all


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def validate(tmp_path: Path, capsys, text: str | bytes, *extra: str) -> tuple[int, str, str, Path]:
    path = tmp_path / "inventory.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    code, out, err = run(capsys, "validate", "-i", str(path), *extra)
    return code, out, err, path


def one_error(err: str, path: Path) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{path}:"), err
    return lines[0]


# --- the loader: bounded, never blocking ---------------------------------------------------

def put(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


BOMB = "".join(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9 if i else ['"lol"'] * 9)
               + "]\n" for i in range(9))


@pytest.mark.parametrize("make,expected", [
    (lambda d: os.mkfifo(d / "in.yaml") or d / "in.yaml", "(file): is a FIFO, expected a YAML file"),
    (lambda d: Path("/dev/zero"), "(file): is a character device, expected a YAML file"),
    (lambda d: d, "(file): is a directory, expected a YAML file"),
    (lambda d: (d / "loop").symlink_to(d / "loop") or d / "loop", "(file): too many levels of symbolic links"),
    (lambda d: put(d / "f", "x") / "inventory.yaml",
     "(file): a component of the path is not a directory"),
    (lambda d: d / ("x" * 300), "(file): file name too long"),
    (lambda d: Path("/proc/self/mem"), "(file): input/output error"),
    (lambda d: put(d / "bomb.yaml", BOMB), "expands to more than 100000 values"),
    (lambda d: put(d / "r.yaml", "x: &c [*c]\n"), "recursive alias"),
    (lambda d: put(d / "n.yaml", "a: " + "[" * 3000 + "]" * 3000 + "\n"),
     "brackets nested deeper than 64 levels"),
    (lambda d: put(d / "b.yaml", "a:\n" + "".join("  " * i + "- \n" for i in range(1, 200))), "nested deeper than 64 levels"),
    (lambda d: put(d / "i.yaml", "version: " + "9" * 5000 + "\n"),
     "version: not a usable int (too long or out of range)"),
    (lambda d: put(d / "t.yaml", "version: 2001-13-45\n"), "version: not a usable timestamp"),
    (lambda d: put(d / "e.yaml", "version: !!timestamp\n"), "not a valid YAML timestamp"),
    (lambda d: put(d / "x.yaml", "version: !!binary aGk=\n"), "binary values are not supported"),
    (lambda d: put(d / "big.yaml", "# x\n" * 300_000), "an inventory may be at most"),
])
def test_hostile_files_end_fast_with_one_line_and_exit_2(tmp_path: Path, capsys, make, expected) -> None:
    path = make(tmp_path)
    start = time.monotonic()
    code, out, err = run(capsys, "validate", "-i", str(path), "--json")
    assert time.monotonic() - start < 1.0
    assert code == 2
    assert len(err.splitlines()) == 1 and expected in err, err
    doc = json.loads(out)
    assert doc["ok"] is False and doc["exit_code"] == 2 and doc["errors"][0]["file"] == str(path)


def test_bomb_is_about_a_kilobyte() -> None:
    assert 300 < len(BOMB) < 1100


# --- characters that end lines, in every field the audit named -------------------------------

FIELDS = {
    "description": ("    ctx_size: 2048\n", "    ctx_size: 2048\n    description: {v}\n", "13: services.native.description"),
    "alias": ("    alias: native\n", "    alias: {v}\n", "10: services.native.alias"),
    "extra_args": ("    ctx_size: 2048\n", "    ctx_size: 2048\n    extra_args: [{v}]\n", "13: services.native.extra_args[0]"),
    "environment": ("    ctx_size: 2048\n", "    ctx_size: 2048\n    environment: {{A: {v}}}\n",
                    "13: services.native.environment.A"),
    "binary": ("    binary: /opt/llama/bin/llama-server\n", "    binary: {v}\n", "8: services.native.binary"),
    "state_dir": ("  gpu: false\n", "  gpu: false\n  state_dir: {v}\n", "5: host.state_dir"),
    "grafana password file": ("  enabled: true\n", "  enabled: true\n  grafana: {{admin_password_file: {v}}}\n",
                              "34: monitoring.grafana.admin_password_file"),
}
CHARS = {"CR": "\\r", "NUL": "\\0", "LF": "\\n", "VT": "\\v", "FF": "\\f", "ESC": "\\e", "DEL": "\\x7f",
         "NEL": "\\N", "LS": "\\L", "PS": "\\P", "RLO": "\\u202e", "BOM": "\\ufeff", "surrogate": "\\ud800"}


@pytest.mark.parametrize("char", list(CHARS))
@pytest.mark.parametrize("field", list(FIELDS))
def test_line_breaking_characters_are_refused_naming_line_and_field(tmp_path, capsys, field, char) -> None:
    old, new, where = FIELDS[field]
    value = f'"/x/a{CHARS[char]}ExecStartPre=/bin/sh"'
    code, _, err, path = validate(tmp_path, capsys, edit((old, new.format(v=value))))
    assert code == 2
    line = one_error(err, path)
    assert f"{path}:{where}: contains U+" in line, line
    assert "ExecStartPre" not in line  # the value is never echoed


@pytest.mark.parametrize("raw", ["\r", "\u0085", "\u2028"])
def test_raw_line_breaks_in_the_file_cannot_add_keys(tmp_path, capsys, raw) -> None:
    """Raw CR/NEL/U+2028 inside a value are YAML line breaks: the smuggled key lands in the
    inventory (and is refused as unknown), never in a rendered file."""
    text = edit(("    alias: native\n", f"    alias: native{raw}    ExecStartPre: /x\n"))
    code, _, err, path = validate(tmp_path, capsys, text)
    assert code == 2 and "ExecStartPre" in err and "unknown key" in err, err


def test_ipv6_scope_id_is_refused(tmp_path, capsys) -> None:
    code, _, err, path = validate(tmp_path, capsys, edit(("  gpu: false\n", '  gpu: false\n  bind: "::1%lo"\n')))
    assert code == 2
    assert "5: host.bind: must be a plain IP address; an IPv6 scope id" in one_error(err, path)


@pytest.mark.parametrize("old,new,where", [
    ("      - name: native\n", "      - name: os.environ/LITELLM_MASTER_KEY\n", "routes[0].name"),
    ("        service: native\n", "        service: native\n        model: os.environ/LITELLM_MASTER_KEY\n",
     "routes[0].model"),
    ("    alias: native\n", "    alias: OS.ENVIRON/X\n", "native.alias"),
    # Inside a value too: LiteLLM reads some values from os.environ/ on (labctl.litellm_env).
    ("    alias: native\n", "    alias: x-os.environ/LITELLM_MASTER_KEY\n", "native.alias"),
])
def test_litellm_environment_references_cannot_be_smuggled(tmp_path, capsys, old, new, where) -> None:
    code, _, err, path = validate(tmp_path, capsys, edit((old, new)))
    assert code == 2 and where in err and "must not contain os.environ/" in err, err


def test_port_true_is_not_port_1(tmp_path, capsys) -> None:
    code, _, err, path = validate(tmp_path, capsys, edit(("port: 8080", "port: true")))
    assert code == 2 and "9: services.native.port: input should be a valid integer" in one_error(err, path)


@pytest.mark.parametrize("value,problem", [
    ('"ends\\\\"', "must not end with a backslash"),
    ('" lead"', "must not start or end with whitespace"),
])
def test_text_systemd_would_change_is_refused(tmp_path, capsys, value, problem) -> None:
    code, _, err, path = validate(tmp_path, capsys, edit(("    ctx_size: 2048\n", f"    ctx_size: 2048\n    description: {value}\n")))
    assert code == 2 and problem in one_error(err, path)


def rendered_unit(tmp_path: Path, text: str, service: str = "native") -> list[unitfile.Directive]:
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    files = render_all(load_inventory(path).inventory)
    return unitfile.directives(files[f"systemd/user/labctl-{service}.service"])


def test_specifiers_and_dollars_mean_themselves(tmp_path) -> None:
    text = edit(("    ctx_size: 2048\n", '    ctx_size: 2048\n    description: "100%h %Z $HOME"\n'
                                       '    extra_args: ["--x=%h$HOME;"]\n    environment: {A: "%Z ${B}"}\n'),
                ("  gpu: false\n", "  gpu: false\n  state_dir: /srv/state%h\n"))
    directives = {d.key: d.value for d in rendered_unit(tmp_path, text)}
    assert unitfile.plain(directives["Description"]) == "100%h %Z $HOME"
    assert unitfile.exec_argv(directives["ExecStart"])[-1] == "--x=%h$HOME;"
    assert unitfile.environment(directives["Environment"]) == {"A": "%Z ${B}"}
    assert unitfile.plain(directives["WorkingDirectory"]) == "/srv/state%h/native"


def test_relative_llama_model_is_in_the_models_dir(tmp_path) -> None:
    text = edit(("    alias: native\n", "    alias: native\n    model: sub/tiny.gguf\n"))
    directives = {d.key: d.value for d in rendered_unit(tmp_path, text)}
    argv = unitfile.exec_argv(directives["ExecStart"])
    assert argv[argv.index("--model") + 1] == "/home/labuser/models/sub/tiny.gguf"


def test_paths_are_normalised_as_systemd_would(tmp_path) -> None:
    text = edit(("    binary: /opt/llama/bin/llama-server\n", "    binary: /opt//llama/./bin/llama-server\n"))
    directives = {d.key: d.value for d in rendered_unit(tmp_path, text)}
    assert unitfile.exec_argv(directives["ExecStart"])[0] == "/opt/llama/bin/llama-server"


def test_compose_comment_cannot_break_the_file(tmp_path) -> None:
    text = edit(("  enabled: true\n", '  enabled: true\n  grafana: {admin_password_file: "/srv/x #: include"}\n'))
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    compose = render_all(load_inventory(path).inventory)["labctl/monitoring/compose.yaml"]
    assert set(yaml.safe_load(compose)) == {"name", "services", "secrets", "volumes"}
    assert "(/srv/x #: include)" in compose


# --- what systemctl, systemd and redis-server would read otherwise (issue 23) -----------------
# test_unit_argv, test_paths_and_sizes and the property hold the classes; these pin what an
# operator sees for one case of each.

EXTERNAL = "  theirs:\n    kind: external\n    api: openai\n    port: 8090\n    models: [x]\n    unit: {v}\n"
OLLAMA = "  ol:\n    kind: ollama\n    port: 11434\n    models: [a]\n    environment: {{OLLAMA_MODELS: {v}}}\n"
REDIS = "  cache:\n    kind: redis\n    port: 6390\n    maxmemory: {v}\n"


@pytest.mark.parametrize("text, where, message", [
    (with_service(EXTERNAL.format(v="-Hattacker.example.service")), "37: services.theirs.unit",
     "must not start with '-' (systemctl and journalctl would read it as an option)"),
    (with_service(EXTERNAL.format(v="'ollama@.service'")), "37: services.theirs.unit", "is a template"),
    (edit(("    ctx_size: 2048\n", "    ctx_size: 2048\n    environment_files: ['~/.config/sec[r]ets/x.env']\n")),
     "13: services.native.environment_files[0]", "must not hold *, ?, [ or \\: systemd reads an EnvironmentFile="),
    (edit(("  gpu: false\n", "  gpu: false\n  home: /home/lab*\n")), "5: host.home", "must not hold *, ?, [ or \\"),
    (with_service(REDIS.format(v="1G") + "    password: {env_file: '~/s?crets/r.env', var: REDIS_PASSWORD}\n"),
     "36: services.cache.password.env_file", "must not hold *, ?, [ or \\"),
    (with_service(OLLAMA.format(v="models")), "36: services.ol.environment.OLLAMA_MODELS",
     "must be an absolute path or start with ~/"),
    (with_service(OLLAMA.format(v="/srv/../models")), "36: services.ol.environment.OLLAMA_MODELS",
     "must not contain '..'"),
    (with_service(REDIS.format(v="17179869184G")), "35: services.cache.maxmemory",
     "is more than systemd can hold: at most 18446744073709551614 bytes"),
    (edit(("    ctx_size: 2048\n", "    ctx_size: 2048\n    limits: {memory_max: 16777216T}\n")),
     "13: services.native.limits.memory_max", "is more than systemd can hold"),
])
def test_what_a_consumer_would_read_otherwise_is_one_line_at_its_field(tmp_path, capsys, text, where,
                                                                      message) -> None:
    code, out, err, path = validate(tmp_path, capsys, text, "--json")
    assert code == 2 and json.loads(out)["ok"] is False
    line = one_error(err, path)
    assert line.startswith(f"{path}:{where}: {message}"), line


# --- secrets -------------------------------------------------------------------------------

SECRET = "sk-live-0123456789abcdefABCDEF"


@pytest.mark.parametrize("old,new,where", [
    ("    ctx_size: 2048\n", "    ctx_size: 2048\n    environment: {HF_AUTH: x1}\n", "environment.HF_AUTH"),
    ("    ctx_size: 2048\n", "    ctx_size: 2048\n    environment: {REDIS_PASS: x1}\n", "environment.REDIS_PASS"),
    ("    ctx_size: 2048\n", "    ctx_size: 2048\n    environment: {DB_PWD: x1}\n", "environment.DB_PWD"),
    ("    ctx_size: 2048\n", f'    ctx_size: 2048\n    environment: {{X_HEADER: "Bearer {SECRET}"}}\n',
     "environment.X_HEADER"),
    ("    ctx_size: 2048\n", f"    ctx_size: 2048\n    environment: {{UPSTREAM: {SECRET}}}\n", "environment.UPSTREAM"),
    ("    ctx_size: 2048\n", f"    ctx_size: 2048\n    extra_args: [--api-key, {SECRET}]\n", "extra_args[1]"),
    ("    ctx_size: 2048\n", "    ctx_size: 2048\n    extra_args: [--api-key=hunter2hunter2]\n", "extra_args[0]"),
    ("    ctx_size: 2048\n", "    ctx_size: 2048\n    extra_args: [--hf-token, abc123]\n", "extra_args[1]"),
    ("      python: /opt/llama-cpp-python/bin/python\n",
     f"      venv: /opt/v\n      pip: [x==1]\n      pip_env: {{PIP_INDEX_URL: 'https://u:{SECRET}@idx/simple'}}\n",
     "pip_env.PIP_INDEX_URL"),
    ("      python: /opt/llama-cpp-python/bin/python\n",
     f"      venv: /opt/v\n      pip: ['x @ https://u:{SECRET}@idx/x.whl']\n", "runtime.pip[0]"),
])
def test_inline_secrets_are_refused_and_never_echoed(tmp_path, capsys, old, new, where) -> None:
    code, out, err, path = validate(tmp_path, capsys, edit((old, new)), "--json")
    assert code == 2 and where in err, err
    assert SECRET not in out + err and "hunter2" not in out + err


def test_a_key_file_flag_is_the_right_way(tmp_path, capsys) -> None:
    code, _, err, _ = validate(tmp_path, capsys, edit(("    ctx_size: 2048\n",
                                                       "    ctx_size: 2048\n    extra_args: [--api-key-file, /run/k]\n")))
    assert code == 0, err


def test_secret_reference_errors_do_not_echo_the_value(tmp_path, capsys) -> None:
    code, out, err, path = validate(tmp_path, capsys, edit(("    port: 4000\n", f"    port: 4000\n    master_key: {{env: {SECRET}}}\n")),
                                    "--json")
    assert code == 2 and "master_key.env" in err
    assert SECRET not in out + err


def test_runtime_stamp_holds_no_pip_env_values() -> None:
    runtime = Runtime(venv="/opt/v", pip=["x==1"], pip_env={"PIP_EXTRA": "visible-value"})
    wanted = json.dumps(provision._wanted(runtime))
    assert "visible-value" not in wanted and "PIP_EXTRA" in wanted


# --- file modes ----------------------------------------------------------------------------


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_follows_the_umask_but_never_widens(tmp_path, umask) -> None:
    umask(0o077)
    fsio.atomic_write(tmp_path / "a", "x")
    assert mode(tmp_path / "a") == 0o600
    umask(0o000)
    fsio.atomic_write(tmp_path / "deep/er/b", "x")
    assert mode(tmp_path / "deep/er/b") == 0o644
    assert mode(tmp_path / "deep") == 0o755 and mode(tmp_path / "deep/er") == 0o755


def test_secrets_under_umask_000_are_private_and_their_parents_not_writable(tmp_path, umask) -> None:
    umask(0o000)
    secret = tmp_path / "home/.config/labctl/secrets/litellm.env"
    secrets.ensure_env_secret(secret, "LITELLM_MASTER_KEY")
    assert mode(secret) == 0o600 and mode(secret.parent) == 0o700
    for parent in (tmp_path / "home", tmp_path / "home/.config", tmp_path / "home/.config/labctl"):
        assert mode(parent) & 0o022 == 0, oct(mode(parent))


def test_generations_keep_inventories_owner_only(tmp_path) -> None:
    gen = generations.snapshot(tmp_path, {"systemd/user/x.service": "[Unit]\n"}, "version: 1\n", "test")
    assert mode(gen.path.parent) == 0o700
    assert mode(gen.path / "inventory.yaml") == 0o600


# --- operator-caused OS errors are one line, never "internal error" ---------------------------


def test_render_out_onto_a_file_is_a_usage_error(tmp_path, capsys) -> None:
    inv = tmp_path / "inventory.yaml"
    inv.write_text(BASE)
    blocker = tmp_path / "out"
    blocker.write_text("in the way")
    code, out, err = run(capsys, "render", "-i", str(inv), "--out", str(blocker), "--json")
    assert code == 2 and len(err.splitlines()) == 1 and "--out" in err and "not a directory" in err, err
    assert json.loads(out)["ok"] is False and "internal error" not in err


def test_render_out_where_the_kernel_refuses_is_one_line(tmp_path, capsys) -> None:
    inv = tmp_path / "inventory.yaml"
    inv.write_text(BASE)
    code, out, err = run(capsys, "render", "-i", str(inv), "--out", "/proc/labctl-test")
    assert code == 2 and len(err.splitlines()) == 1 and "internal error" not in err, err


@pytest.mark.parametrize("line", [
    "    environment: {TOKENIZERS_PARALLELISM: 'false', HF_HUB_DISABLE_KEYRING: '1', OLLAMA_KEEP_ALIVE: 5m}\n",
    "    extra_args: [--max-tokens, '512', --tokenizer, org/name, --ssl-keyfile, /etc/k.pem, --no-auth, --verbose]\n",
    "    environment: {PYTORCH_CUDA_ALLOC_CONF: 'expandable_segments:True', LD_PRELOAD: /usr/lib/x86_64-linux-gnu/x.so}\n",
])
def test_ordinary_settings_are_not_mistaken_for_secrets(tmp_path, capsys, line) -> None:
    code, _, err, _ = validate(tmp_path, capsys, edit(("    ctx_size: 2048\n", "    ctx_size: 2048\n" + line)))
    assert code == 0, err


def test_plan_shows_escape_sequences_in_installed_files_instead_of_obeying_them(tmp_path, capsys) -> None:
    """The installed side of a diff is whatever is on disk, edited by anyone."""
    inv = tmp_path / "inventory.yaml"
    inv.write_text(BASE)
    root = tmp_path / "root"
    code, _, err = run(capsys, "render", "-i", str(inv), "--out", str(root))
    assert code == 0, err
    unit = root / "systemd/user/labctl-native.service"
    unit.write_text(unit.read_text().replace("Type=exec", "Type=exec\n# \x1b[2J\x1b]0;owned\x07"))
    code, out, err = run(capsys, "plan", "-i", str(inv), "--root", str(root))
    assert "\x1b" not in out and "\x07" not in out and "\\x1b[2J" in out, out


def test_an_alias_chain_cannot_nest_deeper_than_the_text_does(tmp_path, capsys) -> None:
    """Each anchor wraps the previous one in 40 levels: shallow text, deep expansion."""
    lines = ["a0: &a0 x"]
    for i in range(1, 60):
        lines.append(f"a{i}: &a{i} " + "[" * 40 + f"*a{i - 1}" + "]" * 40)
    code, out, err, path = validate(tmp_path, capsys, "\n".join(lines) + "\n", "--json")
    assert code == 2 and "nested deeper than 64 levels once YAML aliases are expanded" in one_error(err, path)
