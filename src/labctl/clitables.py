"""Rich tables for the CLI (presentation only; the data comes from the core)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from labctl.text import shown  # noqa: F401 - also used by the CLI's commands

if TYPE_CHECKING:
    from rich.console import Console

    from labctl.status import StatusReport


def plain(text: object, style: str = "") -> Text:
    """``text``, escaped by :func:`shown`, as a rich Text: printed literally, never read as
    ``[markup]`` or ``:emoji:``."""
    return Text(shown(text), style=style)


def unfolded(table: Table, console: Console) -> Table:
    """``table`` at its natural width when that is wider than the console, so no cell is
    folded or cut: a name is shown whole, as it is spelled (the console soft-wraps)."""
    natural = console.measure(table, options=console.options.update_width(1 << 16)).maximum
    if natural > console.width:
        table.width = natural
    return table


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f} MiB"


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _fold(text: str, width: int, indent: str = "", more: str = "") -> list[str]:
    """``text`` in lines of at most ``width`` columns, broken only between words (a word
    longer than a line keeps a line of its own)."""
    import textwrap

    return textwrap.wrap(text, max(width, 20), initial_indent=indent, subsequent_indent=more,
                         break_long_words=False, break_on_hyphens=False) or [indent.rstrip()]


def status_lines(report: StatusReport, width: int = 80) -> list[str]:
    """The status as plain lines that fit ``width`` (80 when piped) and never break a word:
    one summary line per service, then its details indented below it. ``--wide`` gives
    the one-row-per-service table instead."""
    lines = [f"labctl status ({report.seconds:.2f}s): "
             f"{'healthy' if report.healthy else 'NOT healthy'}, {len(report.services)} service(s)"]
    for s in report.services:
        state = s.active_state if s.sub_state in ("-", "") else f"{s.active_state}/{s.sub_state}"
        if s.result and s.result != "success":
            state += f" ({s.result})"
        probe = s.probe
        head = (f"{'ok ' if s.healthy else 'BAD'} {s.service} ({s.kind}) {state}, "
                f"{s.bind}:{s.port}, probe {'ok' if probe['ok'] else 'FAIL'} {probe['latency_ms']:.0f}ms")
        lines += _fold(shown(head), width, "", "      ")
        details = [f"probe: {probe['check']}: {probe['detail']}" if probe.get("check") else f"probe: {probe['detail']}"]
        facts = [f"pid {s.main_pid}" if s.main_pid else "", f"up {_uptime(s.uptime_sec)}" if s.uptime_sec else "",
                 _mib(s.memory_bytes) if s.memory_bytes is not None else "",
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


def _drift_cell(drift: str, drop_ins: int) -> Text:
    text = plain("-") if drift == "none" else plain(drift, "yellow")
    if drop_ins:
        text = Text.assemble(text, " ", plain(f"+{drop_ins} drop-in{'s' if drop_ins > 1 else ''}", "cyan"))
    return text


def status_table(report: StatusReport) -> Table:
    table = Table(title=f"labctl status ({report.seconds:.2f}s)", title_justify="left")
    for column in ("service", "kind", "unit state", "restarts", "pid", "memory", "uptime", "listen", "probe",
                   "model", "drift"):
        table.add_column(column, overflow="fold")
    for s in report.services:
        # Every cell is a Text: names, details and model links come from files and processes,
        # so nothing in them is markup, and shown() escapes what a terminal would act on.
        state = f"{s.active_state}/{s.sub_state}"
        if s.result and s.result != "success":
            state += f" ({s.result})"
        colour = "green" if s.active_state == "active" else "red" if s.active_state == "failed" else "yellow"
        restarts = f"{s.n_restarts}" + (" (start limit hit)" if s.start_limit_hit else "")
        probe = s.probe
        probe_text = f"{'ok' if probe['ok'] else 'FAIL'} {probe['latency_ms']:.0f}ms {probe['detail']}"
        if s.metrics:
            probe_text += " | " + ", ".join(f"{k.split(':', 1)[1]}={v:g}" for k, v in sorted(s.metrics.items()))
        table.add_row(plain(s.service), plain(s.kind), Text.assemble(plain(state, colour), " ", plain(s.enabled)),
                      plain(restarts), plain(s.main_pid or "-"), plain(_mib(s.memory_bytes)),
                      plain(_uptime(s.uptime_sec)), plain(f"{s.bind}:{s.port}"),
                      plain(probe_text, "green" if probe["ok"] else "red"), plain(s.model or "-"),
                      _drift_cell(s.drift, len(s.drop_ins)))
    from labctl.status import endpoint_host

    for e in report.endpoints:
        if e.probe is None:
            reach = plain("not asked (--endpoints)", "dim")
        else:
            reach = plain(f"{'ok' if e.probe['ok'] else 'FAIL'} {e.probe['latency_ms']:.0f}ms {e.probe['detail']}",
                          "green" if e.probe["ok"] else "red")
        table.add_row(plain(e.name), plain("endpoint"), plain(e.provider), *(plain("-") for _ in range(4)),
                      plain(endpoint_host(e)), reach, plain(", ".join(e.routes) or "-"), plain("-"))
    containers = report.monitoring.get("containers") or []
    for c in containers:  # type: ignore[union-attr]
        table.add_row(plain(c.get("service")), plain("container"), plain(f"{c.get('state')}/{c.get('health') or '-'}"),
                      *(plain("-") for _ in range(6)), plain(c.get("image")), plain("-"))
    captions = [report.note] if report.note else []
    if report.monitoring.get("enabled") and not containers and report.monitoring.get("engine"):
        captions.append(f"monitoring: {report.monitoring['engine']}")
    table.caption = plain("; ".join(captions)) if captions else None
    return table
