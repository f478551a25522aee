"""A secret pasted into any field of an inventory is refused, and never echoed.

The table is every secret shape labctl.secretscan knows × every string of an inventory
that sets every string field of the schema (test_hostile_render's FULL, the fleet's own
fields from test_fleet_hostile's FLEET_FULL, and the few fields neither sets), mapping keys
included: the field list comes from the schema, so a new field is in the table by itself.
Each case must end in exit 2 with a ``file:line: path: message`` line at that field, and
nothing secret-shaped in any line or in ``--json``. A control test takes the one scan
(labctl.load.checks.secret_problems) away and watches the secret reach a unit file and
the LiteLLM config.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from test_fleet_hostile import FLEET_FULL
from test_fleet_hostile import LEAVES as FLEET_LEAVES
from test_hostile_render import FULL, LEAVES, _concrete, schema_string_fields, set_at

from labctl import secretscan
from labctl.cli import main
from labctl.errors import InputError, InvalidInventory
from labctl.inventory import schema
from labctl.load import checks
from labctl.load import load_inventory
from labctl.inventory.yamlsrc import dotted
from labctl.render import render_all

pytestmark = pytest.mark.unit

ERROR_LINE = re.compile(r"^(?P<file>[^\n]+):(?P<line>\d+): (?P<path>\S[^\n]*?): (?P<msg>[^\n]+)$")

# Each shape, and the part of it that must never be printed.
SHAPES = {
    "api-token": ("sk-proj-Q2xvdWRGbGFyZTEyMzQ1Njc4", "Q2xvdWRGbGFyZTEy"),
    "uuid": ("3f1c2a9e-8b7d-4c6e-9f0a-1b2c3d4e5f60", "9f0a-1b2c3d4e5f60"),
    "password-in-argument": ("--db-opts=user=app,password=Tr0ub4dor", "Tr0ub4dor"),
    "api-key-pair": ("api_key: Tr0ub4dor", "Tr0ub4dor"),
    "bearer": ("Bearer Tr0ub4dorTr0ub", "Tr0ub4dorTr0ub"),
    "url-credentials": ("https://app:Tr0ub4dor@db.example.com/x", "Tr0ub4dor"),
    "key-run": ("Tr0ub4dorTr0ub4dor9Tr0ub", "Tr0ub4dorTr0ub4dor9Tr0ub"),
}

# The fields neither FULL nor FLEET_FULL sets, each in a document that sets it.
CACHE_ON_SERVICE = set_at(FULL, ("services", "gateway", "cache"), {"service": "cache"})
OWN_MONITORING = copy.deepcopy(FULL)
OWN_MONITORING["monitoring"].update({"rule_files": ["~/rules/x.yml"], "rule_tests": ["~/rules/x-test.yml"],
                                     "dashboards": ["~/dashboards/x.json"]})
PIP_INDEX = set_at(FLEET_FULL, ("fleet", "pip"), {"index_url": "https://pypi.example.com/simple"})
# A program's runtime is a venv labctl provisions: python is refused there whatever it says.
WHEEL_PYTHON = set_at(FULL, ("services", "wheel", "runtime", "python"), "/usr/bin/python3")

DOCS: dict[str, dict[str, Any]] = {"full": FULL, "fleet": FLEET_FULL, "cache-service": CACHE_ON_SERVICE,
                                   "own-monitoring": OWN_MONITORING, "pip-index": PIP_INDEX,
                                   "wheel-python": WHEEL_PYTHON}
# (document, location of a string value) for every string field.
VALUES = ([("full", loc) for loc in LEAVES]
          + [("fleet", loc) for loc in FLEET_LEAVES if loc[0] in ("fleet", "hosts")]
          + [("cache-service", ("services", "gateway", "cache", "service")),
             ("own-monitoring", ("monitoring", "rule_files", 0)), ("own-monitoring", ("monitoring", "rule_tests", 0)),
             ("own-monitoring", ("monitoring", "dashboards", 0)), ("pip-index", ("fleet", "pip", "index_url")),
             ("wheel-python", ("services", "wheel", "runtime", "python"))])


def mapping_keys(doc: dict[str, Any], node: Any = None, loc: tuple = ()) -> list[tuple]:
    """The location of every mapping key in ``doc`` that is a key of the operator's
    (services, environment, labels, settings ...), not a field name of the schema."""
    node = doc if node is None else node
    out = []
    if isinstance(node, dict):
        own_keys = _model_at(doc, loc) is None
        for key, value in node.items():
            if own_keys:
                out.append(loc + (key,))
            out += mapping_keys(doc, value, loc + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += mapping_keys(doc, value, loc + (i,))
    return out


def _model_at(doc: dict[str, Any], loc: tuple) -> type[BaseModel] | None:
    """The schema's model for the mapping at ``loc`` of ``doc``; None for a mapping of the
    operator's own keys (or plain data inside a pass-through setting)."""
    ann: Any = schema.Inventory
    node: Any = doc
    for part in loc:
        ann = _concrete(ann, node)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            ann = ann.model_fields[part].annotation
        elif getattr(ann, "__args__", None):
            ann = ann.__args__[-1]
        else:
            return None
        node = node[part]
    ann = _concrete(ann, node)
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


