"""``kind: external``: a backend on this host that labctl routes to, probes and shows, and
never installs, starts, stops or restarts (the distribution's ollama.service, a
llama-server someone else runs). The lifecycle half (PID unchanged through up, down and
restart) is proven on a booted machine: tests/system/test_external_lifecycle.py."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from harness.invtext import edit

from labctl.cli import main
from labctl.host.systemd import UnitFacts
from labctl.load import load_inventory
from labctl.ops.doctor import port_checks
from labctl.ops.plan import make_plan, start_order
from labctl.ops.status import gather
from labctl.render import render_all

pytestmark = pytest.mark.unit

# BASE's gateway, routed also to an Ollama and a llama-server that others run.
EXTERNALS = """\
  sysollama:
    kind: external
    api: ollama
    port: 11434
    models: ["llama3.1:8b", "qwen2.5-coder:7b"]
    unit: ollama.service
  theirs:
    kind: external
    api: openai
    port: 8090
    models: [tiny]
    metrics_path: /metrics
"""
ROUTES = """\
      - name: bindings
        service: bindings
      - name: code
        service: sysollama
        model: "qwen2.5-coder:7b"
      - name: tiny
        service: theirs
"""


def with_externals(*pairs: tuple[str, str]) -> str:
    return edit(("  gateway:\n", EXTERNALS + "  gateway:\n"),
                ("      - name: bindings\n        service: bindings\n", ROUTES), *pairs)


def load(text: str):  # type: ignore[no-untyped-def]
    return load_inventory("inventory.yaml", text=text).inventory


def run(capsys, *args: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_an_external_backend_gets_no_unit_but_is_routed_to() -> None:
    inv = load(with_externals())
    assert set(inv.externals()) == {"sysollama", "theirs"}
    assert "sysollama" not in inv.managed() and "sysollama" in inv.enabled()
    files = render_all(inv)
    units = sorted(p for p in files if p.startswith("systemd/user/"))
    assert units == ["systemd/user/labctl-bindings.service", "systemd/user/labctl-gateway.service",
                     "systemd/user/labctl-native.service"]
    gateway_unit = files["systemd/user/labctl-gateway.service"]
    after = [line for line in gateway_unit.splitlines() if line.startswith(("After=", "Wants="))]
    assert after and not any("sysollama" in line or "theirs" in line for line in after)
    cfg = yaml.safe_load(files["labctl/litellm/config.yaml"])
    params = {m["model_name"]: m["litellm_params"] for m in cfg["model_list"]}
    assert params["code"] == {"model": "ollama_chat/qwen2.5-coder:7b", "api_base": "http://127.0.0.1:11434"}
    # One model served: the route may leave it out.
    assert params["tiny"] == {"model": "openai/tiny", "api_base": "http://127.0.0.1:8090/v1", "api_key": "unused"}


def test_an_external_is_scraped_only_with_a_metrics_path() -> None:
    files = render_all(load(with_externals()))
    prom = yaml.safe_load(files["labctl/monitoring/prometheus/prometheus.yml"])
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["external-theirs"]["metrics_path"] == "/metrics"
    assert jobs["external-theirs"]["static_configs"][0]["targets"] == ["127.0.0.1:8090"]
    assert not any("sysollama" in str(j) for j in jobs.values())
    assert "# sysollama: external, without metrics_path, not scraped" in \
        files["labctl/monitoring/prometheus/prometheus.yml"]


def test_plans_never_start_or_stop_an_external() -> None:
    inv = load(with_externals())
    assert "sysollama" not in start_order(inv) and "theirs" not in start_order(inv)
    plan = make_plan(inv, render_all(inv), {}, {})
    assert not [a for a in plan.actions if a.unit and ("sysollama" in a.unit or "theirs" in a.unit)]


@pytest.mark.parametrize("pairs, line, message", [
    # A route to a model the external does not serve.
    ((('        model: "qwen2.5-coder:7b"\n', '        model: "qwen3:8b"\n'),), 44,
     "'qwen3:8b' is not in services.sysollama.models"),
    # Two models served: the route must say which.
    ((('        model: "qwen2.5-coder:7b"\n', ''),), 42, "needs 'model'"),
    # labctl may not start its own service on the port an external holds.
    ((("    port: 8000\n", "    port: 11434\n"),), 23, "port 11434 is already used by services.bindings"),
    # It runs nothing, so it takes nothing a unit would need.
    ((("    models: [tiny]\n", "    models: [tiny]\n    extra_args: [--verbose]\n"),), 31, "extra_args"),
    ((("    unit: ollama.service\n", "    unit: labctl-native.service\n    unit_scope: user\n"),), 25,
     "is a unit labctl itself runs"),
    ((('    models: ["llama3.1:8b", "qwen2.5-coder:7b"]\n', '    models: ["tiny2", "tiny2"]\n'),), 24,
     "'tiny2' is listed twice"),
    ((("    unit: ollama.service\n", "    unit: 'ollama service; rm'\n"),), 25, "unit"),
])
def test_bad_external_declarations_are_refused(tmp_path: Path, capsys, pairs, line: int, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "inventory.yaml"
    text = with_externals(*pairs)
    path.write_text(text)
    code, _, err = run(capsys, "validate", "-i", str(path))
    assert code == 2, err
    first = err.strip().splitlines()[0]
    assert first.startswith(f"{path}:{line}:") and message in err, (err, text.splitlines()[line - 1])


def test_restart_refuses_an_external(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "inventory.yaml"
    path.write_text(with_externals())
    code, _, err = run(capsys, "restart", "sysollama", "-i", str(path))
    assert code == 2
    assert "sysollama: external" in err and "never restarts" in err and "Traceback" not in err


def test_doctor_expects_an_externals_port_taken() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        inv = load(with_externals(("    port: 8090\n", f"    port: {port}\n")))
        by_port = {c.name: c for c in port_checks(inv)}
        check = by_port[f"port {port}"]
        assert check.status == "ok" and "theirs (external), as expected" in check.message
    check = {c.name: c for c in port_checks(inv)}[f"port {port}"]
    assert check.status == "warn" and "nothing listens for theirs" in check.message


class _Manager:
    """What `systemctl --user show` says of labctl's own units: running."""

    env: dict[str, str] = {}

    def show(self, units):  # type: ignore[no-untyped-def]
        return {u: UnitFacts.parse(u, {"ActiveState": "active", "SubState": "running"}) for u in units}


