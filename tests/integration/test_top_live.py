"""``labctl top``'s sampler against the real servers: llama-server (with an API key, which
guards its /metrics), llama-cpp-python and the LiteLLM gateway, started from labctl's
rendered units on loopback (conftest.build_stack), under steady load through the gateway.

There is no systemd here (its side is tests/system/test_top.py's): every state comes from
the servers' answers, and top says it has no unit states.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Stack, build_stack, distinct_ports

from labctl.ops import top
from labctl.ops.apply import ensure_secrets
from labctl.text import cell_width

pytestmark = pytest.mark.integration

KEY_LINE = ("    api_key: {env_file: ~/.config/labctl/secrets/api-keys/native.env, var: LABCTL_API_KEY_NATIVE, "
            "generate: true}\n")


def keyed(text: str) -> str:
    """The stack's inventory with llama-server keyed (labctl generates the key, derives
    LLAMA_API_KEY for the server and hands the gateway the reference)."""
    return text.replace("    alias: native\n", "    alias: native\n" + KEY_LINE, 1)


@pytest.fixture(scope="module")
def keyed_stack(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path, llama_server_binary: Path,
                llama_cpp_python: Path, litellm_python: Path) -> Iterator[Stack]:
    tool_paths = {"llama_server": llama_server_binary, "llama_cpp_python": llama_cpp_python,
                  "litellm_python": litellm_python}
    stack = build_stack(tmp_path_factory.mktemp("top"), tiny_models_dir,
                        distinct_ports("native", "bindings", "gateway", "prometheus", "grafana"), tool_paths, keyed)
    ensure_secrets(stack.inventory, lambda message: None)  # as `up` does before it starts anything
    try:
        for name in stack.servers:
            stack.launch(name)
        for name in stack.servers:
            stack.wait_ready(name)
        yield stack
    finally:
        stack.stop_all()


class Load:
    """Requests to every route through the gateway, one after another, until stopped."""

    def __init__(self, stack: Stack) -> None:
        self.stack, self.stop, self.statuses = stack, threading.Event(), []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        url = self.stack.gateway_url + "/v1/chat/completions"
        with httpx.Client(timeout=120, trust_env=False) as client:
            i = 0
            while not self.stop.is_set():
                route = ("native", "bindings", "small")[i % 3]
                try:
                    resp = client.post(url, headers=self.stack.headers(), json={
                        "model": route, "max_tokens": 4, "stream": i % 2 == 0,
                        "messages": [{"role": "user", "content": "hi"}]})
                    self.statuses.append(resp.status_code)
                except httpx.HTTPError:
                    self.statuses.append(0)
                i += 1

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=130)


def sampler(stack: Stack) -> top.Sampler:
    return top.Sampler(top.plan(stack.inventory, {"XDG_RUNTIME_DIR": str(stack.root / "run")}), timeout=2.0)


def frame_after(s: top.Sampler, seconds: float, until=None) -> top.Frame:  # type: ignore[no-untyped-def]
    """Sample every second for up to ``seconds``; the first frame ``until`` accepts (or the last)."""
    deadline = time.monotonic() + seconds
    while True:
        s.sample()
        frame = top.frame(s.targets, list(s.history))
        if (until is not None and until(frame)) or time.monotonic() >= deadline:
            return frame
        time.sleep(1.0)


def rows(frame: top.Frame) -> dict[str, top.ServiceRow]:
    return {r.name: r for r in frame.services}


def moving(frame: top.Frame) -> bool:
    r = rows(frame)
    return (bool(r["native"].figures.gen_tps) and bool(r["bindings"].figures.req_s)
            and bool(r["gateway"].figures.req_s))


def test_every_service_shows_rates_within_five_seconds(keyed_stack: Stack) -> None:
    s = sampler(keyed_stack)
    try:
        with Load(keyed_stack):
            time.sleep(1)
            started = time.monotonic()
            frame = frame_after(s, 5, moving)
            took = time.monotonic() - started
    finally:
        s.close()
    r = rows(frame)
    print(f"\nTIMING rates on every service after {took:.1f}s: " + ", ".join(
        f"{n} {x.figures.req_s:.1f} req/s {x.figures.gen_tps or 0:.1f} tok/s" for n, x in r.items()))
    assert moving(frame), frame
    # The keyed llama-server's own metrics were read (with its key): its tokens are its own.
    assert r["native"].state == "serving" and "gen_tps" not in r["native"].via_gateway
    assert r["native"].running is not None
    # llama-cpp-python says nothing itself: the gateway's figures, marked so.
    assert "req_s" in r["bindings"].via_gateway and r["bindings"].state == "serving"
    assert {x.route for x in frame.routes} == {"native", "bindings", "small"}
    assert all(x.fallback_share == 0 for x in frame.routes)
    assert any("no unit states" in n for n in frame.notes)


def test_a_keyed_servers_metrics_refuse_top_without_its_key(keyed_stack: Stack) -> None:
    s = sampler(keyed_stack)
    native = next(t for t in s.targets if t.name == "native")
    assert native.headers.get("Authorization", "").startswith("Bearer ")
    try:
        keyless = top.Target(**{**native.__dict__, "headers": {}})
        answer = s.answer(keyless)
        assert answer.ok and answer.refused and answer.samples is None and "401" in answer.detail
        assert s.answer(native).samples, "with its key, its metrics are read"
    finally:
        s.close()


def test_a_killed_backend_shows_no_answer_and_its_route_falls_back(keyed_stack: Stack) -> None:
    s = sampler(keyed_stack)
    try:
        with Load(keyed_stack) as load:
            frame_after(s, 3, moving)
            keyed_stack.servers["native"].proc.kill()  # SIGKILL
            down = frame_after(s, 15, lambda f: rows(f)["native"].state == "no answer" and any(
                x.route == "native" and (x.fallback_share or 0) > 0 for x in f.routes))
            keyed_stack.start("native")
            back = frame_after(s, 15, lambda f: rows(f)["native"].state == "serving")
        failed = [c for c in load.statuses if c != 200]
    finally:
        s.close()
    assert rows(down)["native"].state == "no answer", rows(down)["native"]
    native_route = next(x for x in down.routes if x.route == "native")
    print(f"\nwhile native was down: native route answered {native_route.fallback_share:.0%} by fallbacks")
    assert native_route.fallback_share and native_route.fallback_share > 0
    assert rows(back)["native"].state == "serving", rows(back)["native"]
    assert not failed, f"the gateway failed {len(failed)} requests while native was down"


def test_top_once_prints_a_frame_that_fits(keyed_stack: Stack) -> None:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "80", "HOME": str(keyed_stack.root / "home"),
           "PYTHONPATH": ":".join(sys.path)}
    with Load(keyed_stack):
        res = subprocess.run([sys.executable, "-m", "labctl", "top", "--once", "-i", str(keyed_stack.inventory_path)],
                             capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    print("\n" + res.stdout)
    assert all(cell_width(line) <= 80 for line in lines)
    for name in ("native", "bindings", "gateway"):
        row = next(line for line in lines if line.startswith(name + " "))
        assert "serving" in row, row