NESTED_SETTINGS = set_at(FULL, ("services", "gateway", "routes", 5, "litellm_params", "extra_body"),
                         {"cache_prompt": True, "chat_template_kwargs": {"enable_thinking": False}})
KEY_DOCS = {"full": FULL, "fleet": FLEET_FULL, "nested-settings": NESTED_SETTINGS}
KEYS = ([("full", loc) for loc in mapping_keys(FULL)] + [("fleet", loc) for loc in mapping_keys(FLEET_FULL)
                                                         if loc[0] == "hosts"]
        + [("nested-settings", loc) for loc in mapping_keys(NESTED_SETTINGS) if "extra_body" in loc])


def renamed(doc: dict[str, Any], loc: tuple, new: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node = doc
    for part in loc[:-2] if len(loc) > 1 else ():
        node = node[part]
    parent_key = loc[-2] if len(loc) > 1 else None
    mapping = node[parent_key] if parent_key is not None else node
    replaced = {(new if k == loc[-1] else k): v for k, v in mapping.items()}
    if parent_key is None:
        return replaced
    node[parent_key] = replaced
    return doc


def field_name(doc: dict[str, Any], loc: tuple) -> str:
    """``Model.field`` of a location in ``doc``, walking the schema beside it."""
    ann: Any = schema.Inventory
    node: Any = doc
    name = ""
    for part in loc:
        ann = _concrete(ann, node)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            name = f"{ann.__name__}.{part}"
            ann = ann.model_fields[part].annotation
        elif getattr(ann, "__args__", None):
            ann = ann.__args__[-1]
        node = node[part]
    return name


def test_the_table_has_every_string_field_of_the_schema() -> None:
    covered = {field_name(DOCS[doc], loc) for doc, loc in VALUES}
    missing = schema_string_fields(schema.Inventory) - covered
    assert not missing, f"string fields no case of the table sets: {sorted(missing)}"
    # and keys of the operator's own mappings, at every level
    assert {("services", "native"), ("services", "native", "environment", "GGML_VK_VISIBLE_DEVICES"),
            ("monitoring", "external_labels", "site"), ("services", "gateway", "aliases", "fast"),
            ("services", "gateway", "routes", 5, "litellm_params", "tags"), ("hosts", "gpu-a"),
            ("services", "gateway", "routes", 5, "litellm_params", "extra_body", "chat_template_kwargs",
             "enable_thinking")} <= {loc for _, loc in KEYS}


def refused(tmp: Path, doc: dict[str, Any], expected: set[str], fragment: str) -> list[str]:
    path = tmp / "inventory.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=False))
    with pytest.raises((InvalidInventory, InputError)) as caught:
        load_inventory(path)
    lines = caught.value.lines()
    assert caught.value.exit_code == 2 and lines
    for line in lines:
        m = ERROR_LINE.match(line)
        assert m and m.group("file") == str(path), line
        assert secretscan.value_problem(line) is None, f"a secret-shaped text in {line!r}"
    shown = "\n".join(lines) + json.dumps(caught.value.as_dicts())
    assert fragment not in shown, shown
    assert {d["path"] for d in caught.value.as_dicts()} & expected, f"no line at {expected}: {lines}"
    return lines


# The location a refusal names when it cannot name the field itself: a service's kind is
# its discriminator (the loader names the service), a program runtime's python is refused by
# the runtime's own rule (set venv and pip).
AT_PARENT = {("services", "wheel", "runtime", "python")} | {loc for _, loc in VALUES
                                                           if loc[0] == "services" and loc[-1] == "kind"}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_secret_in_any_field_is_refused_at_the_field_and_never_echoed(tmp_path: Path, shape: str) -> None:
    value, fragment = SHAPES[shape]
    for doc, loc in VALUES:
        expected = {dotted(loc), dotted(loc[:-1])} if loc in AT_PARENT else {dotted(loc)}
        refused(tmp_path, set_at(DOCS[doc], loc, value), {secretscan.redact(p) for p in expected}, fragment)
    for doc, loc in KEYS:
        refused(tmp_path, renamed(KEY_DOCS[doc], loc, value), {secretscan.redact(dotted(loc[:-1] + (value,)))},
                fragment)


# Where the audit found secrets going unscanned, through the CLI: stderr and --json.
AUDITED = [("services", "native", "description"), ("services", "gateway", "routes", 0, "name"),
           ("services", "coder", "served_model_name"), ("services", "ollama", "models", 0),
           ("monitoring", "external_labels", "site"), ("monitoring", "scrape_jobs", 0, "labels", "service"),
           ("monitoring", "scrape_jobs", 0, "relabel_configs", 0, "replacement"),
           ("services", "gateway", "cache", "host")]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_cli_prints_neither_the_secret_nor_its_shape(tmp_path: Path, capsys, shape: str) -> None:
    value, fragment = SHAPES[shape]
    path = tmp_path / "inventory.yaml"
    for doc in [set_at(FULL, loc, value) for loc in AUDITED] + [renamed(FULL, ("services", "native"), value)]:
        path.write_text(yaml.safe_dump(doc))
        for extra in ([], ["--json"]):
            with pytest.raises(SystemExit) as exited:
                main(["validate", "-i", str(path), *extra])
            out, err = capsys.readouterr()
            assert exited.value.code == 2
            assert fragment not in out + err
            assert all(secretscan.value_problem(line) is None for line in (out + err).splitlines()), out + err
            if extra:
                assert json.loads(out)["ok"] is False


def test_the_scan_is_what_keeps_secrets_out_of_rendered_files(tmp_path: Path, monkeypatch) -> None:
    """The control: without secret_problems, the same inventories load, and the secrets land
    in a unit file and in the LiteLLM config."""
    uuid, _ = SHAPES["uuid"]
    pair, _ = SHAPES["password-in-argument"]
    description = set_at(FULL, ("services", "native", "description"), uuid)
    params = set_at(FULL, ("services", "gateway", "routes", 5, "litellm_params", "tags", 0), pair)
    path = tmp_path / "inventory.yaml"
    for doc in (description, params):
        path.write_text(yaml.safe_dump(doc))
        with pytest.raises(InvalidInventory):
            load_inventory(path)
    monkeypatch.setattr(checks, "secret_problems", lambda inv, src: [])
    path.write_text(yaml.safe_dump(description))
    assert uuid in render_all(load_inventory(path).inventory)["systemd/user/labctl-native.service"]
    path.write_text(yaml.safe_dump(params))
    assert pair in render_all(load_inventory(path).inventory)["labctl/litellm/config.yaml"]


# --- public by shape: digests are not keys ------------------------------------------------

DIGEST = "6a0746a1ec1aef3e7ec53868f220ff6e389f6f8ef87a01d77c96807de94ca2aa"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("loc,value", [
    (("models", "web", "sha256"), DIGEST),
    (("models", "web", "url"), f"https://huggingface.co/o/r/resolve/{COMMIT}/m.gguf"),
    (("models", "hub", "hf"), f"owner/repo-GGUF/model-Q4_K_M.gguf@{COMMIT}"),
    (("models", "local", "path"), f"/usr/share/ollama/.ollama/models/blobs/sha256-{DIGEST}"),
    (("services", "native", "model"), f"/usr/share/ollama/.ollama/models/blobs/sha256-{DIGEST}"),
    (("services", "coder", "model"), f"~/.cache/huggingface/hub/models--o--r/snapshots/{COMMIT}"),
    (("monitoring", "prometheus", "image"), f"prom/prometheus:v2.53.2@sha256:{DIGEST}"),
])
def test_digests_where_they_belong_are_not_keys(tmp_path: Path, loc: tuple, value: str) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(set_at(FULL, loc, value)))
    load_inventory(path)


