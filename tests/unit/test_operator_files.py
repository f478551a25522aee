"""The files an inventory names for monitoring (rule files, rule tests, dashboards) cannot
publish anything: each is a regular file of the operator's, readable by others already,
what it claims to be, written again from its data only, and free of secret-looking values
(labctl.render.operator_files). Issue 23, classes 5, 7 and 8.

Every hostile file is refused the way the rest of an inventory is: exit 2, one
``file:line: monitoring.FIELD[i]: ...`` line, nothing written, in bounded time.
"""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import yaml
from harness.invtext import edit
from harness.tools import require_command

from labctl.cli import main
from labctl.load import load_inventory
from labctl.render import operator_files, render_all, templates
from labctl import encode

pytestmark = pytest.mark.unit

RULES = """\
groups:
  - name: operator
    interval: 1m
    rules:
      - record: job:up:sum
        expr: sum by (job) (up)
      - alert: GpuHot
        expr: nvidia_gpu_temperature_celsius > 85
        for: 5m
        keep_firing_for: 1m
        labels: {severity: warning}
        annotations:
          summary: "GPU {{ $labels.gpu }} is at {{ $value }} C"
          description: |
            A GPU has been above 85 C for five minutes.
            VALUE = {{ $value }}	(tab-separated)
          runbook: https://runbooks.example.com/gpu-hot
"""
RULE_TEST = """\
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'nvidia_gpu_temperature_celsius{gpu="0"}'
        values: '90x10'
    alert_rule_test:
      - eval_time: 10m
        alertname: GpuHot
        exp_alerts:
          - exp_labels: {severity: warning, gpu: "0"}
            exp_annotations:
              summary: "GPU 0 is at 90 C"
              description: "A GPU has been above 85 C for five minutes.\\nVALUE = 90\\t(tab-separated)\\n"
              runbook: https://runbooks.example.com/gpu-hot
"""
DASHBOARD = '{"title": "GPU", "uid": "op-gpu", "panels": [{"id": 1, "type": "stat", "gridPos": {"h": 6, "w": 6}}]}'
SECRET = "sk-" + "abcdefghijklmnop1234"


def inventory(tmp_path: Path, **fields: list[str]) -> Path:
    lines = "".join(f"  {name}: {json.dumps(paths)}\n" for name, paths in fields.items())
    path = tmp_path / "inventory.yaml"
    path.write_text(edit(("monitoring:\n  enabled: true\n", f"monitoring:\n  enabled: true\n{lines}")))
    return path


def good_files(d: Path) -> dict[str, list[str]]:
    (d / "rules.yml").write_text(RULES)
    (d / "rules_test.yml").write_text(RULE_TEST)
    (d / "gpu.json").write_text(DASHBOARD)
    for name in ("rules.yml", "rules_test.yml", "gpu.json"):
        os.chmod(d / name, 0o644)
    return {"rule_files": [str(d / "rules.yml")], "rule_tests": [str(d / "rules_test.yml")],
            "dashboards": [str(d / "gpu.json")]}


def render_out(tmp_path: Path, capsys, inv: Path) -> tuple[int, str, Path, float]:
    out = tmp_path / "out"
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(["render", "-i", str(inv), "--out", str(out)])
    return int(exit_info.value.code or 0), capsys.readouterr().err, out, time.monotonic() - started


# --- the hostile files ---------------------------------------------------------------------


def put(path: Path, text: str | bytes, mode: int = 0o644) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    os.chmod(path, mode)
    return path


def fifo(d: Path) -> Path:
    os.mkfifo(d / "fifo.yml")
    return d / "fifo.yml"


def symlink(d: Path, target: str) -> Path:
    (d / "link.yml").symlink_to(target)
    return d / "link.yml"


def nested_json(depth: int) -> str:
    return '{"panels": [], "x": ' + "[" * depth + "]" * depth + "}"


