"""Random mutations of valid inventories: labctl either accepts (and then renders) them, or
exits 2 with one line per problem in the ``file:line: path: message`` shape. Never a
traceback, never exit 1 (an internal error)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.invtext import BASE, VLLM, with_service
from labctl.cli import main

ERROR_LINE = re.compile(r"^.+:\d+: \S.*: .+$")
SEEDS = [yaml.safe_load(BASE), yaml.safe_load(with_service(VLLM)),
         yaml.safe_load((Path(__file__).resolve().parents[2] / "inventory.yaml").read_text())]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
    st.sampled_from(["0.0.0.0", "current", "~/x", "/nope", "sk-secret", "llama-server", "vllm", "awq",
                     "float32", "-1", "1.5", "", "gateway", "native", "[x]"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=6)


def paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from paths(value, prefix + (i,))


def mutate(doc, path, op, value):
    if not path:
        return value if op == "replace" else doc
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    key = path[-1]
    if op == "replace":
        parent[key] = value
    elif op == "delete":
        del parent[key]
    elif op == "add" and isinstance(parent[key], dict):
        parent[key][f"x_{str(value)[:6]}"] = value
    elif op == "add" and isinstance(parent[key], list):
        parent[key].append(value)
    return doc


@st.composite
def mutated(draw):
    import copy

    doc = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        all_paths = list(paths(doc))
        path = draw(st.sampled_from(all_paths))
        doc = mutate(doc, path, draw(st.sampled_from(["replace", "delete", "add"])), draw(values))
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=mutated())
def test_mutations_are_valid_or_one_line_errors(tmp_path_factory, capsys, doc):
    path = tmp_path_factory.mktemp("prop") / "inventory.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "-i", str(path)])
    captured = capsys.readouterr()
    assert exit_info.value.code in (0, 2), captured.err
    assert "Traceback" not in captured.err + captured.out
    if exit_info.value.code == 2:
        lines = captured.err.splitlines()
        assert lines and all(ERROR_LINE.match(line) and line.startswith(str(path)) for line in lines), captured.err
    else:
        assert captured.err == ""
        # An accepted inventory must also render: validation is the only door.
        with pytest.raises(SystemExit) as render_exit:
            main(["render", "-i", str(path), "--out", str(path.parent / "out")])
        assert render_exit.value.code == 0, capsys.readouterr().err
