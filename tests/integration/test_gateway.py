"""The rendered gateway in front of real model servers, all started from the rendered units.

One stack per module (tests/integration/conftest.py: ``running_stack``): llama-server and
llama-cpp-python serving a generated tiny model, and the real LiteLLM proxy with the
rendered config and a generated master key. Routes: ``native`` (llama-server),
``bindings`` and ``small`` (both llama-cpp-python); chain ``native: [bindings, small]``.

The test that stops the primary runs last and restarts it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from harness import helpers
from harness.invtext import BASE, edit

from labctl.errors import OperationFailed
from labctl.load import load_inventory
from labctl.ops.gateway_check import RouteResult, all_ok, check_gateway, litellm_supports_prometheus
from labctl.kinds import litellm as litellm_kind
from labctl.render.monitoring import backend_panels

pytestmark = pytest.mark.integration

GROUP = "x-litellm-model-group"
ATTEMPTED = "x-litellm-attempted-fallbacks"
CHECK_TIMEOUT = 120.0


def header(result: helpers.HttpResult, name: str) -> str | None:
    return {k.lower(): v for k, v in result.headers.items()}.get(name)


def stack_api_base(stack, service: str) -> str:
    return f"http://127.0.0.1:{stack.inventory.services[service].port}/v1"


def routes(stack) -> list[str]:
    return [r.name for r in stack.gateway.routes]


# --- the units' command lines ---------------------------------------------------------


def test_processes_run_the_units_command_lines(running_stack) -> None:
    for name, server in running_stack.servers.items():
        assert running_stack.running(name), f"{name} is not running{running_stack.context()}"
        cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().split(b"\0")[:-1]
        assert [a.decode() for a in cmdline] == server.unit.argv
        assert server.unit.working_directory.is_dir()
    gateway = running_stack.servers["gateway"].unit
    # Without it LiteLLM fetches a cost map from the internet at start-up.
    assert gateway.environment["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert [str(p) for p in gateway.environment_files] == [str(running_stack.key_file)]


def test_the_gateway_runs_on_asyncio_not_uvloop(running_stack) -> None:
    """labctl.kinds.litellm.launch: the real LiteLLM, started by the unit's launcher, has not
    loaded uvloop (the stock entry point does, whenever uvloop is installed, as it is here)."""
    server = running_stack.servers["gateway"]
    assert server.unit.argv[1].endswith("/labctl_litellm.py")
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert "uvloop" not in maps
    python = Path(server.unit.argv[0])
    assert subprocess.run([str(python), "-c", "import uvloop"], capture_output=True).returncode == 0, \
        "uvloop is not installed in the gateway's venv: this test would prove nothing"


# --- routes -------------------------------------------------------------------------------


def test_every_route_answers_a_chat_completion(running_stack) -> None:
    for route in routes(running_stack):
        result = running_stack.chat(route)
        assert result.status == 200, f"{route}: HTTP {result.status}: {result.text}{running_stack.context()}"
        assert header(result, GROUP) == route
        assert header(result, ATTEMPTED) == "0"
        message = result.json()["choices"][0]["message"]
        assert isinstance(message["content"], str) and message["content"].strip(), result.text


def test_models_lists_exactly_the_routes_and_aliases(running_stack) -> None:
    url = running_stack.gateway_url + "/v1/models"
    result = helpers.http_request(url, headers=running_stack.headers(), timeout=60)
    assert result.status == 200, result.text
    ids = [m["id"] for m in result.json()["data"]]
    # LiteLLM lists the aliases beside the routes: both are names a client may ask for.
    assert sorted(ids) == sorted(routes(running_stack) + list(running_stack.gateway.aliases))
    # The key is required. (LiteLLM without a database answers a wrong key with 400.)
    for headers in ({}, {"Authorization": "Bearer sk-not-the-key"}):
        refused = helpers.http_request(url, headers=headers, timeout=60)
        assert refused.status in (400, 401, 403), (refused.status, refused.text)


# --- labctl.ops.gateway_check ------------------------------------------------------------------


def check(stack) -> list[RouteResult]:
    started = time.monotonic()
    results = check_gateway(stack.inventory, stack.key, timeout=CHECK_TIMEOUT)
    print(f"\nTIMING check_gateway ({len(results)} requests) in {time.monotonic() - started:.2f}s")
    return results


def test_check_gateway_all_ok(running_stack) -> None:
    results = check(running_stack)
    summary = json.dumps([r.as_dict() for r in results], indent=1)
    assert all_ok(results), summary + running_stack.context()
    by_check = {(r.check, r.route, r.fallback_to): r for r in results}
    assert set(by_check) == {
        ("route", "native", None), ("route", "bindings", None), ("route", "small", None),
        ("alias", "fast", "native"),
        ("fallback", "native", "bindings"), ("fallback", "native", "small"),
        # The catch-all, exercised from the first route without a chain of its own.
        ("fallback", "bindings", "native"),
    }
    assert by_check["alias", "fast", "native"].answered_by == "native"
    # The answering route and the inventory service behind it.
    assert by_check["route", "small", None].backend == "bindings"
    assert by_check["route", "native", None].backend == "native"
    for target in ("bindings", "small"):
        fallback = by_check["fallback", "native", target]
        assert fallback.answered_by == target and fallback.backend == "bindings"
        assert fallback.attempted_fallbacks is not None and fallback.attempted_fallbacks >= 1
    for result in results:
        assert result.latency_ms > 0
        assert set(result.as_dict()) == {"check", "route", "fallback_to", "status", "answered_by", "backend",
                                         "attempted_fallbacks", "latency_ms", "error", "ok"}


def test_check_gateway_with_a_wrong_key(running_stack) -> None:
    results = check_gateway(running_stack.inventory, "sk-not-the-key", timeout=CHECK_TIMEOUT)
    assert results and not any(r.ok for r in results)
    assert all(r.status == 400 and "refused the key" in (r.error or "") for r in results), \
        [r.as_dict() for r in results]


def test_check_gateway_reports_an_unreachable_gateway(running_stack) -> None:
    data = yaml.safe_load(running_stack.inventory_text)
    data["services"]["gateway"]["port"] = helpers.free_port()
    inv = load_inventory("inventory.yaml", text=yaml.safe_dump(data)).inventory
    results = check_gateway(inv, running_stack.key, timeout=10)
    assert len(results) == 7 and not any(r.ok or r.status is not None for r in results)
    assert all((r.error or "").startswith("cannot reach the gateway at http://127.0.0.1:") for r in results)


def test_check_gateway_needs_a_gateway() -> None:
    lines = BASE.splitlines(keepends=True)
    text = "".join(lines[:lines.index("  gateway:\n")] + lines[lines.index("monitoring:\n"):])
    inv = load_inventory("inventory.yaml", text=text).inventory
    with pytest.raises(OperationFailed, match="no enabled litellm service"):
        check_gateway(inv, "sk-unused")


def test_forced_failures_do_not_cool_the_primary_down(running_stack) -> None:
    """The fallback checks' forced failures must not push the primary into cooldown, or a
    health check would divert real traffic. Several checks in a row, then real requests."""
    for _ in range(3):
        assert all_ok(check(running_stack))
    for _ in range(3):
        result = running_stack.chat("native")
        assert result.status == 200 and header(result, GROUP) == "native", (result.status, result.headers)
        assert header(result, ATTEMPTED) == "0"


def test_litellm_supports_prometheus(litellm_python: Path, llama_cpp_python: Path, tmp_path: Path) -> None:
    # The positive case is the litellm_python fixture itself: it returns only when
    # litellm_supports_prometheus says True. llama-cpp-python's venv has neither LiteLLM
    # nor prometheus_client.
    assert not litellm_supports_prometheus(llama_cpp_python)
    assert not litellm_supports_prometheus(tmp_path / "no-such-python")


# --- metrics --------------------------------------------------------------------------------

METRIC_RE = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*[{\[]")


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression (names followed by a selector or a range).
    ``up`` is made by Prometheus itself, not exposed by any server."""
    return set(METRIC_RE.findall(expr)) - {"up"}