# (field, make the file, what the one line says). Every kind of file a field can name.
HOSTILE: list[tuple[str, Callable[[Path], Path], str]] = []
for field in ("rule_files", "rule_tests", "dashboards"):
    HOSTILE += [
        (field, fifo, "is a FIFO, not a regular file"),
        (field, lambda d: symlink(d, "/proc/self/environ"), "resolves to a path under /proc"),
        (field, lambda d: Path("/proc/self/environ"), "is under /proc, a kernel filesystem"),
        (field, lambda d: Path("/proc/self/status"), "is under /proc, a kernel filesystem"),
        (field, lambda d: Path("/sys/kernel/mm/transparent_hugepage/enabled"), "is under /sys"),
        (field, lambda d: symlink(d, "/dev/zero"), "resolves to a path under /dev"),
        (field, lambda d: d, "is a directory, not a regular file"),
        (field, lambda d: symlink(d, str(d / "link.yml")), "is a symlink loop"),
        (field, lambda d: d / "missing.yml", "does not exist"),
        (field, lambda d, f=field: put(d / "private.yml", DASHBOARD if f == "dashboards" else RULES, 0o600),
         "is private to its owner (mode 0600)"),
        (field, lambda d, f=field: put(d / "group.yml", DASHBOARD if f == "dashboards" else RULES, 0o640),
         "is private to its owner (mode 0640)"),
        (field, lambda d: put(d / "big.yml", b"#" * (5 * 2**20)), "is 5242880 bytes; at most 4194304"),
        (field, lambda d: put(d / "latin1.yml", b"groups: []\n# \xe9\n"), "is not UTF-8 text"),
    ]
