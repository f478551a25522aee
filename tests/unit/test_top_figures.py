"""``labctl top``'s figures (labctl.promtext, labctl.ops.top) over /metrics answers captured
from the real servers with known traffic between them (tests/golden/metrics/capture.py
says what traffic); the quantile arithmetic against Prometheus' own ``histogram_quantile``
(promtool) on the buckets of those answers. Its screen: tests/unit/test_top_screen.py.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import yaml
from harness.invtext import BASE
from harness.tools import require_command

from labctl import promtext
from labctl.host.systemd import UnitFacts
from labctl.kinds.litellm import ROUTE_SIGNALS
from labctl.kinds.litellm import SIGNALS as GATEWAY
from labctl.kinds.llama_server import SIGNALS as LLAMA
from labctl.kinds.vllm import SIGNALS as VLLM
from labctl.load import load_inventory
from labctl.ops import top

pytestmark = pytest.mark.unit

CAPTURED = Path(__file__).resolve().parents[1] / "golden" / "metrics"
SECONDS = 10.0  # the captures are read as if taken this far apart


def answer(name: str, at: float = 0.0) -> top.Answer:
    return top.Answer(True, False, "", promtext.parse((CAPTURED / name).read_text(), ALL_NAMES), at=at)


def target(name: str, signals=None, route_signals=None, routes=None) -> top.Target:  # type: ignore[no-untyped-def]
    return top.Target(name, "k", None, None, "http://x/metrics" if signals else None, {}, signals, route_signals,
                      routes or {}, {}, None, None, 60.0)


ALL_NAMES = (top.wanted(target("a", LLAMA)) | top.wanted(target("b", VLLM))
             | top.wanted(target("c", GATEWAY, ROUTE_SIGNALS)))


# --- the exposition format -------------------------------------------------------------------


def test_parse_reads_labels_escapes_timestamps_and_skips_the_rest() -> None:
    text = ('# HELP x_total a counter\n# TYPE x_total counter\n'
            'x_total{a="1",b="q\\"uote\\\\d\\nline"} 3 1700000000000\n'
            'x_total{a="2"} 4.5e0\n'
            'x_totalish 99\n'
            'y 7\n'
            'x_total{a="torn"')
    samples = promtext.parse(text, {"x_total", "y", "absent"})
    assert samples["x_total"] == [({"a": "1", "b": 'q"uote\\d\nline'}, 3.0), ({"a": "2"}, 4.5)]
    assert samples["y"] == [({}, 7.0)]
    assert "absent" not in samples and "x_totalish" not in samples
    assert promtext.total(samples, "x_total") == 7.5
    assert promtext.total(samples, "x_total", {"a": "2"}) == 4.5
    assert promtext.total(samples, "absent") is None  # not exposed is not zero


def test_a_counter_that_went_down_was_reset() -> None:
    assert promtext.increase(10, 15) == 5
    assert promtext.increase(15, 4) == 4    # restarted, counted 4 since
    assert promtext.increase(None, 3) == 3  # a family created at its first request
    assert promtext.increase(3, None) is None
    reset = promtext.bucket_increase({1.0: 5, math.inf: 9}, {1.0: 1, math.inf: 2})
    assert reset == {1.0: 1, math.inf: 2}


def _vllm_ttft() -> promtext.Buckets:
    old, new = answer("vllm-0.txt").samples, answer("vllm-1.txt").samples
    grown = promtext.bucket_increase(promtext.buckets(old, VLLM.ttft).get(""), promtext.buckets(new, VLLM.ttft).get(""))
    assert grown is not None
    return grown


def test_quantiles_are_prometheus_histogram_quantile(tmp_path: Path) -> None:
    """The same buckets (what a real vLLM's time-to-first-token histogram grew by over six
    requests, and a hand-made one with an empty first bucket and a rank in +Inf) through
    Prometheus' histogram_quantile (promtool) and through promtext.quantile."""
    promtool = require_command("promtool", "apt-get install prometheus")
    cases = {"vllm": _vllm_ttft(), "made": {0.5: 0.0, 1.0: 4.0, 2.5: 9.0, math.inf: 10.0}}
    series, checks = [], []
    for name, counts in cases.items():
        assert counts[math.inf] > 0
        for le, count in counts.items():
            series.append({"series": f'h_bucket{{case="{name}",le="{"+Inf" if le == math.inf else repr(le)}"}}',
                           "values": repr(count)})
        for q in (0.5, 0.95, 0.99):
            ours = promtext.quantile(q, counts)
            assert ours is not None
            checks.append({"expr": f'histogram_quantile({q}, h_bucket{{case="{name}"}})', "eval_time": "0m",
                           "exp_samples": [{"labels": f'{{case="{name}"}}', "value": ours}]})
    (tmp_path / "none.yml").write_text("groups: []\n")
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": ["none.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": checks}]}))
    proc = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert promtext.quantile(0.5, {1.0: 0.0, math.inf: 0.0}) is None  # nothing observed
    assert promtext.quantile(0.5, {1.0: 3.0}) is None                # no +Inf: not a whole histogram