def test_a_digest_elsewhere_is_a_key(tmp_path: Path) -> None:
    refused(tmp_path, set_at(FULL, ("services", "native", "description"), DIGEST),
            {"services.native.description"}, DIGEST)


# --- redact: exactly what the scanner flags -------------------------------------------------

@pytest.mark.parametrize("text,shown", [
    ("id 3f1c2a9e-8b7d-4c6e-9f0a-1b2c3d4e5f60 here", "id <redacted> here"),
    ("3F1C2A9E-8B7D-4C6E-9F0A-1B2C3D4E5F60", "<redacted>"),
    ("--db-opts=user=app,password=Tr0ub4dor", "--db-opts=user=app,password=<redacted>"),
    ("host=db password=hunter2 sslmode=require", "host=db password=<redacted> sslmode=require"),
    ("api_key: Tr0ub4dor", "api_key: <redacted>"),
    ("X-Api-Key: 'Tr0ub4dor'", "X-Api-Key: '<redacted>'"),
    ("no service named 'token=abc'", "no service named 'token=<redacted>'"),
    ("key: passwd=abc", "key: passwd=<redacted>"),
    ('["client_secret=x1"]', '["client_secret=<redacted>"]'),
])
def test_redact_masks_the_new_shapes(text: str, shown: str) -> None:
    assert secretscan.value_problem(text) is not None
    assert secretscan.redact(text) == shown