HOSTILE += [
    ("rule_files", lambda d: put(d / "compose.yml", "services: {a: {image: x}}\n"),
     "not a Prometheus rule file (a mapping with groups:) (at (document))"),
    ("rule_files", lambda d: put(d / "env.yml", f"LITELLM_MASTER_KEY: {SECRET}\n"), "not a Prometheus rule file"),
    ("rule_files", lambda d: put(d / "extra.yml", "groups: []\nsecret: x\n"), "not a key of a Prometheus rule file (groups: is its only key) (at secret)"),
    ("rule_files", lambda d: put(d / "list.yml", "- a\n"), "not a Prometheus rule file"),
    ("rule_files", lambda d: put(d / "empty.yml", ""), "file is empty"),
    ("rule_files", lambda d: put(d / "k.yml", RULES.replace("keep_firing_for", "password")),
     ("not a key of a rule (", "(at groups[0].rules[1].password)")),
    ("rule_files", lambda d: put(d / "g.yml", RULES.replace("interval: 1m", "interval: {a: 1}")),
     "must be a single value (at groups[0].interval)"),
    ("rule_files", lambda d: put(d / "both.yml", RULES.replace("- record: job:up:sum", "- record: x\n        alert: y")),
     "a rule has exactly one of alert: or record:"),
    ("rule_files", lambda d: put(d / "s.yml", RULES.replace("https://runbooks.example.com/gpu-hot", SECRET)),
     (":17: the value looks like an API token", "(at groups[0].rules[1].annotations.runbook)")),
    ("rule_files", lambda d: put(d / "u.yml", RULES.replace("gpu-hot", "gpu?token=abcdefgh")),
     ("the value is a URL with a key or token in its query", "(at groups[0].rules[1].annotations.runbook)")),
    ("rule_files", lambda d: put(d / "key.yml", RULES.replace("severity: warning", f"{SECRET}: warning")),
     ("a key looks like an API token", "(at groups[0].rules[1].labels)")),
    ("rule_files", lambda d: put(d / "nan.yml", RULES.replace("interval: 1m", "limit: .nan")),
     ("is not a finite number", "(at groups[0].limit)")),
    ("rule_files", lambda d: put(d / "inf.yml", RULES.replace("severity: warning", "severity: -.inf")),
     "is not a finite number"),
    ("rule_files", lambda d: put(d / "deep.yml", "groups: " + "[" * 2000 + "]" * 2000 + "\n"),
     "brackets nested deeper than 64 levels"),
    ("rule_files", lambda d: put(d / "block.yml", "groups:\n" + "".join("  " * i + "- \n" for i in range(1, 200))),
     "nested deeper than 64 levels"),
    ("rule_files", lambda d: put(d / "bomb.yml", "".join(
        f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9 if i else ['"lol"'] * 9) + "]\n"
        for i in range(9))), "expands to more than 100000 values"),
    ("rule_files", lambda d: put(d / "cr.yml", RULES.replace(" is at {{ $value }} C", "\\r\\x1b[2J")),
     "contains U+000D (CARRIAGE RETURN)"),
    ("rule_tests", lambda d: put(d / "t.yml", "rule_files: [x.yml]\n"), "not a promtool rule test file"),
    ("rule_tests", lambda d: put(d / "t.yml", "rule_files: ['/proc/self/environ']\ntests: []\n"),
     "the rule file it tests is refused: /proc/self/environ is under /proc"),
    ("rule_tests", lambda d: put(d / "priv.yml", RULES, 0o600) and put(d / "t.yml", "rule_files: [priv.yml]\ntests: []\n"),
     "the rule file it tests is refused: " + "{d}/priv.yml is private to its owner"),
    ("rule_tests", lambda d: put(d / "t.yml", "rule_files: ['/etc/*']\ntests: []\n"), "does not follow globs"),
    ("rule_tests", lambda d: put(d / "t.yml", 'rule_files: ["a\\nb.yml"]\ntests: []\n'), "must be a file name"),
    ("rule_tests", lambda d: put(d / "t.yml", RULE_TEST.replace("'90x10'", f"'{SECRET}'")),
     ("the value looks like an API token", "(at tests[0].input_series[0].values)")),
    ("dashboards", lambda d: put(d / "d.json", nested_json(2000)), ":1: nested deeper than 64 levels"),
    ("dashboards", lambda d: put(d / "d.json", nested_json(65)), "nested deeper than 64 levels"),
    ("dashboards", lambda d: put(d / "d.json", '{"panels": [], "x": NaN}'), "holds NaN, which is not a JSON number"),
    ("dashboards", lambda d: put(d / "d.json", '{"panels": [], "x": Infinity}'), "holds Infinity"),
    ("dashboards", lambda d: put(d / "d.json", '{"panels": [], "x": -Infinity}'), "holds -Infinity"),
    ("dashboards", lambda d: put(d / "d.json", '{"panels": [], "x": 1e400}'), "a number too large for a double"),
    ("dashboards", lambda d: put(d / "d.json", '{"panels": [], "x": -1e400}'), "a number too large for a double"),
    ("dashboards", lambda d: put(d / "d.json", '{"panels": [], "x": ' + "9" * 5000 + "}"), "is not usable JSON"),
    ("dashboards", lambda d: put(d / "d.json", '{"panels": [], "x": "\\"' + '\\"' * 200_000), ":1: not JSON"),
    ("dashboards", lambda d: put(d / "d.json", '{"panels": ['), ":1: not JSON"),
    ("dashboards", lambda d: put(d / "d.json", "[1]"), "is not a Grafana dashboard"),
    ("dashboards", lambda d: put(d / "d.json", '{"uid": "labctl-overview", "panels": []}'),
     "takes labctl's own dashboard uid"),
    ("dashboards", lambda d: put(d / "d.json", json.dumps({"panels": [{"targets": [{"expr": f"x{{k='{SECRET}'}}"}]}]})),
     ("the value looks like an API token", "(at panels[0].targets[0].expr)")),
    ("dashboards", lambda d: put(d / "d.json", json.dumps({"panels": [], SECRET: 1})),
     ("a key looks like an API token", "(at (document))")),
    ("dashboards", lambda d: put(d / "d.json", json.dumps({"panels": [], "links": [{"url": "https://u:pw@grafana/x"}]})),
     ("the value is a URL with a password in it", "(at links[0].url)")),
]