# --- each server's figures, from its real answers ---------------------------------------------


def test_llama_server_figures() -> None:
    """5 requests of 8 generated tokens: 40 tokens; it counts no requests and keeps no
    time-to-first-token histogram, so those stay empty rather than zero."""
    old, new = answer("llama-server-0.txt").samples, answer("llama-server-1.txt").samples
    figures = top.service_figures(LLAMA, old, new, SECONDS, old)
    assert figures.gen_tps == pytest.approx(40 / SECONDS)
    assert figures.prompt_tps and figures.prompt_tps > 0
    assert figures.req_s is None and figures.ttft_p50 is None and figures.ttft_p95 is None
    assert top.gauges(LLAMA, new) == (0, 0)


def test_vllm_figures() -> None:
    """6 requests of 8 tokens each."""
    old, new = answer("vllm-0.txt").samples, answer("vllm-1.txt").samples
    figures = top.service_figures(VLLM, old, new, SECONDS, old)
    assert figures.req_s == pytest.approx(6 / SECONDS)
    assert figures.gen_tps == pytest.approx(48 / SECONDS)
    assert _vllm_ttft()[math.inf] == 6
    assert 0 < figures.ttft_p50 <= figures.ttft_p95 < 1  # type: ignore[operator]
    assert top.gauges(VLLM, new) == (0, 0)


def test_gateway_figures_and_routes() -> None:
    """16 requests: 4 rounds of native (streamed), bindings, small (streamed), then 4 for
    native with llama-server killed, each answered by its fallback bindings."""
    old, new = answer("litellm-0.txt").samples, answer("litellm-1.txt").samples
    figures = top.service_figures(GATEWAY, old, new, SECONDS, old)
    assert figures.req_s == pytest.approx(16 / SECONDS)
    assert figures.ttft_p95 is not None  # the streamed ones
    # Its in-flight gauge counts the metrics request that read it: 0 left.
    assert top.gauges(GATEWAY, new) == (0, None)
    routes = top.route_figures(ROUTE_SIGNALS, old, new, SECONDS, old)
    native, bindings, small = routes["native"], routes["bindings"], routes["small"]
    assert native.answered == pytest.approx(4 / SECONDS) and native.fallbacks == pytest.approx(4 / SECONDS)
    assert bindings.answered == pytest.approx(8 / SECONDS)  # its own 4 and native's 4
    assert small.answered == pytest.approx(4 / SECONDS) and small.fallbacks is None
    assert native.state == 1.0 and bindings.state == 0.0  # LiteLLM: native failing
    assert native.ttft[math.inf] == 4 and small.ttft[math.inf] == 4 and bindings.ttft is None  # type: ignore[index]
    assert native.generation and bindings.generation and small.generation


def test_a_restarted_server_counts_from_its_restart() -> None:
    """Older counters above newer ones: the server restarted, its rate is what it did since."""
    new, old = answer("llama-server-0.txt").samples, answer("llama-server-1.txt").samples
    figures = top.service_figures(LLAMA, old, new, SECONDS, old)
    assert figures.gen_tps == pytest.approx(promtext.total(new, LLAMA.generation_tokens) / SECONDS)