def test_status_shows_externals_and_asks_endpoints_only_when_told() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    text = with_externals(
        ("    unit: ollama.service\n", ""),
        ("    port: 4000\n", f"    port: 4000\n    endpoints:\n      cloud:\n        provider: openai\n"
                            f"        api_base: http://127.0.0.1:{port}/v1\n"),
        ("      - name: tiny\n        service: theirs\n",
         "      - name: tiny\n        service: theirs\n      - name: big\n        endpoint: cloud\n"
         "        model: gpt-x\n"))
    inv = load(text)
    report = gather(inv, manager=_Manager(), probe_timeout=1.0, with_monitoring=False)  # type: ignore[arg-type]
    rows = {s.service: s for s in report.services}
    assert rows["sysollama"].external and rows["sysollama"].kind == "external"
    assert rows["sysollama"].unit == "-" and rows["sysollama"].active_state == "external"
    assert rows["theirs"].model == "tiny" and rows["theirs"].probe["detail"] == "connection refused"
    assert not rows["theirs"].healthy  # nothing answers on its port
    (endpoint,) = report.endpoints
    assert endpoint.name == "cloud" and endpoint.routes == ["big"] and endpoint.probe is None
    asked = gather(inv, manager=_Manager(), probe_timeout=1.0, with_monitoring=False, endpoints=True)  # type: ignore[arg-type]
    (endpoint,) = asked.endpoints
    assert endpoint.probe is not None and not endpoint.probe["ok"] and "unreachable" in str(endpoint.probe["detail"])
    assert not endpoint.healthy and "endpoints" in asked.as_dict()


def test_logs_of_an_external_need_its_unit(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "inventory.yaml"
    path.write_text(with_externals())
    code, _, err = run(capsys, "logs", "theirs", "-i", str(path))
    assert code == 2 and "names no unit for it (services.theirs.unit)" in err
    from labctl.host.systemd import UserManager

    argv = UserManager().journal_argv("ollama.service", 5, False, user=False)
    assert argv[:2] == ["journalctl", "--unit=ollama.service"]