@pytest.mark.parametrize("field,make,expected", HOSTILE, ids=[f"{f}-{e[:40]}" for f, _, e in HOSTILE])
def test_a_hostile_named_file_is_refused_in_one_line_with_nothing_written(
        tmp_path: Path, capsys, field: str, make: Callable[[Path], Path], expected: str) -> None:  # type: ignore[no-untyped-def]
    files = tmp_path / "files"
    files.mkdir()
    fields = good_files(files)
    fields[field] = [str(make(files))]
    inv = inventory(tmp_path, **fields)
    code, err, out, seconds = render_out(tmp_path, capsys, inv)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"{inv}:") and f": monitoring.{field}[0]: " in lines[0], err
    for part in (expected,) if isinstance(expected, str) else expected:
        assert part.format(d=files) in lines[0], err
    assert SECRET not in err and "Traceback" not in err and "internal error" not in err
    assert not out.exists(), "nothing may be written"
    assert seconds < 10, f"took {seconds:.1f}s"


def test_the_good_files_render_and_promtool_accepts_the_rule_file_written_again(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The re-emitted rule file is the operator's rules (the same data, line feeds and tabs
    in the description kept), and the real promtool checks it and runs the operator's unit
    test against it."""
    promtool = require_command("promtool", "apt-get install prometheus")
    files = tmp_path / "files"
    files.mkdir()
    inv = inventory(tmp_path, **good_files(files))
    code, err, out, _ = render_out(tmp_path, capsys, inv)
    assert code == 0, err
    rules = out / "labctl/monitoring/prometheus/rules/operator-0-rules.yml"
    assert yaml.safe_load(rules.read_text()) == yaml.safe_load(RULES)
    assert json.loads((out / "labctl/monitoring/grafana/dashboards/operator-0-gpu.json").read_text()) == \
        json.loads(DASHBOARD)
    res = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "SUCCESS: 2 rules found" in res.stdout, res.stdout + res.stderr
    # The operator's test, run against the installed copy in its place.
    (rules.parent / "rules_test.yml").write_text(RULE_TEST.replace("[rules.yml]", f"[{rules.name}]"))
    res = subprocess.run([promtool, "test", "rules", "rules_test.yml"], capture_output=True, text=True, timeout=60,
                         cwd=rules.parent)
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_large_real_world_shaped_rule_file_is_kept_whole(tmp_path: Path) -> None:
    """Many groups and rules, every key Prometheus's format has, escaped line breaks as in
    the popular alert collections: the written file reads back as the same data, and
    promtool agrees with the original on the rule count."""
    promtool = require_command("promtool", "apt-get install prometheus")
    groups = [{"name": f"g{g}", "interval": "30s", "limit": 10,
               "rules": [{"alert": f"A{g}x{r}", "expr": f"rate(errors_total{{job=\"j{r}\"}}[5m]) > 0.{r + 1}",
                          "for": "2m", "keep_firing_for": "1m", "labels": {"severity": "page", "team": "ml"},
                          "annotations": {"summary": "Errors on {{ $labels.instance }}",
                                          "description": "Rate {{ $value }}\n  LABELS = {{ $labels }}"}}
                         for r in range(20)] + [{"record": f"job:g{g}:sum", "expr": "sum(up)"}]}
              for g in range(50)]
    source = put(tmp_path / "big.yml", yaml.safe_dump({"groups": groups}, sort_keys=False))
    written = put(tmp_path / "written.yml", operator_files.rule_file(str(source)))
    assert yaml.safe_load(written.read_text()) == {"groups": groups}
    for path in (source, written):
        res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and "SUCCESS: 1050 rules found" in res.stdout, res.stdout + res.stderr


def test_control_copying_as_written_publishes_a_private_file(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Without the guards (the old renderer read the named file and installed its text as it
    was), a 0600 file holding a secret comes out in the rendered tree at 0644 and in
    `labctl plan`'s diff; with them, the same inventory is refused."""
    files = tmp_path / "files"
    files.mkdir()
    fields = good_files(files)
    private = put(files / "private.yml", RULES.replace("https://runbooks.example.com/gpu-hot", SECRET), 0o600)
    fields["rule_files"] = [str(private)]
    inv = inventory(tmp_path, **fields)
    code, err, out, _ = render_out(tmp_path, capsys, inv)
    assert code == 2 and "is private to its owner" in err and not out.exists()

    def copy_as_written(path: str) -> str:
        with open(path, encoding="utf-8") as fh:
            return fh.read()

    monkeypatch.setattr(operator_files, "rule_file", copy_as_written)
    monkeypatch.setitem(operator_files.CHECKS, "rule_files", copy_as_written)
    code, err, out, _ = render_out(tmp_path, capsys, inv)
    assert code == 0, err
    published = out / "labctl/monitoring/prometheus/rules/operator-0-private.yml"
    assert SECRET in published.read_text() and stat.S_IMODE(published.stat().st_mode) & 0o004
    with pytest.raises(SystemExit):
        main(["plan", "-i", str(inv), "--root", str(tmp_path / "empty")])
    assert SECRET in capsys.readouterr().out


