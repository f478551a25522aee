"""``labctl status`` as plain lines (the default output): shared by the CLI and by the
fast path of ``labctl.__main__``, which prints a status without importing typer or rich's
console: folded by labctl.text, in terminal cells.

Base layer: it formats any object shaped like labctl.ops.status.StatusReport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labctl.text import fold, shown

if TYPE_CHECKING:
    from typing import Any


def mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f} MiB"


def uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def status_lines(report: Any, width: int = 80) -> list[str]:
    """The status as plain lines that fit ``width`` (80 when piped) and never break a word:
    one summary line per service, then its details indented below it. ``--wide`` gives
    the one-row-per-service table instead."""
    lines = [(f"labctl status ({report.seconds:.2f}s): "
              f"{'healthy' if report.healthy else 'NOT healthy'}, {len(report.services)} service(s)")]
    for s in report.services:
        state = s.active_state if s.sub_state in ("-", "") else f"{s.active_state}/{s.sub_state}"
        if s.result and s.result != "success":
            state += f" ({s.result})"
        probe = s.probe
        head = (f"{'ok ' if s.healthy else 'BAD'} {s.service} ({s.kind}) {state}, "
                f"{s.bind}:{s.port}, probe {'ok' if probe['ok'] else 'FAIL'} {probe['latency_ms']:.0f}ms")
        lines += fold(shown(head), width, "", "      ")
        details = [f"probe: {probe['check']}: {probe['detail']}" if probe.get("check") else f"probe: {probe['detail']}"]
        facts = [f"pid {s.main_pid}" if s.main_pid else "", f"up {uptime(s.uptime_sec)}" if s.uptime_sec else "",
                 mib(s.memory_bytes) if s.memory_bytes is not None else "",
                 f"restarts {s.n_restarts}" + (" (start limit hit)" if s.start_limit_hit else "") if s.n_restarts else "",
                 f"unit {s.unit}" if s.external and s.unit != "-" else ""]
        if any(facts):
            details.append(", ".join(f for f in facts if f))
        if s.model:
            details.append(f"model: {s.model}")
        if s.metrics:
            details.append("metrics: " + ", ".join(f"{k.split(':', 1)[1]}={v:g}" for k, v in sorted(s.metrics.items())))
        if s.drift != "none":
            details.append(f"drift: {s.drift} (labctl up installs the rendered unit)")
        if s.drop_ins:
            details.append(f"operator drop-ins: {', '.join(s.drop_ins)}")
        for detail in details:
            lines += fold(shown(detail), width, "      ", "        ")
    for e in report.endpoints:
        reach = ("not asked (--endpoints)" if e.probe is None else
                 f"{'ok' if e.probe['ok'] else 'FAIL'} {e.probe['latency_ms']:.0f}ms {e.probe['detail']}")
        lines += fold(shown(f"    endpoint {e.name} ({e.provider}) {e.api_base}: {reach}"), width, "", "      ")
        lines += fold(shown(f"routes: {', '.join(e.routes) or '-'}"), width, "      ", "        ")
    for c in report.monitoring.get("containers") or []:  # type: ignore[union-attr]
        lines += fold(shown(f"    container {c.get('service')}: {c.get('state')}/{c.get('health') or '-'}, "
                             f"{c.get('image')}"), width, "", "      ")
    if report.note:
        lines += fold(shown(f"note: {report.note}"), width, "", "      ")
    if report.monitoring.get("enabled") and not report.monitoring.get("containers") and report.monitoring.get("engine"):
        lines += fold(shown(f"monitoring: {report.monitoring['engine']}"), width, "", "      ")
    return lines