# --- a frame of the CPU demo's shape -----------------------------------------------------------


def demo_targets() -> list[top.Target]:
    inv = load_inventory("inventory.yaml", text=BASE).inventory
    return top.plan(inv, {"XDG_RUNTIME_DIR": "/nonexistent"}).targets


def facts(unit: str, active: str = "active", sub: str = "running", restarts: int = 0,
          entered_usec: int = 1) -> UnitFacts:
    return UnitFacts.parse(unit, {"ActiveState": active, "SubState": sub, "NRestarts": str(restarts),
                                  "ActiveEnterTimestampMonotonic": str(entered_usec), "MemoryCurrent": "52428800"})


def history(states: dict[str, UnitFacts] | None = None) -> list[top.Sample]:
    """Two samples 10 s apart: native and the gateway answer with their captures, bindings
    (llama-cpp-python: no metrics) with its probe."""
    units = states or {u: facts(u) for u in ("labctl-native.service", "labctl-bindings.service",
                                             "labctl-gateway.service")}
    t0, t1 = 1000.0, 1000.0 + SECONDS
    first = top.Sample(t0, units, {"native": answer("llama-server-0.txt", t0),
                                   "bindings": top.Answer(True, False, "ready", at=t0),
                                   "gateway": answer("litellm-0.txt", t0)}, {}, frozenset())
    second = top.Sample(t1, units, {"native": answer("llama-server-1.txt", t1),
                                    "bindings": top.Answer(True, False, "ready", at=t1),
                                    "gateway": answer("litellm-1.txt", t1)}, {}, frozenset())
    return [first, second]


def test_plan_reads_each_kind_by_its_signals() -> None:
    by_name = {t.name: t for t in demo_targets()}
    assert by_name["native"].metrics_url == "http://127.0.0.1:8080/metrics" and by_name["native"].signals is LLAMA
    assert by_name["gateway"].metrics_url == "http://127.0.0.1:4000/metrics/"
    assert by_name["gateway"].route_signals is ROUTE_SIGNALS
    assert by_name["gateway"].routes == {"native": "native", "bindings": "bindings"}
    # llama-cpp-python exposes no metrics: it is probed.
    assert by_name["bindings"].metrics_url is None and by_name["bindings"].probe["recipe"] == "openai-models"
    assert by_name["native"].unit == "labctl-native.service"


def test_frame_fills_what_a_server_does_not_say_from_the_gateway() -> None:
    frame = top.frame(demo_targets(), history())
    rows = {r.name: r for r in frame.services}
    native, bindings, gateway = rows["native"], rows["bindings"], rows["gateway"]
    # llama-server says its tokens itself; its requests and time to first token are the gateway's.
    assert native.figures.gen_tps == pytest.approx(40 / SECONDS) and "gen_tps" not in native.via_gateway
    assert native.figures.req_s == pytest.approx(4 / SECONDS) and "req_s" in native.via_gateway
    assert {"ttft_p50", "ttft_p95"} <= native.via_gateway
    # llama-cpp-python says nothing: everything is the gateway's, its own and native's fallbacks.
    assert bindings.figures.req_s == pytest.approx(8 / SECONDS)
    assert bindings.via_gateway == {"req_s", "prompt_tps", "gen_tps"}
    assert gateway.via_gateway == frozenset() and gateway.figures.req_s == pytest.approx(16 / SECONDS)
    assert [r.state for r in frame.services] == ["serving", "serving", "serving"]
    assert gateway.memory == 50 * 2**20 and gateway.restarts == 0
    routes = {r.route: r for r in frame.routes}
    assert routes["native"].fallback_share == pytest.approx(0.5) and routes["native"].state == "failing"
    assert routes["bindings"].fallback_share == 0 and routes["bindings"].state == "ok"
    assert routes["native"].answered_s == pytest.approx(8 / SECONDS)
    assert frame.window == SECONDS