@pytest.mark.parametrize("guard,hostile,message", [
    ("SPECIAL_ROOTS", "/proc/self/status", "holds more than its size"),
    ("_scan", "secret", "SECRET"),
])
def test_control_each_guard_is_what_refuses(tmp_path: Path, monkeypatch, guard: str, hostile: str,
                                            message: str) -> None:
    """Take one guard away and its case gets further: /proc is then opened (and refused by
    the next guard, procfs's size-0 mark, which also stands for a procfs mounted elsewhere),
    a secret-looking value is then installed."""
    path = put(tmp_path / "r.yml", RULES.replace("https://runbooks.example.com/gpu-hot", SECRET)) \
        if hostile == "secret" else Path(hostile)
    with pytest.raises(operator_files.Refused):
        operator_files.rule_file(str(path))
    monkeypatch.setattr(operator_files, guard, () if guard == "SPECIAL_ROOTS" else lambda data, refuse: None)
    if message == "SECRET":
        assert SECRET in operator_files.rule_file(str(path))
    else:
        with pytest.raises(operator_files.Refused, match=message):
            operator_files.rule_file(str(path))


def test_control_json_depth_bound_stands_before_python_recursion(tmp_path: Path, monkeypatch) -> None:
    """Without the pre-scan, json.loads itself meets the 2,000-deep dashboard with a
    RecursionError (the audit's "internal error"); labctl still refuses it in one line."""
    path = put(tmp_path / "d.json", nested_json(200_000))
    with pytest.raises(RecursionError):
        json.loads(path.read_text())
    with pytest.raises(operator_files.Refused, match="nested deeper than 64"):
        operator_files.dashboard(str(path))
    monkeypatch.setattr(operator_files, "MAX_DEPTH", 10**9)
    with pytest.raises(operator_files.Refused, match="is not usable JSON"):
        operator_files.dashboard(str(path))


def test_json_depth_scan_is_linear_on_unterminated_strings() -> None:
    """A string that never closes is skipped to the end once, not from every quote."""
    text = '"' + '\\"' * 2_000_000
    started = time.monotonic()
    assert operator_files._json_depth(text)[0] == 0
    assert time.monotonic() - started < 2
    text = '{"a": "[[[{{", "b": [[1]]}'
    assert operator_files._json_depth(text) == (3, text.index("[1]"))


# --- non-finite numbers: the encoders, the templates and LiteLLM's settings ------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_the_json_and_yaml_encoders_refuse_non_finite_numbers(value: float) -> None:
    assert json.dumps({"x": value}).split(": ")[1] in ("NaN}", "Infinity}", "-Infinity}")  # what json would write
    with pytest.raises(encode.EncodeError):
        encode.json_document({"panels": [{"x": value}]})
    with pytest.raises(encode.EncodeError, match="not a finite number"):
        encode.yaml_document({"a": [value]})
    with pytest.raises(encode.EncodeError, match="not a finite number"):
        templates._only_encoded(value)
    assert templates._only_encoded(0.5) == 0.5