@pytest.mark.parametrize("text", [
    "--override-kv=tokenizer.ggml.add_bos_token=bool:false", "--api-key-file=/run/k", "auth=none", "key: value",
    "primary key: id", "token: 512", "password=${DB_PASSWORD}", "api_key: os.environ/CLOUD_API_KEY",
    "expandable_segments:True", "monkey=1", "llama3.1:8b", "--max-tokens=512", "sha256-6a0746a1",
])
def test_ordinary_text_is_neither_flagged_nor_changed(text: str) -> None:
    assert secretscan.value_problem(text) is None and secretscan.redact(text) == text


FRAGMENTS = ["sk-", "hf_", "ghp_", "Bearer ", "basic ", "token ", "password", "passwd", "api_key", "apikey", "token",
             "secret", "key", "auth", "=", ": ", ":", " ", "-", "--", "_", ".", ",", ";", "&", "?", "/", "@", "https://",
             "u:p@", "<redacted>", "'", '"', "{", "}", "$", "${X}", "os.environ/X", "true", "1",
             "3f1c2a9e-8b7d-4c6e-9f0a-1b2c3d4e5f60", "abcdef0123456789ABCD", "Tr0ub4dor"]


@settings(max_examples=3000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=12).map("".join))
def test_redact_leaves_nothing_the_scanner_flags_and_touches_nothing_else(text: str) -> None:
    """What an error line quotes is safe once redacted: fail() and InputError rely on it."""
    redacted = secretscan.redact(text)
    assert secretscan.value_problem(redacted) is None, (text, redacted)
    if secretscan.value_problem(text) is None:
        assert redacted == text


def test_an_input_error_is_redacted_where_it_is_made() -> None:
    error = InputError("inventory.yaml", 3, "services.sk-abcdefghijklmnop", "no service named 'password=hunter2'")
    assert "abcdefghijklmnop" not in str(error) and "hunter2" not in json.dumps(error.as_dicts())


@pytest.mark.parametrize("key", ["password", "secret", "token", "api_key"])
def test_an_error_about_a_secret_named_key_reads_whole(tmp_path: Path, capsys, key: str) -> None:
    """The path and the message of an input error are redacted where the error is made; the
    line they compose is printed as it is, so "password: unknown key" is not read as a
    secret-named pair and cut to "password: <redacted> key"."""
    path = tmp_path / "inventory.yaml"
    path.write_text(f"version: 1\nhost: {{user: llm}}\nservices: {{}}\n{key}: x\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "-i", str(path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"{path}:4: {key}: unknown key (allowed: defaults, fleet, host, hosts, " \
                                      "models, monitoring, services, version)\n"
    # The control: the composed line through the redactor is what used to be printed ("token"
    # before a colon is prose to it).
    assert ("<redacted>" in secretscan.redact(f"{path}:4: {key}: unknown key")) == (key != "token")


def test_the_word_labctl_writes_for_an_unkeyed_backend_is_no_secret() -> None:
    assert secretscan.value_problem("api_key: unused") is None
    assert secretscan.value_problem("api_key: unused2x") is not None