def test_one_sample_shows_states_and_no_rates() -> None:
    frame = top.frame(demo_targets(), history()[1:])
    assert frame.window is None
    assert all(r.figures.req_s is None for r in frame.services)


def test_a_killed_backend_is_failed_while_systemd_restarts_it() -> None:
    units = {u: facts(u) for u in ("labctl-bindings.service", "labctl-gateway.service")}
    units["labctl-native.service"] = facts("labctl-native.service", "activating", "auto-restart", restarts=1)
    samples = history(units)
    samples[-1] = top.Sample(samples[-1].at, units, {
        **samples[-1].answers, "native": top.Answer(False, False, "connection refused", at=samples[-1].at)},
        {}, frozenset())
    rows = {r.name: r for r in top.frame(demo_targets(), samples).services}
    assert rows["native"].state == "failed" and rows["native"].restarts == 1
    assert "restarting" in rows["native"].detail


@pytest.mark.parametrize(("unit", "answer_", "busy", "draining", "expected"), [
    (("failed", "failed"), None, False, False, "failed"),
    (("activating", "auto-restart"), None, False, False, "failed"),
    (("activating", "start"), top.Answer(True, True, top.LOADING), False, False, "loading"),
    (("activating", "start"), top.Answer(False, False, "connection refused"), False, False, "starting"),
    (("inactive", "dead"), None, False, False, "stopped"),
    (("deactivating", "stop-sigterm"), top.Answer(True, False, ""), True, False, "stopping"),
    (("active", "running"), top.Answer(True, True, top.LOADING), False, False, "loading"),
    (("active", "running"), top.Answer(True, False, ""), True, True, "draining"),
    (("active", "running"), top.Answer(True, False, ""), True, False, "serving"),
    (("active", "running"), top.Answer(True, False, ""), False, False, "idle"),
    # Active for 30 s of a 60 s readiness timeout and not answering yet: still loading.
    (("active", "running"), top.Answer(False, False, "connection refused"), False, False, "loading"),
    (None, top.Answer(False, False, "connection refused"), False, False, "no answer"),
    (("active", "running"), top.Answer(True, False, "its metrics answered HTTP 401", refused=True), False, False,
     "no metrics"),
    (None, None, False, False, "unknown"),
])
def test_state_words(unit, answer_, busy, draining, expected) -> None:  # type: ignore[no-untyped-def]
    f = facts("x.service", *unit, entered_usec=10_000_000) if unit else None
    state, _ = top.state_of(f, answer_, busy=busy, draining=draining, ready_timeout=60, now_usec=40_000_000)
    assert state == expected
    if unit == ("active", "running") and expected == "loading" and not answer_.ok:
        late, _ = top.state_of(f, answer_, busy=False, draining=False, ready_timeout=60, now_usec=100_000_000)
        assert late == "no answer"


def test_gpu_per_process_from_nvidia_smi_text() -> None:
    """A stand-in for nvidia-smi (none here): its documented CSV of
    --query-compute-apps=pid,used_memory --format=csv,noheader,nounits."""
    assert top.parse_compute_apps("1234, 2048\n1234, 1024\n99, 512\n[Not Supported]\n") == {
        1234: 3072 * 2**20, 99: 512 * 2**20}


def test_a_costly_metrics_endpoint_is_read_less_often_without_skewing_rates() -> None:
    """LiteLLM's answer costs it (SIGNALS.min_interval): a sample between two reads repeats
    the last answer, which adds no reading, so the rate is still over the real interval."""
    assert GATEWAY.min_interval > 0
    targets = demo_targets()
    t0, t1, t2 = 1000.0, 1001.0, 1002.0
    old, new = answer("litellm-0.txt", t0), answer("litellm-1.txt", t1)
    probe = top.Answer(True, False, "ready", at=t0)
    samples = [top.Sample(t, {}, {"native": answer("llama-server-0.txt", t), "bindings": probe, "gateway": g},
                          {}, frozenset()) for t, g in ((t0, old), (t1, new), (t2, new))]
    rows = {r.name: r for r in top.frame(targets, samples).services}
    assert rows["gateway"].figures.req_s == pytest.approx(16 / (t1 - t0))