@pytest.mark.parametrize("yaml_value", [".nan", ".NaN", ".inf", "-.inf", "+.Inf", "1.0e+400", "-1.0e+400"])
@pytest.mark.parametrize("where", ["litellm_settings", "router_settings", "general_settings", "litellm_params",
                                   "model_info"])
def test_litellm_settings_refuse_non_finite_numbers(tmp_path: Path, capsys, yaml_value: str, where: str) -> None:  # type: ignore[no-untyped-def]
    key = {"litellm_settings": "request_timeout", "router_settings": "timeout", "general_settings": "max_parallel_requests",
           "litellm_params": "rpm", "model_info": "max_input_tokens"}[where]
    value = f"[1, {{deep: {yaml_value}}}]"
    if where in ("litellm_params", "model_info"):
        text = edit(("        service: native\n", f"        service: native\n        {where}: {{{key}: {value}}}\n"))
    else:
        text = edit(("    fallbacks:\n", f"    {where}: {{{key}: {value}}}\n    fallbacks:\n"))
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "-i", str(path)])
    (line,) = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2 and line.startswith(f"{path}:"), line
    assert f".{where}.{key}: holds " in line and "which is not a finite number" in line, line


def test_control_pydantic_json_values_take_non_finite_numbers() -> None:
    """What the settings' check stands in front of: pydantic's JsonValue alone takes them."""
    from pydantic import ConfigDict, JsonValue, TypeAdapter

    loose = TypeAdapter(dict[str, JsonValue], config=ConfigDict(strict=True))
    assert math.isinf(loose.validate_python({"k": [math.inf]})["k"][0])  # type: ignore[index]


def test_finite_settings_still_render() -> None:
    text = edit(("        service: native\n", "        service: native\n        litellm_params: {rpm: 60, stream_timeout: 12.5}\n"))
    files = render_all(load_inventory("inventory.yaml", text=text).inventory)
    config = yaml.safe_load(files["labctl/litellm/config.yaml"])
    assert {"rpm": 60, "stream_timeout": 12.5}.items() <= config["model_list"][0]["litellm_params"].items()


def _float_fields() -> list[tuple[str, object]]:
    """Every field of the schema whose type can hold a float (directly or in JSON data)."""
    from typing import Annotated, get_args

    from pydantic import BaseModel, JsonValue

    from labctl.inventory import schema

    def types_in(ann: object) -> Iterator[object]:
        yield ann
        for arg in get_args(ann):
            yield from types_in(arg)

    out, seen, todo = [], set(), [schema.Inventory]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            found = list(types_in(field.annotation))
            if float in found or JsonValue in found:
                # pydantic keeps a field's constraints beside its type: put them back.
                annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
                out.append((f"{model.__name__}.{name}", annotation))
            todo += [t for t in found if isinstance(t, type) and issubclass(t, BaseModel)]
    return out


@pytest.mark.parametrize("name,annotation", _float_fields(), ids=[n for n, _ in _float_fields()])
def test_no_schema_field_takes_a_non_finite_number(name: str, annotation: object) -> None:
    """Whatever a number field reaches (argv, a unit, LiteLLM's config), .nan and .inf are
    refused at validation: each field's finite shape is accepted, its non-finite one not."""
    from pydantic import ConfigDict, TypeAdapter, ValidationError

    adapter = TypeAdapter(annotation, config=ConfigDict(strict=True))
    shapes = [lambda x: x, lambda x: {"k": x}, lambda x: {"k": [1, {"deep": x}]}]
    accepted = 0
    for shape in shapes:
        try:
            adapter.validate_python(shape(0.5))
        except ValidationError:
            continue
        accepted += 1
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(ValidationError):
                adapter.validate_python(shape(bad))
    assert accepted, f"{name}: no shape of a finite number is accepted; extend the shapes"


def test_scanning_a_long_string_in_a_named_file_is_linear(tmp_path: Path) -> None:
    path = put(tmp_path / "d.json", json.dumps({"panels": [], "text": "a." * 10_000}))
    started = time.monotonic()
    operator_files.dashboard(str(path))
    assert time.monotonic() - started < 0.5