def exposition(text: str) -> tuple[set[str], dict[str, str]]:
    """Sample names and ``# TYPE`` families (name -> type) of a /metrics answer."""
    samples, types = set(), {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            types[name] = kind.strip()
        elif line and not line.startswith("#"):
            samples.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return samples, types


def test_every_metric_labctl_uses_is_exposed(running_stack) -> None:
    inv = running_stack.inventory
    needed: dict[str, str] = {}
    for service, kind, panels in backend_panels(inv):
        for title, expr, _ in panels:
            for name in promql_metrics(expr):
                needed[name] = f"dashboard {service}/{title}"
    rules = running_stack.files["labctl/monitoring/prometheus/rules/labctl.yml"]
    for expr in re.findall(r"^\s*expr: (.*)$", rules, flags=re.MULTILINE):
        for name in promql_metrics(expr):
            needed.setdefault(name, "alert rules")
    for name in (litellm_kind.REQUESTS_METRIC, litellm_kind.FALLBACKS_METRIC):
        needed.setdefault(name, "labctl.kinds.litellm")
    assert {"llamacpp:requests_processing", "llamacpp:tokens_predicted_total",
            "llamacpp:prompt_tokens_total"} <= set(needed)

    # Traffic through every route and every chain, so LiteLLM has a sample of each family,
    # and a streamed answer: LiteLLM times the first token of those only.
    assert all_ok(check(running_stack))
    assert running_stack.chat("native", stream=True).status == 200
    deadline = time.monotonic() + 30
    while True:
        samples: set[str] = set()
        types: dict[str, str] = {}
        for name, path in (("native", "/metrics"), ("gateway", "/metrics/")):
            result = helpers.http_request(running_stack.url(name) + path, timeout=60)
            assert result.status == 200, f"{name}{path}: HTTP {result.status}"
            more_samples, more_types = exposition(result.text)
            samples |= more_samples
            types.update(more_types)
        missing = {name: where for name, where in needed.items() if name not in samples}
        # The latency constant names a histogram family; its series are _bucket/_sum/_count.
        if types.get(litellm_kind.LATENCY_METRIC) != "histogram":
            missing[litellm_kind.LATENCY_METRIC] = "labctl.kinds.litellm (histogram)"
        # LiteLLM updates its counters after the answer is sent: give it a moment.
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not missing, f"metric names labctl uses but no server exposes: {missing}"


# --- secrets --------------------------------------------------------------------------------


def test_the_key_appears_nowhere(running_stack) -> None:
    stack = running_stack
    key = stack.key
    assert len(key) >= 32 and stack.key_file.stat().st_mode & 0o777 == 0o600
    # Exercise the error paths too: a failing route and a wrong key.
    results = check_gateway(stack.inventory, key, timeout=CHECK_TIMEOUT)
    results += check_gateway(stack.inventory, "sk-not-the-key", timeout=CHECK_TIMEOUT)
    places: dict[str, str] = {"inventory": stack.inventory_text,
                              "check results": json.dumps([r.as_dict() for r in results])}
    places.update({f"rendered {rel}": text for rel, text in stack.files.items()})
    for path in sorted(stack.config_root.rglob("*")):
        if path.is_file() and path != stack.key_file:
            places[str(path)] = path.read_text(errors="replace")
    for name, server in stack.servers.items():
        places[f"{name} log"] = server.log.read_text(errors="replace")
        places[f"{name} argv"] = " ".join(server.unit.argv)
    assert stack.key_file.read_text().count(key) == 1
    leaks = [where for where, text in places.items() if key in text]
    assert not leaks, f"the gateway key appears in: {leaks}"
    # The config refers to the key by name only.
    assert "master_key: os.environ/LITELLM_MASTER_KEY" in stack.files["labctl/litellm/config.yaml"]


# --- the operators' outage ------------------------------------------------------------------


def test_validate_refuses_a_fallback_to_an_undefined_model(tmp_path: Path) -> None:
    """A chain naming a model that no route defines: LiteLLM's own config validation passes
    it and every fallback then fails at request time. labctl refuses it, in one line."""
    text = edit(("      bindings: [native]\n", "      bindings: [native, gpt-4o]\n"))
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    line = text.splitlines().index("      bindings: [native, gpt-4o]") + 1
    proc = subprocess.run([sys.executable, "-m", "labctl", "validate", "-i", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr == (f"{path}:{line}: services.gateway.fallbacks.bindings[1]: chain 'bindings' falls back "
                           "to undefined model 'gpt-4o' (routes: bindings, native)\n")
    assert BASE.count("bindings: [native]") == 1


# --- the primary down (keep last: it stops and restarts llama-server) -----------------------


def test_an_alias_is_served_by_its_route(running_stack) -> None:
    result = running_stack.chat("fast")
    assert result.status == 200, f"HTTP {result.status}: {result.text}{running_stack.context()}"
    # LiteLLM reports the group by the name asked for; the deployment is the route's.
    assert header(result, GROUP) == "fast" and header(result, ATTEMPTED) == "0", result.headers
    native = stack_api_base(running_stack, "native")
    assert header(result, "x-litellm-model-api-base") == native, result.headers


def test_catch_all_serves_a_route_without_its_own_chain(running_stack) -> None:
    """``small`` has no chain: with its backend stopped, the configured catch-all
    (``"*": [native]``) answers, not a chain sent in the request."""
    stack = running_stack
    stack.stop("bindings")
    try:
        result = stack.chat("small")
        assert result.status == 200, f"HTTP {result.status}: {result.text}{stack.context()}"
        assert header(result, GROUP) == "native", result.headers
        assert int(header(result, ATTEMPTED) or 0) >= 1
    finally:
        seconds = stack.start("bindings")
        print(f"\nTIMING llama-cpp-python restarted in {seconds:.2f}s")


def test_stopped_primary_is_answered_by_its_chain(running_stack) -> None:
    stack = running_stack
    stack.stop("native")
    try:
        result = stack.chat("native")
        assert result.status == 200, f"HTTP {result.status}: {result.text}{stack.context()}"
        assert header(result, GROUP) == "bindings", result.headers  # the first of the chain
        attempted = header(result, ATTEMPTED)
        assert attempted is not None and int(attempted) >= 1

        results = {(r.check, r.route, r.fallback_to): r for r in check(stack)}
        native = results["route", "native", None]
        assert not native.ok and native.status == 200
        assert native.answered_by == "bindings" and native.backend == "bindings"
        assert "route 'native' itself is failing" in (native.error or "")
        # The alias and the catch-all lead to native: they report it.
        for key in (("alias", "fast", "native"), ("fallback", "bindings", "native")):
            assert not results[key].ok, results[key].as_dict()
        # The chain checks never send anything to the primary: they still pass.
        others = [r for key, r in results.items() if "native" not in (key[1], key[2])]
        assert others and all(r.ok for r in others), [r.as_dict() for r in others]
    finally:
        seconds = stack.start("native")
        print(f"\nTIMING llama-server restarted in {seconds:.2f}s")
    # Back to its own route, within a bounded time (LiteLLM may have cooled it down).
    deadline = time.monotonic() + stack.gateway.cooldown_sec + 30
    while True:
        result = stack.chat("native")
        if result.status == 200 and header(result, GROUP) == "native":
            break
        assert time.monotonic() < deadline, f"native did not come back: {result.status} {result.headers}"
        time.sleep(1)
