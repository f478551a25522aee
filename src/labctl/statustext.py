"""``labctl status`` as plain lines (the default output): shared by the CLI and by the
fast path of ``labctl.__main__``, which prints a status without importing typer or rich.

Base layer: it formats any object shaped like labctl.ops.status.StatusReport.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing's own constant costs its import; type checkers read this one alike
if TYPE_CHECKING:
    from typing import Any

# Imported by the snapshot path: no re, textwrap or typing at the top. labctl.text's shown()
# and fold() are called only for text they would change (a test holds the two alike).


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


def shown(text: str) -> str:
    """labctl.text.shown: text that is all printable (no control, separator, bidi or
    surrogate character: the common case) is shown as it is, without importing re."""
    if text.isprintable():
        return text
    from labctl.text import shown as escaped

    return escaped(text)


def _fold(text: str, width: int, indent: str = "", more: str = "") -> list[str]:
    """labctl.text.fold (textwrap, breaking only at spaces) for printable text, whose only
    blank is the space (every other is a control or separator): the same greedy lines,
    without importing textwrap and re."""
    if not text.isprintable():
        from labctl.text import fold

        return fold(text, width, indent, more)
    width = max(width, 20)
    # textwrap's chunks: words and runs of spaces, in order.
    chunks: list[str] = []
    i = 0
    while i < len(text):
        j = i
        if text[i] == " ":
            while j < len(text) and text[j] == " ":
                j += 1
        else:
            while j < len(text) and text[j] != " ":
                j += 1
        chunks.append(text[i:j])
        i = j
    chunks.reverse()
    lines: list[str] = []
    while chunks:
        prefix = more if lines else indent
        room = width - len(prefix)
        if chunks[-1][0] == " " and lines:  # a line after the first starts at a word
            chunks.pop()
        line: list[str] = []
        size = 0
        while chunks and size + len(chunks[-1]) <= room:
            size += len(chunks[-1])
            line.append(chunks.pop())
        if chunks and len(chunks[-1]) > room and not line:
            line.append(chunks.pop())  # a word longer than a line: a line of its own, whole
        if line and line[-1][0] == " ":
            line.pop()
        if line:
            lines.append(prefix + "".join(line))
    return lines or [indent.rstrip()]


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
        lines += _fold(shown(head), width, "", "      ")
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
            lines += _fold(shown(detail), width, "      ", "        ")
    for e in report.endpoints:
        reach = ("not asked (--endpoints)" if e.probe is None else
                 f"{'ok' if e.probe['ok'] else 'FAIL'} {e.probe['latency_ms']:.0f}ms {e.probe['detail']}")
        lines += _fold(shown(f"    endpoint {e.name} ({e.provider}) {e.api_base}: {reach}"), width, "", "      ")
        lines += _fold(shown(f"routes: {', '.join(e.routes) or '-'}"), width, "      ", "        ")
    for c in report.monitoring.get("containers") or []:  # type: ignore[union-attr]
        lines += _fold(shown(f"    container {c.get('service')}: {c.get('state')}/{c.get('health') or '-'}, "
                             f"{c.get('image')}"), width, "", "      ")
    if report.note:
        lines += _fold(shown(f"note: {report.note}"), width, "", "      ")
    if report.monitoring.get("enabled") and not report.monitoring.get("containers") and report.monitoring.get("engine"):
        lines += _fold(shown(f"monitoring: {report.monitoring['engine']}"), width, "", "      ")
    return lines
