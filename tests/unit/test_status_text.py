"""`labctl status` for people: at 80 columns (and when piped) every line fits and no word
is broken; names, paths and details come out whole and as text, never as markup."""

from __future__ import annotations

import re

import pytest

from labctl.statustext import status_lines
from labctl.ops.status import EndpointStatus, ServiceStatus, StatusReport

pytestmark = pytest.mark.unit

LONG_MODEL = "current.gguf -> /home/labuser/models/library/qwen2.5-coder-7b-instruct/qwen2.5-coder-7b-instruct-q4_k_m.gguf"


def service(name: str, **kw: object) -> ServiceStatus:
    base: dict[str, object] = dict(
        service=name, kind="llama-server", unit=f"labctl-{name}.service", active_state="active", sub_state="running",
        enabled="enabled", n_restarts=2, result="success", start_limit_hit=False, main_pid=4242,
        memory_bytes=512 * 2**20, uptime_sec=3725.0, bind="127.0.0.1", port=8080,
        probe={"service": name, "ok": True, "check": "GET /health", "status": 200, "latency_ms": 3.2,
               "detail": "ready"},
        model=LONG_MODEL, drift="none", metrics={"vllm:num_requests_running": 1.0},
        drop_ins=["/home/labuser/.config/systemd/user/labctl-native.service.d/50-operator.conf"])
    base.update(kw)
    return ServiceStatus(**base)  # type: ignore[arg-type]


REPORT = StatusReport(
    services=[service("native"), service("a-rather-long-service-name", kind="llama-cpp-python", drift="changed"),
              service("[red]evil[/red]\x1b[2J", kind="external", external=True, unit="ollama.service (system)",
                      probe={"ok": False, "check": "GET /api/version", "latency_ms": 1.0, "detail": "connection refused"})],
    monitoring={"enabled": True, "engine": "docker 28.2.2", "containers": []}, seconds=0.12,
    endpoints=[EndpointStatus("cloud", "ollama_chat", "https://ollama.com", ["gpt-oss:120b-cloud", "qwen3-coder:480b"],
                              None)])


@pytest.mark.parametrize("width", [80, 60])
def test_every_line_fits_and_no_word_is_broken(width: int) -> None:
    lines = status_lines(REPORT, width)
    text = "\n".join(lines)
    words = set(text.split())
    for line in lines:
        # Only a single word longer than the line may overflow it, on a line of its own.
        assert len(line) <= width or len(line.split()) == 1 or line.strip() == LONG_MODEL.split()[-1], line
    for whole in ("a-rather-long-service-name", "llama-cpp-python", "127.0.0.1:8080",
                  LONG_MODEL.split()[-1], "gpt-oss:120b-cloud", "ollama.service"):
        assert any(whole in w for w in words), whole
    assert "\x1b" not in text and "\\x1b[2J" in text and "[red]evil[/red]" in text


def test_the_summary_says_what_is_wrong() -> None:
    lines = status_lines(REPORT, 80)
    assert lines[0].startswith("labctl status (0.12s): NOT healthy, 3 service(s)")
    assert any(re.match(r"^ok  native \(llama-server\) active/running, 127\.0\.0\.1:8080", line) for line in lines)
    assert any("drift: changed" in line for line in lines)
    assert any("not asked (--endpoints)" in line for line in lines)
    assert any("pid 4242, up 62m, 512 MiB, restarts 2" in line for line in lines)
